"""The cadpipe web portal (``cadpipe serve``): upload page, study API, job store, worker.

See ``docs/portal.md``. Modules: :mod:`.app` (FastAPI app), :mod:`.jobs` (SQLite job store), :mod:`.worker`
(bounded queue + worker thread), :mod:`.uploads` (type/size checks, generated names), :mod:`.engine` (scoring one
job with the ``cadpipe score`` pipeline and report), :mod:`.serve` (the ``cadpipe serve`` CLI), ``static/`` and
``templates/`` (the page). Top layer: may import anything below (scoring, inference, outputs); nothing imports it.
"""

from cadpipe.pipelines.portal.app import PortalSettings, create_app

__all__ = ["PortalSettings", "create_app"]

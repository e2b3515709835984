"""The registry of task kinds: a bundle's ``metadata.json`` ``cadpipe.task`` → its :class:`TaskKind`.

Adding a kind: one module beside these with a :class:`~cadpipe.pipelines.kinds.base.TaskKind` subclass, one entry
in :data:`KINDS`, its tests in ``tests/pipelines/kinds/`` (docs/architecture.md, "where new things go").
"""

from __future__ import annotations

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.kinds.base import TaskKind
from cadpipe.pipelines.kinds.classification import Classification
from cadpipe.pipelines.kinds.detection import Detection
from cadpipe.pipelines.kinds.multilabel import MultiLabel
from cadpipe.pipelines.kinds.segmentation import Segmentation

__all__ = ["KINDS", "kind_of"]

#: every kind, by the name bundles declare
KINDS: dict[str, TaskKind] = {k.name: k for k in (Classification(), MultiLabel(), Segmentation(), Detection())}


def kind_of(task: str, where: str = "") -> TaskKind:
    """The kind a bundle declares as ``task``.

    Raises:
        CadpipeInputError: ``task`` is no known kind (``where``: the file that declares it).
    """
    try:
        return KINDS[task]
    except (KeyError, TypeError):
        raise CadpipeInputError(where, f"unknown cadpipe.task {task!r} in metadata.json (known: "
                                       f"{', '.join(KINDS)})") from None

"""Keep patient and header values out of the logs of ``cadpipe score`` and ``cadpipe serve``.

cadpipe's own log lines carry job ids, unit counts and reasons, never header values. pydicom, however, warns about
invalid values by quoting them (``Invalid value for VR UI: '<script>...'``), both as a Python warning and on its
``pydicom`` logger, and importing pydicom resets that logger's level; highdicom (writing DICOM SEG/SR/SC results)
quotes values it finds odd the same way (e.g. a patient name it thinks malformed). :func:`quiet_identifying_logs`
imports pydicom first, then silences both libraries' loggers below ERROR and ignores their warnings, for this process
and the processes it forks.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_identifying_logs", "escape_controls"]


def quiet_identifying_logs() -> None:
    try:
        import pydicom  # noqa: F401 - its import sets its logger's level: set ours after it
        import pydicom.config
    except ImportError:
        return
    for name in ("pydicom", "highdicom"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        logger.propagate = False
        warnings.filterwarnings("ignore", module=rf"{name}(\..*)?$")
    warnings.filterwarnings("ignore", message=r".*(Invalid value|invalid value|VR [A-Z]{2}).*")


def escape_controls(text: str) -> str:
    """``text`` with control characters (newlines included) escaped as ``\\n``, ``\\x1b``...: a value printed or
    logged cannot forge a line or drive a terminal."""
    if all(c.isprintable() for c in text):
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)

"""Optional extras (``pip install cadpipe[<extra>]``): which modules each one brings, and a check run before any
work so that a missing one ends in one line naming the extra to install, not a traceback half-way through."""

from __future__ import annotations

import importlib.util

# extra -> the top-level modules it installs that cadpipe imports
EXTRAS: dict[str, tuple[str, ...]] = {
    "ray": ("ray",),
    "serve": ("fastapi", "uvicorn", "multipart", "reportlab"),
    "mlflow": ("mlflow", "sqlalchemy"),
}


class MissingExtraError(ImportError):
    """An optional extra needed for what was asked is not installed; ``str(err)`` says which one to install."""

    def __init__(self, extra: str, purpose: str, missing: list[str]):
        self.extra, self.purpose, self.missing = extra, purpose, missing
        super().__init__(f"{purpose} needs the '{extra}' extra ({', '.join(missing)} not installed): "
                         f"pip install 'cadpipe[{extra}]'")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed installation counts as missing
        return False


def require(extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``extra`` can be imported."""
    missing = [m for m in EXTRAS[extra] if not _installed(m)]
    if missing:
        raise MissingExtraError(extra, purpose, missing)


def extra_for_module(module: str | None) -> str | None:
    """The extra that installs ``module`` (a dotted name is taken by its top level), or None."""
    top = (module or "").split(".")[0]
    return next((e for e, mods in EXTRAS.items() if top in mods), None)

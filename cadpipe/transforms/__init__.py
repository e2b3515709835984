"""Readers and transforms, each as a MONAI array transform plus its dictionary twin.

Names are exported lazily: ``cadpipe.transforms.CLAHEd`` imports only the submodule that defines it,
so bundle configs can use short ``_target_`` paths without importing every reader's dependencies.
"""

from __future__ import annotations

import importlib
import pkgutil

_cache: dict[str, object] = {}


def _submodules() -> list[str]:
    """Public modules of this package and its subpackages (``readers.io_dicom``, ``clahe.transforms``, ``window``)."""
    names = []
    for m in pkgutil.walk_packages(__path__, prefix=f"{__name__}.", onerror=lambda name: None):
        relative = m.name[len(__name__) + 1:]
        if m.ispkg or any(part.startswith("_") for part in relative.split(".")):
            continue
        names.append(relative)
    return sorted(names)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if name in _cache:
        return _cache[name]
    for sub in _submodules():
        module = importlib.import_module(f"{__name__}.{sub}")
        if name in getattr(module, "__all__", ()):
            _cache[name] = getattr(module, name)
            return _cache[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    names = []
    for sub in _submodules():
        names.extend(getattr(importlib.import_module(f"{__name__}.{sub}"), "__all__", ()))
    return sorted(set(names))

"""Readers and transforms, each as a MONAI array transform plus its dictionary twin.

Names are exported lazily: ``cadpipe.transforms.CLAHEd`` imports only the submodule that defines it,
so bundle configs can use short ``_target_`` paths without importing every reader's dependencies.
"""

from __future__ import annotations

import importlib
import pkgutil

_cache: dict[str, object] = {}


def _submodules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


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

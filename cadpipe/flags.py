"""Boolean config values that may arrive as text.

``python -m monai.bundle run ... --lung_crop false`` hands the bundle the *string* ``"false"``, which Python treats
as true. Every boolean id in the bundles' configs goes through :func:`as_bool` where it is used, so the words a
user types on a command line mean what they say.
"""

from __future__ import annotations

TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


def as_bool(value, name: str = "") -> bool:
    """``value`` as a bool: a bool as is; ``0``/``1``; ``true/false``, ``1/0``, ``yes/no``, ``on/off`` in any case.

    Anything else (``"maybe"``, ``2``, a list) raises ``ValueError`` naming the config id ``name`` when given,
    instead of being taken as true.

    >>> as_bool("False"), as_bool("yes"), as_bool(0)
    (False, True, False)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    label = f"{name}: " if name else ""
    raise ValueError(f"{label}{value!r} is not a boolean (use true/false, 1/0 or yes/no)")

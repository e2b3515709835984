"""Unique output names per unit: no two units write the same file, whatever their input names.

Output files live at ``<output>/<study folder>/<series folder>/<prefix>_<what>.<ext>``. Folder and file names are
made file-system safe with :func:`safe_name`, which maps ``a b`` and ``a_b``
(or ``é`` and ``è``) to the same text, and a case-insensitive file system (macOS, Windows) sees ``A`` and ``a`` as
one name. So :func:`assign_output_names` gives each study, each series in a study and each unit in a series a name

- equal to its safe name when that is the id itself and no other id at the same level has the same safe name
  ignoring case (UIDs, ordinary file names: unchanged);
- else the safe name + ``_`` + the first 8 hex digits of the SHA-1 of the original id (for a unit: its id, the
  path relative to the input folder for non-DICOM files), so the name is stable across runs (resume) and unique.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict

__all__ = ["safe_name", "unique_names", "assign_output_names"]


def safe_name(text: str, max_len: int = 80) -> str:
    """A file-system safe folder name from an id (UIDs stay readable; long names get a hash suffix)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "unnamed"
    if len(name) > max_len:
        name = name[: max_len - 9] + "_" + hashlib.sha1(str(text).encode()).hexdigest()[:8]
    return name


def _hashed(safe: str, original: str) -> str:
    return f"{safe[:70]}_{hashlib.sha1(original.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def unique_names(ids: list[str], hash_when_changed: bool = True) -> dict[str, str]:
    """``{id: name}``: names unique ignoring case (module docstring). ``hash_when_changed=False`` adds the hash
    only on a collision."""
    safe = {i: safe_name(i) for i in dict.fromkeys(ids)}
    count = Counter(s.lower() for s in safe.values())
    return {i: s if count[s.lower()] == 1 and (s == i or not hash_when_changed) else _hashed(s, i)
            for i, s in safe.items()}


def assign_output_names(units: list) -> None:
    """Set ``out_study``, ``out_series`` and ``out_prefix`` of every unit (in place)."""
    studies = unique_names([u.study_id for u in units])
    series_of: dict[str, list[str]] = defaultdict(list)
    for u in units:
        series_of[u.study_id].append(u.series_id)
    series = {s: unique_names(ids) for s, ids in series_of.items()}
    members: dict[tuple[str, str], list] = defaultdict(list)
    for u in units:
        u.out_study, u.out_series = studies[u.study_id], series[u.study_id][u.series_id]
        members[(u.study_id, u.series_id)].append(u)
    for group in members.values():
        base = {u.unit_id: (u.unit_id.split("#")[0] if u.kind == "dicom" else u.series_id) for u in group}
        count = Counter(safe_name(b).lower() for b in base.values())
        for u in group:
            name = safe_name(base[u.unit_id])
            u.out_prefix = name if count[name.lower()] == 1 else _hashed(name, u.unit_id)

"""DDSM adapter: case folders, ``.ics`` view sizes and ``.OVERLAY`` chain-code outlines.

Layout as distributed::

    cases/<normals|benigns|cancers|benign_without_callbacks>/<volume>/case<NNNN>/
        A-NNNN-1.ics
        A_NNNN_1.LEFT_CC.LJPEG   (x4 views)
        A_NNNN_1.LEFT_CC.OVERLAY (views with findings)

Overlay outlines are a start **column**, a start **row**, then a Freeman chain code (0 = up, clockwise to
7 = up-left) ended by ``#``. They become filled masks ``(rows, cols)`` and MONAI ``xyxy`` boxes
``(col_min, row_min, col_max + 1, row_max + 1)`` in the image's pixel grid (the ``.ics`` LINES x
PIXELS_PER_LINE), matching ``monai.apps.detection.transforms.box_ops.convert_mask_to_box`` of the mask
in the project's ``(C, X=cols, Y=rows)`` axis convention.

Every malformed input raises :class:`cadpipe.errors.CadpipeInputError` naming the file (and line).
"""

from __future__ import annotations

import gzip
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cadpipe.errors import CadpipeInputError

__all__ = [
    "CHAIN_STEPS",
    "Outline",
    "Abnormality",
    "chain_to_points",
    "outline_mask",
    "outline_box",
    "parse_overlay",
    "read_ics_views",
    "find_ddsm_cases",
    "ddsm_datalist",
    "split_by_patient",
    "PATHOLOGY_LABELS",
    "CLASS_NAMES",
]

# direction -> (d_col, d_row); 0 = up (row - 1), then clockwise
CHAIN_STEPS = {0: (0, -1), 1: (1, -1), 2: (1, 0), 3: (1, 1), 4: (0, 1), 5: (-1, 1), 6: (-1, 0), 7: (-1, -1)}
CLASS_NAMES = ["benign", "malignant"]
PATHOLOGY_LABELS = {"BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0, "MALIGNANT": 1}
VIEWS = ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO")


@dataclass
class Outline:
    kind: str  # BOUNDARY or CORE
    start_col: int
    start_row: int
    chain: list[int]
    line: int  # 1-based line of the start coordinates in the overlay file


@dataclass
class Abnormality:
    index: int
    lesion_types: list[dict] = field(default_factory=list)  # e.g. {"LESION_TYPE": "MASS", "SHAPE": ..., "MARGINS": ...}
    assessment: int | None = None
    subtlety: int | None = None
    pathology: str | None = None
    outlines: list[Outline] = field(default_factory=list)
    line: int = 0

    @property
    def is_mass(self) -> bool:
        return any(t.get("LESION_TYPE") == "MASS" for t in self.lesion_types)

    @property
    def is_calcification(self) -> bool:
        return any(t.get("LESION_TYPE") == "CALCIFICATION" for t in self.lesion_types)

    @property
    def boundary(self) -> Outline | None:
        return next((o for o in self.outlines if o.kind == "BOUNDARY"), self.outlines[0] if self.outlines else None)


def _open_text(path: str | os.PathLike) -> list[str]:
    path = os.fspath(path)
    try:
        raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
    except OSError as e:
        raise CadpipeInputError(path, f"cannot read file ({e.strerror or e})") from e
    try:
        return raw.decode("ascii", errors="strict").splitlines()
    except UnicodeDecodeError as e:
        raise CadpipeInputError(path, "not a text file") from e


def chain_to_points(start_col: int, start_row: int, chain, path="", line=0, size=None) -> np.ndarray:
    """Follow a chain code; returns ``(N + 1, 2)`` int array of ``(col, row)`` points (start included).

    ``size = (rows, cols)`` checks that every point stays inside the image.
    """
    pts = np.empty((len(chain) + 1, 2), dtype=np.int64)
    c, r = int(start_col), int(start_row)
    pts[0] = (c, r)
    for i, d in enumerate(chain):
        try:
            dc, dr = CHAIN_STEPS[int(d)]
        except (KeyError, ValueError):
            raise CadpipeInputError(path, f"line {line}: invalid chain code direction {d!r} (must be 0-7)") from None
        c, r = c + dc, r + dr
        pts[i + 1] = (c, r)
    if size is not None:
        rows, cols = size
        bad = (pts[:, 0] < 0) | (pts[:, 0] >= cols) | (pts[:, 1] < 0) | (pts[:, 1] >= rows)
        if bad.any():
            k = int(np.argmax(bad))
            raise CadpipeInputError(
                path,
                f"line {line}: chain code leaves the image ({rows} rows x {cols} columns) at step {k}: "
                f"column {pts[k, 0]}, row {pts[k, 1]}",
            )
    return pts


def outline_mask(points: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Filled boolean mask ``(rows, cols)`` of a closed outline given as ``(col, row)`` points (outline included)."""
    from skimage.draw import polygon

    mask = np.zeros((rows, cols), dtype=bool)
    rr, cc = polygon(points[:, 1], points[:, 0], shape=(rows, cols))
    mask[rr, cc] = True
    inside = (points[:, 1] >= 0) & (points[:, 1] < rows) & (points[:, 0] >= 0) & (points[:, 0] < cols)
    mask[points[inside, 1], points[inside, 0]] = True
    return mask


def outline_box(points: np.ndarray) -> np.ndarray:
    """MONAI xyxy box ``(col_min, row_min, col_max + 1, row_max + 1)`` (float32) of an outline's pixels."""
    return np.array(
        [points[:, 0].min(), points[:, 1].min(), points[:, 0].max() + 1, points[:, 1].max() + 1], dtype=np.float32
    )


_KEYS_INT = {"ASSESSMENT", "SUBTLETY"}


def parse_overlay(path: str | os.PathLike, size: tuple[int, int] | None = None) -> list[Abnormality]:
    """Parse a DDSM ``.OVERLAY`` (or ``.OVERLAY.gz``) file.

    Args:
        path: the overlay file.
        size: ``(rows, cols)`` of the image (from the ``.ics``); when given every outline must stay inside it.

    Raises:
        CadpipeInputError: naming the file and line for a missing ``#``, a chain code leaving the image,
            TOTAL_ABNORMALITIES / TOTAL_OUTLINES disagreeing with the content, or an unreadable line.
    """
    path = os.fspath(path)
    lines = _open_text(path)
    total_abn = None
    total_abn_line = 0
    abns: list[Abnormality] = []
    expected_outlines: dict[int, tuple[int, int]] = {}  # abnormality list index -> (count, line)
    i = 0
    n = len(lines)
    while i < n:
        text = lines[i].strip()
        lineno = i + 1
        i += 1
        if not text:
            continue
        tok = text.split()
        key = tok[0].upper()
        if key == "TOTAL_ABNORMALITIES":
            total_abn, total_abn_line = _int(tok, 1, path, lineno), lineno
        elif key == "ABNORMALITY":
            abns.append(Abnormality(index=_int(tok, 1, path, lineno), line=lineno))
        elif key in ("BOUNDARY", "CORE"):
            if not abns:
                raise CadpipeInputError(path, f"line {lineno}: {key} before any ABNORMALITY")
            # the outline follows: start col, start row, chain..., '#' (possibly over several lines)
            nums: list[str] = []
            start_line = None
            closed = False
            while i < n:
                t = lines[i].strip()
                if t and start_line is None:
                    start_line = i + 1
                if t and t.split()[0].upper() in _SECTION_KEYS:
                    break
                i += 1
                if "#" in t:
                    nums.extend(t.split("#", 1)[0].split())
                    closed = True
                    break
                nums.extend(t.split())
            at = start_line or lineno
            if not closed:
                raise CadpipeInputError(path, f"line {at}: {key} outline not ended by '#'")
            if len(nums) < 2:
                raise CadpipeInputError(path, f"line {at}: {key} outline lacks its start column and row")
            try:
                vals = [int(v) for v in nums]
            except ValueError:
                raise CadpipeInputError(path, f"line {at}: non-integer value in {key} outline") from None
            chain = vals[2:]
            chain_to_points(vals[0], vals[1], chain, path=path, line=at, size=size)  # validates
            abns[-1].outlines.append(Outline(key, vals[0], vals[1], chain, at))
        elif key == "TOTAL_OUTLINES":
            if not abns:
                raise CadpipeInputError(path, f"line {lineno}: TOTAL_OUTLINES before any ABNORMALITY")
            expected_outlines[len(abns) - 1] = (_int(tok, 1, path, lineno), lineno)
        elif key == "LESION_TYPE":
            if not abns:
                raise CadpipeInputError(path, f"line {lineno}: LESION_TYPE before any ABNORMALITY")
            entry = {}
            for k in range(0, len(tok) - 1, 2):
                entry[tok[k].upper()] = tok[k + 1]
            abns[-1].lesion_types.append(entry)
        elif key in _KEYS_INT and abns:
            setattr(abns[-1], key.lower(), _int(tok, 1, path, lineno))
        elif key == "PATHOLOGY" and abns:
            if len(tok) < 2:
                raise CadpipeInputError(path, f"line {lineno}: PATHOLOGY without a value")
            abns[-1].pathology = tok[1].upper()
        # other keys are ignored
    if total_abn is None:
        raise CadpipeInputError(path, "line 1: TOTAL_ABNORMALITIES missing")
    if total_abn != len(abns):
        raise CadpipeInputError(
            path, f"line {total_abn_line}: TOTAL_ABNORMALITIES says {total_abn} but {len(abns)} ABNORMALITY found"
        )
    for k, a in enumerate(abns):
        if k in expected_outlines and expected_outlines[k][0] != len(a.outlines):
            cnt, ln = expected_outlines[k]
            raise CadpipeInputError(
                path, f"line {ln}: TOTAL_OUTLINES says {cnt} but abnormality {a.index} has {len(a.outlines)} outlines"
            )
        if not a.outlines:
            raise CadpipeInputError(path, f"line {a.line}: abnormality {a.index} has no outline")
    return abns


_SECTION_KEYS = {
    "ABNORMALITY",
    "BOUNDARY",
    "CORE",
    "TOTAL_ABNORMALITIES",
    "TOTAL_OUTLINES",
    "LESION_TYPE",
    "ASSESSMENT",
    "SUBTLETY",
    "PATHOLOGY",
}


def _int(tok, k, path, lineno) -> int:
    try:
        return int(tok[k])
    except (IndexError, ValueError):
        raise CadpipeInputError(path, f"line {lineno}: expected an integer after {tok[0]}") from None


def read_ics_views(path: str | os.PathLike) -> dict[str, dict]:
    """Per-view sizes from a DDSM ``.ics``: ``{"LEFT_CC": {"rows", "cols", "bits", "resolution", "overlay"}}``.

    A view of :func:`cadpipe.transforms.readers.io_ljpeg.read_ics` (the one ``.ics`` parser), in the adapter's names.

    Raises:
        CadpipeInputError: whatever ``read_ics`` rejects (unreadable file, no view line, a view line lacking
            LINES/PIXELS_PER_LINE/BITS_PER_PIXEL/RESOLUTION or with non-numeric values), naming the file and line.
    """
    from cadpipe.transforms.readers.io_ljpeg import read_ics

    return {
        view: {
            "rows": v["LINES"],
            "cols": v["PIXELS_PER_LINE"],
            "bits": v["BITS_PER_PIXEL"],
            "resolution": v["RESOLUTION"],
            "overlay": bool(v.get("OVERLAY", False)),
        }
        for view, v in read_ics(path)["views"].items()
    }


def find_ddsm_cases(root: str | os.PathLike) -> list[Path]:
    """Every case folder (a folder holding one ``.ics``) under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise CadpipeInputError(root, "DDSM root is not a folder")
    return sorted({p.parent for p in root.rglob("*.ics")})


def _category(case_dir: Path) -> str:
    for part in reversed(case_dir.parts):
        if part.lower() in ("normals", "benigns", "cancers", "benign_without_callbacks"):
            return part.lower()
    return ""


def _find(case_dir: Path, stem: str, suffix: str) -> Path | None:
    for cand in (case_dir / f"{stem}.{suffix}", case_dir / f"{stem}.{suffix}.gz"):
        if cand.exists():
            return cand
    return None


def ddsm_datalist(
    root: str | os.PathLike,
    lesion_types: tuple[str, ...] | None = ("MASS",),
    with_masks: bool = False,
    require_images: bool = True,
) -> list[dict]:
    """MONAI datalist of every DDSM view under ``root``.

    Each item: ``image`` (LJPEG path), ``box`` ``(N, 4)`` float32 xyxy (col, row), ``label`` ``(N,)`` int64
    (0 benign, 1 malignant), ``patient_id`` (case name ``A_0001_1``), ``view``, ``laterality`` (``L``/``R``),
    ``rows``, ``cols``, ``category`` and ``findings`` (per abnormality dicts); ``mask`` ``(N, rows, cols)``
    when ``with_masks``. ``lesion_types`` filters abnormalities (``None`` keeps all; default masses).
    """
    items = []
    for case_dir in find_ddsm_cases(root):
        ics_files = sorted(case_dir.glob("*.ics"))
        ics = ics_files[0]
        views = read_ics_views(ics)
        case = ics.stem.replace("-", "_")  # A-0001-1 -> A_0001_1
        for view, info in sorted(views.items()):
            image = _find(case_dir, f"{case}.{view}", "LJPEG")
            if image is None:
                if require_images:
                    raise CadpipeInputError(case_dir / f"{case}.{view}.LJPEG", "LJPEG listed in the .ics is missing")
                continue
            overlay = _find(case_dir, f"{case}.{view}", "OVERLAY")
            size = (info["rows"], info["cols"])
            abns = parse_overlay(overlay, size=size) if overlay is not None else []
            boxes, labels, findings, masks = [], [], [], []
            for a in abns:
                types = {t.get("LESION_TYPE") for t in a.lesion_types}
                if lesion_types is not None and not (types & set(lesion_types)):
                    continue
                if a.pathology not in PATHOLOGY_LABELS:
                    raise CadpipeInputError(overlay, f"line {a.line}: unknown PATHOLOGY {a.pathology!r}")
                o = a.boundary
                pts = chain_to_points(o.start_col, o.start_row, o.chain, path=overlay, line=o.line, size=size)
                boxes.append(outline_box(pts))
                labels.append(PATHOLOGY_LABELS[a.pathology])
                if with_masks:
                    masks.append(outline_mask(pts, *size))
                first = a.lesion_types[0] if a.lesion_types else {}
                findings.append(
                    {
                        "abnormality": a.index,
                        "lesion_type": "/".join(sorted(t for t in types if t)),
                        "shape": first.get("SHAPE"),
                        "margins": first.get("MARGINS"),
                        "calc_type": first.get("TYPE"),
                        "distribution": first.get("DISTRIBUTION"),
                        "assessment": a.assessment,
                        "subtlety": a.subtlety,
                        "pathology": a.pathology,
                    }
                )
            item = {
                "image": str(image),
                "box": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                "label": np.asarray(labels, dtype=np.int64),
                "patient_id": case,
                "view": view,
                "laterality": view[0],
                "rows": info["rows"],
                "cols": info["cols"],
                "category": _category(case_dir),
                "overlay": str(overlay) if overlay is not None else "",
                "findings": findings,
            }
            if with_masks:
                item["mask"] = np.asarray(masks, dtype=bool).reshape(-1, *size)
            items.append(item)
    return items


def split_by_patient(
    datalist: list[dict], fractions=(0.8, 0.1, 0.1), seed: int = 0, key: str = "patient_id"
) -> list[list[dict]]:
    """Seeded split into ``len(fractions)`` parts with every patient's images in one part only."""
    patients = sorted({d[key] for d in datalist})
    random.Random(seed).shuffle(patients)
    total = float(sum(fractions))
    bounds, acc = [], 0.0
    for f in fractions:
        acc += f / total
        bounds.append(int(round(acc * len(patients))))
    part_of = {}
    start = 0
    for k, end in enumerate(bounds):
        for p in patients[start:end]:
            part_of[p] = k
        start = end
    parts: list[list[dict]] = [[] for _ in fractions]
    for d in datalist:
        parts[part_of[d[key]]].append(d)
    return parts

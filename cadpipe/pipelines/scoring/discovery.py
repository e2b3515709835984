"""Find the scoreable units (one image or one volume each) in a folder of studies.

A *unit* is what one forward pass of a bundle scores:

- DICOM files anywhere under the input (any names, nested, no extension) are grouped by
  StudyInstanceUID / SeriesInstanceUID from their headers (one header read per file; the pixel data is not
  read). For 2D bundles
  every DICOM file (instance) is one unit; for 3D bundles every series is one unit (volume).
- Volumes: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) and ITK MetaImage (``.mha``, ``.mhd``; the
  ``.raw``/``.zraw`` data file beside an ``.mhd`` is not a unit): one unit each.
- DDSM case folders (a ``.ics`` file beside ``.LJPEG`` files): one unit per view (LJPEG file).
- Plain image files (JPEG / PNG / TIFF): one unit each.
- ``--manifest file.csv`` with a ``path`` column and an optional ``study_id`` column lists the units instead.

Files that are not images (reports, ``DICOMDIR``, ``.txt``, hidden files, readable DICOM files without pixel
data such as RT plans, whatever their names) are skipped silently. A file with an
image suffix that later fails to load becomes an error row in scoring, not a discovery failure.

Ground-truth masks / label maps are not studies and are skipped silently (:func:`is_ground_truth`), so a dataset
folder in its published layout (LGG ``*_mask.tif`` beside each slice, MSD ``labelsTr/``) can be scored as is:

- a file whose name without its image suffix ends with ``_mask``, ``_seg``, ``_label`` or ``_labels``
  (case-insensitive; e.g. ``TCGA_CS_4941_19960909_11_mask.tif``, ``BraTS_001_seg.nii.gz``, ``x_label.png``,
  and cadpipe's own ``*_mask.nii.gz`` / ``*_seg.dcm`` outputs), and 3D Slicer segmentations ``*.seg.nrrd``;
- any file under a folder named (case-insensitive) ``mask``, ``masks``, ``ManualMask``, ``label``, ``labels``,
  ``labelsTr``, ``labelsTs``, ``segmentation``, ``segmentations`` or ``ground_truth``;
- DICOM objects that are not images: Modality ``SEG``, ``RTSTRUCT``, ``SR``, ``PR``, ``KO``, ``REG``.

``discover(..., skip_ground_truth=False)`` scores them all. A manifest lists units explicitly: no rule applies.

Hostile or odd input becomes a unit with ``error`` set (an error row naming the file and the reason, nothing
loaded): symbolic links leaving the input folder (followed only with ``follow_links=True``, ``--follow-links``),
link loops, dangling links, unreadable files, files named like DICOM that are not (decided from the ``DICM``
preamble or a bounded header read, :mod:`cadpipe.transforms.readers.dicom_probe`, so a gigabyte of junk is rejected
in seconds). Any other exception raised while one file or one series is looked at also becomes that unit's error
row (:func:`unexpected_reason`): one input never ends discovery. Output names are unique per unit
(:mod:`cadpipe.pipelines.outputs.output_names`).
"""

from __future__ import annotations

import csv
import errno
import os
from dataclasses import asdict, dataclass, field

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.output_names import assign_output_names, safe_name
from cadpipe.transforms.readers.dicom_probe import read_dicom_header
from cadpipe.transforms.readers.file_checks import os_error_reason
from cadpipe.transforms.readers.io_any import VOLUME_FORMATS, VOLUME_SUFFIXES, detect_format, volume_suffix

__all__ = ["Unit", "discover", "read_manifest", "safe_name", "is_ground_truth", "unexpected_reason"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LJPEG_SUFFIX = ".ljpeg"
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# Suffixes that are never images: skipped without opening the file.
SKIP_SUFFIXES = (
    ".txt", ".csv", ".json", ".xml", ".html", ".htm", ".pdf", ".md", ".doc", ".docx", ".rtf", ".log", ".ics",
    ".overlay", ".zip", ".gz", ".py", ".yaml", ".yml", ".ini", ".cfg", ".parquet", ".pt", ".ts", ".sqlite",
    ".raw", ".zraw",  # the data files of MetaImage .mhd / NRRD .nhdr headers
)
SKIP_NAMES = {"DICOMDIR", "LOCKFILE", "VERSION", "Thumbs.db"}
# Ground truth (see the module docstring): stem endings, folder names (lower case), non-image DICOM modalities.
GROUND_TRUTH_STEM_ENDINGS = ("_mask", "_seg", "_label", "_labels")
GROUND_TRUTH_FOLDERS = {"mask", "masks", "manualmask", "label", "labels", "labelstr", "labelsts", "segmentation",
                        "segmentations", "ground_truth"}
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "REG"}


@dataclass
class Unit:
    """One scoreable image or volume.

    ``image`` is what goes into the bundle's preprocessing as ``{"image": ...}`` (a file path, or a folder holding
    exactly one DICOM series). ``paths`` lists every source file. ``dicom_files`` is set for DICOM input (for
    DICOM SEG references). ``patient`` holds identifiers for the user's report only (never logged).
    """

    unit_id: str
    study_id: str
    series_id: str
    kind: str  # dicom | nifti | nrrd | metaimage | ljpeg | image
    image: str
    paths: list[str] = field(default_factory=list)
    dicom_files: list[str] = field(default_factory=list)
    patient: dict = field(default_factory=dict)
    error: str = ""  # set: not loaded, scored as an error row with this reason (links leaving the input...)
    out_study: str = ""  # output folder / file names, unique (cadpipe.pipelines.outputs.output_names)
    out_series: str = ""
    out_prefix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def unexpected_reason(err: BaseException) -> str:
    """The reason of an error row for an exception nobody expected from one input (its type and message, cut
    short; an OS error's reason in words)."""
    if isinstance(err, CadpipeInputError):
        return err.reason
    if isinstance(err, OSError):
        return os_error_reason(err)
    return f"could not be read ({type(err).__name__}: {str(err).strip()[:300]})"


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split(os.sep))


def _lower_suffix(name: str) -> str:
    low = name.lower()
    return volume_suffix(low) or os.path.splitext(low)[1]


def is_ground_truth(rel_path: str) -> bool:
    """True for a ground-truth mask / label file by its path relative to the input root (module docstring rule:
    stem ending ``_mask``/``_seg``/``_label``/``_labels``, or a ``masks``/``ManualMask``/``labelsTr``/... folder)."""
    parts = rel_path.replace("\\", "/").split("/")
    if any(p.lower() in GROUND_TRUTH_FOLDERS for p in parts[:-1]):
        return True
    name = parts[-1]
    if name.lower().endswith(".seg.nrrd"):  # a 3D Slicer segmentation
        return True
    suffix = _lower_suffix(name)
    stem = (name[: -len(suffix)] if suffix else name).lower()
    return stem.endswith(GROUND_TRUTH_STEM_ENDINGS)


def _detect(path: str) -> str | None:
    """Format of ``path`` (``dicom``/``nifti``/``nrrd``/``metaimage``/``ljpeg``/``image``) or None for non-images.

    Suffix first (cheap), then ``cadpipe.transforms.readers.io_any.detect_format`` for files without a telling suffix.
    """
    name = os.path.basename(path)
    if name in SKIP_NAMES:
        return None
    suffix = _lower_suffix(name)
    if suffix in VOLUME_SUFFIXES:
        return VOLUME_SUFFIXES[suffix]
    if suffix == LJPEG_SUFFIX:
        return "ljpeg"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in DICOM_SUFFIXES:
        return "dicom"  # named like DICOM: a load failure is an error row, not a silent skip
    if suffix in SKIP_SUFFIXES:
        return None
    with open(path, "rb"):  # an unreadable file raises OSError here: the caller reports why (not a silent skip)
        pass
    # content sniffing: DICOM without extension, non-images -> None; a DICOM file's pixel data is checked with its
    # header (_dicom_header), one read per file
    fmt = detect_format(path, check_dicom_pixels=False)
    return fmt if fmt in ("dicom", "ljpeg", "image", *VOLUME_FORMATS) else None


# the header fields discovery keeps per file (identifiers, and the report header's patient/study fields)
_PATIENT_KEYWORDS = ("PatientID", "PatientName", "StudyDate", "AccessionNumber", "Modality", "StudyInstanceUID",
                     "PatientSex", "PatientAge", "PatientBirthDate", "StudyDescription", "BodyPartExamined",
                     "ViewPosition", "ImageLaterality", "Laterality", "SeriesInstanceUID", "SOPInstanceUID")
_HEADER_KEYWORDS = (*_PATIENT_KEYWORDS, "InstanceNumber")


def _dicom_header(path: str) -> dict | str:
    """Identifiers of one DICOM file and whether it has pixel data (bounded header read of the fields kept, pixel
    data never read); the reason when it is not a readable DICOM file."""
    try:
        header = read_dicom_header(path, keywords=_HEADER_KEYWORDS)
    except CadpipeInputError as err:
        return err.reason
    get = header.get
    return {
        "pixels": header.has_pixels,
        "modality": get("Modality").upper(),
        "study": get("StudyInstanceUID"),
        "series": get("SeriesInstanceUID"),
        "sop": get("SOPInstanceUID"),
        "instance": header.get_int("InstanceNumber"),  # malformed: 0, ordered by path
        # the report header and technical details (cadpipe.pipelines.outputs.patient_header)
        "patient": {k: get(k) for k in _PATIENT_KEYWORDS},
    }


def _file_study(root: str, path: str) -> tuple[str, str]:
    """Study id / series id of a non-DICOM file: its first folder under the input root, and its stem."""
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)
    base = os.path.basename(path)
    stem = base[: -len(_lower_suffix(base))] if _lower_suffix(base) else base
    if len(parts) <= 1:
        return stem, stem
    inner = "_".join(parts[1:])
    return parts[0], inner[: -len(_lower_suffix(base))] if _lower_suffix(base) else inner


def _link_problem(path: str, real_root: str, follow_links: bool) -> str | None:
    """Why a file/folder (a symbolic link, or under one) is not scored, or None when it may be."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ENOENT and os.path.islink(path):
            return "broken symbolic link (its target does not exist)"
        return os_error_reason(err)
    if follow_links:
        return None
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return "symbolic link to a file outside the input folder (not followed; --follow-links follows it)"
    return None


def _walk(root: str, follow_links: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """Files under ``root`` (sorted, hidden ones skipped) and ``(path, reason)`` for links that leave it."""
    files: list[str] = []
    refused: list[tuple[str, str]] = []
    real_root = os.path.realpath(root)
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        real = os.path.realpath(dirpath)
        if real in visited:  # a folder reached twice through links (or a link loop): once is enough
            dirnames[:] = []
            continue
        visited.add(real)
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                problem = _link_problem(full, real_root, follow_links)
                if problem:
                    refused.append((full, problem.replace("a file outside", "a folder outside")))
                    continue
                if not follow_links:
                    continue  # a link to a folder inside the input: its files are found under their real path
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            full = os.path.join(dirpath, f)
            problem = _link_problem(full, real_root, follow_links) if os.path.islink(full) else None
            if problem:
                refused.append((full, problem))
            else:
                files.append(full)
    return files, refused


def _add_file(path: str, root: str, units: list[Unit], dicom: dict, skip_ground_truth: bool) -> None:
    """The unit of one file (appended to ``units``; DICOM images to ``dicom`` by study and series), an error
    unit with the reason, or nothing (not an image, ground truth, hidden)."""
    rel = os.path.relpath(path, root)
    if _is_hidden(rel) or (skip_ground_truth and is_ground_truth(rel if rel != "." else os.path.basename(path))):
        return
    try:
        fmt = _detect(path)
    except OSError as err:  # cannot be opened to look at its content: say why
        study, stem = _file_study(root, path)
        units.append(Unit(os.path.relpath(path, root), study, stem, "error", path, [path],
                          error=os_error_reason(err)))
        return
    if fmt is None:
        return
    if fmt == "dicom":
        header = _dicom_header(path)
        if isinstance(header, str):  # named .dcm but not DICOM / broken header: an error row, nothing loaded
            study, stem = _file_study(root, path)
            units.append(Unit(os.path.relpath(path, root), study, stem, "dicom", path, [path], [path],
                              error=header))
            return
        if not header["pixels"] and header["study"]:
            return  # a readable DICOM object without an image (RT plan, SR...)
        if skip_ground_truth and header["modality"] in NON_IMAGE_MODALITIES:
            return
        if not header["study"] or not header["series"]:
            # a DICOM image without study/series UIDs: scored as one unit (the loader decides)
            study, stem = _file_study(root, path)
            units.append(Unit(os.path.relpath(path, root), study, stem, "dicom", path, [path], [path]))
            return
        dicom.setdefault((header["study"], header["series"]), []).append((header, path))
    elif fmt == "ljpeg":
        case_dir = os.path.dirname(path)
        study = os.path.basename(case_dir) if case_dir != root else _file_study(root, path)[0]
        base = os.path.basename(path)
        view = base.split(".")[-2] if base.count(".") >= 2 else os.path.splitext(base)[0]
        ics = [os.path.join(case_dir, f) for f in sorted(os.listdir(case_dir)) if f.lower().endswith(".ics")]
        units.append(Unit(os.path.relpath(path, root), study, view, "ljpeg", path, [path] + ics[:1]))
    else:
        study, stem = _file_study(root, path)
        units.append(Unit(os.path.relpath(path, root), study, stem, fmt, path, [path]))


def _series_units(study: str, series: str, members: list[tuple[dict, str]], root: str, spatial_dims: int,
                  series_dir: str | None) -> list[Unit]:
    """The units of one DICOM series: one per instance (2D), or the series as one volume (3D; a folder of links
    when its files do not sit alone in one folder)."""
    members.sort(key=lambda hp: (hp[0]["instance"], hp[1]))
    patient = members[0][0]["patient"]
    if spatial_dims == 2:
        return [Unit(header["sop"] or os.path.relpath(path, root), study, series, "dicom", path, [path], [path],
                     patient) for header, path in members]
    paths = [p for _, p in members]
    folders = {os.path.dirname(p) for p in paths}
    image = None
    if len(folders) == 1:
        folder = folders.pop()
        # the folder may be used as a series folder only if it holds nothing but this series' images
        siblings = [os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith(".")]
        siblings = [s for s in siblings if os.path.isfile(s) and _detect(s) is not None]
        if sorted(siblings) == sorted(paths):
            image = folder
    if image is None:
        base = series_dir or _tmp_series_root()
        image = os.path.join(base, safe_name(series))
        os.makedirs(image, exist_ok=True)
        for i, p in enumerate(paths):
            link = os.path.join(image, f"{i:05d}.dcm")
            if not os.path.lexists(link):
                os.symlink(p, link)
    return [Unit(series, study, series, "dicom", image, paths, paths, patient)]


def discover(root: str, spatial_dims: int = 2, series_dir: str | None = None,
             skip_ground_truth: bool = True, follow_links: bool = False) -> list[Unit]:
    """All units under ``root`` (a folder, or one file), sorted by (study, series, unit id).

    Args:
        root: input folder (or a single file).
        spatial_dims: the bundle's ``cadpipe.spatial_dims``; 2 → one unit per DICOM file, 3 → one per series.
        series_dir: where to make folders of symlinks for DICOM series whose files do not sit alone in one
            folder (3D only); defaults to a temporary folder.
        skip_ground_truth: skip ground-truth masks/label maps and non-image DICOM objects (module docstring).
        follow_links: follow symbolic links that leave ``root`` (default: such links become error units).

    Raises:
        CadpipeInputError: ``root`` does not exist.
    """
    root = os.path.abspath(root)
    if not os.path.exists(root):
        raise CadpipeInputError(root, "input does not exist")
    files: list[str] = []
    units: list[Unit] = []
    if os.path.isfile(root):
        files = [root]
        root = os.path.dirname(root)
    else:
        files, refused = _walk(root, follow_links)
        for path, reason in refused:
            study, stem = _file_study(root, path)
            units.append(Unit(os.path.relpath(path, root), study, stem, "error", path, [path], error=reason))

    dicom: dict[tuple[str, str], list[tuple[dict, str]]] = {}
    for path in files:
        try:
            _add_file(path, root, units, dicom, skip_ground_truth)
        except Exception as err:  # noqa: BLE001 - one file never ends discovery: its error row says why
            study, stem = _file_study(root, path)
            units.append(Unit(os.path.relpath(path, root), study, stem, "error", path, [path],
                              error=unexpected_reason(err)))

    for (study, series), members in dicom.items():
        try:
            units += _series_units(study, series, members, root, spatial_dims, series_dir)
        except Exception as err:  # noqa: BLE001 - one series never ends discovery: its error row says why
            paths = [p for _, p in members]
            units.append(Unit(series, study, series, "error", paths[0], paths, error=unexpected_reason(err)))

    units.sort(key=lambda u: (u.study_id, u.series_id, u.unit_id))
    seen: set[str] = set()
    for u in units:  # unit ids must be unique (the journal keys on them)
        if u.unit_id in seen:
            u.unit_id = f"{u.unit_id}#{os.path.relpath(u.paths[0], root)}"
        seen.add(u.unit_id)
    assign_output_names(units)
    return units


_TMP_SERIES: list[str] = []


def _tmp_series_root() -> str:
    import tempfile

    if not _TMP_SERIES:
        _TMP_SERIES.append(tempfile.mkdtemp(prefix="cadpipe_series_"))
    return _TMP_SERIES[0]


def read_manifest(manifest: str, spatial_dims: int = 2, series_dir: str | None = None) -> list[Unit]:
    """Units from a CSV with a ``path`` column (file or series folder, relative to the CSV) and optional
    ``study_id`` / ``series_id`` columns.

    Raises:
        CadpipeInputError: missing file, no ``path`` column, or a listed path that does not exist.
    """
    if not os.path.isfile(manifest):
        raise CadpipeInputError(manifest, "manifest file does not exist")
    base = os.path.dirname(os.path.abspath(manifest))
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise CadpipeInputError(manifest, "manifest needs a 'path' column and at least one row")
    units: list[Unit] = []
    for i, row in enumerate(rows, start=2):
        path = os.path.join(base, row["path"]) if not os.path.isabs(row["path"]) else row["path"]
        if not os.path.exists(path):
            raise CadpipeInputError(manifest, f"line {i}: listed path {row['path']!r} does not exist")
        if os.path.isdir(path):
            found = discover(path, spatial_dims, series_dir)
        else:
            fmt = _detect(path) or "image"
            study, stem = _file_study(base, path)
            found = [Unit(os.path.relpath(path, base), study, stem, fmt, path, [path],
                          [path] if fmt == "dicom" else [])]
            if fmt == "dicom":
                try:
                    header = _dicom_header(path)
                except Exception as err:  # noqa: BLE001 - an error row, not the end of the run
                    header = unexpected_reason(err)
                if isinstance(header, str):
                    found[0].error = header
                else:
                    found[0].series_id, found[0].patient = header["series"] or stem, header["patient"]
        for u in found:
            if row.get("study_id"):
                u.study_id = row["study_id"]
            if row.get("series_id"):
                u.series_id = row["series_id"]
            u.unit_id = f"{row['path']}::{u.unit_id}" if os.path.isdir(path) else u.unit_id
            units.append(u)
    assign_output_names(units)
    return units

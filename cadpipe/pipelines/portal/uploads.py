"""Upload checks for the portal: file type whitelist, content sniffing, size/count limits, generated file names.

Uploaded file names are never used as paths. Each accepted file is stored in the job's ``input/`` folder under a
generated name (``f000.png``, ``f001.dcm``...) that keeps only a whitelisted extension. DDSM ``.LJPEG`` files are
the one exception to "generated": the LJPEG reader needs the case/view encoded in the name
(``A_1234_1.LEFT_CC.LJPEG`` beside ``A-1234-1.ics``), so their stored name is rebuilt from the fields of
:func:`cadpipe.transforms.readers.io_ljpeg.parse_ljpeg_filename` (letters and digits that matched its pattern), never
copied from the upload.

Every rejection is an :class:`UploadRejected` (a :class:`~cadpipe.errors.CadpipeInputError` whose ``path`` is the
uploaded file's name as the user sees it, plus an HTTP status code).
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass, field
from typing import BinaryIO

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.private_files import make_private_dirs, open_private

__all__ = ["UploadLimits", "UploadRejected", "StoredFile", "ACCEPTED_SUFFIXES", "suffix_of", "check_upload_set",
           "store_upload", "sniff_kind", "ljpeg_stored_names"]

# suffix -> kind. ".ics" is the DDSM case header that goes with .LJPEG files.
ACCEPTED_SUFFIXES: dict[str, str] = {
    ".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom", "": "dicom",
    ".ljpeg": "ljpeg", ".ics": "ics",
    ".nii": "nifti", ".nii.gz": "nifti",
    ".nrrd": "nrrd", ".mha": "metaimage",  # one-file volumes (a detached .nhdr/.mhd header needs its data file)
    ".png": "image", ".jpg": "image", ".jpeg": "image", ".tif": "image", ".tiff": "image",
}
_IMAGE_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",),
                ".tif": (b"II*\x00", b"MM\x00*"), ".tiff": (b"II*\x00", b"MM\x00*")}
CHUNK = 1 << 20


class UploadRejected(CadpipeInputError):
    """An upload the portal refuses; ``str(err) == "<uploaded name>: <reason>"``; ``status`` is the HTTP code."""

    def __init__(self, name: str, reason: str, status: int = 415):
        super().__init__(name, reason)
        self.status = status

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.status))


@dataclass
class UploadLimits:
    max_files: int = 20
    max_file_mb: float = 256.0
    max_total_mb: float = 512.0

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    @property
    def max_total_bytes(self) -> int:
        return int(self.max_total_mb * 1024 * 1024)


@dataclass
class StoredFile:
    original: str  # the uploaded name (shown back to the uploader only, never logged, never a path)
    stored: str  # absolute path of the stored copy
    kind: str  # dicom | ljpeg | ics | nifti | nrrd | metaimage | image
    size: int
    info: dict = field(default_factory=dict)


def suffix_of(name: str) -> str:
    """Lower-case suffix, ``.nii.gz`` as one; ``""`` when the name has none (DICOM files often have none)."""
    base = os.path.basename(name.replace("\\", "/")).lower()
    if base.endswith(".nii.gz"):
        return ".nii.gz"
    stem, ext = os.path.splitext(base)
    return ext if stem else ""


def _accepted_text() -> str:
    return ("DICOM (.dcm or no extension), DDSM .LJPEG + its .ics, NIfTI (.nii/.nii.gz), NRRD (.nrrd), MetaImage "
            "(.mha), JPEG, PNG, TIFF")


def check_upload_set(names: list[str], limits: UploadLimits) -> None:
    """Checks that need only the names: count, whitelisted suffixes, LJPEG with its .ics.

    Raises:
        UploadRejected: 413 too many files; 415 a file type not accepted; 400 an LJPEG without its case .ics.
    """
    if not names:
        raise UploadRejected("", "no file was uploaded", 400)
    if len(names) > limits.max_files:
        raise UploadRejected(names[limits.max_files], f"too many files: {len(names)} (at most {limits.max_files})",
                             413)
    for name in names:
        if suffix_of(name) not in ACCEPTED_SUFFIXES:
            raise UploadRejected(name, f"file type {suffix_of(name)!r} is not accepted; accepted: {_accepted_text()}")
    kinds = [ACCEPTED_SUFFIXES[suffix_of(n)] for n in names]
    if "ljpeg" in kinds and "ics" not in kinds:
        name = names[kinds.index("ljpeg")]
        raise UploadRejected(name, "an LJPEG needs its case .ics file: select the .ics together with the .LJPEG "
                                   "(the true image size is in the .ics)", 400)
    if "ics" in kinds and "ljpeg" not in kinds:
        raise UploadRejected(names[kinds.index("ics")], "a .ics file alone is not an image: add the case's .LJPEG files",
                             400)


def sniff_kind(name: str, head: bytes) -> str:
    """The kind of an uploaded file from its suffix, checked against its first bytes.

    Raises:
        UploadRejected: the content does not match the suffix (415), or the file is empty (400).
    """
    suffix = suffix_of(name)
    kind = ACCEPTED_SUFFIXES.get(suffix)
    if kind is None:
        raise UploadRejected(name, f"file type {suffix!r} is not accepted; accepted: {_accepted_text()}")
    if not head:
        raise UploadRejected(name, "the file is empty", 400)
    if kind == "image":
        if not any(head.startswith(m) for m in _IMAGE_MAGIC[suffix]):
            raise UploadRejected(name, f"not a {suffix[1:].upper()} image (the content does not match the "
                                       "extension)")
    elif kind == "dicom":
        is_dicm = len(head) >= 132 and head[128:132] == b"DICM"
        if suffix == "" and not is_dicm:
            raise UploadRejected(name, "a file without extension must be DICOM (no DICM marker found); accepted: "
                                       + _accepted_text())
        # .dcm without a preamble may still be DICOM (old files): the loader decides and reports it by name
    elif kind == "nifti":
        if suffix == ".nii.gz":
            if not head.startswith(b"\x1f\x8b"):
                raise UploadRejected(name, "not a gzip-compressed NIfTI file")
            try:
                import io

                head = gzip.GzipFile(fileobj=io.BytesIO(head)).read(348)
            except (OSError, EOFError):
                head = b""  # the first bytes alone may not decompress; the loader checks the rest
        if head and len(head) >= 4 and int.from_bytes(head[:4], "little") not in (348, 540) \
                and int.from_bytes(head[:4], "big") not in (348, 540):
            raise UploadRejected(name, "not a NIfTI file (bad header size)")
    elif kind == "nrrd":
        if not head.startswith(b"NRRD000"):
            raise UploadRejected(name, "not an NRRD file (no NRRD magic line)")
    elif kind == "metaimage":
        if not re.match(rb"\s*(ObjectType|NDims|Comment|ObjectSubType|TransformType)\s*=", head):
            raise UploadRejected(name, "not a MetaImage file (no 'ObjectType = ...' / 'NDims = ...' header)")
    elif kind == "ljpeg":
        if not head.startswith(b"\xff\xd8"):
            raise UploadRejected(name, "not an LJPEG file (no JPEG start-of-image marker)")
    elif kind == "ics":
        if b"\x00" in head:
            raise UploadRejected(name, "not a DDSM .ics file (binary content)")
    return kind


def ljpeg_stored_names(name: str) -> tuple[str, str]:
    """Stored names for an LJPEG and its case .ics, rebuilt from the DDSM pattern's fields."""
    from cadpipe.transforms.readers.io_ljpeg import parse_ljpeg_filename

    try:
        p = parse_ljpeg_filename(os.path.basename(name.replace("\\", "/")))
    except CadpipeInputError as err:
        raise UploadRejected(name, err.reason, 400) from err
    return f"{p['prefix']}_{p['number']}_{p['sequence']}.{p['ddsm_view']}.LJPEG", \
        f"{p['prefix']}-{p['number']}-{p['sequence']}.ics"


def store_upload(name: str, stream: BinaryIO, folder: str, index: int, limits: UploadLimits,
                 total_so_far: int = 0, ics_name: str | None = None) -> StoredFile:
    """Copy one upload into ``folder`` under a generated name, enforcing the size limits while copying.

    Args:
        name: the uploaded file name (used for the suffix and in messages only).
        stream: the upload's file object.
        index: position in the upload (makes the generated name).
        ics_name: the stored name the case ``.ics`` must get (from the LJPEG beside it).

    Raises:
        UploadRejected: oversize (413), empty or wrong content (400/415).
    """
    head = stream.read(512)
    kind = sniff_kind(name, head)
    suffix = suffix_of(name)
    if kind == "ljpeg":
        stored_name = ljpeg_stored_names(name)[0]
    elif kind == "ics":
        stored_name = ics_name or "case.ics"
    else:
        stored_name = f"f{index:03d}{suffix or '.dcm'}"
    make_private_dirs(folder, under=os.path.dirname(folder))  # the job's folder and its input: patient data,
    # 0700 folders and 0600 files (docs/security.md)
    path = os.path.join(folder, stored_name)
    if os.path.exists(path):
        raise UploadRejected(name, "the same DDSM view was uploaded twice", 400)
    size = 0
    try:
        with open_private(path) as out:
            chunk = head
            while chunk:
                size += len(chunk)
                if size > limits.max_file_bytes:
                    raise UploadRejected(name, f"file is larger than the limit of {limits.max_file_mb:g} MB", 413)
                if total_so_far + size > limits.max_total_bytes:
                    raise UploadRejected(name, f"upload is larger than the limit of {limits.max_total_mb:g} MB in "
                                               "total", 413)
                out.write(chunk)
                chunk = stream.read(CHUNK)
    except BaseException:
        if os.path.exists(path):
            os.remove(path)
        raise
    return StoredFile(name, path, kind, size)

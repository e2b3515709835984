"""Hostile and odd inputs for the hardening tests and the memory benchmark (every file name says ``synthetic``
where the name is free to choose; names under test — collisions, formulas — are the point and stay as given).

- :func:`write_png_bomb` — a small PNG whose header declares a huge image (``complete=True``: a valid PNG of
  zeros, ~1/1000 of its decoded size; else only the header and a stub of data, enough to trip the guard);
- :func:`write_dicom_bomb` — a DICOM header declaring ``rows x cols x frames`` with a few bytes of pixel data;
- :func:`write_nifti_bomb` — a NIfTI header declaring a huge volume (no voxel data);
- :func:`write_sparse_file` — a sparse file of any size (zeros, no disk blocks), e.g. ``big.dcm``;
- :func:`write_large_dicom` — a valid DICOM file whose pixel data really is ``megabytes`` long (written in chunks,
  never held in memory), for receive-side size limits;
- :func:`write_long_header_dicom` — a valid DICOM image whose StudyDescription, PatientName and Series Instance
  UID are over 1 KiB long (values a bounded header read defers);
- :func:`write_hostile_corpus` — all of the above beside valid studies in one folder, with what is expected.
"""

from __future__ import annotations

import os
import struct
import zlib

__all__ = ["write_png_bomb", "write_dicom_bomb", "write_nifti_bomb", "write_sparse_file", "write_large_dicom",
           "write_long_header_dicom", "write_hostile_corpus"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb(path: str | os.PathLike, width: int = 30000, height: int = 30000, complete: bool = False) -> dict:
    """8-bit grey PNG declaring ``width x height``. Returns ``{"path", "bytes", "declared_pixels"}``."""
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        comp = zlib.compressobj(9)
        row = b"\x00" * (width + 1)  # filter byte + pixels
        rows = height if complete else 1
        buf = []
        for _ in range(rows):
            buf.append(comp.compress(row))
            if len(buf) >= 256:
                data = b"".join(buf)
                if data:
                    f.write(_chunk(b"IDAT", data))
                buf = []
        data = b"".join(buf) + comp.flush()
        f.write(_chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return {"path": path, "bytes": os.path.getsize(path), "declared_pixels": width * height}


def write_dicom_bomb(path: str | os.PathLike, rows: int = 30000, cols: int = 30000, frames: int = 1,
                     study_uid: str | None = None) -> dict:
    """A DICOM file (preamble, meta, DX) declaring ``rows x cols x frames`` 16-bit pixels; 16 bytes of them."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path = os.fspath(path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "DX", "SYNTHETIC-BOMB"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = b"\0" * 16
    ds.save_as(path, enforce_file_format=True)
    return {"path": path, "declared_pixels": rows * cols * frames}


def write_nifti_bomb(path: str | os.PathLike, shape=(2048, 2048, 2048)) -> dict:
    """A ``.nii`` header declaring ``shape`` (int16) and no voxel data."""
    import nibabel as nib
    import numpy as np

    path = os.fspath(path)
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352
    with open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)
    n = 1
    for s in shape:
        n *= s
    return {"path": path, "declared_pixels": n}


def write_sparse_file(path: str | os.PathLike, size: int = 1 << 30) -> dict:
    """A file of ``size`` zero bytes that takes no disk space (where the file system supports holes)."""
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.truncate(size)
    return {"path": path, "bytes": size}


def write_large_dicom(path: str | os.PathLike, megabytes: float = 300.0, study_uid: str | None = None) -> dict:
    """A DX file of 16-bit zero pixels, square-ish, whose pixel data is about ``megabytes`` MiB (rows x cols x 2
    bytes, explicit VR little endian), written in 16 MiB chunks. Returns ``{"path", "bytes", "rows", "cols",
    "study_uid", "sop_uid"}``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path = os.fspath(path)
    pixels = int(megabytes * 1024 * 1024) // 2
    cols = 4096
    rows = max(1, pixels // cols)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DX", "SYNTHETIC-LARGE", "SYNTHETIC^LARGE"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.save_as(path, enforce_file_format=True)
    n = rows * cols * 2
    chunk = b"\0" * (16 << 20)
    with open(path, "ab") as f:
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n))
        left = n
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    return {"path": path, "bytes": os.path.getsize(path), "rows": rows, "cols": cols,
            "study_uid": str(ds.StudyInstanceUID), "sop_uid": str(ds.SOPInstanceUID)}


def write_long_header_dicom(path: str | os.PathLike, length: int = 2000, seed: int = 0) -> dict:
    """A synthetic DX image (:func:`~cadpipe.data.synthetic.dicom.write_cxr_dicom`) whose StudyDescription
    (``length`` characters), PatientName and Series Instance UID (both over 1 KiB) are far longer than their VRs
    allow. Returns ``{"path", "study_uid", "series_uid", "length"}``."""
    import warnings

    import pydicom

    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    path = os.fspath(path)
    write_cxr_dicom(path, rows=48, cols=40, seed=seed)
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the lengths: they are the point
        ds.StudyDescription = "SYNTHETIC LONG DESCRIPTION " + "x" * max(0, length - 27)
        ds.PatientName = "Synthetic^" + "L" * 1100
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498." + "1" * 1100
        ds.save_as(path)
    return {"path": path, "study_uid": str(ds.StudyInstanceUID), "series_uid": str(ds.SeriesInstanceUID),
            "length": len(str(ds.StudyDescription))}


def write_hostile_corpus(root: str | os.PathLike, outside: str | os.PathLike, sparse_size: int = 1 << 30,
                         seed: int = 0) -> dict:
    """A study folder mixing valid studies and hostile files; ``outside`` receives files links may point to.

    Returns ``{"valid": [relative paths that must score ok], "bad": {relative path: reason fragment},
    "unreadable": relative path of a ``chmod 000`` file (readable anyway by root)}``.
    """
    from cadpipe.data.synthetic.dicom import write_cxr_dicom
    from cadpipe.data.synthetic.images import write_image

    root, outside = os.fspath(root), os.fspath(outside)
    os.makedirs(root, exist_ok=True)
    os.makedirs(outside, exist_ok=True)
    valid, bad = [], {}

    def rel(p: str) -> str:
        return os.path.relpath(p, root)

    for i in range(2):
        p = os.path.join(root, f"study{i}", f"synthetic_cxr_{i}.png")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        write_image(p, rows=48, cols=40, seed=seed + i)
        valid.append(rel(p))
    d = os.path.join(root, "dicom_study", "synthetic_cxr.dcm")
    os.makedirs(os.path.dirname(d), exist_ok=True)
    write_cxr_dicom(d, rows=48, cols=40, seed=seed)
    valid.append(rel(d))
    # header values over 1 KiB (deferred by the bounded header read): scored like any other image
    valid.append(rel(write_long_header_dicom(os.path.join(root, "dicom_study", "synthetic_long_header.dcm"),
                                             seed=seed + 1)["path"]))
    # colliding names after sanitising, and case-only differences
    for name in ("a b.png", "a_b.png", "A.png", "a.png", "é.png", "è.png"):
        p = os.path.join(root, "collide", name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        write_image(os.path.join(root, "collide", "synthetic_tmp.png"), rows=40, cols=40, seed=seed + len(valid))
        os.replace(os.path.join(root, "collide", "synthetic_tmp.png"), p)
        valid.append(rel(p))
    # names a spreadsheet would run as formulas
    for name in ('=HYPERLINK("evil.example").png', "+1.png", "-1.png", "@SUM(A1).png"):
        p = os.path.join(root, "formulas", name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        write_image(os.path.join(root, "formulas", "synthetic_tmp.png"), rows=40, cols=40, seed=seed + len(valid))
        os.replace(os.path.join(root, "formulas", "synthetic_tmp.png"), p)
        valid.append(rel(p))
    # hostile files
    for folder in ("bombs", "junk"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    bad[rel(write_png_bomb(os.path.join(root, "bombs", "synthetic_bomb.png"))["path"])] = "over the limit"
    bad[rel(write_dicom_bomb(os.path.join(root, "bombs", "synthetic_bomb.dcm"))["path"])] = "over the limit"
    bad[rel(write_sparse_file(os.path.join(root, "junk", "big.dcm"), sparse_size)["path"])] = "not a DICOM file"
    links = os.path.join(root, "links")
    os.makedirs(links, exist_ok=True)
    os.symlink("/etc/passwd", os.path.join(links, "x.dcm"))
    outside_dcm = os.path.join(outside, "synthetic_outside.dcm")
    write_cxr_dicom(outside_dcm, rows=32, cols=32, seed=seed + 7)
    os.symlink(outside_dcm, os.path.join(links, "outside.dcm"))
    os.symlink(os.path.join(links, "loop.dcm"), os.path.join(links, "loop.dcm"))
    bad[rel(os.path.join(links, "x.dcm"))] = "outside the input folder"
    bad[rel(os.path.join(links, "outside.dcm"))] = "outside the input folder"
    bad[rel(os.path.join(links, "loop.dcm"))] = "symbolic link loop"
    locked = os.path.join(root, "locked", "synthetic_locked.png")
    os.makedirs(os.path.dirname(locked), exist_ok=True)
    write_image(locked, rows=40, cols=40, seed=seed + 99)
    os.chmod(locked, 0)
    return {"valid": valid, "bad": bad, "unreadable": rel(locked), "outside_target": outside_dcm}

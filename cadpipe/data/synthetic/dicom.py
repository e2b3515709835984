"""Synthetic DICOM files with known ground truth: chest X-rays (window tags, VOI LUT, MONOCHROME1, compressed
transfer syntaxes) and a CT-like series folder with slope/intercept.

Every file name contains ``synthetic``; PatientName is ``SYNTHETIC^CADPIPE`` and descriptions say SYNTHETIC.
Each writer returns the ground truth (paths, stored pixel arrays, values after the modality LUT, geometry).
Arrays are returned in numpy ``[row, col]`` order (as stored in the file).
"""

from __future__ import annotations

import datetime
import os

import numpy as np

__all__ = [
    "synthetic_cxr_pixels",
    "write_cxr_dicom",
    "write_ct_series",
    "write_unsupported_syntax_dicom",
    "TRANSFER_SYNTAXES",
]

#: short name -> transfer syntax UID
TRANSFER_SYNTAXES = {
    "explicit": "1.2.840.10008.1.2.1",
    "implicit": "1.2.840.10008.1.2",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg_lossless": "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1, encoded with imagecodecs
    "jpegls": "1.2.840.10008.1.2.4.80",
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # J2K lossless-only
}


def synthetic_cxr_pixels(rows: int = 64, cols: int = 48, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A chest-X-ray-like image ``(rows, cols)`` uint16 in ``[0, 2**bits-1]``, brighter = denser (MONOCHROME2)."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float64)
    r, c = r / max(rows - 1, 1), c / max(cols - 1, 1)
    img = 0.75 - 0.25 * np.abs(c - 0.5)  # body
    for cx in (0.3, 0.7):  # lungs: dark
        lung = ((c - cx) / 0.17) ** 2 + ((r - 0.5) / 0.33) ** 2 < 1
        img[lung] -= 0.45
    heart = ((c - 0.55) / 0.13) ** 2 + ((r - 0.65) / 0.15) ** 2 < 1
    img[heart] += 0.25
    img += rng.normal(0, 0.02, img.shape)
    top = 2**bits - 1
    return np.clip(np.round(img * top), 0, top).astype(np.uint16)


def _uid(rng) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(rng.integers(0, 2**62))])


def _base_dataset(sop_class: str, modality: str, rng, study_uid: str | None = None, series_uid: str | None = None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(rng)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.PatientName = "SYNTHETIC^CADPIPE"
    ds.PatientID = f"SYNTHETIC-{rng.integers(0, 10**6):06d}"
    ds.StudyInstanceUID = study_uid or _uid(rng)
    ds.SeriesInstanceUID = series_uid or _uid(rng)
    ds.StudyDescription = "SYNTHETIC cadpipe study"
    ds.SeriesDescription = "SYNTHETIC cadpipe series"
    ds.Modality = modality
    ds.StudyDate = datetime.date(2020, 1, 1).strftime("%Y%m%d")
    ds.SeriesNumber = 1
    return ds


def _set_pixels(ds, pixels: np.ndarray, bits: int, signed: bool, transfer_syntax: str, path: str) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    dtype = (np.int16 if signed else np.uint16) if bits > 8 else np.uint8
    arr = np.ascontiguousarray(pixels.astype(dtype))
    uid = UID(TRANSFER_SYNTAXES.get(transfer_syntax, transfer_syntax))
    ds.file_meta.TransferSyntaxUID = TRANSFER_SYNTAXES["explicit"]
    ds.PixelData = arr.tobytes()
    if uid == TRANSFER_SYNTAXES["jpeg_lossless"]:
        import imagecodecs

        if signed:
            raise ValueError("jpeg_lossless synthetic writer supports unsigned data only")
        frame = imagecodecs.ljpeg_encode(arr, bitspersample=bits)
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
    elif uid.is_compressed:
        ds.compress(uid, arr)
    else:
        ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(path, enforce_file_format=True)


def write_cxr_dicom(
    path: str | os.PathLike,
    rows: int = 64,
    cols: int = 48,
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    windows: list[tuple[float, float]] | None = None,
    voi_lut: bool = False,
    voi_function: str | None = None,
    transfer_syntax: str = "explicit",
    laterality: str = "",
    view: str = "PA",
    pixel_spacing: float = 0.2,
    seed: int = 0,
    display: np.ndarray | None = None,
) -> dict:
    """Write a synthetic DX chest X-ray (``display``: its picture, ``(rows, cols)`` brightness in ``[0, 2**bits-1]``,
    higher = brighter; default :func:`synthetic_cxr_pixels`).

    Returns ``{"path", "pixels" (stored, rows x cols), "display" (brightness,
    higher = brighter), "windows", "photometric", "transfer_syntax"}``.

    For ``MONOCHROME1`` the stored values are ``2**bits - 1 - display`` (higher stored = darker), and the window
    centres are mirrored likewise, so a viewer shows the same picture as the MONOCHROME2 version.
    ``voi_lut=True`` adds a VOI LUT Sequence (a gamma curve over the full stored range, 16-bit entries).
    """
    rng = np.random.default_rng(seed)
    path = os.fspath(path)
    if "synthetic" not in os.path.basename(path).lower():
        raise ValueError(f"synthetic file names must contain 'synthetic': {path}")
    if display is None:
        display = synthetic_cxr_pixels(rows, cols, bits, seed)
    display = np.asarray(display).astype(np.uint16)
    top = 2**bits - 1
    windows = list(windows) if windows is not None else [(top / 2.0, top * 0.8), (top * 0.4, top * 0.5)]
    pixels = display.copy()
    if photometric == "MONOCHROME1":
        pixels = (top - display).astype(np.uint16)
        stored_windows = [(top - c + 1.0, w) for c, w in windows]  # LINEAR ramp centre is c - 0.5
    else:
        stored_windows = windows
    ds = _base_dataset("1.2.840.10008.5.1.4.1.1.1.1", "DX", rng)  # Digital X-Ray Image Storage - Presentation
    ds.PhotometricInterpretation = photometric
    ds.ImagerPixelSpacing = [pixel_spacing, pixel_spacing]
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.ViewPosition = view
    ds.ImageLaterality = laterality
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
    if stored_windows:
        ds.WindowCenter = [float(c) for c, _ in stored_windows] if len(stored_windows) > 1 else float(stored_windows[0][0])
        ds.WindowWidth = [float(w) for _, w in stored_windows] if len(stored_windows) > 1 else float(stored_windows[0][1])
    if voi_function:
        ds.VOILUTFunction = voi_function
    lut = None
    if voi_lut:
        from pydicom.dataset import Dataset

        item = Dataset()
        n = top + 1
        lut = np.round(65535 * (np.arange(n) / top) ** 0.6).astype(np.uint16)
        item.LUTDescriptor = [n if n < 65536 else 0, 0, 16]
        item.LUTExplanation = "SYNTHETIC gamma 0.6"
        item.LUTData = lut.tolist()
        ds.VOILUTSequence = [item]
        ds["VOILUTSequence"][0]["LUTDescriptor"].VR = "US"
        ds["VOILUTSequence"][0]["LUTData"].VR = "US"
    _set_pixels(ds, pixels, bits, False, transfer_syntax, path)
    return {
        "path": path,
        "pixels": pixels,
        "display": display,
        "windows": windows,
        "stored_windows": stored_windows,
        "voi_lut": lut,
        "photometric": photometric,
        "transfer_syntax": TRANSFER_SYNTAXES.get(transfer_syntax, transfer_syntax),
    }


def write_ct_series(
    folder: str | os.PathLike,
    n_slices: int = 6,
    rows: int = 24,
    cols: int = 20,
    slope: float = 1.0,
    intercept: float = -1024.0,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    slice_spacing: float = 2.5,
    origin: tuple[float, float, float] = (-50.0, -40.0, 100.0),
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    shuffle_names: bool = True,
    instance_numbers: bool = True,
    frame_of_reference: bool = True,
    seed: int = 0,
) -> dict:
    """Write a CT-like series (one slice per file) into ``folder``; file names are shuffled relative to the slice
    order so readers must sort by position. Every slice carries the series' Frame of Reference UID, as a scanner
    writes it (``frame_of_reference=False`` leaves it out, as some exports do). Returns ``{"folder", "paths" (slice order), "hu" (rows, cols, slices)
    float, "stored" (int16, same shape), "positions" (n, 3), "orientation", "pixel_spacing", "slice_spacing"}``.
    A bright sphere (+400 HU) sits in the middle of a water cylinder (0 HU) in air (-1000 HU)."""
    rng = np.random.default_rng(seed)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    r, c, z = np.mgrid[0:rows, 0:cols, 0:n_slices].astype(np.float64)
    hu = np.full((rows, cols, n_slices), -1000.0)
    cyl = ((r - rows / 2) / (rows * 0.4)) ** 2 + ((c - cols / 2) / (cols * 0.4)) ** 2 < 1
    hu[cyl] = 0.0
    sphere = ((r - rows / 2) ** 2 + (c - cols / 2) ** 2) / (min(rows, cols) * 0.2) ** 2 + (
        (z - (n_slices - 1) / 2) / max(n_slices * 0.3, 1)
    ) ** 2 < 1
    hu[sphere] = 400.0
    hu += np.round(rng.normal(0, 5, hu.shape))
    stored = np.round((hu - intercept) / slope).astype(np.int16)
    hu = stored.astype(np.float64) * slope + intercept
    study_uid, series_uid = _uid(rng), _uid(rng)
    order = rng.permutation(n_slices) if shuffle_names else np.arange(n_slices)
    frame_uid = _uid(rng)
    paths, positions = [], []
    for k in range(n_slices):
        pos = np.asarray(origin) + normal * slice_spacing * k
        ds = _base_dataset("1.2.840.10008.5.1.4.1.1.2", "CT", rng, study_uid, series_uid)  # CT Image Storage
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = slice_spacing
        if frame_of_reference:
            ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        if instance_numbers:
            ds.InstanceNumber = k + 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        path = os.path.join(folder, f"synthetic_ct_{int(order[k]):03d}.dcm")
        _set_pixels(ds, stored[:, :, k], 16, True, "explicit", path)
        paths.append(path)
        positions.append(pos)
    return {
        "folder": folder,
        "paths": paths,
        "hu": hu,
        "stored": stored,
        "positions": np.asarray(positions),
        "orientation": iop,
        "pixel_spacing": tuple(pixel_spacing),
        "slice_spacing": slice_spacing,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "frame_of_reference_uid": frame_uid if frame_of_reference else None,
    }


def write_unsupported_syntax_dicom(path: str | os.PathLike, seed: int = 0) -> dict:
    """A DICOM file whose transfer syntax (MPEG2 Main Profile, 1.2.840.10008.1.2.4.100) has no decoder."""
    from pydicom.encaps import encapsulate

    info = write_cxr_dicom(path, seed=seed)
    import pydicom

    ds = pydicom.dcmread(info["path"])
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.save_as(info["path"], enforce_file_format=True)
    info["transfer_syntax"] = "1.2.840.10008.1.2.4.100"
    return info

"""Decode-only reading of 2D studies for batched preprocessing: :func:`read_raw_2d` / :class:`RawImage`.

:class:`cadpipe.transforms.LoadStudyImage` returns an image after the modality LUT and ``MONOCHROME1`` inversion,
as float32. For batched preprocessing on the model's device (:mod:`cadpipe.transforms.batched`) the reading step
stops earlier: the pixel array **as stored** (``uint8``/``uint16``/``int16``: half the bytes of float32 or less to
move), plus what the later steps need to finish the job on the device:

- ``slope``, ``intercept``: the Rescale Slope / Intercept (modality LUT ``value = stored * slope + intercept``);
- ``inversion_sum``: for ``MONOCHROME1``, ``S`` of ``inverted = S - value`` (:mod:`cadpipe.transforms.readers.io_dicom`);
- ``meta``: the reader's window tags (``WindowCenters``... ``VOILUTSequence``), already consistent with the
  inverted image, for :meth:`cadpipe.transforms.window.Window.spec_for`;
- ``affine`` (4x4, the reader's: pixel indices in MONAI's ``(X, Y)`` order to millimetres), ``format``
  (``LoadStudyImage``'s ``meta["format"]``: ``"dicom"``, ``"image"``...), ``spacing_known`` (False when the
  affine steps one unit per pixel) and ``geometry_note`` (why): the geometry a segmentation's mask is given back
  in (:mod:`cadpipe.pipelines.inference.batched_segmentation`); a few hundred bytes per image.

Layout: ``pixels`` is ``(rows, cols)``, numpy's order for the stored image; ``LoadStudyImage`` gives
``(1, cols, rows)`` (MONAI's ``swap_ij``): the batched steps transpose at the end.

Only single-frame greyscale DICOM files with a linear modality LUT of 8/16-bit integers are sent as stored. Every
other input (PNG/JPEG/TIFF, NIfTI slices, DICOM with a Modality LUT Sequence, per-frame rescale, colour, LJPEG)
goes through ``LoadStudyImage`` in the worker and is sent as float32 with ``slope`` 1 and ``intercept`` 0: the same
values as the per-item path, whatever the format. Errors are :class:`cadpipe.errors.CadpipeInputError` naming the
file and the reason, as ``LoadStudyImage`` raises them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from cadpipe.errors import CadpipeInputError

__all__ = ["RawImage", "read_raw_2d", "WINDOW_META_KEYS"]

#: metadata keys :class:`cadpipe.transforms.window.Window` reads (the rest of the reader's metadata stays behind)
WINDOW_META_KEYS = ("WindowCenter", "WindowWidth", "WindowCenters", "WindowWidths", "VOILUTFunction",
                    "VOILUTSequence")


@dataclass
class RawImage:
    """One decoded 2D image, before the modality LUT (see the module docstring)."""

    pixels: np.ndarray  # (rows, cols), dtype as stored, or float32 when read through LoadStudyImage
    slope: float = 1.0
    intercept: float = 0.0
    inversion_sum: float | None = None  # MONOCHROME1: value -> inversion_sum - value after the modality LUT
    meta: dict = field(default_factory=dict)  # window tags only (WINDOW_META_KEYS)
    path: str = ""
    affine: np.ndarray | None = None  # (4, 4) float64, as LoadStudyImage's meta["affine"]
    format: str = ""  # as LoadStudyImage's meta["format"]
    spacing_known: bool = True  # as LoadStudyImage's meta["spacing_known"]: False when the affine is in pixels
    geometry_note: str = ""  # as LoadStudyImage's meta["geometry_note"] (DICOM): the file's unusable geometry


def read_raw_2d(path: str | os.PathLike, mode: str = "gray", reject_nan: bool = True) -> RawImage:
    """Decode the 2D image at ``path`` (see the module docstring). ``mode`` and ``reject_nan``: as
    :class:`cadpipe.transforms.LoadStudyImage`; only ``"gray"`` is supported (one channel)."""
    if mode != "gray":
        raise ValueError(f"read_raw_2d: only mode='gray' is supported, got {mode!r}")
    path = os.fspath(path)
    if os.path.isfile(path):
        from cadpipe.transforms.readers.io_any import detect_format

        if detect_format(path, check_dicom_pixels=False) == "dicom":
            from cadpipe.transforms.readers.file_checks import check_readable
            from cadpipe.transforms.readers.limits import check_declared_size

            check_readable(path)
            check_declared_size(path, "dicom")  # image bombs: refused from the header, before decoding
            raw = _dicom_as_stored(path)
            if raw is not None:
                return raw
    return _loaded(path, mode, reject_nan)


def _dicom_as_stored(path: str) -> RawImage | None:
    """The stored pixels of a single-frame greyscale DICOM file with a linear modality LUT; None for any other
    DICOM file (the caller then reads it through ``LoadStudyImage``)."""
    from cadpipe.transforms.readers.io_dicom import (_affine, _dicom_meta, _functional_rescale, _modality_range,
                                                     geometry_is_defective, has_pixel_data, patient_geometry,
                                                     read_dicom_dataset, stored_pixels)

    ds = read_dicom_dataset(path)
    if not has_pixel_data(ds):
        raise CadpipeInputError(path, "DICOM file has no pixel data (not an image)")
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if (pi not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1) or 1) != 1
            or int(ds.get("NumberOfFrames", 1) or 1) != 1 or ds.get("ModalityLUTSequence")
            or _functional_rescale(ds) is not None or "PixelData" not in ds):
        return None
    arr = stored_pixels(ds, path)
    if arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2:
        return None
    try:
        meta = _dicom_meta(ds, path)
        affine = _affine(ds, *patient_geometry(ds, 0), None, 1)  # as DicomReader's for one frame
    except CadpipeInputError:
        raise
    except Exception as err:  # malformed tags (LUTs...): name the file, as DicomReader does
        raise CadpipeInputError(path, f"cannot interpret DICOM data: {type(err).__name__}: {err}") from err
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    slope = 1.0 if slope in (None, "") else float(slope)
    intercept = 0.0 if intercept in (None, "") else float(intercept)
    inversion = None
    if pi == "MONOCHROME1":
        lo, hi = _modality_range(ds)
        inversion = lo + hi
    if geometry_is_defective(ds):  # as DicomReader warns
        import warnings

        warnings.warn(f"{path}: {meta['geometry_note']}", stacklevel=2)
    return RawImage(np.ascontiguousarray(arr), slope, intercept, inversion,
                    {k: meta[k] for k in WINDOW_META_KEYS if k in meta}, path, affine, "dicom",
                    bool(meta["spacing_known"]), meta["geometry_note"])


def _loaded(path: str, mode: str, reject_nan: bool) -> RawImage:
    """Any other input through ``LoadStudyImage`` (modality LUT and inversion already applied), as float32."""
    import torch

    from cadpipe.transforms.readers.io_any import LoadStudyImage, spacing_known

    img = LoadStudyImage(mode=mode, dtype=np.float32, reject_nan=reject_nan)(path)
    if img.ndim != 3 or img.shape[0] != 1:
        raise CadpipeInputError(path, f"expected a 2D greyscale image, got shape {tuple(img.shape)} "
                                      "(channels first)")
    pixels = np.ascontiguousarray(img.as_tensor()[0].numpy().T)  # (cols, rows) -> (rows, cols)
    meta = {k: img.meta[k] for k in WINDOW_META_KEYS if k in img.meta}
    affine = img.meta.get("affine")
    affine = None if affine is None else np.asarray(torch.as_tensor(affine), dtype=np.float64)
    return RawImage(pixels, 1.0, 0.0, None, meta, path, affine, str(img.meta.get("format", "")),
                    spacing_known(img.meta), str(img.meta.get("geometry_note", "")))

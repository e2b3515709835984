"""One loader for every study format cadpipe accepts: ``LoadStudyImage`` / ``LoadStudyImaged``, plus
``detect_format(path)`` for study discovery.

Dispatch (on content first, then extension):

========================  =================  ===========================================================
what                      ``detect_format``  reader
========================  =================  ===========================================================
folder with DICOM files   ``dicom_series``   :class:`cadpipe.transforms.readers.io_dicom.DicomReader` (sorted slices)
DICM preamble / ``.dcm``  ``dicom``          ``DicomReader`` (any file name, also without extension)
``.LJPEG``                ``ljpeg``          ``cadpipe.transforms.readers.io_ljpeg.LJPEGReader`` (imported lazily)
``.nii`` / ``.nii.gz``    ``nifti``          MONAI ``NibabelReader``
``.nrrd`` / ``.nhdr``     ``nrrd``           MONAI ``ITKReader`` (3D Slicer volumes, ``.seg.nrrd`` label maps)
``.mha`` / ``.mhd``       ``metaimage``      MONAI ``ITKReader`` (ITK MetaImage; ``.mhd`` with its data file)
PNG/JPEG/TIFF/BMP         ``image``          MONAI ``PILReader`` (8/16-bit), ``ITKReader`` as fallback
anything else             ``None``           not an image (text, ``DICOMDIR``, hidden files, empty folders)
========================  =================  ===========================================================

Output: a channel-first ``MetaTensor`` (default float32) with the reader's metadata plus ``filename_or_obj``,
``affine``, ``original_affine``, ``spatial_shape`` and ``format``. ``mode``:

- ``"gray"``: colour 2D images (RGB/RGBA, e.g. chest X-rays saved as RGB JPEG) become one channel of
  luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, what PIL's ``convert("L")`` uses); alpha dropped;
- ``"rgb"``: one-channel images are repeated to 3 channels, alpha dropped;
- ``"keep"``: channels as stored.

Volumes (NIfTI, NRRD, MetaImage) keep their geometry: ``affine`` maps voxel indices to RAS millimetres from the
file's spacing, direction and origin (ITK's LPS converted to RAS, as ``NibabelReader`` gives for NIfTI).
Multi-channel volumes (e.g. several MR sequences) are never mixed: ``mode`` does not act on volumes. Colour
multi-frame DICOM (ultrasound cine) is converted frame by frame like 2D colour images.
The declared image size is checked against :class:`cadpipe.transforms.readers.limits.PixelLimits` before any decoding.
Any unreadable input raises :class:`cadpipe.errors.CadpipeInputError` naming the file and the reason (library
errors are wrapped); a NIfTI (or float image) containing NaN is refused.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform

from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.readers.file_checks import check_readable
from cadpipe.transforms.readers.io_dicom import DicomReader, has_pixel_data, is_dicom_file, list_dicom_files
from cadpipe.transforms.readers.limits import check_declared_size

__all__ = ["LoadStudyImage", "LoadStudyImaged", "detect_format", "volume_suffix", "IMAGE_SUFFIXES", "VOLUME_SUFFIXES",
           "VOLUME_FORMATS", "load_image", "spacing_known"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# volume file suffix -> format; ``.seg.nrrd`` (3D Slicer segmentation) is an ``.nrrd`` and keeps ``.seg`` in its stem
VOLUME_SUFFIXES = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage",
                   ".mhd": "metaimage"}
VOLUME_FORMATS = ("nifti", "nrrd", "metaimage")
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")
_LUMA = (0.299, 0.587, 0.114)


def detect_format(path: str | os.PathLike, check_dicom_pixels: bool = True) -> str | None:
    """``"dicom" | "dicom_series" | "ljpeg" | "nifti" | "nrrd" | "metaimage" | "image"`` or ``None`` when ``path``
    is not an image.

    Looks at the content where the name is not enough (DICM preamble, PNG/JPEG/TIFF magic numbers), so DICOM
    files without an extension are found; DICOM files without pixel data (SR, RT plan...) give ``None`` (with
    ``check_dicom_pixels=False`` they give ``"dicom"`` without parsing the file: the loader, which parses it
    anyway, then reports "no pixel data"). Hidden files, ``DICOMDIR``, folders without DICOM files and folders
    whose DICOM files belong to several series (take those files one by one) give ``None``.
    """
    path = os.fspath(path)
    name = os.path.basename(os.path.normpath(path))
    if name.startswith(".") or name.upper() == "DICOMDIR":
        return None
    if os.path.isdir(path):
        return "dicom_series" if _single_series(path) else None
    if not os.path.isfile(path):
        return None
    lower = name.lower()
    if lower.endswith((".ljpeg", ".ljpeg.gz")):
        return "ljpeg"
    suffix = volume_suffix(lower)
    if suffix:
        return VOLUME_SUFFIXES[suffix]
    if lower.endswith((".dcm", ".dicom", ".ima")) or is_dicom_file(path):
        return "dicom" if not check_dicom_pixels or _dicom_has_pixels(path) else None
    if lower.endswith(IMAGE_SUFFIXES):
        return "image"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if any(head.startswith(m) for m in _MAGIC):
        return "image"
    return None


def volume_suffix(name: str) -> str:
    """The volume suffix of file name ``name`` (lower case: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``...) or ``""``."""
    lower = name.lower()
    return next((suf for suf in sorted(VOLUME_SUFFIXES, key=len, reverse=True) if lower.endswith(suf)), "")


def spacing_known(meta) -> bool:
    """Whether an image's ``affine`` is in millimetres (sizes may be given in mm², mL) or steps one unit per pixel
    (the file gives no usable spacing: sizes in pixels). ``meta``: a loaded image's metadata (``LoadStudyImage``'s
    ``spacing_known`` and ``format``), also after MONAI's collation (a one-item list or tensor)."""
    if not meta:
        return True
    if _first(meta.get("format")) == "image":
        return False
    known = _first(meta.get("spacing_known", True))
    return bool(known)


def _first(value):
    """``value``, or its first element when collation made it a list/tuple/tensor/array."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    if isinstance(value, (torch.Tensor, np.ndarray)):
        flat = value.reshape(-1)
        return flat[0].item() if len(flat) else None
    return value


def load_image(**kwargs) -> LoadImage:
    """MONAI's ``LoadImage(**kwargs)`` without its nvImageCodec notices.

    ``LoadImage`` builds every default reader, among them the GPU DICOM reader ``NvImgCodecPydicomReader``, which
    without nvImageCodec (any CPU machine) logs and warns, on each construction, that it falls back to pydicom's
    decoders. cadpipe reads DICOM with its own :class:`~cadpipe.transforms.readers.io_dicom.DicomReader`, so that notice is
    expected and says nothing: it is silenced here, while the loader is built, and nowhere else.
    """
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not")
            return LoadImage(**kwargs)
    finally:
        plugin_log.setLevel(level)


def _dicom_has_pixels(path: str) -> bool:
    """False only for a readable DICOM file without pixel data (SR, RT plan, presentation state...); unreadable
    files count as images so that the loader reports them by name."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")
    except Exception:
        return True
    return has_pixel_data(ds)


def _single_series(folder: str) -> bool:
    """True when ``folder`` directly holds DICOM files of exactly one series (header-only read). A folder of
    unrelated DICOM files (several SeriesInstanceUIDs) is not a series: discovery should take its files one by one."""
    import pydicom

    try:
        files = list_dicom_files(folder)
    except OSError:
        return False
    series = set()
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:
            return bool(files)  # an unreadable file: let the loader report it by name
        series.add(str(ds.get("SeriesInstanceUID", "")))
        if len(series) > 1:
            return False
    return bool(files)


def _reader_for(fmt: str, path: str):
    if fmt in ("dicom", "dicom_series"):
        return DicomReader()
    if fmt == "ljpeg":
        try:
            from cadpipe.transforms.readers.io_ljpeg import LJPEGReader
        except ImportError as err:
            raise CadpipeInputError(path, f"LJPEG support is not available ({err})") from err
        return LJPEGReader()
    if fmt == "nifti":
        from monai.data import NibabelReader

        return NibabelReader()
    if fmt in ("nrrd", "metaimage"):
        from monai.data import ITKReader

        return ITKReader()  # spacing, direction and origin -> RAS affine (affine_lps_to_ras)
    from monai.data import PILReader

    return PILReader()


def _to_mode(img: MetaTensor, mode: str, fmt: str) -> MetaTensor:
    if mode == "keep" or fmt in VOLUME_FORMATS:
        return img
    spatial = img.ndim - 1
    c = img.shape[0]
    if mode == "gray":
        if c in (3, 4):
            w = torch.tensor(_LUMA, dtype=img.dtype, device=img.device).reshape(3, *([1] * spatial))
            out = (img[:3] * w).sum(0, keepdim=True)
        elif c == 2:  # luminance + alpha
            out = img[:1]
        else:
            return img
    elif mode == "rgb":
        if c == 1:
            out = img.repeat(3, *([1] * spatial))
        elif c in (2, 4):
            out = img[:1].repeat(3, *([1] * spatial)) if c == 2 else img[:3]
        else:
            return img
    else:
        raise ValueError(f"mode must be 'gray', 'rgb' or 'keep', got {mode!r}")
    out = MetaTensor(out.as_tensor(), meta=dict(img.meta), applied_operations=list(img.applied_operations))
    return out


class LoadStudyImage(Transform):
    """Load any supported study file or DICOM series folder as a channel-first ``MetaTensor``.

    Args:
        mode: ``"gray"`` (default), ``"rgb"`` or ``"keep"`` — see the module docstring.
        dtype: output dtype (float32).
        reject_nan: refuse images containing NaN (always for NIfTI; default also for other floats).

    Call with a path (``str``/``PathLike``). Output shapes: 2D ``(C, X=cols, Y=rows)``, 3D ``(C, X, Y, Z)``.
    """

    def __init__(self, mode: str = "gray", dtype: Any = np.float32, reject_nan: bool = True):
        if mode not in ("gray", "rgb", "keep"):
            raise ValueError(f"mode must be 'gray', 'rgb' or 'keep', got {mode!r}")
        self.mode, self.dtype, self.reject_nan = mode, dtype, reject_nan
        self._loader = load_image(image_only=True, ensure_channel_first=True, dtype=dtype)

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        if isinstance(path, (list, tuple)) and len(path) == 1:
            path = path[0]
        if not isinstance(path, (str, os.PathLike)):
            raise CadpipeInputError(str(path), f"expected a file or folder path, got {type(path).__name__}")
        path = os.fspath(path)
        check_readable(path)  # names link loops, dangling links, permission denied
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise CadpipeInputError(path, "empty file (0 bytes)")
        fmt = detect_format(path, check_dicom_pixels=False)  # the DICOM reader refuses files without pixels
        if fmt is None:
            what = "folder holds no DICOM files" if os.path.isdir(path) else "not a supported image format"
            raise CadpipeInputError(path, f"{what} (DICOM, DICOM series folder, LJPEG, NIfTI, NRRD, MetaImage, "
                                          "PNG/JPEG/TIFF)")
        check_declared_size(path, fmt)  # before decoding: image bombs (cadpipe.transforms.readers.limits)
        reader = _reader_for(fmt, path)
        try:
            img = self._loader(path, reader=reader)
        except CadpipeInputError:
            raise
        except Exception as err:  # wrap PIL / nibabel / ITK errors: the user needs the file and the reason
            img = None
            if fmt == "image":
                img = self._itk_fallback(path)
            if img is None:
                raise CadpipeInputError(path, f"cannot read {fmt} file: {type(err).__name__}: {err}") from err
        # one reduction pass: a NaN makes the sum NaN (so can +inf and -inf together: then count to be sure)
        if self.reject_nan and img.is_floating_point() and bool(torch.isnan(img.as_tensor().sum())):
            n = int(torch.isnan(img).sum())
            if n:
                raise CadpipeInputError(path, f"{fmt} image contains NaN values ({n} of {img.numel()} voxels)")
        img = _to_mode(img, self.mode, fmt)
        img.meta["format"] = fmt
        # PNG/JPEG/TIFF carry no spacing; DICOM says per file (its reader); volumes and LJPEG always give one
        img.meta["spacing_known"] = bool(img.meta.get("spacing_known", fmt != "image"))
        return img

    def _itk_fallback(self, path: str):
        try:
            from monai.data import ITKReader

            return self._loader(path, reader=ITKReader())
        except Exception:
            return None


class LoadStudyImaged(MapTransform):
    """Dictionary twin of :class:`LoadStudyImage`: ``d[key]`` (a path) becomes the loaded ``MetaTensor``."""

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "gray",
        dtype: Any = np.float32,
        reject_nan: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadStudyImage(mode=mode, dtype=dtype, reject_nan=reject_nan)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d

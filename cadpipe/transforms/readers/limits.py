"""The pixel-count guard: every reader's declared image size is checked *before* decoding.

A small file can declare a huge image (an 874 KB PNG declaring 30000 x 30000 pixels decodes to gigabytes), so
:func:`check_declared_size` reads only the header — PIL's ``Image.open`` (lazy) for PNG/JPEG/TIFF/BMP, the DICOM
header (``Rows x Columns x NumberOfFrames x SamplesPerPixel``; a series folder: one header x its file count), the
NIfTI header's shape, the DDSM ``.ics`` ``LINES x PIXELS_PER_LINE`` — and refuses an image whose count of pixel
values (pixels x samples per pixel, e.g. x3 for RGB) is over the limit, naming the file, the declared size and
the limit.

Limits (:class:`PixelLimits`): ``max_pixels`` for a 2D image (default 60 M values: a 7000 x 8000 grey
mammogram or a 20 MP RGB photograph), ``max_voxels`` for a volume (3D NIfTI, multi-frame DICOM, a DICOM series;
default 1 G voxels: a 1024 x 1024 x 1000 CT). ``cadpipe score`` and ``cadpipe serve`` set them with
``--max-pixels`` / ``--max-voxels``; they reach every process (DataLoader workers, the portal's worker) through
the environment variables ``CADPIPE_MAX_PIXELS`` / ``CADPIPE_MAX_VOXELS``, read by :meth:`PixelLimits.current`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from cadpipe.errors import CadpipeInputError

__all__ = ["PixelLimits", "declared_shape", "check_declared_size", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_VOXELS",
           "ENV_MAX_PIXELS", "ENV_MAX_VOXELS"]

DEFAULT_MAX_PIXELS = 60_000_000
DEFAULT_MAX_VOXELS = 1_000_000_000
ENV_MAX_PIXELS, ENV_MAX_VOXELS = "CADPIPE_MAX_PIXELS", "CADPIPE_MAX_VOXELS"


@dataclass(frozen=True)
class PixelLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_voxels: int = DEFAULT_MAX_VOXELS

    @classmethod
    def current(cls) -> "PixelLimits":
        """The limits of this process: the environment variables when set, else the defaults."""
        def env(name: str, default: int) -> int:
            text = os.environ.get(name, "").strip()
            try:
                return int(float(text)) if text else default
            except ValueError:
                return default
        return cls(env(ENV_MAX_PIXELS, DEFAULT_MAX_PIXELS), env(ENV_MAX_VOXELS, DEFAULT_MAX_VOXELS))

    def export(self) -> None:
        """Make these the limits of this process and of the processes it starts (environment variables)."""
        os.environ[ENV_MAX_PIXELS] = str(int(self.max_pixels))
        os.environ[ENV_MAX_VOXELS] = str(int(self.max_voxels))


def _mega(n: int) -> str:
    return f"{n / 1e9:g} G" if n >= 1e9 else f"{n / 1e6:g} M"


def _image_shape(path: str) -> tuple[tuple[int, ...], int, bool]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return (im.size[1], im.size[0]), len(im.getbands()), False
    except Image.DecompressionBombError as err:  # PIL's own guard (> 2 x its MAX_IMAGE_PIXELS) fired at open
        with open(path, "rb") as f:
            head = f.read(26)
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":  # the size as declared
            return (int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")), 1, False
        m = re.search(r"\((\d+) pixels\)", str(err))
        return (int(m.group(1)) if m else 0,), 1, False


def _dicom_shape(path: str) -> tuple[tuple[int, ...], int, bool]:
    from cadpipe.transforms.readers.dicom_probe import read_dicom_header

    h = read_dicom_header(path)
    return ((h.frames, h.rows, h.cols) if h.frames > 1 else (h.rows, h.cols)), h.samples, h.frames > 1


def _series_shape(folder: str) -> tuple[tuple[int, ...], int, bool]:
    from cadpipe.transforms.readers.dicom_probe import read_dicom_header
    from cadpipe.transforms.readers.io_dicom import list_dicom_files

    files = list_dicom_files(folder)
    if not files:
        return (0,), 1, True
    h = read_dicom_header(files[0])
    return (len(files) * h.frames, h.rows, h.cols), h.samples, True


def _nifti_shape(path: str) -> tuple[tuple[int, ...], int, bool]:
    import nibabel as nib

    shape = tuple(int(s) for s in nib.load(path).header.get_data_shape())
    return shape, 1, len([s for s in shape[:3] if s > 1]) >= 3


def _ljpeg_shape(path: str) -> tuple[tuple[int, ...], int, bool]:
    from cadpipe.transforms.readers.io_ljpeg import find_ics, parse_ljpeg_filename, read_ics

    view = read_ics(find_ics(path))["views"].get(parse_ljpeg_filename(path)["ddsm_view"])
    if view is None:  # the reader reports the missing view line by name
        return (0,), 1, False
    return (int(view["LINES"]), int(view["PIXELS_PER_LINE"])), 1, False


def _itk_shape(path: str) -> tuple[tuple[int, ...], int, bool]:
    """NRRD / MetaImage: ITK's ImageIO reads the header only (``ReadImageInformation``)."""
    import itk

    io = itk.ImageIOFactory.CreateImageIO(path, itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise ValueError("no ITK ImageIO reads this file")
    io.SetFileName(path)
    io.ReadImageInformation()
    shape = tuple(int(io.GetDimensions(i)) for i in range(io.GetNumberOfDimensions()))
    return shape, int(io.GetNumberOfComponents()), len([s for s in shape[:3] if s > 1]) >= 3


_SHAPES = {"image": _image_shape, "dicom": _dicom_shape, "dicom_series": _series_shape, "nifti": _nifti_shape,
           "ljpeg": _ljpeg_shape, "nrrd": _itk_shape, "metaimage": _itk_shape}


def declared_shape(path: str | os.PathLike, fmt: str) -> tuple[tuple[int, ...], int, bool] | None:
    """``(shape, samples per pixel, is_volume)`` that ``path`` (format ``fmt`` as
    :func:`cadpipe.transforms.readers.io_any.detect_format` names it) declares, from its header only.

    None when the library cannot parse the header (the reader then refuses the file with its own reason).

    Raises:
        CadpipeInputError: a DICOM file that is not DICOM or whose header is broken (reason named).
    """
    path = os.fspath(path)
    try:
        return _SHAPES[fmt](path)
    except CadpipeInputError:
        raise
    except Exception:  # noqa: BLE001 - a header the library cannot parse: its reader reports the file and the reason
        return None


def check_declared_size(path: str | os.PathLike, fmt: str, limits: PixelLimits | None = None) -> int:
    """Refuse ``path`` when its declared size is over the limit; returns the declared count of pixel values.

    Raises:
        CadpipeInputError: ``"<path>: declared image size 30000x30000 (900 M pixel values) is over the limit of
            60 M pixel values for a 2D image (--max-pixels)"``; or the header cannot be read.
    """
    if fmt not in _SHAPES:
        return 0
    limits = limits or PixelLimits.current()
    declared = declared_shape(path, fmt)
    if declared is None:
        return 0
    shape, samples, volume = declared
    n = samples
    for s in shape:
        n *= max(int(s), 0)
    limit, what, option = ((limits.max_voxels, "a volume", "--max-voxels") if volume
                           else (limits.max_pixels, "a 2D image", "--max-pixels"))
    if n > limit:
        dims = "x".join(str(s) for s in shape) + (f"x{samples} samples" if samples > 1 else "")
        raise CadpipeInputError(os.fspath(path), f"declared image size {dims} ({_mega(n)} pixel values) is over the "
                                                 f"limit of {_mega(limit)} for {what} ({option})")
    return n

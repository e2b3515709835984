"""DICOM reading: a MONAI ``ImageReader`` for single files, multi-frame files and series folders.

``DicomReader`` works with ``LoadImage(reader=DicomReader())`` / ``LoadImaged(keys, reader=DicomReader())``.

What it does, in order, for every frame/slice:

1. decodes the pixel data with pydicom 3 (uncompressed, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000
   through the installed pylibjpeg / pyjpegls plugins); colour images (YBR_*, PALETTE COLOR) come out as RGB;
2. applies the modality LUT with ``pydicom.pixels.apply_modality_lut`` (Rescale Slope/Intercept or Modality LUT
   Sequence), so CT comes out in Hounsfield units;
3. inverts ``MONOCHROME1`` so that higher always means brighter::

       inverted = (y_min + y_max) - value

   where ``[y_min, y_max]`` is the range of values the file can hold after the modality LUT (stored range from
   Bits Stored / Pixel Representation through slope/intercept, or ``[0, 2**bits - 1]`` of a Modality LUT Sequence).
   The VOI window kept in the metadata moves with the inversion so that windowing the inverted image gives the
   displayed brightness (``1 - pydicom.apply_voi_lut(...)`` normalised):
   ``LINEAR`` centres become ``S - c + 1`` (DICOM's LINEAR ramp is centred on ``c - 0.5``), ``LINEAR_EXACT`` and
   ``SIGMOID`` centres become ``S - c`` (``S = y_min + y_max``), widths are unchanged; a VOI LUT Sequence is
   mirrored (first mapped value ``S - (first + n - 1)``, data ``2**bits - 1 - data[::-1]``).
   The file's own values stay in ``WindowCentersStored`` / ``VOILUTSequenceStored``.

Output axes follow MONAI's readers (``swap_ij``): numpy ``pixel[row, col]`` becomes ``out[col, row]``; a series or a
multi-frame file is ``(cols, rows, slices)``; colour adds a last channel axis (``original_channel_dim = -1``).
``affine`` maps those array indices to RAS millimetres (same convention as MONAI's ``PydicomReader`` with
``affine_lps_to_ras=True``, ``swap_ij=True``), built from ImagePositionPatient / ImageOrientationPatient /
PixelSpacing; series slices are sorted by ImagePositionPatient projected on the slice normal, else InstanceNumber.

Geometry the file does not give, or gives unusably, is never guessed as millimetres:

- a PixelSpacing that is missing, zero (``0\\0`` in real CR files), negative or not two numbers is unknown
  (ImagerPixelSpacing, then the functional groups' Pixel Measures are tried next): the affine then steps one unit
  per pixel, ``spacing_known`` is False and ``geometry_note`` says so (sizes are to be given in pixels);
- an ImageOrientationPatient with a zero direction or row/column directions that are not perpendicular is not a
  plane: the image is read without patient position and orientation (as a radiograph), and ``geometry_note`` says
  so; oblique planes are valid and kept (directions are normalised);
- a zero or unusable slice thickness is 1 mm; a series whose slice positions repeat steps along the normal.

A value that cannot be what its tag says (``0\\0``, a non-plane orientation) also raises a Python warning
naming the file (:func:`geometry_is_defective`); a spacing that is simply absent does not.

Metadata keys (besides MONAI's ``affine``, ``original_affine``, ``spatial_shape``, ``original_channel_dim``,
``spacing``): ``Modality``, ``PhotometricInterpretation`` (as stored), ``PatientID``, ``StudyInstanceUID``,
``SeriesInstanceUID``, ``SOPInstanceUID`` (first), ``SOPInstanceUIDs`` (all, slice order), ``ImageLaterality``,
``Laterality``, ``ViewPosition``, ``Rows``, ``Columns``, ``NumberOfFrames``, ``PixelSpacing`` (row, col mm, from
PixelSpacing or ImagerPixelSpacing; ``[1, 1]`` when unknown), ``BitsStored``, ``PixelRepresentation``, ``RescaleSlope``, ``RescaleIntercept``,
``TransferSyntaxUID``, ``WindowCenter`` / ``WindowWidth`` (first window, floats), ``WindowCenters`` /
``WindowWidths`` (all windows), ``VOILUTFunction``, ``VOILUTSequence`` (all VOI LUTs), ``SliceFilenames``,
``MONOCHROME1_inverted`` (bool), ``inversion_sum`` (``S`` above, for MONOCHROME1), ``spacing_known`` (bool) and
``geometry_note`` (str; both described above).
Window values and VOI LUTs are consistent with the output array (see MONOCHROME1 above).

Collation: metadata must batch through MONAI's ``list_data_collate`` even when two images have a different number
of windows, LUT lengths or slices, so multi-valued entries are stored as strings — DICOM's backslash form for
``WindowCenters``, ``WindowWidths``, ``WindowCentersStored``, ``SOPInstanceUIDs`` (``"v1\\v2"``), newline-joined
``SliceFilenames``, and JSON (LUT data base64 int32) for ``VOILUTSequence`` / ``VOILUTSequenceStored``. Read them
back with :func:`meta_windows`, :func:`meta_voi_luts` and :func:`split_values` (arrays). Missing string tags are
``""`` (never ``None``).

Bad input (zero-byte, truncated, not DICOM, unsupported transfer syntax, no pixel data, series with inconsistent
sizes) raises :class:`cadpipe.errors.CadpipeInputError` naming the file and the reason.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.data.image_reader import ImageReader, _copy_compatible_dict, _stack_images
from monai.data.utils import affine_to_spacing, orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from cadpipe.errors import CadpipeInputError

__all__ = [
    "DicomReader",
    "is_dicom_file",
    "has_pixel_data",
    "list_dicom_files",
    "read_dicom_dataset",
    "meta_windows",
    "meta_voi_luts",
    "split_values",
    "pixel_spacing",
    "geometry_note",
    "orthonormal_orientation",
    "patient_geometry",
    "geometry_is_defective",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dic")

_STRING_TAGS = (
    "Modality",
    "PhotometricInterpretation",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "ImageLaterality",
    "Laterality",
    "ViewPosition",
    "SeriesDescription",
    "StudyDescription",
    "BodyPartExamined",
)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file starting with the 128-byte preamble + ``DICM`` (any name, any extension)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def has_pixel_data(ds) -> bool:
    """True when the dataset holds an image: Pixel Data, Float Pixel Data or Double Float Pixel Data (present
    also when its value was deferred by ``dcmread(..., defer_size=...)``)."""
    return any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def list_dicom_files(folder: str | os.PathLike) -> list[str]:
    """Files of a series folder: DICOM by preamble or by suffix; hidden files and ``DICOMDIR`` are skipped."""
    out = []
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        if name.startswith(".") or name.upper() == "DICOMDIR" or not os.path.isfile(full):
            continue
        if name.lower().endswith(DICOM_SUFFIXES) or is_dicom_file(full):
            out.append(full)
    return out


def read_dicom_dataset(path: str | os.PathLike, stop_before_pixels: bool = False):
    """``pydicom.dcmread`` with every failure turned into :class:`CadpipeInputError` (file + reason)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CadpipeInputError(path, "no such file")
    size = os.path.getsize(path)
    if size == 0:
        raise CadpipeInputError(path, "empty file (0 bytes), not a DICOM file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as err:
        raise CadpipeInputError(path, f"not a DICOM file (no DICM preamble / meta header): {err}") from err
    except Exception as err:  # EOFError, struct.error, OSError, ValueError...: all mean a broken file
        raise CadpipeInputError(path, f"truncated or corrupt DICOM file: {type(err).__name__}: {err}") from err
    if len(ds) == 0:
        if is_dicom_file(path):  # a DICM preamble and nothing readable after it: cut short or damaged
            raise CadpipeInputError(path, "truncated or corrupt DICOM file: no data element could be read after "
                                          "the file meta header")
        raise CadpipeInputError(path, "not a DICOM file (no data elements could be read)")
    return ds


def join_values(values) -> str:
    """DICOM multi-value text form: ``"a\\b\\c"`` (floats with ``repr`` so they round-trip exactly)."""
    return "\\".join(repr(float(v)) if isinstance(v, (float, np.floating)) else str(v) for v in values)


def split_values(value) -> list[str]:
    """Inverse of :func:`join_values`; also accepts a list/tuple (returned as strings) or ``None``/``""``."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value)
    return text.split("\\") if text else []


def _encode_luts(luts: list[dict]) -> str:
    import base64
    import json

    return json.dumps(
        [
            {
                "LUTDescriptor": [int(v) for v in lut["LUTDescriptor"]],
                "LUTData": base64.b64encode(np.asarray(lut["LUTData"], dtype="<i4").tobytes()).decode("ascii"),
                "LUTExplanation": lut.get("LUTExplanation", ""),
            }
            for lut in luts
        ]
    )


def meta_voi_luts(meta, key: str = "VOILUTSequence") -> list[dict]:
    """The VOI LUTs kept in ``meta`` as ``[{"LUTDescriptor": array([n, first, bits]), "LUTData": array}]``."""
    import base64
    import json

    value = meta.get(key) if meta else None
    if not value:
        return []
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
        items = value
    else:
        items = json.loads(value if isinstance(value, str) else value[0])
    out = []
    for item in items:
        data = item["LUTData"]
        if isinstance(data, str):
            data = np.frombuffer(base64.b64decode(data), dtype="<i4").astype(np.int64)
        out.append(
            {
                "LUTDescriptor": np.asarray(item["LUTDescriptor"], dtype=np.int64),
                "LUTData": np.asarray(data),
                "LUTExplanation": item.get("LUTExplanation", ""),
            }
        )
    return out


def meta_windows(meta, stored: bool = False) -> tuple[list[float], list[float]]:
    """All (centres, widths) kept in ``meta`` (consistent with the output array; ``stored=True``: the file's)."""
    if not meta:
        return [], []
    ckey = "WindowCentersStored" if stored else "WindowCenters"
    centres = [float(v) for v in split_values(meta.get(ckey))]
    widths = [float(v) for v in split_values(meta.get("WindowWidths"))]
    if not centres and meta.get("WindowCenter") is not None and not stored:
        centres, widths = [float(np.ravel(meta["WindowCenter"])[0])], [float(np.ravel(meta["WindowWidth"])[0])]
    return centres, widths


def _transfer_syntax(ds):
    from pydicom.uid import UID, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return UID(ts) if ts else ImplicitVRLittleEndian


def _check_decodable(ds, path: str) -> None:
    from pydicom.pixels import get_decoder

    if not has_pixel_data(ds):
        raise CadpipeInputError(path, "DICOM file has no pixel data (not an image)")
    ts = _transfer_syntax(ds)
    if not ts.is_compressed:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as err:
        raise CadpipeInputError(path, f"unsupported transfer syntax {ts.name} ({ts})") from err
    if not decoder.is_available:
        raise CadpipeInputError(
            path, f"unsupported transfer syntax {ts.name} ({ts}): no decoder plugin installed for it"
        )


def stored_pixels(ds, path: str) -> np.ndarray:
    """The decoded pixel array as stored (no modality LUT, no inversion): (frames, rows, cols[, samples]) or
    (rows, cols[, samples]). Raises :class:`CadpipeInputError` (file + reason) when it cannot be decoded."""
    _check_decodable(ds, path)
    ts = _transfer_syntax(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except Exception as err:  # pydicom / plugins raise many types; all mean the same for the user
        raise CadpipeInputError(
            path, f"cannot decode pixel data ({ts.name}): truncated or corrupt: {type(err).__name__}: {err}"
        ) from err


def _decode(ds, path: str) -> np.ndarray:
    """Pixel array (frames, rows, cols[, samples]) or (rows, cols[, samples]) after the modality LUT."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    arr = stored_pixels(ds, path)
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif pi.startswith("MONOCHROME"):
        per_frame = _functional_rescale(ds)
        if per_frame is not None:  # enhanced multi-frame: Pixel Value Transformation per frame
            slopes, intercepts = per_frame
            shape = (-1, 1, 1) if arr.ndim == 3 else ()
            arr = arr.astype(np.float64) * np.reshape(slopes, shape or ()) + np.reshape(intercepts, shape or ())
        else:
            exact = _integer_rescale(arr, ds)
            arr = exact if exact is not None else apply_modality_lut(arr, ds)
    return np.asarray(arr)


def _integer_rescale(arr: np.ndarray, ds) -> np.ndarray | None:
    """The modality LUT as float32 when float32 holds its result exactly, else None (pydicom's float64 path).

    That is the common case: stored values of at most 16 bits, no Modality LUT Sequence, Rescale Slope 1 (or
    none) and an integer Rescale Intercept (or none): every ``value + intercept`` is an integer below 2**24, so
    the result equals pydicom's float64 one cast to float32, at a fraction of the cost (half the memory traffic,
    no multiply)."""
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2 or ds.get("ModalityLUTSequence"):
        return None
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    try:
        slope = 1.0 if slope in (None, "") else float(slope)
        intercept = 0.0 if intercept in (None, "") else float(intercept)
    except (TypeError, ValueError):
        return None
    if slope != 1.0 or not intercept.is_integer() or abs(intercept) > 2**23:
        return None
    out = arr.astype(np.float32)
    if intercept:
        out += np.float32(intercept)
    return out


def _functional_rescale(ds) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-frame (slopes, intercepts) from an enhanced file's functional groups; None when the file has top-level
    Rescale Slope/Intercept or a Modality LUT Sequence (pydicom's apply_modality_lut handles those) or none."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds or ds.get("ModalityLUTSequence"):
        return None
    if not (ds.get("SharedFunctionalGroupsSequence") or ds.get("PerFrameFunctionalGroupsSequence")):
        return None
    n = int(ds.get("NumberOfFrames", 1) or 1)
    slopes, intercepts, found = [], [], False
    for f in range(n):
        slope = _functional(ds, "PixelValueTransformationSequence", "RescaleSlope", f)
        intercept = _functional(ds, "PixelValueTransformationSequence", "RescaleIntercept", f)
        found |= slope is not None or intercept is not None
        slopes.append(float(slope) if slope is not None else 1.0)
        intercepts.append(float(intercept) if intercept is not None else 0.0)
    if not found:
        return None
    return np.asarray(slopes if n > 1 else slopes[0]), np.asarray(intercepts if n > 1 else intercepts[0])


def _modality_range(ds) -> tuple[float, float]:
    """The range [y_min, y_max] of values after the modality LUT (same rule as pydicom's apply_windowing)."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    per_frame = _functional_rescale(ds)
    if per_frame is not None:  # range of the first frame's transformation
        slope, intercept = float(np.ravel(per_frame[0])[0]), float(np.ravel(per_frame[1])[0])
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def _floats(value) -> list[float]:
    if value is None or value == "":
        return []
    return [float(v) for v in ensure_tuple(value if not isinstance(value, str) else [value])]


def _voi_luts(ds) -> list[dict]:
    """VOI LUT Sequence items as arrays, with the LUT data decoded by pydicom itself (handles US/OW)."""
    from pydicom.pixels import apply_voi

    luts = []
    for index, item in enumerate(ds.get("VOILUTSequence") or []):
        n, first, bits = (int(v) for v in item.LUTDescriptor)
        n = n or 2**16
        inputs = np.arange(first, first + n, dtype=np.int64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.asarray(apply_voi(inputs, ds, index=index)).astype(np.int64)
        luts.append(
            {
                "LUTDescriptor": np.array([n, first, bits], dtype=np.int64),
                "LUTData": data,
                "LUTExplanation": str(item.get("LUTExplanation", "")),
            }
        )
    return luts


def _dicom_meta(ds, path: str) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for tag in _STRING_TAGS:
        value = ds.get(tag, "")
        meta[tag] = "" if value is None else str(value)
    meta["Rows"] = int(ds.get("Rows", 0))
    meta["Columns"] = int(ds.get("Columns", 0))
    meta["NumberOfFrames"] = int(ds.get("NumberOfFrames", 1) or 1)
    meta["BitsStored"] = int(ds.get("BitsStored", ds.get("BitsAllocated", 0)) or 0)
    meta["PixelRepresentation"] = int(ds.get("PixelRepresentation", 0) or 0)
    meta["RescaleSlope"] = float(ds.get("RescaleSlope", 1.0) or 1.0)
    meta["RescaleIntercept"] = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    per_frame = _functional_rescale(ds)
    if per_frame is not None:  # enhanced multi-frame: the first frame's values
        meta["RescaleSlope"] = float(np.ravel(per_frame[0])[0])
        meta["RescaleIntercept"] = float(np.ravel(per_frame[1])[0])
    meta["TransferSyntaxUID"] = str(_transfer_syntax(ds))
    meta["PixelSpacing"] = _pixel_spacing(ds)
    meta["spacing_known"] = pixel_spacing(ds) is not None
    meta["geometry_note"] = geometry_note(ds)
    pi = meta["PhotometricInterpretation"].upper()
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    meta["VOILUTFunction"] = func
    centres, widths = _floats(ds.get("WindowCenter")), _floats(ds.get("WindowWidth"))
    luts = _voi_luts(ds) if pi.startswith("MONOCHROME") else []
    meta["WindowCentersStored"] = join_values(centres)
    if luts:
        meta["VOILUTSequenceStored"] = _encode_luts(luts)
    meta["MONOCHROME1_inverted"] = pi == "MONOCHROME1"
    if pi == "MONOCHROME1":
        lo, hi = _modality_range(ds)
        s = lo + hi
        meta["inversion_sum"] = s
        shift = 1.0 if func == "LINEAR" else 0.0
        centres = [s - c + shift for c in centres]
        mirrored = []
        for lut in luts:
            n, first, bits = (int(v) for v in lut["LUTDescriptor"])
            mirrored.append(
                {
                    "LUTDescriptor": np.array([n, int(s) - (first + n - 1), bits], dtype=np.int64),
                    "LUTData": (2**bits - 1) - lut["LUTData"][::-1].copy(),
                    "LUTExplanation": lut["LUTExplanation"],
                }
            )
        luts = mirrored
    if centres and widths:
        widths = widths[: len(centres)] + [widths[-1]] * (len(centres) - len(widths))
        meta["WindowCenter"], meta["WindowWidth"] = centres[0], widths[0]
        meta["WindowCenters"], meta["WindowWidths"] = join_values(centres), join_values(widths)
    if luts:
        meta["VOILUTSequence"] = _encode_luts(luts)
    return meta


def _spacing_value(value) -> list[float] | None:
    """A (row, col) spacing in mm from a PixelSpacing-like value, or None when it is not one: missing, not two
    numbers, zero, negative or not finite (``0\\0`` in real CR files means "unknown")."""
    if value is None or value == "":
        return None
    try:
        values = [float(v) for v in ensure_tuple(value if not isinstance(value, str) else value.split("\\"))]
    except (TypeError, ValueError):
        return None
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        return None
    return values


def pixel_spacing(ds) -> list[float] | None:
    """The (row, col) pixel spacing in mm the file gives: PixelSpacing, else ImagerPixelSpacing, else the
    functional groups' Pixel Measures; None when none of them is a usable spacing (see ``_spacing_value``)."""
    for value in (ds.get("PixelSpacing"), ds.get("ImagerPixelSpacing"),
                  _functional(ds, "PixelMeasuresSequence", "PixelSpacing")):
        spacing = _spacing_value(value)
        if spacing is not None:
            return spacing
    return None


def _pixel_spacing(ds) -> list[float]:
    """:func:`pixel_spacing`, or one unit per pixel ``[1.0, 1.0]`` when the file gives none."""
    return pixel_spacing(ds) or [1.0, 1.0]


def geometry_note(ds) -> str:
    """What of the file's geometry could not be used, for the user (``""`` when all of it was): a missing or
    unusable pixel spacing (sizes are then in pixels), an ImageOrientationPatient that is not a plane (the image
    is then placed without its patient position)."""
    notes = []
    if pixel_spacing(ds) is None:
        given = _unusable_spacing_tags(ds)
        notes.append(f"{'unusable ' + ' and '.join(given) if given else 'no pixel spacing'} in the file: "
                     "sizes are in pixels, not mm")
    if _orientation_not_a_plane(ds):
        notes.append(f"ImageOrientationPatient {ds.get('ImageOrientationPatient')} is not a plane: patient position "
                     "ignored")
    return "; ".join(notes)


def _unusable_spacing_tags(ds) -> list[str]:
    """``"<tag> <value>"`` of the spacing tags the file fills with something that is not a spacing."""
    return [f"{tag} {ds.get(tag)}" for tag in ("PixelSpacing", "ImagerPixelSpacing")
            if ds.get(tag) not in (None, "") and _spacing_value(ds.get(tag)) is None]


def _orientation_not_a_plane(ds) -> bool:
    return ds.get("ImageOrientationPatient") not in (None, "") and "ImagePositionPatient" in ds and \
        patient_geometry(ds, 0)[1] is None


def geometry_is_defective(ds) -> bool:
    """True when the file fills a geometry tag with a value that cannot be one (PixelSpacing ``0\\0``, an
    ImageOrientationPatient that is not a plane): a defect worth a warning, unlike a tag that is simply absent
    (secondary captures, ultrasound and uncalibrated radiographs have no spacing)."""
    return (pixel_spacing(ds) is None and bool(_unusable_spacing_tags(ds))) or _orientation_not_a_plane(ds)


def _functional(ds, seq_name: str, tag: str, frame: int | None = None):
    """A value from the Shared (or Per-Frame, for ``frame``) Functional Groups of an enhanced multi-frame file."""
    groups = []
    if frame is not None and ds.get("PerFrameFunctionalGroupsSequence"):
        pf = ds.PerFrameFunctionalGroupsSequence
        if frame < len(pf):
            groups.append(pf[frame])
    if ds.get("SharedFunctionalGroupsSequence"):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        seq = group.get(seq_name)
        if seq and tag in seq[0]:
            return seq[0].get(tag)
    return None


def patient_geometry(ds, frame: int | None = None):
    """``(ImagePositionPatient, ImageOrientationPatient)`` of the file (or of ``frame``'s functional groups) as
    float arrays, the orientation normalised (:func:`orthonormal_orientation`); ``(None, None)`` when either is
    missing, malformed or not a plane."""
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is None:
        ipp = _functional(ds, "PlanePositionSequence", "ImagePositionPatient", frame)
    if iop is None:
        iop = _functional(ds, "PlaneOrientationSequence", "ImageOrientationPatient", frame)
    if ipp is None or iop is None:
        return None, None
    try:
        ipp, iop = np.asarray([float(v) for v in ipp]), np.asarray([float(v) for v in iop])
    except (TypeError, ValueError):
        return None, None
    if ipp.shape != (3,) or iop.shape != (6,) or not (np.isfinite(ipp).all() and np.isfinite(iop).all()):
        return None, None
    iop = orthonormal_orientation(iop)
    return (ipp, iop) if iop is not None else (None, None)


def orthonormal_orientation(iop, tolerance: float = 1e-2) -> np.ndarray | None:
    """ImageOrientationPatient (row cosines, column cosines) with each direction normalised, or None when the
    six values do not describe a plane: a zero or non-finite direction, or row and column directions further
    from perpendicular than ``tolerance`` (cosine of their angle). Oblique planes are valid."""
    iop = np.asarray(iop, dtype=np.float64).reshape(-1)
    if iop.shape != (6,) or not np.isfinite(iop).all():
        return None
    row, col = iop[:3], iop[3:]
    nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if nr < 1e-6 or nc < 1e-6:
        return None
    row, col = row / nr, col / nc
    if abs(float(np.dot(row, col))) > tolerance:
        return None
    return np.concatenate([row, col])


def _affine(ds, first_ipp, iop, slice_step: np.ndarray | None, n_slices: int) -> np.ndarray:
    """RAS affine for the (cols, rows[, slices]) array layout."""
    row_sp, col_sp = _pixel_spacing(ds)
    affine = np.eye(4)
    if iop is None:  # no patient geometry (projection radiographs, secondary capture): spacing only
        affine[0, 0], affine[1, 1] = col_sp, row_sp
        if slice_step is not None:
            affine[2, 2] = float(np.linalg.norm(slice_step)) or 1.0
        return affine
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    affine[:3, 0] = row_cos * col_sp  # array axis 0 = column index: moves along the row direction
    affine[:3, 1] = col_cos * row_sp  # array axis 1 = row index: moves along the column direction
    affine[:3, 2] = normal * _slice_thickness(ds)
    if slice_step is not None and n_slices >= 2:
        # the step between slice positions, unless it does not leave the image plane (repeated positions)
        if abs(float(np.dot(slice_step, normal))) > 1e-3 * max(col_sp, row_sp):
            affine[:3, 2] = slice_step
    affine[:3, 3] = first_ipp
    return orientation_ras_lps(affine)  # DICOM is LPS; MONAI's default space is RAS


def _slice_thickness(ds) -> float:
    """SpacingBetweenSlices, else SliceThickness, in mm (absolute value); 1.0 when neither is a usable number."""
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = abs(float(ds.get(tag)))
        except (TypeError, ValueError):
            continue
        if np.isfinite(value) and value > 0:
            return value
    return 1.0


class _Study:
    """What :meth:`DicomReader.read` returns for one path: the datasets (one per file) in slice order."""

    def __init__(self, path: str, datasets: list, filenames: list[str], is_series: bool):
        self.path, self.datasets, self.filenames, self.is_series = path, datasets, filenames, is_series


class DicomReader(ImageReader):
    """MONAI ``ImageReader`` for DICOM files, multi-frame files and series folders (pydicom 3).

    Args:
        dtype: output dtype of the array (float32: HU and inverted values are exact for 16-bit data).

    ``read(path)`` accepts a file, a folder (one series: files with a DICOM suffix or the DICM preamble; hidden
    files, ``DICOMDIR`` and non-image DICOM objects are skipped), or a list of those (stacked on a new first axis
    like MONAI's readers). ``get_data`` returns ``(array, meta)``: see the module docstring for axes and keys.

    Errors: ``read``/``get_data`` raise :class:`CadpipeInputError`. ``LoadImage(reader=DicomReader())`` catches a
    reader's error and tries MONAI's other readers (one of them may then read the file its own way, without
    MONOCHROME1/VOI handling); only when all fail does it raise a ``RuntimeError`` whose text contains ours.
    ``LoadImage()(path, reader=DicomReader())`` and ``cadpipe.transforms.LoadStudyImage`` use this reader alone and
    let the ``CadpipeInputError`` through.
    """

    def __init__(self, dtype=np.float32):
        super().__init__()
        self.dtype = dtype

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        for name in ensure_tuple(filename):
            name = os.fspath(name)
            if not (os.path.isdir(name) or name.lower().endswith(DICOM_SUFFIXES) or is_dicom_file(name)):
                return False
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs):
        studies = [self._read_one(os.fspath(p)) for p in ensure_tuple(data)]
        return studies[0] if len(studies) == 1 else studies

    def _read_one(self, path: str) -> _Study:
        if os.path.isdir(path):
            files = list_dicom_files(path)
            if not files:
                raise CadpipeInputError(path, "folder holds no DICOM files")
            datasets, names = [], []
            for f in files:
                ds = read_dicom_dataset(f)
                if not has_pixel_data(ds):
                    continue  # SR, presentation states etc. beside the images
                datasets.append(ds)
                names.append(f)
            if not datasets:
                raise CadpipeInputError(path, "folder holds DICOM files but none with pixel data")
            series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
            if len(series) > 1:
                raise CadpipeInputError(
                    path, f"folder holds {len(series)} different series (SeriesInstanceUID); give one series folder"
                )
            order = self._slice_order(datasets)
            return _Study(path, [datasets[i] for i in order], [names[i] for i in order], True)
        ds = read_dicom_dataset(path)
        return _Study(path, [ds], [path], False)

    @staticmethod
    def _slice_order(datasets: list) -> list[int]:
        geos = [patient_geometry(ds) for ds in datasets]
        if all(g[0] is not None for g in geos):
            normal = np.cross(geos[0][1][:3], geos[0][1][3:])
            keys = [float(np.dot(g[0], normal)) for g in geos]
            if len(set(np.round(keys, 4))) == len(keys):
                return sorted(range(len(datasets)), key=lambda i: keys[i])
        if all("InstanceNumber" in ds for ds in datasets):
            return sorted(range(len(datasets)), key=lambda i: int(datasets[i].InstanceNumber))
        return list(range(len(datasets)))

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        studies = img if isinstance(img, (list, tuple)) else [img]
        arrays, compatible_meta = [], {}
        for study in studies:
            try:
                array, meta = self._study_data(study)
            except CadpipeInputError:
                raise
            except Exception as err:  # malformed tags (LUTs, geometry...): name the file, never a raw error
                raise CadpipeInputError(
                    study.path, f"cannot interpret DICOM data: {type(err).__name__}: {err}"
                ) from err
            arrays.append(array)
            _copy_compatible_dict(meta, compatible_meta)
        return _stack_images(arrays, compatible_meta), compatible_meta

    def _frame_values(self, ds, path: str) -> np.ndarray:
        """Values after the modality LUT (MONOCHROME1 inverted): float32 where that is exact (see
        ``_integer_rescale``), else float64."""
        arr = _decode(ds, path)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float64)
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            lo, hi = _modality_range(ds)
            if arr.dtype == np.float32 and not (float(lo + hi).is_integer() and abs(lo + hi) <= 2**24):
                arr = arr.astype(np.float64)
            arr = (lo + hi) - arr
        return arr

    def _study_data(self, study: _Study) -> tuple[np.ndarray, dict]:
        first = study.datasets[0]
        meta = _dicom_meta(first, study.filenames[0])
        meta["SOPInstanceUIDs"] = join_values(str(ds.get("SOPInstanceUID", "")) for ds in study.datasets)
        meta["SliceFilenames"] = "\n".join(study.filenames)
        if study.is_series:
            shapes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for ds in study.datasets}
            if len(shapes) > 1:
                raise CadpipeInputError(study.path, f"series has slices of inconsistent sizes (rows, cols) {sorted(shapes)}")
            if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in study.datasets) and len(study.datasets) > 1:
                raise CadpipeInputError(study.path, "series folder mixes several multi-frame files; read them one by one")
            slices = []
            for ds, name in zip(study.datasets, study.filenames):
                slices.append(self._frame_values(ds, name))
            shapes = {s.shape for s in slices}
            if len(shapes) > 1:
                raise CadpipeInputError(study.path, f"series has slices of inconsistent shapes {sorted(shapes)}")
            frames = np.stack(slices, axis=0) if len(slices) > 1 else slices[0]
            n = len(slices) if len(slices) > 1 else int(first.get("NumberOfFrames", 1) or 1)
            is_multi = len(slices) > 1 or n > 1
        else:
            frames = self._frame_values(first, study.filenames[0])
            n = int(first.get("NumberOfFrames", 1) or 1)
            is_multi = n > 1
        samples = int(first.get("SamplesPerPixel", 1) or 1)
        color = samples > 1 or frames.ndim == (4 if is_multi else 3)
        # to MONAI layout: (cols, rows[, slices])[, samples]
        if is_multi:
            array = np.moveaxis(frames, 0, 2)  # (rows, cols, slices[, s])
        else:
            array = frames
        array = np.swapaxes(array, 0, 1)
        array = np.ascontiguousarray(array.astype(self.dtype, copy=False))

        # geometry
        ipp0, iop = patient_geometry(first, 0)
        step = None
        if is_multi and len(study.datasets) > 1:
            ipp_last, _ = patient_geometry(study.datasets[-1])
            if ipp0 is not None and ipp_last is not None:
                step = (ipp_last - ipp0) / (len(study.datasets) - 1)
        elif is_multi:
            ipp_last, _ = patient_geometry(first, n - 1)
            if ipp0 is not None and ipp_last is not None and not np.allclose(ipp_last, ipp0):
                step = (ipp_last - ipp0) / (n - 1)
            elif first.get("GridFrameOffsetVector") and len(first.GridFrameOffsetVector) > 1:
                offsets = [float(v) for v in first.GridFrameOffsetVector]
                normal = np.cross(iop[:3], iop[3:]) if iop is not None else np.array([0.0, 0.0, 1.0])
                step = normal * (offsets[1] - offsets[0])
        affine = _affine(first, ipp0, iop, step, n)
        spatial_shape = array.shape[:-1] if color else array.shape
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(spatial_shape)
        r = len(spatial_shape)
        meta[MetaKeys.ORIGINAL_AFFINE] = affine
        meta[MetaKeys.AFFINE] = affine.copy()
        meta[MetaKeys.SPACE] = SpaceKeys.RAS
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = -1 if color else float("nan")
        meta["spacing"] = affine_to_spacing(affine, r=r)
        meta["is_series"] = bool(study.is_series)
        if geometry_is_defective(first):
            warnings.warn(f"{study.path}: {meta['geometry_note']}", stacklevel=2)
        return array, meta

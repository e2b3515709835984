"""An overlay picture (Grad-CAM heatmap, boxes, mask outline) as a DICOM Secondary Capture image in a new series.

The Secondary Capture copies patient and study from a source instance (same Study Instance UID), so a viewer shows
it as one more series of the study, next to the original, and the attributes a hanging protocol sorts by:
the side as Image Laterality (from the source's Image Laterality or series Laterality; the series Laterality is
then absent, as its Type 2C condition requires; without a side it is empty for a paired or unknown body part and
absent for an unpaired one such as CHEST), Body Part Examined, View Position, the view and anatomic region code
sequences, and Patient Orientation when the source gives two valid values (else it is left empty: unknown).
A mammogram overlay without laterality is refused (a left/right-less mammogram must not reach a reading room).

Pixel data: 8-bit RGB at display size (the long side at most :data:`DISPLAY_LONG_SIDE`) with the source's aspect
ratio (its rows x columns, scaled by its pixel spacing when that is not square), compressed losslessly
(JPEG-LS lossless; RLE where no JPEG-LS encoder is installed).
"""

from __future__ import annotations

import re

import numpy as np

from cadpipe.pipelines.outputs import dicom_codes

__all__ = ["build_secondary_capture", "display_picture", "valid_patient_orientation", "SERIES_DESCRIPTION",
           "DISPLAY_LONG_SIDE"]

SERIES_DESCRIPTION = "cadpipe overlay (not for clinical use)"  # results of a bundle without a name
DISPLAY_LONG_SIDE = 2048
_COPIED = ("BodyPartExamined", "ViewPosition", "ViewCodeSequence", "AnatomicRegionSequence", "ImageLaterality")
_ORIENTATION = re.compile(r"^[APRLHF]{1,3}$")  # biped directions (PS3.3 C.7.6.1.1.1)
_OPPOSITE = str.maketrans("APRLHF", "PALRFH")
# Body Part Examined values of unpaired structures (PS3.16 Annex L): the series Laterality is then absent, as its
# Type 2C condition requires; for any other (or no) body part it is present, empty when the side is unknown
_UNPAIRED = frozenset("""ABDOMEN ABDOMENPELVIS AORTA BLADDER BRAIN CERVIX CHEST CHESTABDOMEN CHESTABDPELVIS COCCYX
COLON CSPINE DUODENUM ESOPHAGUS FACE GALLBLADDER HEAD HEADNECK HEART JAW LARYNX LIVER LSPINE MEDIASTINUM MOUTH NECK
NECKCHEST NECKCHESTABDOMEN NECKCHESTABDPELV NOSE PANCREAS PELVIS PENIS PHARYNX PROSTATE RECTUM SACRUM SELLA SKULL
SPINE SPLEEN SSPINE STERNUM STOMACH THYROID TONGUE TRACHEA TSPINE UTERUS VAGINA WHOLEBODY""".split())


def valid_patient_orientation(value) -> list[str] | None:
    """``value`` as two direction strings when it is a valid biped Patient Orientation (two values, letters from
    A/P/R/L/H/F, no letter with its opposite, rows and columns not along the same axis), else None."""
    if value is None or isinstance(value, str):  # a single string (CBIS-DDSM's "CC"/"MLO") is one value
        return None
    values = [str(v).strip().upper() for v in value]
    if len(values) != 2 or not all(_ORIENTATION.match(v) for v in values):
        return None
    for v in values:
        if len(set(v)) != len(v) or any(c.translate(_OPPOSITE) in v for c in v):
            return None
    if values[0][0] in (values[1][0], values[1][0].translate(_OPPOSITE)):
        return None
    return values


def _laterality(source) -> str:
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return ""


def _is_mammogram(source) -> bool:
    return str(source.get("Modality", "")).upper() == "MG" or \
        str(source.get("BodyPartExamined", "")).upper() == "BREAST"


def display_picture(rgb: np.ndarray, source) -> np.ndarray:
    """``rgb`` (rows, cols, 3) resized to the display geometry of ``source``: its aspect ratio (rows x columns,
    times the row / column spacing when the header gives a non-square one), long side = the picture's, at most
    :data:`DISPLAY_LONG_SIDE`. Unchanged when it already has that shape (within a pixel)."""
    from PIL import Image

    rows, cols = float(source.get("Rows") or rgb.shape[0]), float(source.get("Columns") or rgb.shape[1])
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    try:
        if spacing and len(spacing) == 2 and float(spacing[0]) > 0 and float(spacing[1]) > 0:
            rows, cols = rows * float(spacing[0]), cols * float(spacing[1])
    except (TypeError, ValueError):
        pass
    long_side = min(max(rgb.shape[:2]), DISPLAY_LONG_SIDE)
    scale = long_side / max(rows, cols)
    shape = (max(1, int(round(rows * scale))), max(1, int(round(cols * scale))))
    if abs(shape[0] - rgb.shape[0]) <= 1 and abs(shape[1] - rgb.shape[1]) <= 1 and max(rgb.shape[:2]) <= long_side:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), Image.Resampling.LANCZOS))


def _transfer_syntax() -> str:
    from pydicom.pixels.encoders import JPEGLSLosslessEncoder
    from pydicom.uid import JPEGLSLossless, RLELossless

    return JPEGLSLossless if JPEGLSLosslessEncoder.is_available else RLELossless


def build_secondary_capture(source, rgb: np.ndarray, bundle: dict, series_number: int | None = None,
                            description: str | None = None):
    """A highdicom ``SCImage`` holding ``rgb`` (rows, cols, 3) uint8 at display size (:func:`display_picture`), in
    a new series of ``source``'s study (see the module docstring for what is copied).

    Raises:
        ValueError: ``rgb`` is not an RGB uint8 picture; the source is a mammogram without laterality.
    """
    import highdicom as hd

    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 picture (rows, cols, 3), got {rgb.dtype} {rgb.shape}")
    laterality = _laterality(source)
    if _is_mammogram(source) and not laterality:
        raise ValueError("the source mammogram has no Laterality / ImageLaterality: an overlay without its side "
                         "is not written")
    rgb = np.ascontiguousarray(display_picture(rgb, source))
    # highdicom requires an orientation for the PATIENT coordinate system and accepts only single letters: build
    # with a placeholder, then keep the source's valid value (or leave it empty = unknown, allowed for Type 2C)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("L", "F"),
        series_instance_uid=hd.UID(),
        series_number=series_number if series_number is not None else dicom_codes.series_number(bundle, "sc"),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="cadpipe",
        transfer_syntax_uid=_transfer_syntax())
    sc.PatientOrientation = valid_patient_orientation(source.get("PatientOrientation")) or ""
    for keyword in _COPIED:
        if source.get(keyword) not in (None, ""):
            setattr(sc, keyword, source[keyword].value)
    if "Laterality" in sc:
        del sc.Laterality
    if laterality:  # the one image's side; the series Laterality is then absent (its Type 2C condition)
        sc.ImageLaterality = laterality
    elif str(source.get("BodyPartExamined", "")).strip().upper() not in _UNPAIRED:
        sc.Laterality = ""  # Type 2C for a paired (or unknown) body part: present, empty = side unknown
    sc.SeriesDescription = (description or (dicom_codes.series_description(bundle, "sc") if bundle.get("name")
                                            else SERIES_DESCRIPTION))[:64]
    sc.ImageComments = "not for clinical use"
    sc.BurnedInAnnotation = "NO"
    sc.SoftwareVersions = str(bundle.get("version") or "0")[:64]
    sc.ManufacturerModelName = str(bundle.get("name") or "cadpipe")[:64]
    return sc

"""An overlay picture (Grad-CAM heatmap, boxes, mask outline) as a DICOM Secondary Capture image in a new series.

The Secondary Capture copies patient and study from a source instance (same Study Instance UID), so a viewer shows
it as one more series of the study, next to the original. Pixel data: 8-bit RGB, exactly the PNG's pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["build_secondary_capture", "SERIES_DESCRIPTION"]

SERIES_DESCRIPTION = "cadpipe overlay (not for clinical use)"


def build_secondary_capture(source, rgb: np.ndarray, bundle: dict, series_number: int = 9903,
                            description: str = SERIES_DESCRIPTION):
    """A highdicom ``SCImage`` holding ``rgb`` (rows, cols, 3) uint8, in a new series of ``source``'s study.

    ``source`` is a pydicom dataset (header suffices). The patient orientation is copied from the source when it
    has one; else it is left unknown (the image is a derived picture, not a measurement grid).
    """
    import highdicom as hd

    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 picture (rows, cols, 3), got {rgb.dtype} {rgb.shape}")
    # highdicom requires an orientation for the PATIENT coordinate system and accepts only single letters: build
    # with a placeholder, then keep the source's value (or leave it empty = unknown, allowed for Type 2C)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("L", "F"),
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="cadpipe", transfer_syntax_uid="1.2.840.10008.1.2.1")
    sc.PatientOrientation = list(getattr(source, "PatientOrientation", None) or []) or ""
    sc.SeriesDescription = description[:64]
    sc.ImageComments = "not for clinical use"
    sc.BurnedInAnnotation = "NO"
    sc.SoftwareVersions = str(bundle.get("version") or "0")[:64]
    sc.ManufacturerModelName = str(bundle.get("name") or "cadpipe")[:64]
    return sc

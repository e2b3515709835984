"""The DICOM results of one scored unit from DICOM input: a TID 1500 SR of its findings and the overlay as a
Secondary Capture (the mask's DICOM SEG is written by :mod:`cadpipe.pipelines.outputs.dicom_seg` beside them).

:func:`write_dicom_results` takes what the SR reports (from the bundle's task kind), the output files already
written for the unit and the unit's source DICOM files, and writes ``<prefix>_sr.dcm`` and ``<prefix>_sc.dcm`` in the
unit's folder, each atomically (temp file + rename). All reference the source study: same Study Instance UID,
a new series each.
"""

from __future__ import annotations

import os

import numpy as np

from cadpipe.pipelines.outputs.files import atomic_save_dicom

__all__ = ["write_dicom_results", "RESULT_KEYS", "is_cadpipe_result", "RESULT_SERIES_DESCRIPTIONS"]

# the ``_outputs`` keys that name DICOM result files (what --store-results / --send-to send)
RESULT_KEYS = ("dicom_seg", "dicom_sr", "dicom_sc")


def _descriptions() -> set[str]:
    from cadpipe.pipelines.outputs import dicom_sr, secondary_capture

    return {dicom_sr.SERIES_DESCRIPTION, secondary_capture.SERIES_DESCRIPTION,
            "cadpipe segmentation (not for clinical use)"}


RESULT_SERIES_DESCRIPTIONS = frozenset(_descriptions())


def is_cadpipe_result(modality: str, series_description: str) -> bool:
    """True for a series cadpipe wrote (SR, SEG, Secondary Capture overlay), or any SR/SEG/KO/PR: results that
    come back from a PACS with the study are not scored again."""
    return modality.upper() in ("SR", "SEG", "KO", "PR") or series_description in RESULT_SERIES_DESCRIPTIONS


def write_dicom_results(outputs: dict, out_dir: str, source_files: list[str], folder: str, prefix: str,
                        bundle: dict, content: dict) -> dict[str, str]:
    """Write the unit's SR and (when it has an overlay picture) Secondary Capture; returns their ``_outputs``
    entries (paths relative to ``out_dir``).

    Args:
        outputs: the unit's output files so far, relative to ``out_dir`` (``overlays``, ``boxes``, ``dicom_seg``).
        source_files: the unit's DICOM files (headers are read, pixel data is not).
        folder, prefix: where the unit's files go and their name prefix.
        bundle: ``name``, ``version``, ``model_sha256``.
        content: what the SR reports, keyword arguments of
            :func:`~cadpipe.pipelines.outputs.dicom_sr.build_measurement_report` (``probabilities`` and
            ``predicted``, ``boxes``, ``segmentation`` and ``volume_ml`` / ``area_cm2``), as the bundle's task kind
            gives them (:meth:`cadpipe.pipelines.kinds.base.TaskKind.sr_content`).
    """
    import pydicom

    from cadpipe.pipelines.outputs.dicom_seg import _with_type2_attributes  # same fix-up as for the SEG
    from cadpipe.pipelines.outputs.dicom_sr import build_measurement_report
    from cadpipe.pipelines.outputs.secondary_capture import build_secondary_capture

    # missing Type 2 patient/study attributes added empty in memory (highdicom copies them); files are not touched
    sources = [_with_type2_attributes(pydicom.dcmread(p, stop_before_pixels=True)) for p in source_files]
    written: dict[str, str] = {}
    sr = build_measurement_report(sources, bundle, **content)
    path = os.path.join(folder, f"{prefix}_sr.dcm")
    atomic_save_dicom(sr, path)
    written["dicom_sr"] = os.path.relpath(path, out_dir)
    if outputs.get("overlays"):
        from PIL import Image

        with Image.open(os.path.join(out_dir, outputs["overlays"][0])) as im:
            rgb = np.asarray(im.convert("RGB"))
        path = os.path.join(folder, f"{prefix}_sc.dcm")
        atomic_save_dicom(build_secondary_capture(sources[0], rgb, bundle), path)
        written["dicom_sc"] = os.path.relpath(path, out_dir)
    return written

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


# descriptions of results written before they named their bundle (still recognised)
RESULT_SERIES_DESCRIPTIONS = frozenset(_descriptions())


def is_cadpipe_result(modality: str, series_description: str) -> bool:
    """True for a series cadpipe wrote (SR, SEG, Secondary Capture overlay of any bundle), or any SR/SEG/KO/PR:
    results that come back from a PACS with the study are not scored again."""
    from cadpipe.pipelines.outputs.dicom_codes import is_result_description

    return modality.upper() in ("SR", "SEG", "KO", "PR") or series_description in RESULT_SERIES_DESCRIPTIONS or \
        is_result_description(series_description)


def _note(warnings: list | None, what: str, err: Exception) -> None:
    if warnings is None:
        raise err
    warnings.append(f"no DICOM {what} written: {type(err).__name__}: {str(err).strip()[:300]}")


def write_dicom_results(outputs: dict, out_dir: str, source_files: list[str], folder: str, prefix: str,
                        bundle: dict, content: dict, warnings: list | None = None) -> dict[str, str]:
    """Write the unit's SR and (when it has an overlay picture) Secondary Capture; returns their ``_outputs``
    entries (paths relative to ``out_dir``).

    Each object is written on its own: the SR reports the findings even when no SEG could be made (without the
    segment reference), the Secondary Capture is written even when the SR fails. Given ``warnings`` (a list), each
    object that could not be written is named there with the reason; without it the first failure is raised.

    Args:
        outputs: the unit's output files so far, relative to ``out_dir`` (``overlays``, ``boxes``, ``dicom_seg``).
        source_files: the unit's DICOM files (headers are read, pixel data is not).
        folder, prefix: where the unit's files go and their name prefix.
        bundle: ``name``, ``version``, ``model_sha256``, ``class_names`` and the bundle's ``dicom`` declaration
            (:mod:`~cadpipe.pipelines.outputs.dicom_codes`).
        content: what the SR reports, keyword arguments of
            :func:`~cadpipe.pipelines.outputs.dicom_sr.build_measurement_report` (``probabilities``, ``predicted``
            and ``thresholds``; ``boxes``; ``structure``, ``voxels``, ``ndim``, ``segmentation`` and ``volume_ml`` /
            ``area_cm2``), as the bundle's task kind gives them
            (:meth:`cadpipe.pipelines.kinds.base.TaskKind.sr_content`).
        warnings: a list to name each object not written (with the reason); without it the first failure raises.
    """
    import pydicom

    from cadpipe.pipelines.outputs.dicom_seg import _with_type2_attributes  # same fix-up as for the SEG
    from cadpipe.pipelines.outputs.dicom_sr import build_measurement_report
    from cadpipe.pipelines.outputs.secondary_capture import build_secondary_capture

    # missing Type 2 patient/study attributes added empty in memory (highdicom copies them); files are not touched
    sources = [_with_type2_attributes(pydicom.dcmread(p, stop_before_pixels=True)) for p in source_files]
    written: dict[str, str] = {}
    try:
        sr = build_measurement_report(sources, bundle, **content)
        path = os.path.join(folder, f"{prefix}_sr.dcm")
        atomic_save_dicom(sr, path)
        written["dicom_sr"] = os.path.relpath(path, out_dir)
    except Exception as err:  # noqa: BLE001 - each result object on its own
        _note(warnings, "SR", err)
    if outputs.get("overlays"):
        from PIL import Image

        try:
            with Image.open(os.path.join(out_dir, outputs["overlays"][0])) as im:
                rgb = np.asarray(im.convert("RGB"))
            path = os.path.join(folder, f"{prefix}_sc.dcm")
            atomic_save_dicom(build_secondary_capture(sources[0], rgb, bundle), path)
            written["dicom_sc"] = os.path.relpath(path, out_dir)
        except Exception as err:  # noqa: BLE001
            _note(warnings, "Secondary Capture", err)
    return written


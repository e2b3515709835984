"""Scoring one portal job with the same code ``cadpipe score`` uses.

:func:`score_job` runs :func:`cadpipe.pipelines.scoring.score.process_units` on the job's units (so batching, GradCAM,
error rows and the per-unit outputs of ``_finish_unit`` are the scoring pipeline's own) and then
:func:`cadpipe.pipelines.outputs.report.write_study_report` (the same HTML/PDF report). The only addition is progress: a
thin proxy around the :class:`~cadpipe.pipelines.inference.bundle_runner.BundleRunner` splits the bundle's preprocessing
``Compose`` after its loader (``loaded`` → ``preprocessed``) and reports ``inferred`` after the forward pass.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

__all__ = ["load_runner", "score_job", "with_uploaded_names", "task_hint", "infer_task"]


def load_runner(bundle_root: str, device: str | None = None, overrides: dict | None = None):
    """A :class:`BundleRunner` for the portal (weights loaded once, network in eval mode)."""
    from cadpipe.pipelines.inference.bundle_runner import BundleRunner

    return BundleRunner(bundle_root, device=device, overrides=overrides or {})


class _StepRunner:
    """Delegates to a BundleRunner; reports ``loaded``/``preprocessed``/``inferred`` through ``on_step``."""

    def __init__(self, runner, on_step: Callable[[str], None]):
        self._runner, self._on_step = runner, on_step

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)

    def preprocess(self, item: dict) -> dict:
        out = self._runner.preprocess(item, on_loaded=lambda: self._on_step("loaded"))
        self._on_step("preprocessed")
        return out

    def predict(self, items: list[dict]) -> list[dict]:
        outs = self._runner.predict(items)
        self._on_step("inferred")
        return outs


def with_uploaded_names(text: str, names: dict[str, str]) -> str:
    """``text`` with each stored path (``names``' keys) replaced by the name the user uploaded it under."""
    for stored, original in names.items():
        text = text.replace(stored, original)
    return text


def score_job(runner, units: list, out_dir: str, on_step: Callable[[str], None] | None = None,
              display_names: dict[str, str] | None = None, study_label: str = "") -> dict:
    """Score ``units`` (from :func:`cadpipe.pipelines.scoring.discovery.discover` on the job's input folder) and write the
    report to ``<out_dir>/report.html`` (+ ``report.pdf``).

    Args:
        display_names: stored path → the name the user uploaded (shown in the report instead of the stored name).
        study_label: the report's study line for uploads without a DICOM study.

    Returns:
        ``{"rows": [...], "report_html": path | None, "report_pdf": path | None, "seconds": float}``; rows keep
        the scoring pipeline's columns plus ``_findings``/``_outputs`` (paths relative to ``out_dir``).
    """
    from cadpipe.pipelines.outputs.report import write_study_report
    from cadpipe.pipelines.scoring.score import process_units

    t0 = time.perf_counter()
    on_step = on_step or (lambda step: None)
    rows: list[dict] = []
    process_units(_StepRunner(runner, on_step), units, out_dir, rows.append, batch_size=4, workers=0)
    order = {u.unit_id: i for i, u in enumerate(units)}
    rows.sort(key=lambda r: order.get(r["unit_id"], 0))
    by_id = {u.unit_id: u for u in units}
    for row in rows:  # the unit's DICOM identifiers: its view in the report, its UIDs under technical details
        row["_patient"] = getattr(by_id.get(row["unit_id"]), "patient", None) or {}
    names = display_names or {}
    stems = {os.path.basename(p).split(".")[0] for p in names}
    for i, row in enumerate(rows, start=1):
        if str(row.get("series_id")) in stems:  # a generated stored name (f000) means nothing to the user
            row["series_id"] = str(i)
        shown = [names.get(p, os.path.basename(p)) for p in str(row.get("input_paths", "")).split(";") if p]
        row["input_paths"] = ";".join(shown)
        if row.get("error"):
            row["error"] = with_uploaded_names(row["error"], names)
    patient = next((u.patient for u in units if u.patient), {})
    study = patient.get("StudyInstanceUID") or study_label
    bundle = {"name": runner.name, "version": runner.version, "model_sha256": runner.model_sha256}
    written = write_study_report(out_dir, study, rows, patient, bundle, out_dir) if rows else []
    html_path = next((p for p in written if p.endswith(".html")), None)
    pdf_path = next((p for p in written if p.endswith(".pdf")), None)
    return {"rows": rows, "report_html": html_path, "report_pdf": pdf_path, "seconds": time.perf_counter() - t0}


# -- which bundle for which upload ----------------------------------------------------------------------------
_HINTS = (("mammo", "mammo"), ("histolog", "histology"), ("brain", "mri"), ("mri", "mri"), ("cxr", "cxr"),
          ("chest", "cxr"))


def task_hint(bundle_name: str) -> str | None:
    """What kind of image a bundle reads, from its folder name: cxr | mammo | histology | mri."""
    low = bundle_name.lower()
    return next((hint for key, hint in _HINTS if key in low), None)


def _image_is_colour(path: str) -> bool:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("L", "LA", "I", "I;16", "I;16B", "F", "1"):
            return False
        im.thumbnail((64, 64))
        arr = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool(np.abs(arr[..., 0] - arr[..., 1]).mean() + np.abs(arr[..., 1] - arr[..., 2]).mean() > 4)


def infer_task(files: list, tasks: list[str]) -> str | None:
    """The task (bundle key) for stored upload files, or None when the files do not tell.

    LJPEG → mammography; NIfTI → MRI; DICOM by Modality (MG → mammography, MR → MRI, CR/DX → chest X-ray, SM →
    histology); JPEG/PNG/TIFF: colour → histology, grey → chest X-ray. With one task loaded, that one.
    """
    if len(tasks) == 1:
        return tasks[0]
    by_hint: dict[str, str] = {}
    for t in tasks:
        hint = task_hint(t)
        if hint and hint not in by_hint:
            by_hint[hint] = t
    kinds = {f.kind for f in files}
    want = None
    if "ljpeg" in kinds:
        want = "mammo"
    elif kinds & {"nifti", "nrrd", "metaimage"}:
        want = "mri"
    elif "dicom" in kinds:
        import pydicom

        path = next(f.stored for f in files if f.kind == "dicom")
        try:
            modality = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("Modality", "")).upper()
        except Exception:  # noqa: BLE001 - unreadable: the loader reports it later
            modality = ""
        want = {"MG": "mammo", "MR": "mri", "CR": "cxr", "DX": "cxr", "SM": "histology"}.get(modality)
    elif "image" in kinds:
        path = next(f.stored for f in files if f.kind == "image")
        try:
            want = "histology" if _image_is_colour(path) else "cxr"
        except Exception:  # noqa: BLE001 - unreadable: the loader reports it later
            want = None
    return by_hint.get(want) if want else None

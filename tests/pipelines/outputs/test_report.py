"""Overlay PNGs and per-study reports."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from cadpipe.pipelines.outputs.report import NOT_FOR_CLINICAL_USE, overlay_png, write_study_report


def test_overlay_axes_mask_and_boxes(tmp_path):
    img = np.zeros((30, 20), np.float32)  # (X=cols, Y=rows)
    mask = np.zeros((30, 20), np.uint8)
    mask[25:, :5] = 1  # high columns, low rows → top-right of the PNG
    png = Image.open(io.BytesIO(overlay_png(img, mask=mask, boxes=[{"box": [1, 1, 10, 8], "label": "mass",
                                                                    "score": 0.9}])))
    arr = np.asarray(png)
    assert arr.shape == (20, 30, 3)  # rows x cols
    assert arr[2, 27, 0] > 100 and arr[2, 27, 1] < 50  # red mask at row 2, col 27
    assert arr[1, 5, 1] == 255 and arr[1, 5, 0] == 0  # green box edge at row 1


def test_report_is_self_contained_with_notice(tmp_path):
    p = tmp_path / "s" / "u" / "x.png"
    overlay_png(np.random.rand(16, 16), heatmap=np.random.rand(8, 8), path=str(p))
    rows = [{"series_id": "u", "input_paths": "/in/x.png", "status": "ok", "prob_normal": 0.2, "prob_pneumonia": 0.8,
             "_findings": [{"text": "PNEUMONIA: positive (probability 80%, operating threshold 50%)."}],
             "_outputs": {"overlays": ["s/u/x.png"]}},
            {"series_id": "v", "input_paths": "/in/y.png", "status": "error", "error": "/in/y.png: corrupt"}]
    written = write_study_report(str(tmp_path / "s"), "S1", rows, {"PatientID": "P1"},
                                 {"name": "cxr", "version": "1.0", "model_sha256": "ab" * 32}, str(tmp_path))
    html = open(written[0], encoding="utf-8").read()
    assert NOT_FOR_CLINICAL_USE in html and "P1" in html and "cxr" in html and "80.0%" in html
    assert "data:image/png;base64," in html and "src=\"s/" not in html and "corrupt" in html
    if len(written) > 1:
        assert open(written[1], "rb").read(4) == b"%PDF"
    assert not [f for f in os.listdir(tmp_path / "s") if f.startswith(".tmp_")]


def test_pdf_embeds_large_overlays_downscaled_html_keeps_them_whole(tmp_path):
    import base64
    import re

    import pytest

    pytest.importorskip("reportlab")
    from cadpipe.pipelines.outputs.report import PDF_IMAGE_MAX_PX

    p = tmp_path / "s" / "u" / "whole_slide_photo.png"
    overlay_png(np.random.rand(2048, 1536), heatmap=np.random.rand(64, 48), path=str(p))  # (X, Y): 2048 wide
    rows = [{"series_id": "u", "input_paths": "/in/x.png", "status": "ok", "_findings": [],
             "_outputs": {"overlays": ["s/u/whole_slide_photo.png"]}}]
    html_path, pdf_path = write_study_report(str(tmp_path / "s"), "S1", rows, {}, {"name": "histo", "version": "1",
                                             "model_sha256": "ab" * 32}, str(tmp_path))
    pdf = open(pdf_path, "rb").read()
    images = re.findall(rb"/Height (\d+)[^>]*/Subtype /Image[^>]*/Width (\d+)", pdf)  # reportlab sorts the keys
    assert [(int(w), int(h)) for h, w in images] == [(PDF_IMAGE_MAX_PX, 768)], images
    html = open(html_path, encoding="utf-8").read()
    b64 = re.search(r"data:image/png;base64,([^\"]+)", html).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(b64))).size == (2048, 1536)  # the HTML report keeps full size


def test_header_human_form_uids_in_technical_details_captions_collapsed_table(tmp_path):
    import re

    p = tmp_path / "s" / "u" / "x_heatmap_Effusion.png"
    overlay_png(np.random.rand(16, 16), heatmap=np.random.rand(8, 8), path=str(p))
    patient = {"PatientName": "DOE^JANE", "PatientID": "P1", "PatientSex": "F", "PatientAge": "045Y",
               "StudyDate": "20240131", "Modality": "DX", "StudyInstanceUID": "1.2.826.0.1.9"}
    unit = {"ViewPosition": "PA", "SeriesInstanceUID": "1.2.826.0.1.10", "SOPInstanceUID": "1.2.826.0.1.11"}
    rows = [{"series_id": "1.2.826.0.1.10", "input_paths": "/in/IM1.dcm", "status": "ok", "_task": "multilabel",
             "prob_Effusion": 0.7, "prob_Mass": 0.1, "prob_No Finding": 0.2, "predicted": "Effusion",
             "_thresholds": {"Effusion": 0.3, "Mass": 0.4, "No Finding": 0.5},
             "_findings": [{"type": "Effusion", "call": "positive", "text": "Effusion: above threshold."}],
             "_outputs": {"overlays": ["s/u/x_heatmap_Effusion.png"]},
             "_captions": ["Grad-CAM for Effusion, 0.70 above threshold 0.30"], "_patient": unit}]
    written = write_study_report(str(tmp_path / "s"), "1.2.826.0.1.9", rows, patient,
                                 {"name": "cxr14", "version": "1.0", "model_sha256": "ab" * 32}, str(tmp_path))
    html = open(written[0], encoding="utf-8").read()
    for text in ("DOE, JANE", "Female", "45 years", "31 Jan 2024", "Radiograph (DX)", "<h2>Image 1: PA</h2>",
                 "File: IM1.dcm", "<figcaption>Grad-CAM for Effusion, 0.70 above threshold 0.30 <div class='scale'"):
        assert text in html, text
    head, tech = html.split("Technical details", 1)
    assert "1.2.826.0.1" not in head  # UIDs only in the technical details
    assert "1.2.826.0.1.9" in tech and "1.2.826.0.1.10" in tech and "1.2.826.0.1.11" in tech and "ab" * 32 in tech
    collapsed = re.search(r"<details><summary>Other classes.*?</details>", html).group(0)
    assert "Mass" in collapsed and "No Finding" in collapsed and "Effusion" not in collapsed

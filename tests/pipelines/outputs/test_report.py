"""Overlay PNGs and per-study reports."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from cadpipe.pipelines.outputs.findings import REPORTED_CALLS
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
             "_call_words": REPORTED_CALLS,
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


def _figures(html: str) -> list[dict]:
    import re

    return [{"id": m.group(1), "style": m.group(2), "caption": m.group(3)}
            for m in re.finditer(r"<figure[^>]*><input type='checkbox' class='zoom' id='([^']+)'>.*?style='([^']+)'>"
                                 r"</label><figcaption>(.*?)</figcaption>", html)]


def test_readable_pictures_original_beside_overlay_long_side_512_click_for_full_size(tmp_path):
    """The report shows the original beside its overlay, each with its long side at 512 px on screen in the
    source's aspect ratio (a 128x160 source was shown squashed, about 64 px wide), a CSS toggle to full resolution,
    and a colour bar under the heat map only."""
    from cadpipe.pipelines.outputs.report import SCREEN_LONG_SIDE_PX, heatmap_stops

    src = np.random.rand(128, 160).astype(np.float32)  # (X, Y): 128 columns, 160 rows: portrait
    overlay_png(src, heatmap=np.random.rand(8, 8), path=str(tmp_path / "s" / "u" / "x_heatmap.png"),
                plain_path=str(tmp_path / "s" / "u" / "x_image.png"))
    for name in ("x_heatmap.png", "x_image.png"):  # both in the source's own grid
        assert Image.open(tmp_path / "s" / "u" / name).size == (128, 160)
    rows = [{"series_id": "u", "input_paths": "/in/x.png", "status": "ok", "_findings": [],
             "_outputs": {"overlays": ["s/u/x_heatmap.png"], "image": "s/u/x_image.png"},
             "_captions": ["Grad-CAM for PNEUMONIA"]}]
    html_path = write_study_report(str(tmp_path / "s"), "S1", rows, {}, {"name": "cxr", "version": "1",
                                   "model_sha256": ""}, str(tmp_path), notice="Demo: SYNTHETIC images")[0]
    html = open(html_path, encoding="utf-8").read()
    figs = _figures(html)
    assert [f["caption"].split(" <div")[0] for f in figs] == ["The image as acquired, without overlay",
                                                              "Grad-CAM for PNEUMONIA"]
    assert all(f["style"] == f"height:{SCREEN_LONG_SIDE_PX}px;width:auto" for f in figs)  # portrait: height 512
    assert ".zoom:checked+label img{width:auto!important;height:auto!important" in html  # click: natural size
    assert "class='scale'" not in figs[0]["caption"] and "class='scale'" in figs[1]["caption"]
    first, last = heatmap_stops()[0][1], heatmap_stops()[-1][1]
    assert f"rgb{first} 0%" in html and f"rgb{last} 100%" in html and first == (128, 128, 128)  # no tint at 0
    assert "<p class='warn'>Demo: SYNTHETIC images</p>" in html


def test_heat_map_colours_are_the_colour_bar_colours():
    from cadpipe.pipelines.outputs.report import heatmap_stops

    grey = np.full((4, 2), 0.5, np.float32)
    grey[0, 0], grey[3, 1] = 0.0, 1.0  # percentile window: 0.5 prints as mid-grey
    hm = np.zeros((4, 2), np.float32)
    hm[1, 0] = 1.0  # the heat map's maximum at column 1, row 0
    arr = np.asarray(Image.open(io.BytesIO(overlay_png(grey, heatmap=hm))).convert("RGB")).astype(int)
    painted = arr[0, 1]
    assert np.abs(painted - np.array(heatmap_stops(grey=int(np.asarray(Image.open(io.BytesIO(overlay_png(grey)))
                                                                       .convert("L"))[0, 1]))[-1][1])).max() <= 2


def test_mammography_views_hung_as_read_headings_are_views_not_file_names(tmp_path):
    positions = {"RCC": ("R", "CC"), "LCC": ("L", "CC"), "RMLO": ("R", "MLO"), "LMLO": ("L", "MLO")}
    rows = []
    for name, (side, view) in [("LCC", ("L", "CC")), ("LMLO", ("L", "MLO")), ("RCC", ("R", "CC")),
                               ("RMLO", ("R", "MLO"))]:  # discovery's order: by file name
        overlay_png(np.random.rand(20, 32), path=str(tmp_path / "s" / name / "o.png"))
        ddsm_view = f"{'LEFT' if side == 'L' else 'RIGHT'}_{view}"
        rows.append({"series_id": name, "input_paths": f"/in/A_0001_1.{ddsm_view}.LJPEG",
                     "status": "ok", "_findings": [{"text": "No finding with a score of 30% or more."}],
                     "_outputs": {"overlays": [f"s/{name}/o.png"]}, "_captions": ["boxes"],
                     "_patient": {"Modality": "MG", "ViewPosition": view, "ImageLaterality": side}})
    assert set(positions.values()) == {(r["_patient"]["ImageLaterality"], r["_patient"]["ViewPosition"]) for r in rows}
    patient = {"StudyDate": "19950207", "PatientAge": "055Y", "BreastDensity": "2", "Modality": "MG",
               "ViewPosition": "CC", "ImageLaterality": "L"}
    html = open(write_study_report(str(tmp_path / "s"), "case0001", rows, patient, {"name": "mammo", "version": "1",
                                   "model_sha256": ""}, str(tmp_path))[0], encoding="utf-8").read()
    grid = html.split("<div class='hang'>", 1)[1].split("<h2>", 1)[0]
    order = [c.split(" (image")[0] for c in
             [f["caption"] for f in _figures("<div class='hang'>" + grid)]]
    assert order == ["Right CC", "Left CC", "Right MLO", "Left MLO"]  # CC row, MLO row; right breast on the left
    headings = [h for h in html.split("<h2>")[1:]]
    assert [h.split("</h2>")[0] for h in headings] == ["Views as read", "Image 1: Left CC", "Image 2: Left MLO",
                                                      "Image 3: Right CC", "Image 4: Right MLO"]
    assert not any(".LJPEG" in h.split("</h2>")[0] for h in headings)  # file names only under the heading
    head = html.split("<h2>", 1)[0]
    assert "7 Feb 1995" in head and "55 years" in head and "ACR 2 (scattered fibroglandular densities)" in head
    assert "<th>View</th>" not in head  # four views: no single view in the study header


def test_table_caption_and_findings_print_one_call_for_no_finding(tmp_path):
    """The ChestX-ray14 report printed "No Finding, 0.57 above threshold 0.50" under an image while its table put
    No Finding among the classes "below their operating threshold". Table, caption and findings now print the same
    call and numbers (from findings.class_calls)."""
    from cadpipe.pipelines.outputs.findings import REPORTED_CALLS, class_calls, heatmap_caption, multilabel_findings

    names, probs = ["Effusion", "Mass", "No Finding"], [0.2, 0.1, 0.57]
    thr = {"Effusion": 0.3, "Mass": 0.4, "No Finding": 0.5}
    caption = heatmap_caption(class_calls(REPORTED_CALLS, names, probs, thr, "No Finding"), "No Finding")
    overlay_png(np.random.rand(16, 16), heatmap=np.random.rand(8, 8), path=str(tmp_path / "s" / "u" / "h.png"))
    row = {"series_id": "u", "input_paths": "/in/x.png", "status": "ok", "_task": "multilabel",
           "_call_words": REPORTED_CALLS,
           "predicted": "No Finding", "_thresholds": thr, **{f"prob_{n}": p for n, p in zip(names, probs)},
           "_findings": multilabel_findings(names, probs, thr, "No Finding"),
           "_outputs": {"overlays": ["s/u/h.png"]}, "_captions": [caption]}
    html = open(write_study_report(str(tmp_path / "s"), "S", [row], {}, {"name": "cxr14", "version": "1",
                                   "model_sha256": ""}, str(tmp_path))[0], encoding="utf-8").read()
    assert "Grad-CAM for No Finding (reported: probability 57.0%, at or above the operating threshold 50.0%)" in html
    assert "below their operating threshold" not in html
    other = html.split("<details><summary>Other classes", 1)[1].split("</details>", 1)[0]
    assert "No Finding" not in other  # reported, so not among the others
    assert "<td>Effusion</td><td>20.0%</td><td>30.0%</td><td>below: not reported</td>" in other


def test_colour_images_stay_in_colour(tmp_path):
    """A histology photo (3, X, Y) is shown in colour, the plain picture and the overlay alike."""
    img = np.zeros((3, 20, 10), np.float32)  # (C, X, Y)
    img[0] = 1.0  # red
    img[2, 10:] = 1.0  # magenta on the right half (columns 10-19)
    overlay_png(img, heatmap=np.zeros((4, 4)), path=str(tmp_path / "o.png"), plain_path=str(tmp_path / "p.png"))
    plain = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert plain.shape == (10, 20, 3)
    assert tuple(plain[5, 2]) == (255, 0, 0) and tuple(plain[5, 15]) == (255, 0, 255)
    assert np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))[5, 15, 2] > 200

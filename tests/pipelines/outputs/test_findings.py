"""The report's wording: threshold calls, captions, segmentation sizes by dimension, the boxes shown."""

from __future__ import annotations

from cadpipe.pipelines.outputs.findings import (classification_findings, detection_caption, detection_findings,
                                                heatmap_caption, multilabel_findings, segmentation_caption,
                                                segmentation_finding, select_boxes)


def test_binary_wording_and_caption():
    f, = classification_findings(["NORMAL", "PNEUMONIA"], [0.13, 0.87], {"PNEUMONIA": 0.42},
                                 "PNEUMONIA", "PNEUMONIA")
    assert f["call"] == "positive" and f["text"] == "PNEUMONIA: positive (probability 87%, operating threshold 42%)."
    f, = classification_findings(["NORMAL", "PNEUMONIA"], [0.6, 0.4], {"PNEUMONIA": 0.42},
                                 "PNEUMONIA", "NORMAL")
    assert f["call"] == "negative" and f["text"].startswith("PNEUMONIA: negative")
    assert heatmap_caption("PNEUMONIA", 0.87, 0.42) == "Grad-CAM for PNEUMONIA, 0.87 above threshold 0.42"
    assert heatmap_caption("Pleural_Thickening", 0.1, 0.42) == "Grad-CAM for Pleural Thickening, 0.10 below threshold 0.42"


def test_multiclass_names_the_argmax_class():
    f, = classification_findings(["Normal", "Benign", "InSitu", "Invasive"], [0.1, 0.2, 0.1, 0.6],
                                 {}, None, "Invasive")
    assert f["text"] == "Predicted class: Invasive (probability 60%, the highest of 4 classes)."


def test_multilabel_lists_findings_above_threshold_and_no_finding_alone():
    names = ["Effusion", "Mass", "No Finding"]
    thr = {"Effusion": 0.2, "Mass": 0.6, "No Finding": 0.5}
    fs = multilabel_findings(names, [0.3, 0.7, 0.9], thr, "Effusion;Mass")
    assert [f["type"] for f in fs] == ["Mass", "Effusion"]  # by probability
    assert all("No Finding" not in f["text"] for f in fs)
    none, = multilabel_findings(names, [0.1, 0.1, 0.9], thr, "No Finding")
    assert none["type"] == "none" and none["text"] == "No pathology above its operating threshold. No Finding: 90%."


def test_segmentation_units_follow_the_dimension_and_task():
    assert segmentation_finding("lung", 20000, 2, 0.25)["text"] == "Lung fields outlined (red): area 50.0 cm²."
    assert segmentation_finding("tumor", 1000, 3, 2.0)["text"] == "Possible tumor outlined (red): volume 2.00 mL."
    assert segmentation_finding("tumor", 400, 2, 1.0)["text"] == "Possible tumor outlined (red): area 4.0 cm²."
    assert "400 pixels (the file gives no pixel spacing)" in segmentation_finding("tumor", 400, 2, None)["text"]
    assert segmentation_finding("lung", 0, 2, 1.0)["type"] == "none"
    assert "mL" not in segmentation_finding("lung", 5, 2, 1.0)["text"]
    assert segmentation_caption("lung", 2) == "Lung fields outlined in red on the image"


def test_at_most_n_boxes_by_score_numbered():
    boxes = [{"box": [0, 0, 5, 5], "label": "benign", "score": s} for s in (0.2, 0.9, 0.5, 0.7, 0.35, 0.8, 0.95, 0.31)]
    shown = select_boxes(boxes, 0.3, 5)
    assert [b["score"] for b in shown] == [0.95, 0.9, 0.8, 0.7, 0.5] and [b["n"] for b in shown] == [1, 2, 3, 4, 5]
    texts = [f["text"] for f in detection_findings(shown, 0.3)]
    assert texts[0] == "Box 1: possible benign mass (score 95%)." and len(texts) == 5
    assert detection_findings(select_boxes(boxes, 0.99, 5), 0.99)[0]["type"] == "none"
    assert "Boxes 1–5" in detection_caption(shown, 0.3)

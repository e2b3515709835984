"""The report's wording: threshold calls, captions, segmentation sizes by dimension, the boxes shown."""

from __future__ import annotations

import numpy as np

from cadpipe.pipelines.inference.thresholds import OperatingThresholds, decide
from cadpipe.pipelines.outputs.calls import at_or_above, shown_pair
from cadpipe.pipelines.outputs.findings import (PLAIN_CALLS, REPORTED_CALLS, class_calls, classification_findings, detection_caption,
                                                detection_findings, heatmap_caption, multilabel_findings,
                                                segmentation_caption, segmentation_finding, select_boxes)


def _caption_for(task, names, probs, deciding, predicted, name):
    words = REPORTED_CALLS if task == "multilabel" else PLAIN_CALLS  # what the kind declares (kinds/)
    return heatmap_caption(class_calls(words, names, probs, deciding, predicted), name)


def test_binary_wording_and_caption():
    f, = classification_findings(["NORMAL", "PNEUMONIA"], [0.13, 0.87], {"PNEUMONIA": 0.42},
                                 "PNEUMONIA", "PNEUMONIA")
    assert f["call"] == "positive"
    assert f["text"] == "PNEUMONIA: positive (probability 87.0%, at or above the operating threshold 42.0%)."
    f, = classification_findings(["NORMAL", "PNEUMONIA"], [0.6, 0.4], {"PNEUMONIA": 0.42},
                                 "PNEUMONIA", "NORMAL")
    assert f["call"] == "negative" and f["text"].startswith("PNEUMONIA: negative (probability 40.0%, below")
    cap = _caption_for("classification", ["NORMAL", "PNEUMONIA"], [0.13, 0.87], {"PNEUMONIA": 0.42}, "PNEUMONIA",
                       "PNEUMONIA")
    assert cap.startswith("Grad-CAM for PNEUMONIA (positive: probability 87.0%, at or above the operating threshold "
                          "42.0%). Colours: where the model found evidence for PNEUMONIA; scaled to this image")


def test_multiclass_names_the_argmax_class_and_its_caption_no_threshold():
    names, probs = ["Normal", "Benign", "InSitu", "Invasive"], [0.26, 0.25, 0.25, 0.24]
    f, = classification_findings(names, probs, {"Normal": 0.2604}, None, "Normal")
    assert f["text"] == "Predicted class: Normal (probability 26.0%, the highest of 4 classes)."
    # the histology report said "Predicted class: Normal" beside "Grad-CAM for Normal, 0.26 below threshold 0.26":
    # with arg-max, no threshold decides, and the caption names none
    cap = _caption_for("classification", names, probs, {}, "Normal", "Normal")
    assert cap.startswith("Grad-CAM for Normal, the predicted class (probability 26.0%).") and "threshold" not in cap


def test_multilabel_lists_findings_above_threshold_and_no_finding_alone():
    names = ["Effusion", "Mass", "No Finding"]
    thr = {"Effusion": 0.2, "Mass": 0.6, "No Finding": 0.5}
    fs = multilabel_findings(names, [0.3, 0.7, 0.9], thr, "Effusion;Mass")
    assert [f["type"] for f in fs] == ["Mass", "Effusion"]  # by probability
    assert all("No Finding" not in f["text"] for f in fs)
    none, = multilabel_findings(names, [0.1, 0.1, 0.9], thr, "No Finding")
    assert none["type"] == "none"
    assert none["text"] == "No pathology at or above its operating threshold. No Finding: 90.0%."


def test_no_finding_caption_and_table_agree_with_the_call():
    """ChestX-ray14's report captioned "No Finding, 0.57 above threshold 0.50" while its table put No Finding among
    the classes "below their operating threshold": both now print the one call of class_calls."""
    names, probs, thr = ["Effusion", "No Finding"], [0.2, 0.57], {"Effusion": 0.3, "No Finding": 0.5}
    calls = class_calls(REPORTED_CALLS, names, probs, thr, "No Finding")
    nf = next(c for c in calls if c["name"] == "No Finding")
    assert (nf["call"], nf["relation"], nf["shown_probability"], nf["shown_threshold"]) == (
        "positive", "at or above", "57.0%", "50.0%")
    assert _caption_for("multilabel", names, probs, thr, "No Finding", "No Finding").startswith(
        "Grad-CAM for No Finding (reported: probability 57.0%, at or above the operating threshold 50.0%)")
    # beside a pathology, No Finding at or above its threshold is not reported, and the caption says why
    calls = class_calls(REPORTED_CALLS, names, [0.4, 0.57], thr, "Effusion")
    nf = next(c for c in calls if c["name"] == "No Finding")
    assert nf["call"] == "negative" and nf["relation"] == "at or above" and "beside a pathology" in nf["note"]


def test_the_boundary_equal_values_are_at_or_above_everywhere():
    ops = OperatingThresholds({"PNEUMONIA": 0.42}, positive_class="PNEUMONIA", saved=True)
    names = ["NORMAL", "PNEUMONIA"]
    predicted = decide("classification", names, [0.58, 0.42], ops)["predicted"]
    assert predicted == "PNEUMONIA"  # equal: positive (the one comparison, at_or_above)
    f, = classification_findings(names, [0.58, 0.42], {"PNEUMONIA": 0.42}, "PNEUMONIA", predicted)
    assert f["call"] == "positive" and "probability 42.0%, at or above the operating threshold 42.0%" in f["text"]
    c = next(c for c in class_calls(PLAIN_CALLS, names, [0.58, 0.42], {"PNEUMONIA": 0.42}, predicted)
             if c["name"] == "PNEUMONIA")
    assert (c["call"], c["relation"]) == ("positive", "at or above")
    # no saved thresholds: 0.5, positive at a 0.5 / 0.5 tie (arg-max would have picked the first class)
    assert decide("classification", names, [0.5, 0.5], OperatingThresholds())["predicted"] == "PNEUMONIA"
    assert at_or_above(0.5, 0.5) and not at_or_above(0.4999999, 0.5)


def test_rounding_never_prints_a_call_the_numbers_contradict():
    # 0.2596 < 0.2604 but both print as 26.0%: more decimals until they differ
    assert shown_pair(0.2596, 0.2604) == ("25.96%", "26.04%")
    assert shown_pair(0.2604, 0.2596) == ("26.0%", "26.0%")  # at or above: equal printed values agree with it
    assert shown_pair(0.26, 0.26) == ("26.0%", "26.0%")
    assert shown_pair(0.57, 0.5) == ("57.0%", "50.0%")
    assert shown_pair(0.2599999999, 0.26) == ("<26.0000%", "26.0000%")  # below by less than the last digit
    f, = classification_findings(["NORMAL", "PNEUMONIA"], [0.7404, 0.2596], {"PNEUMONIA": 0.2604},
                                 "PNEUMONIA", "NORMAL")
    assert f["text"] == "PNEUMONIA: negative (probability 25.96%, below the operating threshold 26.04%)."
    for p in np.linspace(0.2590, 0.2610, 201):  # every printed pair agrees with the call
        sp, st = shown_pair(p, 0.26)
        if sp.startswith("<"):
            assert not at_or_above(p, 0.26)
        else:
            assert (float(sp[:-1]) >= float(st[:-1])) == at_or_above(p, 0.26)


def test_segmentation_units_follow_the_dimension_and_task():
    shaded = "found (shaded red on the image)"
    assert segmentation_finding("lung", 20000, 2, 0.25)["text"] == f"Lung fields {shaded}: area 50.0 cm²."
    assert segmentation_finding("tumor", 1000, 3, 2.0)["text"] == f"Possible tumor {shaded}: volume 2.00 mL."
    assert segmentation_finding("tumor", 400, 2, 1.0)["text"] == f"Possible tumor {shaded}: area 4.0 cm²."
    assert "400 pixels (the file gives no pixel spacing)" in segmentation_finding("tumor", 400, 2, None)["text"]
    assert segmentation_finding("lung", 0, 2, 1.0)["type"] == "none"
    assert "mL" not in segmentation_finding("lung", 5, 2, 1.0)["text"]
    # the mask is a filled tint, and the caption says so (not "outlined")
    assert segmentation_caption("lung", 2) == ("Segmentation on the image: red tint (half-transparent) = the lung "
                                               "fields as segmented by the model")


def test_at_most_n_boxes_by_score_numbered():
    boxes = [{"box": [0, 0, 5, 5], "label": "benign", "score": s} for s in (0.2, 0.9, 0.5, 0.7, 0.35, 0.8, 0.95, 0.31)]
    shown = select_boxes(boxes, 0.3, 5)
    assert [b["score"] for b in shown] == [0.95, 0.9, 0.8, 0.7, 0.5] and [b["n"] for b in shown] == [1, 2, 3, 4, 5]
    texts = [f["text"] for f in detection_findings(shown, 0.3)]
    assert texts[0] == "Box 1: possible benign mass (score 95%)." and len(texts) == 5
    assert detection_findings(select_boxes(boxes, 0.99, 5), 0.99)[0]["type"] == "none"
    assert "Boxes 1–5" in detection_caption(shown, 0.3)

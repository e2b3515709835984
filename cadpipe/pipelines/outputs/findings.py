"""What the report says about one scored unit: findings in plain words, image captions, which boxes are shown.

Pure functions on plain values (names, probabilities, thresholds, counts), called by scoring when it writes a
unit's outputs; the report (:mod:`cadpipe.pipelines.outputs.report`) prints what they return. Each finding is a
dict ``{"type", "text"[, "probability", "threshold", "call"]}`` (``call``: ``"positive"``/``"negative"``).

Wording follows the task:

- classification: "PNEUMONIA: positive (probability 87%, operating threshold 42%)."; multi-class: the predicted
  class with its probability; multi-label: one finding per pathology above its threshold, or "No finding above
  the operating thresholds" (``No Finding`` never beside a positive finding);
- segmentation: lung fields by name with their area; a 2D image gives an area in cm² (from the pixel spacing, in
  pixels when the file has none), a volume gives mL;
- detection: at most ``max_boxes`` boxes at or above the display score, sorted by score and numbered as on the image.
"""

from __future__ import annotations

__all__ = ["classification_findings", "multilabel_findings", "threshold_phrase", "heatmap_caption",
           "segmentation_finding", "segmentation_caption", "select_boxes", "detection_findings", "detection_caption",
           "NO_FINDING"]

NO_FINDING = "No Finding"


def _pct(p: float) -> str:
    return f"{float(p):.0%}"


def _name(n: str) -> str:
    return str(n).replace("_", " ")


def threshold_phrase(p: float, threshold: float) -> str:
    """``"0.87 above threshold 0.42"`` (two decimals, as the threshold file holds them)."""
    return f"{float(p):.2f} {'above' if p >= threshold else 'below'} threshold {float(threshold):.2f}"


def _call(n: str, call: str, text: str, prob: dict, thr: dict) -> dict:
    return {"type": n, "probability": prob[n], "threshold": thr[n], "call": call, "text": text}


def classification_findings(names: list[str], probs: list[float], thresholds: dict[str, float],
                            positive_class: str | None, predicted: str) -> list[dict]:
    """Findings of a classification result (binary: the positive class's call; multi-class: the predicted class).

    ``thresholds``: the operating threshold of each class (defaults included); ``predicted``: the row's
    ``predicted`` column (from the same thresholds).
    """
    prob = dict(zip(names, (float(p) for p in probs)))
    thr = {n: float(thresholds.get(n, 0.5)) for n in names}
    if len(names) == 2:
        pos = positive_class if positive_class in names else names[1]
        call = "positive" if predicted == pos else "negative"
        return [_call(pos, call, f"{_name(pos)}: {call} (probability {_pct(prob[pos])}, operating threshold "
                                 f"{_pct(thr[pos])}).", prob, thr)]
    call = "positive" if prob.get(predicted, 0.0) >= thr.get(predicted, 0.5) else "negative"
    return [_call(predicted, call, f"Predicted class: {_name(predicted)} (probability {_pct(prob[predicted])}, the "
                                   f"highest of {len(names)} classes).", prob, thr)]


def multilabel_findings(names: list[str], probs: list[float], thresholds: dict[str, float],
                        predicted: str) -> list[dict]:
    """Findings of a multi-label result: one per pathology in ``predicted`` (the row's column, ``;``-joined), or
    one saying none is above its threshold."""
    prob = dict(zip(names, (float(p) for p in probs)))
    thr = {n: float(thresholds.get(n, 0.5)) for n in names}
    shown = [n for n in str(predicted).split(";") if n]
    if shown == [NO_FINDING] or not shown:
        return [{"type": "none", "call": "negative",
                 "text": "No pathology above its operating threshold."
                         + (f" No Finding: {_pct(prob[NO_FINDING])}." if NO_FINDING in prob else "")}]
    return [_call(n, "positive", f"{_name(n)}: above threshold (probability {_pct(prob[n])}, operating "
                                 f"threshold {_pct(thr[n])}).", prob, thr)
            for n in sorted(shown, key=lambda n: -prob[n])]


def heatmap_caption(class_name: str, p: float, threshold: float, method: str = "Grad-CAM") -> str:
    """``"Grad-CAM for PNEUMONIA, 0.87 above threshold 0.42"``."""
    return f"{method} for {_name(class_name)}, {threshold_phrase(p, threshold)}"


def segmentation_finding(structure: str, n_pixels: int, ndim: int, unit_size: float | None) -> dict:
    """The finding of a segmentation mask.

    Args:
        structure: the foreground class name (``"lung"`` → lung fields; otherwise the lesion's name).
        n_pixels: foreground pixels (2D) or voxels (3D).
        ndim: 2 (an image) or 3 (a volume).
        unit_size: one pixel's area in mm² (2D) or one voxel's volume in mm³ (3D); None when the file gives no
            spacing (then the size is given in pixels).
    """
    if ndim == 3:
        size = f"{n_pixels * unit_size / 1000.0:.2f} mL" if unit_size else f"{n_pixels} voxels"
    else:
        size = f"{n_pixels * unit_size / 100.0:.1f} cm²" if unit_size else \
            f"{n_pixels} pixels (the file gives no pixel spacing)"
    if str(structure).lower() in ("lung", "lungs"):
        if not n_pixels:
            return {"type": "none", "text": "No lung field was found."}
        return {"type": "lung", "text": f"Lung fields outlined (red): area {size}."}
    if not n_pixels:
        return {"type": "none", "text": f"No {_name(structure)} region was outlined."}
    return {"type": "lesion", "text": f"Possible {_name(structure)} outlined (red): "
                                      f"{'volume' if ndim == 3 else 'area'} {size}."}


def segmentation_caption(structure: str, ndim: int) -> str:
    what = "Lung fields" if str(structure).lower() in ("lung", "lungs") else f"Possible {_name(structure)}"
    where = "the slice with the largest outlined area" if ndim == 3 else "the image"
    return f"{what} outlined in red on {where}"


def select_boxes(boxes: list[dict], min_score: float, max_boxes: int) -> list[dict]:
    """The boxes to show: score at or above ``min_score``, highest first, at most ``max_boxes``, each with its
    number ``n`` (1 = highest score), as drawn on the image and listed in the report."""
    kept = sorted((b for b in boxes if float(b["score"]) >= min_score), key=lambda b: -float(b["score"]))
    return [dict(b, n=i) for i, b in enumerate(kept[: max(0, int(max_boxes))], start=1)]


def detection_findings(shown: list[dict], min_score: float) -> list[dict]:
    """One finding per shown box (numbered), or a sentence saying none reached the display score."""
    out = []
    for b in shown:
        extra = f", malignancy {_pct(b['malignancy'])}" if "malignancy" in b else ""
        out.append({"type": str(b["label"]), "probability": float(b["score"]),
                    "text": f"Box {b['n']}: possible {_name(b['label'])} mass (score {_pct(b['score'])}{extra})."})
    if not shown:
        out.append({"type": "none", "text": f"No finding with a score of {_pct(min_score)} or more."})
    return out


def detection_caption(shown: list[dict], min_score: float) -> str:
    if not shown:
        return f"The image analysed: no box with a score of {_pct(min_score)} or more"
    return (f"Boxes 1–{len(shown)} numbered by score (highest first), score {_pct(min_score)} or more; green: more "
            "likely benign, magenta: more likely malignant" if len(shown) > 1 else
            f"Box 1, score {_pct(shown[0]['score'])}; green: more likely benign, magenta: more likely malignant")

"""What the report says about one scored unit: findings in plain words, image captions, which boxes are shown.

Pure functions on plain values (names, probabilities, thresholds, counts), called by scoring when it writes a
unit's outputs; the report (:mod:`cadpipe.pipelines.outputs.report`) prints what they return. Each finding is a
dict ``{"type", "text"[, "probability", "threshold", "call"]}`` (``call``: ``"positive"``/``"negative"``).

Wording follows the task:

- classification: "PNEUMONIA: positive (probability 87.0%, at or above the operating threshold 42.0%)." (the
  comparison and the printed precision of :mod:`cadpipe.pipelines.outputs.calls`); multi-class: the predicted
  class with its probability; multi-label: one finding per pathology above its threshold, or "No finding above
  the operating thresholds" (``No Finding`` never beside a positive finding);
- segmentation: lung fields by name with their area; a 2D image gives an area in cm² (from the pixel spacing, in
  pixels when the file has none), a volume gives mL;
- detection: at most ``max_boxes`` boxes at or above the display score, sorted by score and numbered as on the image.
"""

from __future__ import annotations

from cadpipe.pipelines.outputs.calls import at_or_above, pct, relation, shown_pair

__all__ = ["classification_findings", "multilabel_findings", "class_calls", "PLAIN_CALLS", "REPORTED_CALLS",
           "row_calls", "threshold_phrase",
           "heatmap_caption", "segmentation_finding", "segmentation_caption", "select_boxes", "detection_findings",
           "detection_caption", "NO_FINDING", "HEATMAP_COLOURS"]

NO_FINDING = "No Finding"

#: How a kind words its calls (the task kind chooses, :attr:`cadpipe.pipelines.kinds.base.TaskKind.call_words`):
#: ``positive``/``negative``: the word for each call; ``no_finding_note``: explain a ``No Finding`` at or above its
#: threshold that is not reported; ``positives_are_findings``: the positive classes are listed as findings, so the
#: probability table only shows the others.
PLAIN_CALLS = {"positive": "positive", "negative": "negative", "no_finding_note": False,
               "positives_are_findings": False}
REPORTED_CALLS = {"positive": "reported", "negative": "not reported", "no_finding_note": True,
                  "positives_are_findings": True}


def _pct(p: float) -> str:
    return f"{float(p):.0%}"


def _name(n: str) -> str:
    return str(n).replace("_", " ")


def threshold_phrase(p: float, threshold: float) -> str:
    """``"probability 87.0%, at or above the operating threshold 42.0%"`` (:mod:`~cadpipe.pipelines.outputs.calls`:
    the same comparison and printed precision everywhere)."""
    shown_p, shown_t = shown_pair(p, threshold)
    return f"probability {shown_p}, {relation(p, threshold)} the operating threshold {shown_t}"


def class_calls(words: dict, names: list[str], probs: list[float], deciding: dict[str, float],
                predicted: str) -> list[dict]:
    """One entry per class, highest probability first: ``{"name", "probability", "threshold", "call", "word",
    "relation", "shown_probability", "shown_threshold", "note"}``, what the report's table, the captions and the
    portal print (they never compute a call themselves).

    ``words``: how the kind words its calls (:data:`PLAIN_CALLS`, :data:`REPORTED_CALLS`).
    ``deciding``: the thresholds that decide (the kind's ``threshold_columns``: every class of a multi-label model, the
    positive class of a binary one, none for multi-class arg-max); the other classes get ``threshold`` None.
    ``call``: ``"positive"`` for the classes in ``predicted`` (the row's column, from
    :func:`cadpipe.pipelines.inference.thresholds.decide`), else ``"negative"``. ``note`` explains a call the
    numbers alone do not (``No Finding`` at or above its threshold beside a pathology).
    """
    shown = {n for n in str(predicted).split(";") if n}
    out = []
    for n, p in sorted(zip(names, (float(v) for v in probs)), key=lambda np_: -np_[1]):
        t = float(deciding[n]) if n in deciding else None
        call = "positive" if n in shown else "negative"
        entry = {"name": n, "probability": p, "threshold": t, "call": call, "word": words[call], "note": ""}
        if t is None:
            entry.update(relation="", shown_probability=pct(p), shown_threshold="")
        else:
            sp, st = shown_pair(p, t)
            entry.update(relation=relation(p, t), shown_probability=sp, shown_threshold=st)
            if words.get("no_finding_note") and n == NO_FINDING and at_or_above(p, t) and call == "negative":
                entry["note"] = "not reported beside a pathology at or above its threshold"
        out.append(entry)
    return out


def row_calls(row: dict) -> list[dict]:
    """:func:`class_calls` of a results row (its ``prob_<class>`` columns, ``predicted``, the kind's ``_call_words``
    and the deciding ``_thresholds`` scoring stored): what the report and the portal print. Empty for rows without
    probabilities."""
    probs = {k[5:]: float(v) for k, v in row.items() if k.startswith("prob_") and v not in (None, "")}
    if not probs:
        return []
    return class_calls(row.get("_call_words") or PLAIN_CALLS, list(probs), list(probs.values()),
                       row.get("_thresholds") or {},
                       str(row.get("predicted", "") or ""))


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
        return [_call(pos, call, f"{_name(pos)}: {call} ({threshold_phrase(prob[pos], thr[pos])}).", prob, thr)]
    return [{"type": predicted, "probability": prob.get(predicted, 0.0), "threshold": None, "call": "positive",
             "text": f"Predicted class: {_name(predicted)} (probability {pct(prob.get(predicted, 0.0))}, the "
                     f"highest of {len(names)} classes)."}]


def multilabel_findings(names: list[str], probs: list[float], thresholds: dict[str, float],
                        predicted: str) -> list[dict]:
    """Findings of a multi-label result: one per pathology in ``predicted`` (the row's column, ``;``-joined), or
    one saying none is at or above its threshold."""
    prob = dict(zip(names, (float(p) for p in probs)))
    thr = {n: float(thresholds.get(n, 0.5)) for n in names}
    shown = [n for n in str(predicted).split(";") if n]
    if shown == [NO_FINDING] or not shown:
        return [{"type": "none", "call": "negative",
                 "text": "No pathology at or above its operating threshold."
                         + (f" No Finding: {pct(prob[NO_FINDING])}." if NO_FINDING in prob else "")}]
    return [_call(n, "positive", f"{_name(n)}: {threshold_phrase(prob[n], thr[n])}.", prob, thr)
            for n in sorted(shown, key=lambda n: -prob[n])]


HEATMAP_COLOURS = ("scaled to this image: no tint where there is least, then blue, green, yellow and red where there "
                   "is most")


def heatmap_caption(calls: list[dict], class_name: str, method: str = "Grad-CAM") -> str:
    """What a heat map shows, with the class's call as :func:`class_calls` made it and what its colours mean:
    ``"Grad-CAM for PNEUMONIA (positive: probability 87.0%, at or above the operating threshold 42.0%).
    Colours: where the model found evidence for PNEUMONIA; scaled to this image: ..."``."""
    c = next((c for c in calls if c["name"] == class_name), None)
    name = _name(class_name)
    colours = f"Colours: where the model found evidence for {name}; {HEATMAP_COLOURS}."
    if c is None:
        return f"{method} for {name}. {colours}"
    if c["threshold"] is None:  # multi-class arg-max (or the negative class of a binary model)
        rank = "the predicted class" if c["call"] == "positive" else "not the predicted class"
        return f"{method} for {name}, {rank} (probability {c['shown_probability']}). {colours}"
    word = c["word"]
    note = f"; {c['note']}" if c.get("note") else ""
    return (f"{method} for {name} ({word}: probability {c['shown_probability']}, {c['relation']} the operating "
            f"threshold {c['shown_threshold']}{note}). {colours}")


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
        return {"type": "lung", "text": f"Lung fields found (shaded red on the image): area {size}."}
    if not n_pixels:
        return {"type": "none", "text": f"No {_name(structure)} region was found."}
    return {"type": "lesion", "text": f"Possible {_name(structure)} found (shaded red on the image): "
                                      f"{'volume' if ndim == 3 else 'area'} {size}."}


def segmentation_caption(structure: str, ndim: int) -> str:
    what = "the lung fields" if str(structure).lower() in ("lung", "lungs") else f"possible {_name(structure)}"
    where = "the slice with the largest segmented area" if ndim == 3 else "the image"
    return f"Segmentation on {where}: red tint (half-transparent) = {what} as segmented by the model"


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

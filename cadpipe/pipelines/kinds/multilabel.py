"""Multi-label classification (e.g. ChestX-ray14): one sigmoid probability per pathology, every class at or above
its operating threshold is a finding.

What differs from :mod:`~cadpipe.pipelines.kinds.classification`: ``predicted`` joins the findings with ``;``
(``No Finding`` only when no pathology is above threshold); every class's threshold decides; one finding per
pathology; with the bundle's ``cam_threshold``, a heat map per class above its threshold
(``<unit>_heatmap_<class>.png``, listed in the ``heatmaps`` column); labels are multi-hot in training.
"""

from __future__ import annotations

import numpy as np

from cadpipe.pipelines.kinds.base import UnitOutputs
from cadpipe.pipelines.kinds.classification import Classification
from cadpipe.pipelines.outputs.findings import NO_FINDING, REPORTED_CALLS

__all__ = ["MultiLabel"]


class MultiLabel(Classification):
    name = "multilabel"
    call_words = REPORTED_CALLS  # findings are "reported"; a No Finding above its threshold beside one is explained

    def decide(self, names: list[str], probs, ops) -> dict:
        from cadpipe.pipelines.outputs.calls import at_or_above

        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        above = [n for n, v in zip(names, p) if at_or_above(v, ops.threshold(n))]
        findings = [n for n in above if n != NO_FINDING]
        if not findings and NO_FINDING in above:
            findings = [NO_FINDING]
        return {"predicted": ";".join(findings), "above": findings}

    def threshold_columns(self, names: list[str], thresholds: dict[str, float], ops) -> dict[str, float]:
        return dict(thresholds)

    def findings(self, names, probs, thresholds, positive_class, predicted) -> list[dict]:
        from cadpipe.pipelines.outputs.findings import multilabel_findings

        return multilabel_findings(names, probs, thresholds, predicted)

    def cam_classes(self, runner, probs, skip: tuple[str, ...] = (NO_FINDING,)) -> list[int]:
        """Indices of the classes (``skip`` left out) at or above their operating threshold (saved with the
        model), else at or above the bundle's ``cam_threshold``; none when the bundle sets no ``cam_threshold``."""
        from cadpipe.pipelines.outputs.calls import at_or_above

        if runner.cam_threshold is None or not runner.cam_layers:
            return []
        names = runner.class_names
        limit = (lambda i: runner.thresholds.threshold(names[i])) if runner.thresholds.saved and names else \
            (lambda i: runner.cam_threshold)
        return [i for i, p in enumerate(np.asarray(probs, dtype=np.float64).reshape(-1))
                if at_or_above(p, limit(i)) and not (i < len(names) and names[i] in skip)]

    def target_labels(self, label: np.ndarray) -> np.ndarray:
        return label

    def thresholds_to_save(self, chosen: dict, names: list[str], positive_class: str | None) -> dict:
        return chosen

    def _heatmaps(self, u: UnitOutputs, names: list[str], probs: list[float], thr: dict) -> list[str]:
        per_class = super()._heatmaps(u, names, probs, thr)
        if u.runner.cam_threshold is not None:
            u.row["heatmaps"] = ";".join(per_class)
        return per_class

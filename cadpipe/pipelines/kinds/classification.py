"""Classification (binary or multi-class): a probability vector per image, one call at the operating thresholds.

- columns: ``prob_<class>`` and ``predicted`` (:meth:`Classification.decide`);
- files: the Grad-CAM heat map of the explained class over the image (``<unit>_heatmap.png``; without
  ``cam_layers`` a plain ``<unit>_image.png`` that illustrates the report);
- report: one finding (binary: the positive class's call; multi-class: the predicted class), the thresholds note;
- DICOM SR: the probabilities and the predicted class; MONAI Label: probabilities + the heat map as label image;
- batched scoring: the activation batched on the device.
"""

from __future__ import annotations

import numpy as np

from cadpipe.pipelines.kinds.base import TaskKind, UnitOutputs

__all__ = ["Classification"]


class Classification(TaskKind):
    name = "classification"
    monailabel_type = "classification"
    heatmaps = True
    batched_output = "probabilities"
    thresholds = True

    # -- calls ----------------------------------------------------------------------------------------------
    def decide(self, names: list[str], probs, ops) -> dict:
        """Calls for one image: ``{"predicted": str, "above": [names at or above their threshold]}``; binary with
        saved thresholds: the positive class when at or above its threshold, else the other; otherwise arg-max.
        ``ops``: the model's :class:`~cadpipe.pipelines.inference.thresholds.OperatingThresholds`."""
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        above = [n for n, v in zip(names, p) if v >= ops.threshold(n)]
        if len(names) == 2 and ops.saved:
            pos = ops.positive_class if ops.positive_class in names else names[1]
            other = names[1 - names.index(pos)]
            is_pos = p[names.index(pos)] >= ops.threshold(pos)
            return {"predicted": pos if is_pos else other, "above": [pos] if is_pos else []}
        return {"predicted": names[int(p.argmax())] if p.size else "", "above": above}

    def columns(self, runner, out: dict) -> dict:
        import torch

        pred = out["pred"]
        if isinstance(pred, np.ndarray):  # batched scoring: a row of the batch's one host copy
            probs = pred.astype(np.float32, copy=False).reshape(-1)
        else:
            probs = np.asarray(torch.as_tensor(pred).detach().cpu().float()).reshape(-1)
        names = runner.class_names if len(runner.class_names) == probs.size else [str(i) for i in range(probs.size)]
        row = {f"prob_{n}": p for n, p in zip(names, probs.tolist())}
        row["predicted"] = self.decide(names, probs, runner.thresholds)["predicted"]
        return row

    def threshold_columns(self, names: list[str], thresholds: dict[str, float], ops) -> dict[str, float]:
        """The thresholds that decide: the positive class (binary), none (multi-class: arg-max)."""
        if len(names) == 2:
            pos = ops.positive_class if ops.positive_class in names else names[1]
            return {pos: thresholds[pos]}
        return {}

    def findings(self, names, probs, thresholds, positive_class, predicted) -> list[dict]:
        from cadpipe.pipelines.outputs.findings import classification_findings

        return classification_findings(names, probs, thresholds, positive_class, predicted)

    # -- training -------------------------------------------------------------------------------------------
    def target_labels(self, label: np.ndarray) -> np.ndarray:
        """A validation label (an index or one-hot) as the class index thresholds are chosen against."""
        return np.asarray(int(label.argmax()) if label.size > 1 else int(label[0]))

    def thresholds_to_save(self, chosen: dict, names: list[str], positive_class: str | None) -> dict:
        """Binary: only the positive class's threshold decides; multi-class: every class's one-vs-rest one."""
        return {positive_class: chosen[positive_class]} if len(names) == 2 else chosen

    # -- outputs --------------------------------------------------------------------------------------------
    def write_unit(self, u: UnitOutputs) -> None:
        runner, row = u.runner, u.row
        names = [k[5:] for k in row if k.startswith("prob_")]
        probs = [row[f"prob_{n}"] for n in names]
        ops = runner.thresholds
        thr = {n: ops.threshold(n) for n in names}
        u.findings += self.findings(names, probs, thr, ops.positive_class or runner.positive_class, row["predicted"])
        if ops.note:
            u.findings.append({"type": "note", "text": ops.note[0].upper() + ops.note[1:] + "."})
        u.extra.update({"_task": self.name, "_thresholds": self.threshold_columns(names, thr, ops)})
        self._heatmaps(u, names, probs, thr)

    def _heatmaps(self, u: UnitOutputs, names: list[str], probs: list[float], thr: dict) -> list[str]:
        """The unit's heat map (or plain image) and the per-class ones (:meth:`cam_classes`); returns the paths of
        the per-class ones."""
        import torch

        from cadpipe.pipelines.outputs.findings import heatmap_caption
        from cadpipe.pipelines.outputs.output_names import safe_name
        from cadpipe.pipelines.outputs.report import overlay_png

        runner, pre_item = u.runner, u.pre_item
        heat = pre_item.get("_heatmap")
        cam_idx = runner.cam_class()
        cam_idx = cam_idx if cam_idx is not None else int(np.argmax(probs))
        if heat is None and runner.cam_layers:
            heat = runner.heatmap(pre_item, class_index=cam_idx)
        per_class_cams = self.cam_classes(runner, probs)
        plain = u.info.get("plain_images", True)
        image = None
        if heat is not None or plain or per_class_cams:  # an overlay will be drawn
            image = np.asarray(torch.as_tensor(pre_item["image"]).detach().cpu().float())
            image = image.mean(0) if image.ndim == runner.spatial_dims + 1 else image
        if heat is not None or plain:  # a plain image PNG only illustrates the report
            png = u.path("heatmap.png" if heat is not None else "image.png")
            overlay_png(image, heatmap=heat, path=png, durable=False)
            cam_name = names[cam_idx] if cam_idx < len(names) else str(cam_idx)
            u.add_overlay(png, heatmap_caption(cam_name, probs[cam_idx], thr.get(cam_name, 0.5)) if heat is not None
                          else "The image as analysed (no heat map)")
        per_class = []
        for ci in per_class_cams:
            n = runner.class_names[ci]
            cpng = u.path(f"heatmap_{safe_name(n)}.png")
            overlay_png(image, heatmap=runner.heatmap(pre_item, class_index=ci), path=cpng, durable=False)
            u.add_overlay(cpng, heatmap_caption(n, probs[ci], thr.get(n, 0.5)))
            per_class.append(u.rel(cpng))
        return per_class

    def sr_content(self, row: dict, outputs: dict, out_dir: str, bundle: dict) -> dict:
        return {"probabilities": {k[5:]: float(v) for k, v in row.items() if k.startswith("prob_")},
                "predicted": [p for p in str(row.get("predicted") or "").split(";") if p],
                "thresholds": dict(row.get("_thresholds") or {})}

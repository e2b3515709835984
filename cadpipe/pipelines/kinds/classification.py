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
from cadpipe.pipelines.outputs.findings import PLAIN_CALLS

__all__ = ["Classification"]


class Classification(TaskKind):
    name = "classification"
    monailabel_type = "classification"
    heatmaps = True
    batched_output = "probabilities"
    thresholds = True
    call_words = PLAIN_CALLS  # how the report words a call (outputs/findings.py)

    # -- calls ----------------------------------------------------------------------------------------------
    def decide(self, names: list[str], probs, ops) -> dict:
        """Calls for one image: ``{"predicted": str, "above": [names at or above their threshold]}``; binary: the
        positive class when at or above its threshold (0.5 when none is saved: positive at a 0.5 / 0.5 tie), else
        the other; multi-class: arg-max. The comparison is :func:`cadpipe.pipelines.outputs.calls.at_or_above`.
        ``ops``: the model's :class:`~cadpipe.pipelines.inference.thresholds.OperatingThresholds`."""
        from cadpipe.pipelines.outputs.calls import at_or_above

        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        above = [n for n, v in zip(names, p) if at_or_above(v, ops.threshold(n))]
        if len(names) == 2:
            pos = ops.positive_class if ops.positive_class in names else names[1]
            other = names[1 - names.index(pos)]
            is_pos = at_or_above(p[names.index(pos)], ops.threshold(pos))
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
        u.extra.update({"_task": self.name, "_thresholds": self.threshold_columns(names, thr, ops),
                        "_call_words": self.call_words})
        self._heatmaps(u, names, probs, thr)

    def _heatmaps(self, u: UnitOutputs, names: list[str], probs: list[float], thr: dict) -> list[str]:
        """The unit's heat map (or plain image) and the per-class ones (:meth:`cam_classes`), each drawn on the image
        as loaded (its own grid and aspect ratio; ``<unit>_image.png`` beside them), captioned with the calls of
        :func:`~cadpipe.pipelines.outputs.findings.class_calls`; returns the paths of the per-class ones."""
        import torch

        from cadpipe.pipelines.kinds.base import explained_class, on_input_grid, original_image
        from cadpipe.pipelines.outputs.findings import class_calls, heatmap_caption
        from cadpipe.pipelines.outputs.output_names import safe_name
        from cadpipe.pipelines.outputs.report import overlay_png

        runner, pre_item = u.runner, u.pre_item
        calls = class_calls(self.call_words, names, probs, u.extra.get("_thresholds") or {}, u.row["predicted"])
        heat = pre_item.get("_heatmap")
        cam_idx = runner.cam_class()
        cam_idx = cam_idx if cam_idx is not None else explained_class(names, probs, u.row["predicted"])
        if heat is None and runner.cam_layers:
            heat = self._heatmap_or_note(u, cam_idx)
        per_class_cams = self.cam_classes(runner, probs)
        plain = u.info.get("plain_images", True)
        image = None
        if heat is not None or plain or per_class_cams:  # an overlay will be drawn
            image = original_image(runner, u.unit, pre_item, colour=True)
            if image is None:  # not loadable again: the model's input
                image = np.asarray(torch.as_tensor(pre_item["image"]).detach().cpu().float())
                image = image.mean(0) if image.ndim == runner.spatial_dims + 1 else image
        if heat is not None or plain:  # a plain image PNG only illustrates the report
            png = u.path("heatmap.png" if heat is not None else "image.png")
            plain_png = u.path("image.png") if heat is not None else None
            overlay_png(image, heatmap=on_input_grid(runner, pre_item, heat, image) if heat is not None else None,
                        path=png, durable=False, plain_path=plain_png)
            if plain_png:
                u.outputs["image"] = u.rel(plain_png)
            cam_name = names[cam_idx] if cam_idx < len(names) else str(cam_idx)
            u.add_overlay(png, heatmap_caption(calls, cam_name) if heat is not None
                          else "The image as analysed (no heat map)")
        per_class = []
        for ci in per_class_cams:
            n = runner.class_names[ci]
            cpng = u.path(f"heatmap_{safe_name(n)}.png")
            class_heat = self._heatmap_or_note(u, ci)
            if class_heat is None:
                continue
            overlay_png(image, heatmap=on_input_grid(runner, pre_item, class_heat, image), path=cpng, durable=False)
            u.add_overlay(cpng, heatmap_caption(calls, n))
            per_class.append(u.rel(cpng))
        return per_class

    @staticmethod
    def _heatmap_or_note(u: UnitOutputs, class_index: int):
        """The unit's Grad-CAM map for ``class_index``, or None with the reason in the row's ``warnings`` when the
        network cannot run on the whole preprocessed image (smaller than its pooling stages, e.g. a 3x3-pixel
        secondary capture through a bundle that classifies by padded patches: the prediction stands, the map
        cannot be made)."""
        import torch

        try:
            return u.runner.heatmap(u.pre_item, class_index=class_index)
        except torch.cuda.OutOfMemoryError:
            raise  # the device, not the image: the unit fails as it did
        except RuntimeError as err:
            size = "x".join(str(int(v)) for v in torch.as_tensor(u.pre_item["image"]).shape[1:])
            u.warn(f"no heat map: the network cannot take the whole {size}-pixel image ({str(err).strip()[:160]})")
            return None

    def sr_content(self, row: dict, outputs: dict, out_dir: str, bundle: dict) -> dict:
        return {"probabilities": {k[5:]: float(v) for k, v in row.items() if k.startswith("prob_")},
                "predicted": [p for p in str(row.get("predicted") or "").split(";") if p],
                "thresholds": dict(row.get("_thresholds") or {})}

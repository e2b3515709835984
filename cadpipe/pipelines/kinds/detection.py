"""Detection (e.g. mammographic masses): boxes with labels and scores (and malignancy when the bundle gives it)
per image, from the bundle's own detector (anchors, NMS).

- columns: ``n_findings`` (boxes shown: score at or above ``overlay_min_score``, at most ``max_boxes_shown``),
  ``top_score``, ``top_malignancy``;
- files: every candidate box in ``<unit>_boxes.json`` (xyxy pixels of the image as loaded), the shown boxes
  numbered on the image as loaded (``<unit>_overlay.png``); report: one finding per shown box;
- DICOM SR: the boxes; MONAI Label: its own detection task; no batched scoring path (the detector has its own).
"""

from __future__ import annotations

import json

import numpy as np

from cadpipe.pipelines.kinds.base import TaskKind, UnitOutputs, display_image

__all__ = ["Detection"]


def _values(out: dict, key: str) -> np.ndarray:
    import torch

    return np.asarray(torch.as_tensor(out.get(key, [])).detach().cpu().float())


class Detection(TaskKind):
    name = "detection"
    monailabel_type = "detection"

    def build_detector(self, parser):
        """MONAI detection bundles expose ``detector`` (as MONAI Label reads them) and ``detector_ops``."""
        if "detector" not in parser:
            return None
        detector = parser.get_parsed_content("detector")
        if "detector_ops" in parser:
            parser.get_parsed_content("detector_ops")
        detector.eval()
        return detector

    def columns(self, runner, out: dict) -> dict:
        scores = _values(out, "score").reshape(-1)
        shown = min(int((scores >= runner.display_min_score).sum()), runner.max_boxes_shown)
        row = {"n_findings": shown, "top_score": float(scores.max()) if scores.size else 0.0}
        if "malignancy" in out and scores.size:
            row["top_malignancy"] = float(_values(out, "malignancy").reshape(-1).max())
        return row

    @staticmethod
    def boxes(runner, out: dict) -> list[dict]:
        """Every candidate box: ``{"box": xyxy, "label": class name, "score"[, "malignancy"]}``."""
        names = runner.class_names
        boxes = [{"box": b, "label": names[int(l)] if int(l) < len(names) else int(l), "score": s}
                 for b, l, s in zip(_values(out, "box").tolist(), _values(out, "label").tolist(),
                                    _values(out, "score").tolist())]
        if "malignancy" in out:
            for b, m in zip(boxes, _values(out, "malignancy").tolist()):
                b["malignancy"] = m
        return boxes

    def write_unit(self, u: UnitOutputs) -> None:
        from cadpipe.pipelines.outputs.files import atomic_write_text
        from cadpipe.pipelines.outputs.findings import detection_caption, detection_findings, select_boxes
        from cadpipe.pipelines.outputs.report import overlay_png

        runner = u.runner
        boxes = self.boxes(runner, u.out)
        shown_boxes = select_boxes(boxes, runner.display_min_score, runner.max_boxes_shown)
        js = u.path("boxes.json")
        atomic_write_text(js, json.dumps({"format": "xyxy (col_min,row_min,col_max,row_max) pixels", "boxes": boxes},
                                         indent=1), durable=False)
        u.outputs["boxes"] = u.rel(js)
        png = u.path("overlay.png")
        try:  # boxes are in the original pixel grid: show the image as loaded, before any resizing
            from cadpipe.transforms import LoadStudyImage

            shown = np.asarray(LoadStudyImage(mode="gray")(u.unit.image))[0]
        except Exception:  # noqa: BLE001
            shown = display_image(runner, u.pre_item, None)
        overlay_png(shown, boxes=shown_boxes, path=png, durable=False)
        u.add_overlay(png, detection_caption(shown_boxes, runner.display_min_score))
        u.findings += detection_findings(shown_boxes, runner.display_min_score)

    def sr_content(self, row: dict, outputs: dict, out_dir: str, bundle: dict) -> dict:
        if not outputs.get("boxes"):
            return {}
        import os

        with open(os.path.join(out_dir, outputs["boxes"]), encoding="utf-8") as f:
            return {"boxes": json.load(f)["boxes"]}

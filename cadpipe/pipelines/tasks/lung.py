"""Pieces of ``bundles/cxr_lung_segmentation`` that are not transforms: the output writer (lung mask PNG + NIfTI and
the lung box JSON) and an ignite handler writing the evaluator's metrics to ``metrics.json``."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

from cadpipe.pipelines.tasks.segmentation import SaveMaskd, _stem

__all__ = ["LungMaskWriter", "MetricsJSONWriter"]


def _fname(x) -> str:
    return str((getattr(x, "meta", None) or {}).get("filename_or_obj", ""))


class LungMaskWriter:
    """Writer for one decollated item after the bundle's postprocessing (``pred`` = ``(1, X, Y)`` lung mask in the
    input's geometry, ``lung_box``/``lung_found`` from :class:`cadpipe.transforms.LungBoxd`).

    Writes ``<output_dir>/<stem>_lung.png`` (0/255, rows x cols), ``<stem>_lung.nii.gz`` (uint8, the input's affine)
    and ``<stem>_lung_box.json`` (``{"image", "box_xyxy", "lung_found", "mask_png", "mask_nifti"}``; box in original
    pixels, ``xyxy`` = col_min, row_min, col_max, row_max). Returns the item with ``lung_mask_png``/``lung_box_json``.
    """

    def __init__(self, output_dir: str = "./outputs", key: str = "pred", image_key: str = "image",
                 write_png: bool = True, write_nifti: bool = True):
        self.output_dir, self.key, self.image_key = output_dir, key, image_key
        self.write_png, self.write_nifti = write_png, write_nifti

    def __call__(self, data):
        d = dict(data)
        x = d[self.key]
        src = _fname(d.get(self.image_key)) or _fname(x)
        stem = _stem(src)
        os.makedirs(self.output_dir, exist_ok=True)
        arr = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))[0] > 0
        png = nii = None
        if self.write_png:
            png = os.path.join(self.output_dir, f"{stem}_lung.png")
            Image.fromarray((arr.T * 255).astype(np.uint8)).save(png)  # (X, Y) -> rows x cols
        if self.write_nifti:
            nii = SaveMaskd(keys=self.key, output_dir=self.output_dir, postfix="lung", image_key=self.image_key)(d)[
                f"{self.key}_path"]
        box = [float(v) for v in d.get("lung_box", [])]
        rec = {"image": src, "box_xyxy": box, "lung_found": bool(d.get("lung_found", bool(box))),
               "mask_png": png, "mask_nifti": nii, "image_size_cols_rows": [int(arr.shape[0]), int(arr.shape[1])]}
        path = os.path.join(self.output_dir, f"{stem}_lung_box.json")
        with open(path, "w") as f:
            json.dump(rec, f, indent=1)
        d["lung_mask_png"], d["lung_box_json"] = png, path
        return d


class MetricsJSONWriter:
    """Ignite handler: when the engine completes, write ``engine.state.metrics`` (+ ``n`` items, + ``extra``) to
    ``<output_dir>/<name>``."""

    def __init__(self, output_dir: str, name: str = "metrics.json", extra: dict | None = None):
        self.output_dir, self.name, self.extra = output_dir, name, dict(extra or {})

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        m = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float, np.floating, torch.Tensor))}
        m["n"] = len(engine.data_loader.dataset) if hasattr(engine.data_loader, "dataset") else None
        m.update(self.extra)
        with open(os.path.join(self.output_dir, self.name), "w") as f:
            json.dump(m, f, indent=1)

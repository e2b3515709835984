"""MONAI Label 0.8.5 infer tasks for the app that ``cadpipe monailabel-app`` assembles.

Imported by the app's patched ``main.py`` inside the MONAI Label venv (it needs ``monailabel``; the main cadpipe
venv never imports this module). ``infer_task(name, path, conf)`` gives, per bundle:

- classification bundles (``classification`` in the folder name; single- and multi-label):
  :class:`ClassificationCAMInferTask` — the result JSON holds the bundle's probabilities (MONAI Label's
  ``ClassificationWriter`` format ``{"prediction": [{"idx", "label", "score"}, ...]}``) plus ``cam_class`` and
  ``operating_thresholds`` (``predicted`` and per class ``score``/``threshold``/``call`` from the thresholds saved
  with the weights, :func:`cadpipe.pipelines.inference.thresholds.result_calls`; 0.5 and a ``note`` without), and
  the label image is the Grad-CAM heatmap of one class (``cadpipe.pipelines.inference.heatmaps.compute_cam`` on the bundle's
  ``cam_layers``) brought back to the input's geometry by inverting the bundle's ``preprocessing`` (``Invertd``),
  scaled to ``uint8`` 0..255. The class is the request's ``cam_class`` (index or label name) or the top-scoring one;
- segmentation bundles: :class:`SegmentationInferTask` — MONAI Label's ``BundleInferTask`` whose writer drops
  the channel of a one-channel 2D label ``(1, X, Y)`` and writes it as ``uint8`` (MONAI Label's ``Writer`` would
  hand ITK a 3D float image, which a PNG input's ``.png`` label cannot hold: HTTP 500); volumes are unchanged;
- detection bundles: MONAI Label's own ``BundleInferTask``, unchanged.

Why a task and not a bundle transform: MONAI Label's ``BundleInferTask`` appends ``Restored`` (a resize back to
the image size) to non-detection postprocessing, which fails on a class vector, and its classification writer
writes no file. See ``docs/monailabel.md``.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Resize
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.writer import Writer

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.inference.bundle_runner import file_sha256
from cadpipe.pipelines.inference.heatmaps import compute_cam
from cadpipe.pipelines.inference.thresholds import load_thresholds, result_calls
from cadpipe.pipelines.monailabel.app import cam_class_index, cam_to_label, monailabel_type

__all__ = ["ClassificationCAMInferTask", "SegmentationInferTask", "infer_task"]

logger = logging.getLogger(__name__)
CAM_KEY = "cam"


def infer_task(name: str, path: str, conf: dict):
    """The infer task for the bundle folder ``path`` named ``name`` (what the patched ``main.py`` calls)."""
    # by the type MONAI Label gives the folder name, which ``cadpipe monailabel-app`` checked against the bundle's
    # task kind (TaskKind.monailabel_type); detection bundles get MONAI Label's own task
    return _INFER_TASKS.get(monailabel_type(name), BundleInferTask)(path, conf)


class SegmentationInferTask(BundleInferTask):
    """``BundleInferTask`` that writes a one-channel 2D label ``(1, X, Y)`` as a 2D ``uint8`` image."""

    def writer(self, data, extension=None, dtype=None):
        pred = data[self.output_label_key]
        if getattr(pred, "ndim", 0) == 3 and pred.shape[0] == 1:
            data[self.output_label_key] = np.asarray(torch.as_tensor(pred)[0].detach().cpu()).astype(np.uint8)
            dtype = dtype or data.get("result_dtype") or np.uint8
        return super().writer(data, extension=extension, dtype=dtype)


class ClassificationCAMInferTask(BundleInferTask):
    """``BundleInferTask`` for a classification bundle: probabilities in the JSON, Grad-CAM as the label image.

    The bundle must expose ``cam_layers`` in ``inference.json`` (or ``metadata.json`` ``cadpipe.cam_layers``).
    """

    def __init__(self, path: str, conf: dict, **kwargs):
        kwargs.setdefault("add_post_restore", False)  # no Restored on a class vector
        super().__init__(path, conf, **kwargs)
        if not self.valid:
            return
        layers = self.bundle_config.get("cam_layers")
        if not layers:
            with open(os.path.join(path, "configs", "metadata.json"), encoding="utf-8") as fp:
                layers = (json.load(fp).get("cadpipe") or {}).get("cam_layers")
        if not layers:  # cadpipe monailabel-app refuses such a bundle; here for apps assembled by hand
            raise CadpipeInputError(os.path.join(path, "configs", "inference.json"),
                                    "classification bundle without cam_layers (inference.json or metadata.json)")
        self.cam_layers = layers
        # the operating thresholds saved with the weights decide the calls (as in cadpipe score and the portal)
        with open(os.path.join(path, "configs", "metadata.json"), encoding="utf-8") as fp:
            self.cadpipe_task = (json.load(fp).get("cadpipe") or {}).get("task", "classification")
        model = os.path.join(path, "models", "model.pt")
        self.thresholds = load_thresholds(model, file_sha256(model) if os.path.isfile(model) else None)

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        data = super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)
        network = self._get_network(device, data)
        logits = torch.as_tensor(data[self.output_label_key]).detach().float().reshape(-1).cpu()
        idx = cam_class_index(data.get("cam_class"), logits, self.labels)
        image = data[self.input_key]
        x = torch.as_tensor(image).to(torch.device(device))
        cam = compute_cam(network, x, self.cam_layers, class_idx=idx)  # (X, Y) in [0, 1], preprocessed grid
        data[CAM_KEY] = MetaTensor(torch.as_tensor(cam)[None])  # a MetaTensor: Invertd takes the image's trace
        data["cam_class"] = idx
        return data

    def post_transforms(self, data=None):
        post = list(super().post_transforms(data))
        pre = None
        for k in self.const.key_preprocessing():
            if self.bundle_config.get(k):
                pre = self.bundle_config.get_parsed_content(k, instantiate=True)  # the instance the pre-run used
                break
        if pre is not None:
            pre = pre if isinstance(pre, Compose) else Compose(pre)
            post.append(Invertd(keys=CAM_KEY, transform=pre, orig_keys=self.input_key, nearest_interp=False,
                                to_tensor=True))
        post.append(_CamToLabel(self.input_key))
        return post

    def writer(self, data, extension=None, dtype=None):
        _, result = super().writer(data, extension=extension, dtype=dtype)  # ClassificationWriter: probabilities
        idx = int(data["cam_class"])
        names = {v: k for k, v in self.labels.items()} if isinstance(self.labels, dict) else {}
        result["cam_class"] = {"idx": idx, "label": names.get(idx, f"label_{idx}"), "layer": self.cam_layers}
        probs = torch.as_tensor(data[self.output_label_key]).detach().float().reshape(-1).cpu().numpy()
        class_names = [names.get(i, f"label_{i}") for i in range(probs.size)]
        result["operating_thresholds"] = result_calls(self.cadpipe_task, class_names, probs, self.thresholds)
        path = str(data.get("image_path") or "")
        if not data.get("result_extension") and path.lower().endswith((".jpg", ".jpeg")):
            data["result_extension"] = ".png"  # a heatmap must not go through lossy JPEG
        label_file, _ = Writer(label=CAM_KEY, ref_image=CAM_KEY)(data)
        return label_file, result


_INFER_TASKS = {"classification": ClassificationCAMInferTask, "segmentation": SegmentationInferTask}


class _CamToLabel:
    """Last post transform: the (inverted) CAM resized to the input's original spatial shape when it still
    differs (preprocessing that is not invertible), channel dropped, as ``uint8`` 0..255."""

    def __init__(self, image_key: str):
        self.image_key = image_key

    def __call__(self, data):
        d = dict(data)
        cam = d[CAM_KEY]
        image = d[self.image_key]
        meta = image.meta if isinstance(image, MetaTensor) else d.get(f"{self.image_key}_meta_dict", {})
        want = [int(s) for s in meta.get("spatial_shape", cam.shape[1:])]
        cam = torch.as_tensor(cam).float()
        if list(cam.shape[1:]) != want:
            logger.debug(f"CAM {tuple(cam.shape[1:])} resized to the input's {tuple(want)}")
            cam = Resize(spatial_size=want, mode="bilinear")(cam)
        label = cam_to_label(torch.as_tensor(cam)[0].cpu().numpy())
        affine = cam.affine if isinstance(cam, MetaTensor) else meta.get("affine")
        d[CAM_KEY] = MetaTensor(torch.as_tensor(label), affine=affine) if label.ndim > 2 else label
        return d

"""Detection glue for the mammography bundle: network, Ignite train/eval steps, metrics, writers.

Design (documented in ``bundles/mammo_mass_detection/docs/README.md``): MONAI ``RetinaNet`` with **two classes**
(0 benign, 1 malignant). After the detector's per-class NMS, :class:`DetectionMalignancyd` merges the two classes'
boxes class-agnostically: each kept box has ``score`` = the best class score (how mass-like) and ``malignancy`` =
s_malignant / (s_benign + s_malignant) over the raw detections overlapping it (IoU >= 0.5); ``label`` =
``malignancy >= 0.5``. Metrics are class-agnostic mass detection (FROC, COCO mAP/mAR) plus per-finding
malignancy AUC.

Axis convention: images ``(C, X=cols, Y=rows)``, boxes xyxy (col_min, row_min, col_max, row_max).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou, non_max_suppression
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy, convert_to_tensor

from cadpipe.errors import CadpipeInputError

__all__ = [
    "RetinaNetDetector",
    "ResNetFPN",
    "build_retinanet",
    "mammo_datalist",
    "DetectionTrainer",
    "DetectionEvaluator",
    "DetectionMetrics",
    "DetectionMalignancyd",
    "DetectionJSONWriterd",
    "DetectionOverlayWriterd",
    "detection_metrics",
    "froc",
    "output_name",
    "CLASS_NAMES",
    "FP_RATES",
]

logger = logging.getLogger(__name__)
CLASS_NAMES = ["benign", "malignant"]
FP_RATES = (0.25, 0.5, 1, 2, 4)
IMAGE_EXTS = (".ljpeg", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz")


class ResNetFPN(torch.nn.Module):
    """ResNet stages + MONAI ``FeaturePyramidNetwork`` (what MONAI's ``BackboneWithFPN`` builds, without the
    torchvision ``IntermediateLayerGetter`` it imports; torchvision is not a cadpipe dependency).

    ``forward(x)`` returns the FPN maps, highest resolution first, plus a max-pooled extra level.
    """

    def __init__(self, backbone, returned_layers=(1, 2, 3), in_channels_list=(), out_channels: int = 256, spatial_dims: int = 2):
        super().__init__()
        from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
        last = f"layer{max(returned_layers)}"
        body = torch.nn.ModuleDict()
        for name, module in backbone.named_children():
            body[name] = module
            if name == last:
                break
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=spatial_dims,
            in_channels_list=list(in_channels_list),
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(spatial_dims),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}  # insertion-ordered, TorchScript-compatible
        for name, module in self.body.items():
            x = module(x)
            if name in self.return_layers:
                feats[self.return_layers[name]] = x
        return self.fpn(feats)


def build_retinanet(
    num_classes: int = 2,
    num_anchors: int = 3,
    n_input_channels: int = 1,
    layers=(2, 2, 2, 2),
    block_inplanes=(32, 64, 128, 256),
    returned_layers=(2, 3),
    fpn_channels: int = 128,
    conv1_t_stride: int = 2,
    size_divisible: int = 32,
):
    """MONAI 2D ``RetinaNet`` on a ResNet-FPN backbone (basic blocks, no pretrained weights).

    Default: feature maps at strides 8, 16 (``returned_layers`` 2, 3) plus 32 (max-pooled); the anchor
    generator's base shapes are multiplied by ``feature_map_scales`` = (1, 2, 4) across these levels.
    (A stride-4 level, ``returned_layers`` (1, 2, 3), costs ~4x more in the heads for small masses.)
    """
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.networks.nets.resnet import ResNet, ResNetBlock

    backbone = ResNet(
        block=ResNetBlock,
        layers=list(layers),
        block_inplanes=list(block_inplanes),
        n_input_channels=n_input_channels,
        conv1_t_stride=conv1_t_stride,
        conv1_t_size=7,
        spatial_dims=2,
        num_classes=1,
    )
    in_ch = [block_inplanes[k - 1] * ResNetBlock.expansion for k in returned_layers]
    fe = ResNetFPN(backbone, returned_layers, in_ch, fpn_channels, spatial_dims=2)
    return RetinaNet(
        spatial_dims=2,
        num_classes=num_classes,
        num_anchors=num_anchors,
        feature_extractor=fe,
        size_divisible=size_divisible,
    )


from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector as _RetinaNetDetector  # noqa: E402


class RetinaNetDetector(_RetinaNetDetector):
    """MONAI ``RetinaNetDetector`` whose anchor matching works without torchvision, with two fixes for
    sliding-window inference on images smaller than the inferer's ``roi_size``.

    - **torchvision-free matching**: MONAI's ``compute_anchor_matched_idxs`` first tests
      ``isinstance(matcher, torchvision Matcher)``, which raises when torchvision is absent (not a cadpipe
      dependency). This override supports MONAI's own ``ATSSMatcher`` only (``set_atss_matcher``).
    - **no centred padding by the inferer** (:meth:`forward`): ``sliding_window_inference`` pads an image smaller
      than ``roi_size`` symmetrically, by ``(roi - size) // 2`` in front. That offset is a multiple of 16 but not
      always of the coarsest feature stride (32), so the stitched stride-32 head maps are cropped back with a
      rounded half cell: a 256x160 image gives 8x4 maps instead of 8x5 (the anchors then disagree with the head
      outputs, or are spread with a wrong stride of 160 // 4 = 40). Here every image is first padded **at the end**
      (like MONAI's own ``size_divisible`` padding, which keeps pixel coordinates) up to ``roi_size``, so the
      inferer never pads; boxes are then clipped to the unpadded image.
    - **anchor cache keyed on the head maps too** (:meth:`generate_anchors`): MONAI regenerates anchors only when
      the padded batch shape changes. A training step (plain forward) and a sliding-window validation step on
      images of the same padded shape (batch size 1 in both) then shared anchors made for other feature maps.

    Everything else (hard-negative sampler, box coder, NMS, box selection) is MONAI's code unchanged.
    """

    def forward(self, input_images, targets=None, use_inferer: bool = False):
        if self.training or not use_inferer or self.inferer is None:
            return super().forward(input_images, targets, use_inferer)
        roi = getattr(self.inferer, "roi_size", None)
        if roi is None:
            return super().forward(input_images, targets, use_inferer)
        images = list(input_images) if isinstance(input_images, (list, tuple)) else list(input_images.unbind(0))
        roi = [int(r) for r in (roi if isinstance(roi, Sequence) else [roi] * self.spatial_dims)]
        sizes = [list(img.shape[-self.spatial_dims :]) for img in images]
        target = [max(max(s[k] for s in sizes), roi[k]) for k in range(self.spatial_dims)]
        padded = []
        for img in images:
            pad: list[int] = []
            for k in reversed(range(self.spatial_dims)):  # F.pad takes the last dimension first
                pad += [0, target[k] - img.shape[-self.spatial_dims + k]]
            padded.append(torch.nn.functional.pad(img, pad) if any(pad) else img)
        detections = super().forward(padded, targets, use_inferer)
        return [self._clip_to(d, s) for d, s in zip(detections, sizes)]

    def _clip_to(self, det: dict, spatial_size) -> dict:
        from monai.data.box_utils import clip_boxes_to_image

        boxes, keep = clip_boxes_to_image(det[self.target_box_key], spatial_size, remove_empty=True)
        out = dict(det)
        out[self.target_box_key] = boxes
        for k in (self.target_label_key, self.pred_score_key):
            out[k] = det[k][keep]
        return out

    def generate_anchors(self, images, head_outputs) -> None:
        maps = tuple(tuple(x.shape[2:]) for x in head_outputs[self.cls_key])
        key = (tuple(images.shape), maps)
        if self.anchors is None or self.previous_image_shape != key:
            self.anchors = self.anchor_generator(images, head_outputs[self.cls_key])
            self.previous_image_shape = key

    def compute_anchor_matched_idxs(self, anchors, targets, num_anchor_locs_per_level):
        from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher

        if not isinstance(self.proposal_matcher, ATSSMatcher):
            raise NotImplementedError("cadpipe's RetinaNetDetector needs set_atss_matcher() (torchvision-free)")
        matched = []
        for anchors_per_image, t in zip(anchors, targets):
            boxes = t[self.target_box_key]
            if boxes.numel() == 0:
                matched.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device))
                continue
            _, idx = self.proposal_matcher(
                boxes.to(anchors_per_image.device), anchors_per_image, num_anchor_locs_per_level, self.num_anchors_per_loc
            )
            matched.append(idx)
        return matched


# ---------------------------------------------------------------- data lists


def _image_files(root: Path) -> list[Path]:
    files = []
    for p in sorted(root.rglob("*")):
        name = p.name.lower()
        if p.is_file() and name.endswith(IMAGE_EXTS) and not name.startswith("."):
            files.append(p)
    return files


def output_name(path: str, name: str | None = None) -> str:
    """File stem the outputs are named after: ``A_0001_1.LEFT_CC.LJPEG`` -> ``A_0001_1.LEFT_CC``."""
    if name:
        return name
    base = os.path.basename(os.fspath(path).rstrip("/"))
    for ext in (".nii.gz", ".gz"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
    return os.path.splitext(base)[0] if "." in base else base


def mammo_datalist(
    dataset_dir: str,
    layout: str | None = "ddsm",
    split: str = "all",
    seed: int = 0,
    fractions=(0.7, 0.15, 0.15),
    labelled: bool = True,
) -> list[dict]:
    """Datalist for the bundle: ``layout`` ``ddsm`` (case folders), ``cbis`` (CSVs + DICOM) or ``images``/``None``
    (every image file under ``dataset_dir``, no labels). ``split`` ``train``/``val``/``test``/``all`` is a seeded
    patient-level split. Items carry ``image``, ``name``, ``box`` (N,4) and ``label`` (N) in original pixels.
    """
    from cadpipe.data.ddsm import split_by_patient

    root = Path(dataset_dir)
    if not root.exists():
        raise CadpipeInputError(root, "dataset_dir does not exist")
    layout = (layout or "images").lower()
    if layout == "ddsm":
        from cadpipe.data.ddsm import ddsm_datalist

        items = ddsm_datalist(root)
    elif layout == "cbis":
        from cadpipe.data.cbis import cbis_datalist

        csvs = sorted(root.rglob("*case_description*.csv"))
        if not csvs:
            raise CadpipeInputError(root, "no CBIS-DDSM *case_description*.csv under dataset_dir")
        items, _ = cbis_datalist(csvs, root)
        for it in items:
            it["name"] = Path(it["image"]).parts[-4] if len(Path(it["image"]).parts) >= 4 else None
    elif layout in ("images", "folder", "none"):
        if root.is_file():
            files = [root]
        else:
            files = _image_files(root)
        if not files:
            raise CadpipeInputError(root, "no image files found")
        items = [{"image": str(f), "patient_id": output_name(str(f))} for f in files]
        labelled = False
    else:
        raise CadpipeInputError(root, f"unknown dataset_layout {layout!r} (ddsm, cbis or images)")
    out = []
    for it in items:
        d = {"image": it["image"], "name": output_name(it["image"], it.get("name")), "patient_id": it["patient_id"]}
        if labelled:
            d["box"] = np.asarray(it["box"], np.float32).reshape(-1, 4)
            d["label"] = np.asarray(it["label"], np.int64)
            d["gt_box"], d["gt_label"] = d["box"].copy(), d["label"].copy()
        out.append(d)
    if split == "all":
        return out
    parts = split_by_patient(out, fractions, seed=seed)
    return parts[{"train": 0, "val": 1, "test": 2}[split]]


# ---------------------------------------------------------------- engines


def _to_list(batchdata):
    return batchdata if isinstance(batchdata, (list, tuple)) else [batchdata]


class DetectionTrainer(SupervisedTrainer):
    """Ignite trainer for a MONAI ``RetinaNetDetector`` (``network`` = the detector).

    Batches are lists of dicts (``monai.data.utils.no_collation``) holding ``image`` ``(C, X, Y)``, ``box``,
    ``label``. The step sums the detector's classification and box-regression losses
    (``cls_loss_weight`` on the former). Output: ``{"loss", "cls_loss", "box_reg_loss"}`` floats.
    """

    def __init__(self, *args, cls_loss_weight: float = 1.0, **kwargs):
        kwargs.setdefault("loss_function", None)
        super().__init__(*args, **kwargs)
        self.cls_loss_weight = cls_loss_weight

    def _iteration(self, engine, batchdata):
        items = _to_list(batchdata)
        det = engine.network
        images = [convert_to_tensor(d["image"], dtype=torch.float32).to(engine.state.device) for d in items]
        images = [i.as_tensor() if hasattr(i, "as_tensor") else i for i in images]
        targets = [
            {
                det.target_box_key: convert_to_tensor(d["box"], dtype=torch.float32).reshape(-1, 4).to(images[0].device),
                det.target_label_key: convert_to_tensor(d["label"], dtype=torch.long).reshape(-1).to(images[0].device),
            }
            for d in items
        ]
        det.train()
        engine.optimizer.zero_grad(set_to_none=True)
        losses = det(images, targets)
        cls_l, box_l = losses[det.cls_key], losses[det.box_reg_key]
        loss = self.cls_loss_weight * cls_l + box_l
        loss.backward()
        engine.optimizer.step()
        return {"loss": float(loss.detach()), "cls_loss": float(cls_l.detach()), "box_reg_loss": float(box_l.detach())}


class DetectionEvaluator(SupervisedEvaluator):
    """Ignite evaluator: runs the detector (sliding-window when ``use_inferer``) on each item and applies
    ``item_postprocessing`` (a pure ``Compose``, then optional writers) per item.

    Each output item holds the postprocessed ``box``/``label``/``score``/``malignancy`` plus whatever ground
    truth the item carried (``gt_box``, ``gt_label``). ``engine.state.output`` is the list of items.
    """

    def __init__(self, *args, detector=None, item_postprocessing=None, use_inferer: bool = True, **kwargs):
        network = kwargs.pop("network", None) or detector
        super().__init__(*args, network=network, **kwargs)
        self.detector = detector if detector is not None else network
        self.item_postprocessing = item_postprocessing
        self.use_inferer = use_inferer

    def _iteration(self, engine, batchdata):
        items = [dict(d) for d in _to_list(batchdata)]
        det = self.detector
        det.eval()
        device = engine.state.device
        images = [convert_to_tensor(d["image"], dtype=torch.float32).to(device) for d in items]
        images = [i.as_tensor() if hasattr(i, "as_tensor") else i for i in images]
        with torch.no_grad():
            outs = det(images, use_inferer=self.use_inferer)
        results = []
        for d, o in zip(items, outs):
            d["box"] = o[det.target_box_key].detach().cpu()
            d["label"] = o[det.target_label_key].detach().cpu()
            d["score"] = o[det.pred_score_key].detach().cpu()
            if self.item_postprocessing is not None:
                d = self.item_postprocessing(d)
            results.append(d)
        return results


# ---------------------------------------------------------------- postprocessing / writers


class DetectionMalignancyd(MapTransform):
    """Class-agnostic merge of a two-class (benign, malignant) detection into mass boxes with a malignancy.

    Reads ``box`` (N,4), ``label`` (N) and ``score`` (N) (or MONAI Label's ``label_scores``); writes ``box``, ``score`` (max class score),
    ``malignancy`` (s_mal / (s_ben + s_mal) over raw boxes with IoU >= ``iou`` to the kept box) and
    ``label`` (1 when malignancy >= 0.5). Pure; tensors in, tensors out.
    """

    def __init__(self, keys="box", nms_iou: float = 0.3, iou: float = 0.5, max_boxes: int = 100, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.nms_iou, self.iou, self.max_boxes = nms_iou, iou, max_boxes

    def __call__(self, data):
        d = dict(data)
        boxes = convert_to_tensor(d["box"], dtype=torch.float32).reshape(-1, 4)
        labels = convert_to_tensor(d["label"], dtype=torch.long).reshape(-1)
        # MONAI Label hands postprocessing the detector's raw key ``label_scores``; our engines write ``score``.
        raw = d["score"] if "score" in d else d["label_scores"]
        scores = convert_to_tensor(raw, dtype=torch.float32).reshape(-1)
        if boxes.shape[0] == 0:
            d.update(box=boxes, label=labels, score=scores, malignancy=scores.clone())
            return d
        keep = non_max_suppression(boxes, scores, self.nms_iou, max_proposals=self.max_boxes)
        kb = boxes[keep]
        ov = box_iou(kb, boxes) >= self.iou  # (K, N)
        s_mal = torch.where(ov & (labels == 1)[None], scores[None], torch.zeros(())).amax(1)
        s_ben = torch.where(ov & (labels == 0)[None], scores[None], torch.zeros(())).amax(1)
        mal = s_mal / (s_mal + s_ben).clamp_min(1e-8)
        d.update(box=kb, score=scores[keep], malignancy=mal, label=(mal >= 0.5).long())
        return d


def _records(d) -> list[dict]:
    box = convert_to_numpy(d["box"]).reshape(-1, 4)
    score = convert_to_numpy(d["score"]).reshape(-1)
    mal = convert_to_numpy(d.get("malignancy", np.full(len(score), np.nan))).reshape(-1)
    order = np.argsort(-score)
    return [
        {
            "box": [round(float(v), 2) for v in box[k]],
            "box_mode": "xyxy (col_min, row_min, col_max, row_max), original pixels",
            "score": float(score[k]),
            "label": CLASS_NAMES[int(mal[k] >= 0.5)],
            "malignant_probability": float(mal[k]),
            "benign_probability": float(1 - mal[k]),
        }
        for k in order
    ]


class DetectionJSONWriterd(MapTransform):
    """Writes ``<output_dir>/<name>.json``: a list (possibly empty) of boxes in original pixels with
    ``score``, ``label`` and benign/malignant probabilities. ``name`` from ``d["name"]`` or the image file."""

    def __init__(self, output_dir: str, keys="box", min_score: float = 0.0, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.min_score = output_dir, min_score

    def __call__(self, data):
        d = dict(data)
        os.makedirs(self.output_dir, exist_ok=True)
        recs = [r for r in _records(d) if r["score"] >= self.min_score]
        name = output_name(d.get("source_path", ""), d.get("name"))
        with open(os.path.join(self.output_dir, f"{name}.json"), "w") as f:
            json.dump(recs, f, indent=1)
        return d


class DetectionOverlayWriterd(MapTransform):
    """Writes ``<output_dir>/<name>_overlay.png``: the original image (re-read with ``LoadStudyImage``) with
    boxes whose score >= ``min_score`` drawn (red malignant, green benign) and their scores."""

    def __init__(self, output_dir: str, keys="box", min_score: float = 0.2, max_side: int = 1024, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.min_score, self.max_side = output_dir, min_score, max_side

    def __call__(self, data):
        from PIL import Image, ImageDraw

        from cadpipe.transforms import LoadStudyImage

        d = dict(data)
        path = d.get("source_path")
        img = convert_to_numpy(LoadStudyImage(mode="gray")(path), dtype=np.float32)[0].T  # rows, cols
        lo, hi = np.percentile(img, (0.5, 99.5))
        u8 = (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
        pil = Image.fromarray(u8).convert("RGB")
        scale = min(1.0, self.max_side / max(pil.size))
        if scale < 1:
            pil = pil.resize((max(1, int(pil.size[0] * scale)), max(1, int(pil.size[1] * scale))))
        draw = ImageDraw.Draw(pil)
        for r in _records(d):
            if r["score"] < self.min_score:
                continue
            x0, y0, x1, y1 = (v * scale for v in r["box"])
            color = (255, 40, 40) if r["label"] == "malignant" else (40, 220, 40)
            draw.rectangle([x0, y0, x1, y1], outline=color, width=2)
            draw.text((x0, max(0, y0 - 10)), f"{r['score']:.2f} m={r['malignant_probability']:.2f}", fill=color)
        os.makedirs(self.output_dir, exist_ok=True)
        pil.save(os.path.join(self.output_dir, f"{output_name(path, d.get('name'))}_overlay.png"))
        return d


# ---------------------------------------------------------------- metrics


def _hits(pred_boxes, pred_scores, gt_boxes, iou_thr):
    """Greedy by score: per detection, the GT index it hits (or -1); per GT, the best hitting score (or 0)."""
    hit = np.full(len(pred_scores), -1)
    gt_score = np.zeros(len(gt_boxes))
    if len(pred_scores) == 0 or len(gt_boxes) == 0:
        return hit, gt_score
    iou = convert_to_numpy(box_iou(torch.as_tensor(pred_boxes, dtype=torch.float32), torch.as_tensor(gt_boxes, dtype=torch.float32)))
    taken = np.zeros(len(gt_boxes), bool)
    for k in np.argsort(-pred_scores):
        cand = np.where((iou[k] >= iou_thr) & ~taken)[0]
        if cand.size:
            g = cand[np.argmax(iou[k, cand])]
            taken[g] = True
            hit[k] = g
            gt_score[g] = pred_scores[k]
    return hit, gt_score


def froc(preds: Sequence[Mapping], gts: Sequence[Mapping], iou_thr: float = 0.2, fp_rates=FP_RATES) -> dict:
    """Lesion-level FROC: sensitivity at each FP/image rate (detections hitting a finding at IoU >= ``iou_thr``)."""
    from monai.metrics.froc import compute_froc_curve_data

    fp_probs, tp_probs, n_targets = [], [], 0
    for p, g in zip(preds, gts):
        s = convert_to_numpy(p["score"]).reshape(-1)
        hit, gscore = _hits(convert_to_numpy(p["box"]).reshape(-1, 4), s, convert_to_numpy(g["box"]).reshape(-1, 4), iou_thr)
        fp_probs.extend(s[hit < 0].tolist())
        tp_probs.extend(gscore[gscore > 0].tolist())
        n_targets += len(gscore)
    n_images = max(1, len(preds))
    out = {"iou_threshold": iou_thr, "num_findings": n_targets, "num_images": len(preds)}
    if n_targets == 0:
        out.update({f"sensitivity@{r}": float("nan") for r in fp_rates}, froc_score=float("nan"))
        return out
    fps, sens = compute_froc_curve_data(np.asarray(fp_probs + [0.0]), np.asarray(tp_probs + [0.0]), n_targets, n_images)
    # full curve incl. the lowest threshold (monai drops it): append (all fps, all tps)
    fps = np.r_[len(fp_probs) / n_images, fps]
    sens = np.r_[len(tp_probs) / n_targets, sens]
    vals = []
    for r in fp_rates:
        ok = fps <= r + 1e-9
        v = float(sens[ok].max()) if ok.any() else 0.0
        out[f"sensitivity@{r}"] = v
        vals.append(v)
    out["froc_score"] = float(np.mean(vals))
    return out


def detection_metrics(items: Sequence[Mapping], iou_thr: float = 0.2, fp_rates=FP_RATES):
    """All evaluation numbers from items holding predictions (``box``, ``score``, ``malignancy``) and ground
    truth (``gt_box``, ``gt_label``), all in original pixels. Returns ``(metrics, per_finding_rows)``."""
    from monai.metrics import compute_roc_auc

    preds = [{"box": it["box"], "score": it["score"]} for it in items]
    gts = [{"box": it["gt_box"]} for it in items]
    metrics = {"froc": froc(preds, gts, iou_thr, fp_rates)}
    coco = COCOMetric(classes=["mass"], iou_list=[0.1, 0.2, 0.3, 0.4, 0.5], iou_range=[0.1, 0.5, 0.05], max_detection=[100], verbose=False)
    pb = [convert_to_numpy(p["box"]).reshape(-1, 4) for p in preds]
    ps = [convert_to_numpy(p["score"]).reshape(-1) for p in preds]
    gb = [convert_to_numpy(g["box"]).reshape(-1, 4) for g in gts]
    results = matching_batch(
        iou_fn=lambda a, b: convert_to_numpy(box_iou(torch.as_tensor(a), torch.as_tensor(b))),
        iou_thresholds=coco.iou_thresholds,
        pred_boxes=pb,
        pred_classes=[np.zeros(len(s), int) for s in ps],
        pred_scores=ps,
        gt_boxes=gb,
        gt_classes=[np.zeros(len(b), int) for b in gb],
    )
    metrics["coco"] = {k: float(v) for k, v in coco(results)[0].items()}
    rows, y, m = [], [], []
    for it in items:
        s = convert_to_numpy(it["score"]).reshape(-1)
        mal = convert_to_numpy(it.get("malignancy", np.zeros_like(s))).reshape(-1)
        b = convert_to_numpy(it["box"]).reshape(-1, 4)
        g = convert_to_numpy(it["gt_box"]).reshape(-1, 4)
        gl = convert_to_numpy(it["gt_label"]).reshape(-1)
        hit, _ = _hits(b, s, g, iou_thr)
        for j in range(len(g)):
            ks = np.where(hit == j)[0]
            k = int(ks[0]) if ks.size else -1
            rows.append(
                {
                    "image": it.get("source_path", ""),
                    "name": it.get("name", ""),
                    "finding": j,
                    "gt_box": " ".join(f"{v:.1f}" for v in g[j]),
                    "gt_pathology": CLASS_NAMES[int(gl[j])],
                    "detected": k >= 0,
                    "score": float(s[k]) if k >= 0 else 0.0,
                    "malignancy": float(mal[k]) if k >= 0 else float("nan"),
                    "pred_box": " ".join(f"{v:.1f}" for v in b[k]) if k >= 0 else "",
                }
            )
            if k >= 0:
                y.append(int(gl[j]))
                m.append(float(mal[k]))
    auc = float("nan")
    if len(set(y)) == 2:
        auc = float(compute_roc_auc(torch.tensor(m), torch.tensor(y)))
    metrics["malignancy"] = {"auc_detected_findings": auc, "num_detected_findings": len(y), "num_findings": len(rows)}
    return metrics, rows


def write_detection_report(metrics: Mapping, rows: list[dict], output_dir: str):
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    cols = ["image", "name", "finding", "gt_box", "gt_pathology", "detected", "score", "malignancy", "pred_box"]
    with open(os.path.join(output_dir, "per_finding.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


try:
    from ignite.metrics import Metric
except ImportError:  # pragma: no cover
    Metric = object


class DetectionMetrics(Metric):
    """Ignite metric over a :class:`DetectionEvaluator`'s outputs; ``compute()`` returns the FROC score
    (mean sensitivity at 0.25..4 FP/image). With ``output_dir`` it also writes ``metrics.json`` and
    ``per_finding.csv`` there."""

    def __init__(self, output_dir: str | None = None, iou_thr: float = 0.2, output_transform=lambda x: x):
        self.output_dir, self.iou_thr = output_dir, iou_thr
        self.items: list[dict] = []
        self.last: dict = {}
        super().__init__(output_transform=output_transform)

    def reset(self):
        self.items = []

    def update(self, output):
        for it in _to_list(output):
            self.items.append({k: it[k] for k in ("box", "score", "malignancy", "gt_box", "gt_label", "source_path", "name") if k in it})

    def compute(self):
        metrics, rows = detection_metrics(self.items, self.iou_thr)
        self.last = metrics
        if self.output_dir:
            write_detection_report(metrics, rows, self.output_dir)
        logger.info("detection metrics: %s", json.dumps(metrics))
        s = metrics["froc"]["froc_score"]
        return 0.0 if s != s else s

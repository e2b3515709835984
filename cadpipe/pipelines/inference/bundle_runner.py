"""The one place that builds a bundle's inference pipeline from its ``configs/inference.json``.

Scoring, the web portal and the MONAI Label glue all call :class:`BundleRunner`; what differs by task (reading results
out of ``"pred"``, heat maps, a detector, the batched path) is the bundle's kind, :attr:`BundleRunner.kind`
(:mod:`cadpipe.pipelines.kinds`; see the bundle contract in ``docs/architecture.md``):

- ``preprocess(item)``: the bundle's ``preprocessing`` Compose on ``{"image": <path>}``.
- ``predict(items)``: collate (items of one shape), ``inferer(image, network)`` under ``torch.inference_mode()``,
  decollate, and the bundle's pure ``postprocessing`` per item.
- ``summarise(out)``: the ``results.csv`` columns; classification ``predicted`` comes from the operating
  thresholds saved with the model (``models/thresholds.json``, :mod:`cadpipe.pipelines.inference.thresholds`),
  arg-max / 0.5 when there are none (:attr:`BundleRunner.thresholds` ``.note`` says so).
- ``heatmap(item)``: Grad-CAM on the bundle's ``cam_layers`` (classification), by
  ``cadpipe.pipelines.inference.heatmaps.compute_cam``.

Result keys (additive hook, issue 10): any preprocessing/postprocessing transform may put into the item
``RESULT_COLUMNS_KEY`` (``"result_columns"``): ``{column: bool | int | float | str | list}`` — added to the unit's
row in ``results.csv`` (lists JSON-encoded; e.g. the lung box from ``LungCropd``) — and ``RESULT_NOTES_KEY``
(``"result_notes"``): a list of sentences shown in the per-study report. ``predict`` keeps both out of the collated
batch (they need not be collatable) and puts them back on each output item.

Example::

    runner = BundleRunner("bundles/cxr_pneumonia_classification", device="cpu")
    item = runner.preprocess({"image": "study/IM0001"})
    out, = runner.predict([item])
    runner.summarise(out)  # {"prob_normal": 0.1, "prob_pneumonia": 0.9, "predicted": "pneumonia"}
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np
import torch

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.inference.thresholds import load_thresholds
from cadpipe.pipelines.kinds import kind_of
from cadpipe.pipelines.outputs.files import file_sha256

__all__ = ["BundleRunner", "file_sha256", "bundle_is_complete", "RESULT_COLUMNS_KEY", "RESULT_NOTES_KEY",
           "result_columns", "PRECISIONS", "precision_unsupported", "plan_batched_scoring"]

RESULT_COLUMNS_KEY, RESULT_NOTES_KEY = "result_columns", "result_notes"
_RESULT_KEYS = (RESULT_COLUMNS_KEY, RESULT_NOTES_KEY)


def result_columns(out: dict) -> dict:
    """The ``RESULT_COLUMNS_KEY`` columns of one item as plain values (tensors → numbers, lists → JSON)."""
    row = {}
    for key, value in dict(out.get(RESULT_COLUMNS_KEY) or {}).items():
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (list, tuple, np.ndarray)):
            value = json.dumps(np.asarray(value).tolist())
        row[str(key)] = value
    return row

REQUIRED_CONFIGS = ("configs/metadata.json", "configs/inference.json")


def bundle_is_complete(bundle_root: str, need_train: bool = False) -> bool:
    """True when the bundle has the config files scoring (and, with ``need_train``, training) needs."""
    need = REQUIRED_CONFIGS + (("configs/train.json",) if need_train else ())
    return all(os.path.isfile(os.path.join(bundle_root, p)) for p in need)


class BundleRunner:
    """A bundle's network, inferer, preprocessing and postprocessing, ready to score.

    Args:
        bundle_root: the bundle folder (model-zoo layout).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available.
        model_file: weights (plain ``state_dict``); default ``<bundle_root>/models/model.pt``.
        overrides: extra ``ConfigParser`` overrides (id → value), e.g. ``{"inferer#roi_size": [64, 64, 64]}``.

    Raises:
        CadpipeInputError: missing config or weights, or weights that do not fit the network.
    """

    def __init__(self, bundle_root: str, device: str | None = None, model_file: str | None = None,
                 overrides: dict[str, Any] | None = None):

        self.bundle_root = os.path.abspath(bundle_root)
        for rel in REQUIRED_CONFIGS:
            if not os.path.isfile(os.path.join(self.bundle_root, rel)):
                raise CadpipeInputError(os.path.join(self.bundle_root, rel), "bundle config file is missing")
        with open(os.path.join(self.bundle_root, "configs/metadata.json"), encoding="utf-8") as f:
            self.metadata = json.load(f)
        info = self.metadata.get("cadpipe", {})
        self.task = info.get("task", "classification")
        # what differs by task (columns, heat maps, detector, batched path): cadpipe.pipelines.kinds
        self.kind = kind_of(self.task, os.path.join(self.bundle_root, "configs/metadata.json"))
        self.class_names = list(info.get("class_names", []))
        self.positive_class = info.get("positive_class")
        self.spatial_dims = int(info.get("spatial_dims", 2))
        self.name = self.metadata.get("name") or os.path.basename(self.bundle_root.rstrip("/"))
        self.version = str(self.metadata.get("version", ""))

        parser, self.device = bundle_config(self.bundle_root, device, overrides)
        self.parser = parser
        self.overrides = dict(overrides or {})  # as given (scoring checks a reused runner against its config)

        self.model_file = os.path.abspath(model_file or os.path.join(self.bundle_root, "models", "model.pt"))
        if not os.path.isfile(self.model_file):
            demo_copy = os.path.join("demo_out", "bundles", os.path.basename(self.bundle_root))
            raise CadpipeInputError(self.model_file, "no trained weights (train the bundle first; `make demo` leaves "
                                                     f"a briefly trained copy in {demo_copy})")
        self.model_sha256 = file_sha256(self.model_file)
        # operating thresholds saved by training beside the weights (defaults + a note when there are none)
        self.thresholds = load_thresholds(self.model_file, self.model_sha256)
        # the preprocessing ids read what training used (inference.json: trained_preprocessing.trained); an
        # explicit override that differs is honoured with a warning naming both values
        from cadpipe.pipelines.inference.trained_preprocessing import warn_conflicts

        self.preprocessing_conflicts = warn_conflicts(self.model_file, self.overrides)
        state = torch.load(self.model_file, map_location=self.device, weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # tolerate a {"model": state_dict} checkpoint
        try:
            self.network = _network_with_weights(parser, state)
        except (RuntimeError, KeyError) as err:
            raise CadpipeInputError(self.model_file, f"weights do not fit the bundle's network: {err}") from err
        self.network.eval()
        self.inferer = parser.get_parsed_content("inferer")
        self.detector = self.kind.build_detector(parser)
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.postprocessing = parser.get_parsed_content("postprocessing")
        # detection: boxes shown in the report (score at or above overlay_min_score, at most max_boxes_shown)
        self.display_min_score = float(parser.get_parsed_content("overlay_min_score")) \
            if "overlay_min_score" in parser else 0.0
        self.max_boxes_shown = int(parser.get_parsed_content("max_boxes_shown")) if "max_boxes_shown" in parser else 5
        self.cam_layers = parser.get("cam_layers") if "cam_layers" in parser else info.get("cam_layers")
        # multi-label bundles: one heatmap per class at or above ``cam_threshold`` (issue 10)
        self.cam_threshold = float(parser.get_parsed_content("cam_threshold")) if "cam_threshold" in parser else None
        if not self.class_names:
            self.class_names = self._channel_def_names()
        # inference precision and memory layout: the bundle's defaults (``precision``, ``channels_last`` ids of
        # inference.json), changed with configure_inference (``cadpipe score --precision/--channels-last``)
        self.precision, self.channels_last = "fp32", False
        self.configure_inference(parser.get_parsed_content("precision") if "precision" in parser else "fp32",
                                 bool(parser.get_parsed_content("channels_last")) if "channels_last" in parser
                                 else False)
        # (plan, reason, segmentation postprocessing) of batched_preprocessing(), computed once
        self._batched: tuple | None = None

    # -- precision, layout, batched path --------------------------------------------------------------------
    def configure_inference(self, precision: str | None = None, channels_last: bool | None = None) -> None:
        """Set the forward's precision (``"fp32"``, ``"bf16"``, ``"fp16"``: autocast to that dtype) and, for 2D
        networks, the ``channels_last`` memory layout; None keeps the current value.

        Raises:
            CadpipeInputError: a precision the device does not support (fp16 needs CUDA; bf16 a CUDA device that
                supports it, or the CPU).
        """
        if precision is not None:
            precision = str(precision).lower()
            if precision not in PRECISIONS:
                raise CadpipeInputError(self.bundle_root, f"precision {precision!r}: choose one of {list(PRECISIONS)}")
            why = precision_unsupported(precision, self.device)
            if why:
                raise CadpipeInputError(self.bundle_root, f"precision {precision} on {self.device}: {why}")
            self.precision = precision
        if channels_last is not None:
            use = bool(channels_last) and self.spatial_dims == 2 and self.detector is None
            self.network.to(memory_format=torch.channels_last if use else torch.contiguous_format)
            self.channels_last = use

    def autocast(self):
        """The forward's autocast context (a no-op at fp32)."""
        import contextlib

        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def forward_batch(self, images: torch.Tensor) -> torch.Tensor:
        """``inferer(images, network)`` on a plain batch already on the device, in the configured precision and
        layout; float32 output (under ``torch.inference_mode()``)."""
        with torch.inference_mode(), self.autocast():
            if self.channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            return self.inferer(images, self.network).float()

    def batched_preprocessing(self):
        """``(plan, None)``: a :class:`~cadpipe.pipelines.inference.batched_preprocess.BatchedPreprocessing` for this
        bundle, or ``(None, reason)`` when its task or chain has no batched path (scoring keeps the per-item one):
        :func:`plan_batched_scoring`. Classification and multi-label bundles need a preprocessing chain the planner
        accepts; 2D segmentation bundles also a postprocessing :meth:`batched_segmentation_postprocessing` splits
        (activation, ``Invertd`` of the preprocessing, steps on ``pred``); detection has its own detector."""
        if self._batched is None:
            self._batched = plan_batched_scoring(self.kind, self.spatial_dims, self.preprocessing, self.postprocessing)
        return self._batched[:2]

    def batched_segmentation_postprocessing(self):
        """The :class:`~cadpipe.pipelines.inference.batched_segmentation.BatchedSegmentationPostprocessing` of a
        segmentation bundle with a batched plan (:meth:`batched_preprocessing`), else None."""
        self.batched_preprocessing()
        return self._batched[2]

    def batched_postprocessing(self):
        """A function ``pred (B, K) → (B, K)`` on the device that does what the bundle's ``postprocessing`` does to
        each item, when that is only ``Activationsd(keys="pred", softmax|sigmoid)`` (identity when empty); else
        None (the caller runs the bundle's postprocessing item by item)."""
        from monai.transforms import Activationsd, Compose

        steps = self.postprocessing.transforms if isinstance(self.postprocessing, Compose) else [self.postprocessing]
        fns = []
        for t in steps:
            if not isinstance(t, Activationsd) or list(t.keys) != ["pred"] or t.other[0] is not None:
                return None
            dim = t.converter.kwargs.get("dim", 0)
            if t.sigmoid[0]:
                fns.append(torch.sigmoid)
            elif t.softmax[0]:
                fns.append(lambda p, d=dim: torch.softmax(p, dim=d + 1 if d >= 0 else d))
        def apply(pred: torch.Tensor) -> torch.Tensor:
            for f in fns:
                pred = f(pred)
            return pred
        return apply

    def _channel_def_names(self) -> list[str]:
        outputs = self.metadata.get("network_data_format", {}).get("outputs", {})
        for spec in outputs.values():
            cdef = spec.get("channel_def", {})
            if cdef:
                return [cdef[k] for k in sorted(cdef, key=lambda x: int(x))]
        return []

    # -- the three steps ------------------------------------------------------------------------------------
    def preprocess(self, item: dict, on_loaded: Callable[[], None] | None = None) -> dict:
        """Bundle preprocessing on ``{"image": path}``; any failure becomes ``CadpipeInputError`` naming the path.

        ``on_loaded`` is called once the image is loaded: after the first transform of a ``Compose`` (the loader,
        ``LoadStudyImaged`` by the bundle contract), else after the whole preprocessing.
        """
        from monai.transforms import Compose

        path = item.get("image")
        pre = self.preprocessing
        try:
            if on_loaded is None:
                return pre(dict(item))
            if not isinstance(pre, Compose) or len(pre.transforms) < 2:
                out = pre(dict(item))
                on_loaded()
                return out
            loaded = pre(dict(item), end=1)
            on_loaded()
            return pre(loaded, start=1)
        except CadpipeInputError:
            raise
        except Exception as err:  # noqa: BLE001 - MONAI wraps reader errors in RuntimeError chains
            raise CadpipeInputError(path, f"cannot load/preprocess: {_root_cause(err)}") from err

    def predict(self, items: list[dict]) -> list[dict]:
        """Forward a list of preprocessed items whose ``"image"`` shapes agree; returns postprocessed items."""
        from monai.data import decollate_batch, list_data_collate

        if self.detector is not None:
            return self._detect(items)
        side = [{k: d[k] for k in _RESULT_KEYS if k in d} for d in items]  # result keys: not collated
        batch = list_data_collate([{k: v for k, v in d.items() if k not in _RESULT_KEYS} for d in items])
        with torch.inference_mode():
            images = batch["image"].to(self.device)
            batch["pred"] = _with_meta_of(self.forward_batch(_plain(images)), images)
            outs = decollate_batch(batch)
            return [self.postprocessing({**o, **s}) for o, s in zip(outs, side)]

    def _detect(self, items: list[dict]) -> list[dict]:
        """Detection: the bundle's ``detector`` on a list of images (any shapes), in the configured precision (the
        network's forward autocast; boxes and scores come back float32), then per-item postprocessing."""
        det = self.detector
        images = [torch.as_tensor(d["image"], dtype=torch.float32).to(self.device) for d in items]
        images = [i.as_tensor() if hasattr(i, "as_tensor") else i for i in images]
        with torch.inference_mode():
            with self.autocast():
                outs = det(images, use_inferer=True)
            results = []
            for d, o in zip(items, outs):
                d = dict(d)
                d["box"] = o[det.target_box_key].detach().cpu().float()
                d["label"] = o[det.target_label_key].detach().cpu()
                d["score"] = o[det.pred_score_key].detach().cpu().float()
                d["pred"] = d["score"]
                results.append(self.postprocessing(d))
            return results

    def forward_only(self, images: torch.Tensor) -> torch.Tensor:
        """The network through the bundle's inferer, nothing else (benchmark ceiling)."""
        with torch.inference_mode():
            if self.detector is not None:
                with self.autocast():
                    return self.detector(list(_plain(images).to(self.device)), use_inferer=True)
            return self.forward_batch(_plain(images).to(self.device))

    # -- heatmaps -------------------------------------------------------------------------------------------
    def cam_class(self) -> int | None:
        """The class heatmaps explain: the positive class when the bundle names one, else None (predicted class)."""
        if self.positive_class in self.class_names:
            return self.class_names.index(self.positive_class)
        return None

    def cam_classes(self, probs) -> list[int]:
        """Classes that get a heat map of their own (multi-label with ``cam_threshold``:
        :meth:`cadpipe.pipelines.kinds.multilabel.MultiLabel.cam_classes`); none for other kinds."""
        return self.kind.cam_classes(self, probs)

    def heatmaps(self, items: list[dict], class_index: int | None = None) -> list[np.ndarray] | None:
        """GradCAM for a list of same-shape preprocessed items in one forward/backward pass (see :meth:`heatmap`)."""
        if not self.kind.heatmaps or not self.cam_layers:
            return None
        batch = torch.stack([torch.as_tensor(d["image"]).float() for d in items])
        return list(self._cam(batch, class_index))

    def heatmap(self, item: dict, class_index: int | None = None) -> np.ndarray | None:
        """GradCAM heatmap in [0, 1] over the preprocessed image's spatial shape, or None without ``cam_layers``."""
        if not self.kind.heatmaps or not self.cam_layers:
            return None
        return self._cam(torch.as_tensor(item["image"]).unsqueeze(0).float(), class_index)[0]

    def _cam(self, image: torch.Tensor, class_index: int | None) -> np.ndarray:
        """(B, C, *spatial) → (B, *spatial) Grad-CAM maps in [0, 1] (:func:`cadpipe.pipelines.inference.heatmaps.compute_cam`)."""
        from cadpipe.pipelines.inference.heatmaps import compute_cam

        image = image.to(self.device)  # compute_cam forwards its data as a plain tensor
        hm = compute_cam(self.network, image, self.cam_layers, class_index)
        return np.asarray(hm, dtype=np.float32).reshape(image.shape[0], *image.shape[2:])

    # -- reading results out of "pred" ---------------------------------------------------------------------
    def summarise(self, out: dict) -> dict:
        """Task columns for results.csv from one postprocessed item (the kind's
        :meth:`~cadpipe.pipelines.kinds.base.TaskKind.columns`), plus its ``RESULT_COLUMNS_KEY`` columns."""
        return self.kind.columns(self, out) | result_columns(out)

    @staticmethod
    def label_map(out: dict) -> np.ndarray:
        """Segmentation ``pred`` as an integer label map without the channel axis."""
        pred = torch.as_tensor(out["pred"]).detach().cpu()
        if pred.ndim >= 3 and pred.shape[0] > 1:  # one-hot → labels
            pred = pred.argmax(0)
        elif pred.ndim >= 3:
            pred = pred[0]
        return np.asarray(pred).astype(np.uint8)

    @staticmethod
    def affine(out: dict) -> np.ndarray:
        pred = out["pred"]
        meta = getattr(pred, "meta", None) or out.get("image_meta_dict") or {}
        aff = meta.get("affine") if isinstance(meta, dict) else None
        if aff is None and hasattr(out.get("image"), "meta"):
            aff = out["image"].meta.get("affine")
        aff = np.eye(4) if aff is None else np.asarray(torch.as_tensor(aff).cpu(), dtype=np.float64)
        if aff.shape == (3, 3):  # 2D affine → 4x4 (NIfTI needs one); the third axis gets unit spacing
            a4 = np.eye(4)
            a4[:2, :2], a4[:2, 3] = aff[:2, :2], aff[:2, 2]
            aff = a4
        return aff

    def unit_size(self, out: dict, ndim: int) -> float | None:
        """One pixel's area in mm² (``ndim`` 2) or one voxel's volume in mm³ (3) from the affine; None when the
        input file gives no usable spacing (PNG/JPEG/TIFF, DICOM without PixelSpacing or with ``0\\0``: the affine
        is then in pixels, see :func:`cadpipe.transforms.readers.io_any.spacing_known`)."""
        from cadpipe.transforms.readers.io_any import spacing_known

        pred, image = out.get("pred"), out.get("image")
        if not all(spacing_known(m) for m in (getattr(pred, "meta", None), getattr(image, "meta", None))
                   if isinstance(m, dict)):
            return None
        from cadpipe.transforms.geometry import voxel_size

        return voxel_size(self.affine(out), ndim)  # any plane: a coronal slice's 2x2 block is singular

    def voxel_volume_mm3(self, out: dict) -> float:
        from cadpipe.transforms.geometry import voxel_size

        d = self.spatial_dims
        return voxel_size(self.affine(out), d) if d in (2, 3) else 1.0


def plan_batched_scoring(kind, spatial_dims: int, preprocessing, postprocessing) -> tuple:
    """``(plan, None, seg_post)`` when a bundle of ``kind`` (a :class:`~cadpipe.pipelines.kinds.base.TaskKind` or its
    name) with these instantiated ``preprocessing`` and ``postprocessing`` is scored with batched preprocessing,
    else ``(None, reason, None)``. ``plan``: a
    :class:`~cadpipe.pipelines.inference.batched_preprocess.BatchedPreprocessing`; ``seg_post``: for a kind whose
    batched output is a label map, the
    :class:`~cadpipe.pipelines.inference.batched_segmentation.BatchedSegmentationPostprocessing` (else None). The
    runner and scoring's early start of the decoding workers both decide here."""
    from cadpipe.pipelines.inference.batched_preprocess import plan_batched

    kind = kind_of(kind) if isinstance(kind, str) else kind
    why = kind.batched_unsupported(spatial_dims)
    if why:
        return None, why, None
    plan, why = plan_batched(preprocessing)
    if plan is None or kind.batched_output != "label_map":
        return plan, why, None
    from cadpipe.pipelines.inference.batched_segmentation import plan_segmentation_postprocessing

    post, why = plan_segmentation_postprocessing(postprocessing, preprocessing)
    if post is None:
        return None, f"postprocessing: {why}", None
    return plan, None, post


class _SkipMetaInit(torch.overrides.TorchFunctionMode):
    """Random initialisation of ``meta`` tensors is skipped (the tensors have no data; the loaded weights replace
    them). On ``meta``, ``normal_`` / ``uniform_`` go through ``torch._refs``, whose first call imports
    ``torch._dynamo``: about 1-2 s of a runner's build on the 2-core machine, for nothing. A torch function mode
    is per thread: other threads' initialisation is untouched."""

    _SKIP = frozenset(getattr(torch.Tensor, n) for n in (
        "normal_", "uniform_", "fill_", "zero_", "exponential_", "geometric_", "log_normal_", "cauchy_",
        "random_", "bernoulli_", "erfinv_") if hasattr(torch.Tensor, n))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._SKIP and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def bundle_config(bundle_root: str, device: str | None = None, overrides: dict[str, Any] | None = None):
    """``(parser, device)``: the bundle's ``configs/inference.json`` in a MONAI ``ConfigParser`` with
    ``bundle_root``, ``device`` (default: cuda when available) and ``overrides`` set, as the runner reads it."""
    from monai.bundle import ConfigParser

    bundle_root = os.path.abspath(bundle_root)
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle_root, "configs/inference.json"))
    parser["bundle_root"] = bundle_root
    parser["device"] = f"$torch.device('{device}')"
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser, device


def _network_with_weights(parser, state: dict) -> torch.nn.Module:
    """The bundle's ``network`` with the weights ``state`` loaded.

    Start-up: ``network_def`` is built on the ``meta`` device (no memory, no random initialisation: DenseNet121's
    init and the copy of every weight into it were most of a runner's build time), then the loaded tensors become
    its parameters (``load_state_dict(assign=True)``). A network that keeps tensors outside its state dict (a
    non-persistent buffer would stay on ``meta``), or a config without ``network_def``, is built and loaded the
    ordinary way.

    Raises:
        RuntimeError, KeyError: the weights do not fit the network.
    """
    if "network_def" in parser:
        with torch.device("meta"), _SkipMetaInit():
            net = parser.get_parsed_content("network_def")
        if isinstance(net, torch.nn.Module):
            net.load_state_dict(state, assign=True)
            if not any(t.is_meta for t in [*net.parameters(), *net.buffers()]):
                return parser.get_parsed_content("network")  # "$@network_def.to(@device)": the same instance
        parser.get_parsed_content("network_def", lazy=False)  # not meta-buildable: build it again, for real
    net = parser.get_parsed_content("network")
    net.load_state_dict(state)
    return net


#: ``--precision`` names → autocast dtypes (fp32: no autocast)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_unsupported(precision: str, device: torch.device | str) -> str | None:
    """Why ``precision`` cannot run on ``device`` (None when it can): fp16 autocast needs CUDA, bf16 a CUDA device
    with bf16 support or the CPU."""
    device = torch.device(device)
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU does not support bfloat16"
        return None
    if device.type == "cpu":
        return "float16 autocast is for GPUs (use bf16 or fp32 on the CPU)" if precision == "fp16" else None
    return f"no reduced-precision autocast on {device.type}"


def _plain(images: torch.Tensor) -> torch.Tensor:
    """A MetaTensor's data as a plain tensor (no copy).

    The network runs on plain tensors: with a MetaTensor every op of every layer goes through
    ``MetaTensor.__torch_function__`` (metadata copied per op), a large share of a small CPU forward
    (see ``benchmarks/score.py``). :func:`_with_meta_of` puts the metadata back on the output.
    """
    return images.as_tensor() if hasattr(images, "as_tensor") else images


def _with_meta_of(pred, images):
    """``pred`` as a MetaTensor carrying ``images``' metadata, as a MetaTensor forward gives it
    (``MetaTensor.update_meta``: ``is_batch`` kept, meta + applied operations copied from the input), so the
    bundle's postprocessing (``Invertd``...) sees what it sees under ``monai.bundle run``."""
    from monai.data import MetaTensor

    if not isinstance(images, MetaTensor) or not isinstance(pred, torch.Tensor) or isinstance(pred, MetaTensor):
        return pred
    out = MetaTensor(pred)
    out.is_batch = images.is_batch
    out.copy_meta_from(images, copy_attr=not images.is_batch)
    return out


def _root_cause(err: BaseException) -> str:
    """The innermost cause's message (MONAI nests reader errors several levels deep)."""
    seen = err
    while seen.__cause__ is not None or (seen.__context__ is not None and not seen.__suppress_context__):
        nxt = seen.__cause__ or seen.__context__
        if isinstance(nxt, CadpipeInputError):
            return nxt.reason
        seen = nxt
    msg = str(seen).strip().splitlines()
    return f"{type(seen).__name__}: {msg[-1] if msg else ''}"[:300]

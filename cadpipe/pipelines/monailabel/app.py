"""``cadpipe monailabel-app <dir>``: assemble a MONAI Label ``monaibundle`` app that serves our bundles.

The app is MONAI Label's own ``monaibundle`` sample app (copied from the installed ``monailabel`` package, or from
``--template``) with our bundles, including their trained ``models/model.pt``, copied into ``<dir>/model/<name>``.
MONAI Label then serves them locally, with no download::

    BUNDLE_DOWNLOAD_SRC=github monailabel start_server --app <dir> --studies <nifti folder> \\
        --conf models brain_mri_tumor_segmentation --conf sam2 false

MONAI Label 0.8.5 lives in its own virtual environment (``scripts/monailabel_venv.sh``); this command runs in
either environment: without ``--template`` it looks for the sample app through ``importlib.util.find_spec`` in the
running interpreter, then in ``--monailabel-python`` (default ``.build/monailabel-venv/bin/python``).
MONAI Label picks the task type from the bundle folder name (``segmentation``, ``detection``, ``classification``),
so a bundle whose name implies another task than its ``metadata.json`` says is refused. The app's ``main.py`` is
patched to build its infer tasks with ``cadpipe.pipelines.monailabel.infer.infer_task`` (classification bundles:
probabilities + Grad-CAM label image; 2D segmentation labels as 2D ``uint8``). See ``docs/monailabel.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys

from cadpipe.errors import CadpipeInputError

__all__ = ["REPO_ROOT", "add_arguments", "assemble_app", "cam_class_index", "cam_to_label", "find_template",
           "monailabel_type", "patch_main", "run"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_BUNDLES_DIR = os.path.join(REPO_ROOT, "bundles")
DEFAULT_ML_PYTHON = os.path.join(REPO_ROOT, ".build", "monailabel-venv", "bin", "python")
# what MONAI Label 0.8.5 (tasks/infer/bundle.py ``_get_type``) derives from the folder name, in its order
_NAME_TYPES = ("deepedit", "deepgrow", "detection", "segmentation", "classification")
# MONAI Label 0.8.5's BundleInferTask appends ``Restored`` (resize the prediction back to the image size) to every
# non-detection bundle's postprocessing; on a classification probability vector that fails ("operands could not be
# broadcast together"), and its ClassificationWriter writes no label file. The app's main.py is patched to build
# every infer task through ``cadpipe.pipelines.monailabel.infer.infer_task``: classification bundles get a task that
# returns the probabilities in the JSON and the Grad-CAM heatmap as the label image; the others stay unchanged.
_MAIN_IMPORT = "from monailabel.tasks.infer.bundle import BundleInferTask\n"
_MAIN_IMPORT_PATCHED = _MAIN_IMPORT + "from cadpipe.pipelines.monailabel.infer import infer_task as cadpipe_infer_task  # cadpipe\n"
_MAIN_ORIGINAL = "i = BundleInferTask(b, self.conf)\n"
_MAIN_PATCHED = "i = cadpipe_infer_task(n, b, self.conf)  # cadpipe: CAM + probabilities for classification bundles\n"
_COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "eval", "outputs", "runs", "*.ts")


def monailabel_type(name: str) -> str:
    """The inference type MONAI Label 0.8.5 gives a bundle from its folder name (segmentation by default)."""
    low = name.lower()
    return next((t for t in _NAME_TYPES if t in low), "segmentation")


def _sample_app_from_prefix(origin: str, prefix: str) -> str | None:
    pkg = os.path.dirname(origin)
    for cand in (os.path.join(prefix, "monailabel", "sample-apps", "monaibundle"),
                 os.path.join(pkg, "sample-apps", "monaibundle"),
                 os.path.join(os.path.dirname(pkg), "sample-apps", "monaibundle")):
        if os.path.isfile(os.path.join(cand, "main.py")):
            return cand
    return None


def find_template(template: str | None = None, monailabel_python: str | None = None) -> str:
    """The ``monaibundle`` sample app folder: ``template`` if given, else from the installed ``monailabel``."""
    if template:
        if not os.path.isfile(os.path.join(template, "main.py")):
            raise CadpipeInputError(template, "not a MONAI Label app folder (no main.py)")
        return template
    spec = importlib.util.find_spec("monailabel")
    if spec is not None and spec.origin:
        found = _sample_app_from_prefix(spec.origin, sys.prefix)
        if found:
            return found
    py = monailabel_python or DEFAULT_ML_PYTHON
    if os.path.isfile(py):
        code = "import importlib.util, sys; print(importlib.util.find_spec('monailabel').origin); print(sys.prefix)"
        proc = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd="/", check=False)
        lines = proc.stdout.split()
        if proc.returncode == 0 and len(lines) == 2:
            found = _sample_app_from_prefix(lines[0], lines[1])
            if found:
                return found
    raise CadpipeInputError(py, "no MONAI Label installation with the monaibundle sample app found "
                                "(run scripts/monailabel_venv.sh or pass --template)")


def patch_main(main_py: str) -> None:
    """Make the monaibundle app's ``main.py`` build its infer tasks with cadpipe's ``infer_task`` (idempotent)."""
    with open(main_py, encoding="utf-8") as fp:
        text = fp.read()
    if _MAIN_PATCHED in text and _MAIN_IMPORT_PATCHED in text:
        return
    for line in (_MAIN_IMPORT, _MAIN_ORIGINAL):
        if text.count(line) != 1:
            raise CadpipeInputError(main_py, "unexpected monaibundle main.py (MONAI Label version other than 0.8.5?): "
                                             f"expected one line '{line.strip()}'")
    with open(main_py, "w", encoding="utf-8") as fp:
        fp.write(text.replace(_MAIN_IMPORT, _MAIN_IMPORT_PATCHED).replace(_MAIN_ORIGINAL, _MAIN_PATCHED))


def cam_class_index(requested, scores, labels) -> int:
    """The class whose activation map is returned: ``requested`` (an index, a digit string or a label name from
    ``labels`` — MONAI Label's ``{name: index}``), else the highest of ``scores`` (logits or probabilities)."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if requested is None or requested == "":
        return int(np.argmax(scores))
    names = {str(k).lower(): int(v) for k, v in (labels or {}).items()} if isinstance(labels, dict) else {}
    key = str(requested).strip().lower()
    if key in names:
        idx = names[key]
    elif key.lstrip("-").isdigit():
        idx = int(key)
    else:
        raise ValueError(f"cam_class {requested!r}: not a class index or one of {sorted(names)}")
    if not 0 <= idx < len(scores):
        raise ValueError(f"cam_class {requested!r}: index {idx} outside 0..{len(scores) - 1}")
    return idx


def cam_to_label(cam):
    """A heatmap as a label image: min-max scaled to ``uint8`` 0..255 (a constant map becomes all zeros)."""
    import numpy as np

    cam = np.asarray(cam, dtype=np.float32)
    lo, hi = float(np.nanmin(cam)), float(np.nanmax(cam))
    if not np.isfinite(hi - lo) or hi - lo < 1e-12:
        return np.zeros(cam.shape, dtype=np.uint8)
    return np.round(255 * (np.nan_to_num(cam, nan=lo) - lo) / (hi - lo)).astype(np.uint8)


def _check_bundle(src: str, name: str) -> dict:
    meta_file = os.path.join(src, "configs", "metadata.json")
    if not os.path.isfile(meta_file):
        raise CadpipeInputError(src, "not a bundle (configs/metadata.json missing)")
    if not os.path.isfile(os.path.join(src, "configs", "inference.json")):
        raise CadpipeInputError(src, "not a bundle (configs/inference.json missing)")
    model = os.path.join(src, "models", "model.pt")
    if not os.path.isfile(model):
        raise CadpipeInputError(model, "missing: train the bundle first (MONAI Label would silently skip it)")
    try:
        with open(meta_file, encoding="utf-8") as fp:
            meta = json.load(fp)
    except (OSError, ValueError) as err:
        raise CadpipeInputError(meta_file, f"unreadable metadata ({err})") from err
    task = (meta.get("cadpipe") or {}).get("task")
    from cadpipe.pipelines.kinds import KINDS

    kind = KINDS.get(task or "")
    want = kind.monailabel_type if kind is not None else None  # the MONAI Label type that serves the task kind
    if want is not None and monailabel_type(name) != want:
        raise CadpipeInputError(src, f"MONAI Label would serve '{name}' as {monailabel_type(name)} but its task "
                                     f"is {task}: the folder name must contain '{want}'")
    if monailabel_type(name) == "classification" and not _cam_layers(src, meta):
        raise CadpipeInputError(os.path.join(src, "configs", "inference.json"),
                                "classification bundle without cam_layers (needed for the CAM label image); "
                                "set it in inference.json or metadata.json cadpipe.cam_layers")
    return meta


def _cam_layers(src: str, meta: dict):
    try:
        with open(os.path.join(src, "configs", "inference.json"), encoding="utf-8") as fp:
            conf = json.load(fp)
    except (OSError, ValueError) as err:
        raise CadpipeInputError(os.path.join(src, "configs", "inference.json"), f"unreadable config ({err})") from err
    return conf.get("cam_layers") or (meta.get("cadpipe") or {}).get("cam_layers")


def assemble_app(app_dir: str, bundles: list[str] | None = None, bundles_dir: str = DEFAULT_BUNDLES_DIR,
                 template: str | None = None, monailabel_python: str | None = None) -> dict[str, str]:
    """Copy the monaibundle sample app into ``app_dir`` and each bundle into ``app_dir/model/<name>``.

    Returns ``{name: monailabel type}``. Bundles already in ``model/`` are replaced; other files are kept.
    """
    if bundles is None:
        bundles = sorted(n for n in os.listdir(bundles_dir)
                         if os.path.isfile(os.path.join(bundles_dir, n, "configs", "metadata.json")))
        bundles = [n for n in bundles if os.path.isfile(os.path.join(bundles_dir, n, "models", "model.pt"))]
        if not bundles:
            raise CadpipeInputError(bundles_dir, "no bundle with a trained models/model.pt")
    srcs = {name: os.path.join(bundles_dir, name) for name in bundles}
    for name, src in srcs.items():
        if not os.path.isdir(src):
            raise CadpipeInputError(src, "no such bundle")
        _check_bundle(src, name)
    tpl = find_template(template, monailabel_python)
    shutil.copytree(tpl, app_dir, ignore=_COPY_IGNORE, dirs_exist_ok=True)
    patch_main(os.path.join(app_dir, "main.py"))
    types = {}
    for name, src in srcs.items():
        dst = os.path.join(app_dir, "model", name)
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=_COPY_IGNORE)
        types[name] = monailabel_type(name)
    return types


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app_dir", help="folder to create or update (the MONAI Label app)")
    parser.add_argument("--bundles", default=None,
                        help="comma-separated bundle names (default: every bundle with a trained models/model.pt)")
    parser.add_argument("--bundles-dir", default=DEFAULT_BUNDLES_DIR, help="where the bundles are (default: %(default)s)")
    parser.add_argument("--template", default=None, help="a monaibundle app folder to copy instead of the installed one")
    parser.add_argument("--monailabel-python", default=DEFAULT_ML_PYTHON,
                        help="python of the MONAI Label venv, used to find the sample app (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.bundles.split(",") if n.strip()] if args.bundles else None
    try:
        types = assemble_app(args.app_dir, names, args.bundles_dir, args.template, args.monailabel_python)
    except CadpipeInputError as err:
        print(f"cadpipe monailabel-app: {err}", file=sys.stderr)
        return 1
    for name, kind in types.items():
        print(f"{name}: {kind}")
    print("start with:\n  BUNDLE_DOWNLOAD_SRC=github monailabel start_server --app "
          f"{os.path.abspath(args.app_dir)} --studies <nifti studies folder> --conf models {','.join(types)} "
          "--conf sam2 false")
    return 0

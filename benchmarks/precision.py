"""Decision metric at fp32 against bf16 (and fp16 where the device has it), bundle by bundle, through ``cadpipe score``.

For each bundle that scoring supports with a decision metric, this script

1. writes a synthetic dataset with the package's generators (``cadpipe.data.synthetic``; nothing is downloaded),
2. trains a copy of the bundle briefly on it, with the demo's recipe (:func:`cadpipe.pipelines.demo.train_copy`,
   the demo's tiny overrides from :data:`cadpipe.pipelines.demo.RECIPES` plus the few below: more images, a few
   epochs, split fractions that leave some test images),
3. takes the bundle's own test split of that dataset (the datalist its ``evaluate.json`` evaluates, parsed from the
   copy's ``train.json`` + ``evaluate.json`` with the same overrides): images the training never saw,
4. scores those images with :func:`cadpipe.pipelines.scoring.score.score` (what ``cadpipe score --manifest``
   runs) at ``ScoreConfig(precision="fp32")``, ``"bf16"`` and ``"fp16"`` (reports and heat maps off: they do not
   change the scores), and
5. prints per bundle and precision: the metric, its difference to fp32, the largest difference to fp32 of the
   probabilities (classification: any class of any image; segmentation: fraction of pixels whose label differs,
   over all test images; detection: top box score per image), images, device, seconds of the ``score`` call.

Metrics: pneumonia ROC AUC of PNEUMONIA; ChestX-ray14 mean ROC AUC over the classes with positives and negatives in
the test split; histology macro one-vs-rest ROC AUC over the classes present (and accuracy); brain MRI and lung
segmentation mean Dice of the foreground over the test images (mask against the dataset's ground-truth mask);
mammography FROC score at IoU 0.2 (:func:`cadpipe.pipelines.tasks.detection.froc`, as the bundle's evaluate).

The weights are trained for seconds on synthetic images: the metrics themselves mean nothing; the differences
between precisions are what this measures, and only for these weights, this data and this device.

    python benchmarks/precision.py [--bundles NAME ...] [--device cpu] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = os.path.join(REPO, "bundles")
# the checkout this script lives in, also for the training subprocesses (python -m monai.bundle run)
sys.path.insert(0, REPO)
os.environ["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])


# -- synthetic training/test data per bundle (the package's generators; sizes as small as still gives test images) --
def _kermany(d: str) -> str:
    """Kermany layout, 64 px, 24 per class in train/ and in test/"""
    from cadpipe.data.synthetic.cxr import write_synthetic_kermany

    write_synthetic_kermany(d, n_per_class=24, size=64, splits=("train", "test"), seed=0)
    return d


def _chestxray14(d: str) -> str:
    """NIH layout, 64 px, 32 patients x 2 images, 3 of the 14 findings drawn, a quarter of the patients in test_list"""
    from cadpipe.data.synthetic.chestxray14 import write_synthetic_chestxray14

    write_synthetic_chestxray14(d, n_patients=32, images_per_patient=2, size=64, classes=(0, 1, 2), p_finding=0.75,
                                test_fraction=0.25, seed=0)
    return d


def _lgg(d: str) -> str:
    """LGG layout, 8 patients x 4 slices of 32 px"""
    from cadpipe.data.synthetic.brain import write_lgg_synthetic

    write_lgg_synthetic(d, n_patients=8, n_slices=4, size=32, seed=0)
    return d


def _montgomery(d: str) -> str:
    """Montgomery layout, 24 images of 96 px with lung masks"""
    from cadpipe.data.synthetic.lungs import write_synthetic_montgomery

    write_synthetic_montgomery(d, n=24, size=96, seed=0)
    return d


def _bach(d: str) -> str:
    """BACH layout, 12 images 128x96 per class"""
    from cadpipe.data.synthetic.histology import write_synthetic_bach

    write_synthetic_bach(d, n_per_class=12, size=(128, 96), seed=0)
    return d


def _ddsm(d: str) -> str:
    """DDSM layout, 8 cases x 4 views 320x200 LJPEG, 0-2 masses per view"""
    from cadpipe.data.synthetic.ddsm import write_ddsm_dataset

    write_ddsm_dataset(d, n_cases=8, seed=0)
    return d


_NETWORK_KEYS = ("channels", "strides", "num_res_units")

#: per bundle: dataset writer, overrides on top of the demo's, the evaluate.json id of the test datalist, metric;
#: ``shipped_network``: leave out the demo's smaller-network overrides (train the bundle's own architecture)
PLANS: dict[str, dict[str, Any]] = {
    "cxr_pneumonia_classification": dict(data=_kermany, extra={"epochs": 3}, test_id="evaluate#dataset#data",
                                         metric="auc"),
    "cxr_chestxray14_classification": dict(data=_chestxray14, extra={"epochs": 3}, test_id="evaluate#dataset#data",
                                           metric="mean_auc", shipped_network=True),
    "breast_histology_classification": dict(data=_bach, extra={"epochs": 4, "split_fractions": [0.5, 0.25, 0.25]},
                                            test_id="validate#dataset#data", metric="macro_auc"),
    "brain_mri_tumor_segmentation": dict(data=_lgg, extra={"epochs": 3, "test_fraction": 0.25},
                                         test_id="validate#dataset#data", metric="dice"),
    "cxr_lung_segmentation": dict(data=_montgomery, extra={"epochs": 6, "test_fraction": 0.25},
                                  test_id="evaluate#dataset#data", metric="dice", shipped_network=True),
    "mammo_mass_detection": dict(data=_ddsm, extra={"epochs": 2, "split_fractions": [0.5, 0.25, 0.25]},
                                 test_id="validate#datalist", metric="froc"),
}


def test_datalist(copy: str, dataset_dir: str, overrides: dict, test_id: str) -> list[dict]:
    """The datalist the bundle copy's ``evaluate.json`` (on top of its ``train.json``) evaluates on ``dataset_dir``,
    with ``overrides`` (those the configs have ids for) as the training got them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.path.join(copy, "configs", "train.json"), os.path.join(copy, "configs", "evaluate.json")])
    parser["bundle_root"], parser["dataset_dir"] = copy, dataset_dir
    for key, value in overrides.items():
        if key.split("#")[0] in parser.get():
            parser[key] = value
    return list(parser.get_parsed_content(test_id))


def _path(item: dict) -> str:
    image = item["image"]
    return os.path.abspath(image[0] if isinstance(image, (list, tuple)) else image)


def _score(copy: str, items: list[dict], work: str, precision: str, device: str) -> tuple[dict[str, dict], float]:
    """Rows of ``cadpipe score`` (by absolute input path) for the items' images at ``precision``, and seconds."""
    from cadpipe.pipelines.scoring.results import Journal
    from cadpipe.pipelines.scoring.score import ScoreConfig, score

    manifest = os.path.join(work, "test_manifest.csv")
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path"])
        w.writerows([[_path(it)] for it in items])
    out = os.path.join(work, f"scored_{precision}")
    t0 = time.perf_counter()
    summary = score(ScoreConfig(bundle=copy, input=None, manifest=manifest, output=out, device=device, workers=0,
                                batch_size=4, force=True, quiet=True, reports=False, heatmaps=False,
                                dicom_results=False, precision=precision))
    seconds = time.perf_counter() - t0
    journal = Journal(out)
    rows = {}
    for row in journal.rows().values():
        if row.get("status") != "ok":
            raise RuntimeError(f"{precision}: {row.get('input_paths')}: {row.get('error')}")
        row["_dir"] = out
        rows[os.path.abspath(row["input_paths"].split(";")[0])] = row
    journal.close()
    if summary["ok"] != len(items):
        raise RuntimeError(f"{precision}: {summary['ok']} of {len(items)} images scored")
    return rows, seconds


# -- metrics from score's rows and output files -----------------------------------------------------------------
def _probs(row: dict, names: list[str]) -> np.ndarray:
    """The row's ``prob_<class>`` columns in the order of the network's outputs (the labels' index order)."""
    if sorted(k for k in row if k.startswith("prob_")) != sorted(f"prob_{n}" for n in names):
        raise RuntimeError(f"probability columns {sorted(k for k in row if k.startswith('prob_'))} are not {names}")
    return np.array([row[f"prob_{n}"] for n in names], dtype=np.float64)


def _classification(items, rows, kind: str, names: list[str]) -> tuple[dict, np.ndarray]:
    from cadpipe.pipelines.tasks.classification import roc_auc

    p = np.stack([_probs(rows[_path(it)], names) for it in items])
    y = np.stack([np.asarray(it["label"], dtype=np.float64).reshape(-1) for it in items])
    if kind == "auc":  # binary: label index, AUC of the positive class (index 1)
        return {"AUC": roc_auc(y[:, 0] == 1, p[:, 1])}, p
    if kind == "mean_auc":  # multi-hot labels: mean over classes with positives and negatives
        aucs = [roc_auc(y[:, k] > 0.5, p[:, k]) for k in range(y.shape[1])]
        aucs = [a for a in aucs if a == a]
        return {"mean AUC": float(np.mean(aucs)) if aucs else float("nan"), "classes": len(aucs)}, p
    labels = y[:, 0].astype(int)  # macro one-vs-rest over the classes present
    aucs = [roc_auc(labels == k, p[:, k]) for k in range(p.shape[1])]
    aucs = [a for a in aucs if a == a]
    return {"macro AUC": float(np.mean(aucs)) if aucs else float("nan"),
            "accuracy": float(np.mean(p.argmax(1) == labels))}, p


def _load_mask(path: str) -> np.ndarray:
    from cadpipe.transforms import LoadStudyImage

    return np.asarray(LoadStudyImage(mode="gray")(path))[0]


def _segmentation(items, rows) -> tuple[dict, list[np.ndarray]]:
    import nibabel as nib

    dices, masks = [], []
    for it in items:
        row = rows[_path(it)]
        pred = np.asarray(nib.load(os.path.join(row["_dir"], row["_outputs"]["mask"])).dataobj) > 0
        truth = _load_mask(it["label"] if isinstance(it["label"], str) else it["label"][0]) > 0
        if truth.shape != pred.shape:
            raise RuntimeError(f"mask {pred.shape} and ground truth {truth.shape} differ for {_path(it)}")
        denom = pred.sum() + truth.sum()
        dices.append(1.0 if denom == 0 else 2.0 * np.logical_and(pred, truth).sum() / denom)
        masks.append(pred)
    return {"mean Dice": float(np.mean(dices))}, masks


def _detection(items, rows) -> tuple[dict, np.ndarray]:
    from cadpipe.pipelines.tasks.detection import froc

    preds, gts, top = [], [], []
    for it in items:
        row = rows[_path(it)]
        with open(os.path.join(row["_dir"], row["_outputs"]["boxes"]), encoding="utf-8") as f:
            boxes = json.load(f)["boxes"]
        preds.append({"box": np.array([b["box"] for b in boxes], dtype=np.float64).reshape(-1, 4),
                      "score": np.array([b["score"] for b in boxes], dtype=np.float64)})
        gts.append({"box": np.asarray(it["box"], dtype=np.float64).reshape(-1, 4)})
        top.append(float(row["top_score"]))
    return {"FROC": froc(preds, gts, 0.2)["froc_score"], "findings": int(sum(len(g["box"]) for g in gts))}, \
        np.array(top)


def _measure(kind: str, items, rows, copy: str):
    if kind in ("auc", "mean_auc", "macro_auc"):
        with open(os.path.join(copy, "configs", "metadata.json"), encoding="utf-8") as f:
            names = json.load(f)["cadpipe"]["class_names"]  # what scoring names the columns after, in output order
        return _classification(items, rows, kind, names)
    if kind == "dice":
        return _segmentation(items, rows)
    return _detection(items, rows)


def _difference(kind: str, ref, other) -> str:
    if kind == "dice":
        changed = sum(int((a != b).sum()) for a, b in zip(ref, other))
        total = sum(a.size for a in ref)
        return f"{changed / total:.2e} of px"
    return f"{float(np.abs(np.asarray(ref) - np.asarray(other)).max()):.2e}"


def run_bundle(name: str, work: str, device: str, precisions: list[str], say: Callable[[str], None]) -> list[list]:
    from cadpipe.errors import CadpipeInputError
    from cadpipe.pipelines.demo import RECIPES, train_copy

    plan = PLANS[name]
    overrides = dict(RECIPES[name]["overrides"]) | plan["extra"]
    if plan.get("shipped_network"):  # the demo's smaller network replaced by the bundle's own
        overrides = {k: v for k, v in overrides.items() if k not in _NETWORK_KEYS and not k.startswith("network_def#")}
    data = plan["data"](os.path.join(work, "data"))
    copy = os.path.join(work, "bundle")
    t0 = time.perf_counter()
    reason = train_copy(os.path.join(BUNDLES, name), copy, data, overrides, os.path.join(work, "train.log"), 900)
    if reason:
        return [[name, "-", f"not trained: {reason}"]]
    train_s = time.perf_counter() - t0
    items = test_datalist(copy, data, overrides, plan["test_id"])
    say(f"[{name}] data: {plan['data'].__doc__}; trained in {train_s:.0f} s with {json.dumps(overrides)}; "
        f"{len(items)} test images")
    lines, ref = [], None
    for precision in precisions:
        try:
            rows, seconds = _score(copy, items, work, precision, device)
        except CadpipeInputError as err:  # scoring refused it (fp16 on a CPU...)
            lines.append([name, precision, f"not supported: {err.reason}"])
            continue
        metric, raw = _measure(plan["metric"], items, rows, copy)
        key = next(iter(metric))
        if ref is None:
            ref = (metric[key], raw)
        extra = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in list(metric.items())[1:])
        lines.append([name, precision, key, f"{metric[key]:.4f}", f"{metric[key] - ref[0]:+.4f}",
                      _difference(plan["metric"], ref[1], raw), len(items), device, f"{seconds:.1f}", extra])
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", nargs="*", default=None, choices=sorted(PLANS), help="default: all")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", nargs="*", default=["fp32", "bf16", "fp16"])
    ap.add_argument("--keep", default=None, help="keep the data, trained copies and scores in this folder")
    args = ap.parse_args(argv)
    names = args.bundles or list(PLANS)
    root = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="cadpipe_precision_")
    t_all = time.perf_counter()
    print(f"{' '.join([os.path.basename(sys.executable), 'benchmarks/precision.py'] + (argv or sys.argv[1:]))}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; SYNTHETIC data, weights trained for seconds: only the differences count")
    table: list[list] = []
    try:
        for name in names:
            work = os.path.join(root, name)
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            table += run_bundle(name, work, args.device, args.precisions, print)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    head = ["bundle", "precision", "metric", "value", "vs fp32", "max diff vs fp32", "images", "device", "score s",
            "also"]
    rows = [[str(c) for c in r] for r in table]
    widths = [max([len(head[i])] + [len(r[i]) for r in rows if len(r) > 3]) for i in range(len(head))]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for r in rows:
        if len(r) <= 3:
            print(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}")
        else:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"max diff: classification max |prob - prob fp32| over images and classes; segmentation fraction of "
          f"pixels whose label differs; detection max |top box score - fp32's|. Total {time.perf_counter() - t_all:.0f} s"
          f", load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

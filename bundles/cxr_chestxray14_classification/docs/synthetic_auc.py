"""Per-pathology held-out AUC of this bundle on the synthetic 14-pattern ChestX-ray14 set (the README's synthetic row).

Writes ``--patients`` x 2 synthetic radiographs (each pathology drawn with probability ``--p_class``), trains a tiny
DenseNet with ``configs/train.json`` (no augmentation) for ``--epochs`` and evaluates with ``configs/evaluate.json`` on
``test_list.txt``; prints ``metrics.json`` and the training seconds. Synthetic data: evidence the pipeline learns, not
a clinical figure.

    python bundles/cxr_chestxray14_classification/docs/synthetic_auc.py [--patients 150] [--epochs 20] [--size 64]
"""

import argparse
import json
import os
import shutil
import tempfile
import time

from monai.bundle import ConfigWorkflow

from cadpipe.data.synthetic.chestxray14 import write_synthetic_chestxray14

BUNDLE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"network_def#init_features": 16, "network_def#growth_rate": 8, "network_def#block_config": [2, 2, 2, 2]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--p_class", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="default: a new temporary folder")
    a = ap.parse_args()
    tmp = a.workdir or tempfile.mkdtemp(prefix="cx14_auc_")
    shutil.copytree(BUNDLE, os.path.join(tmp, "b"), ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    write_synthetic_chestxray14(os.path.join(tmp, "data"), a.patients, 2, size=a.size, p_class=a.p_class,
                                test_fraction=0.25, seed=a.seed)
    cfg = os.path.join(tmp, "b", "configs")
    common = dict(bundle_root=os.path.join(tmp, "b"), dataset_dir=os.path.join(tmp, "data"), image_size=a.size,
                  batch_size=8, num_workers=0, val_fraction=0.2, **TINY)
    t0 = time.time()
    wf = ConfigWorkflow(config_file=os.path.join(cfg, "train.json"), meta_file=os.path.join(cfg, "metadata.json"),
                        workflow_type="train", logging_file=False, epochs=a.epochs,
                        output_dir=os.path.join(tmp, "tout"), **{"train#augmentation": []}, **common)
    wf.initialize()
    wf.run()
    wf.finalize()
    train_s = time.time() - t0
    wf = ConfigWorkflow(config_file=[os.path.join(cfg, "train.json"), os.path.join(cfg, "evaluate.json")],
                        meta_file=os.path.join(cfg, "metadata.json"), workflow_type="eval", logging_file=False,
                        output_dir=os.path.join(tmp, "eval"), **common)
    wf.initialize()
    wf.run()
    wf.finalize()
    print(json.dumps(json.load(open(os.path.join(tmp, "eval", "metrics.json"))), indent=1))
    print(f"training {train_s:.0f} s; outputs in {tmp}")


if __name__ == "__main__":
    main()

"""Histology bundle: does the whole-image forward agree with the patch-aggregated prediction?

Trains the bundle (``train.json``, tiny DenseNet121 via overrides, CPU) on synthetic BreaKHis images exactly as the
slow bundle test does (8 patients x 4 images of 256x192, ``--patch`` patches, ``--epochs`` epochs), then classifies
held-out synthetic images (4 other patients x 3 images) of each ``--sizes`` both ways - patch aggregation
(``average`` over tissue patches, stride patch/2) and one forward pass of the whole image (the size-independent
GAP + linear head) - and prints the agreement, the accuracy of each, and the mean per-location
malignant-minus-benign logit (the uncentred CAM difference) over lesion, stroma and glass: the whole-image logit is
the mean of these over all locations, so a class bias of stroma or glass shifts it.

    python benchmarks/histology_agreement.py [--patch 64] [--epochs 8] [--sizes 256x192,1024x768] [--old-rule]

``--old-rule`` keeps the earliest of equally scored validations as the best checkpoint (the bundle's behaviour
before 0.2.0) to reproduce the "before" figure. Accuracy figures, not timings: load does not change them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np
import torch

BUNDLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bundles", "breast_histology_classification")
TINY = {"network_def#block_config": [2, 2, 2, 2], "network_def#init_features": 16, "network_def#growth_rate": 8}


def main():
    from monai.bundle import ConfigWorkflow

    from cadpipe.data.synthetic.histology import write_synthetic_breakhis
    from cadpipe.pipelines.tasks.histology import aggregate, class_activation_maps
    from cadpipe.transforms import LoadStudyImage
    from cadpipe.transforms.histology import GridTissuePatches, tissue_mask

    ap = argparse.ArgumentParser()
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--sizes", default="256x192", help="held-out image sizes WxH, comma separated")
    ap.add_argument("--old-rule", action="store_true", help="best checkpoint = earliest of equal validations")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tmp = tempfile.mkdtemp(prefix="histo_agree_")
    bundle = os.path.join(tmp, "bundle")
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("*.pt", "eval"))
    train_dir = os.path.join(tmp, "train")
    write_synthetic_breakhis(train_dir, n_patients=8, images_per_patient=4, magnifications=("40X",), seed=0)
    over = dict(TINY)
    if a.old_rule:
        over["validate#handlers#2#key_metric_greater_or_equal"] = False
    w = ConfigWorkflow(config_file=os.path.join(bundle, "configs", "train.json"), workflow_type="train",
                       bundle_root=bundle, dataset_layout="breakhis", patch_size=a.patch, num_workers=0,
                       dataset_dir=train_dir, epochs=a.epochs, learning_rate=0.001, batch_size=2, patches_per_image=16,
                       split_fractions=[0.75, 0.25, 0.0], output_dir=os.path.join(tmp, "tb"), **over)
    w.initialize()
    w.run()
    w.finalize()
    net = w.network_def
    net.load_state_dict(torch.load(os.path.join(bundle, "models", "model.pt"), weights_only=True))
    net.eval()
    load = LoadStudyImage(mode="rgb")
    grid = GridTissuePatches(a.patch, a.patch // 2, 0.5)
    print(f"patch {a.patch}, {a.epochs} epochs, best-checkpoint rule: {'earliest' if a.old_rule else 'latest'} of ties")
    for size in a.sizes.split(","):
        wh = tuple(int(v) for v in size.lower().split("x"))
        held = write_synthetic_breakhis(os.path.join(tmp, f"held_{size}"), n_patients=4, images_per_patient=3,
                                        magnifications=("40X",), seed=1, size=wh)
        agree = acc_patch = acc_whole = 0
        diffs = {"lesion": [], "stroma": [], "glass": []}
        margins = []
        for g in held:
            img = (load(g["image"]) / 255.0).as_tensor()
            with torch.no_grad():
                probs = torch.softmax(net(grid(img)[0]), -1).numpy()
            _, pc = aggregate(probs, "average")
            maps, logits = class_activation_maps(net, img, centered=False)
            wc = int(logits.argmax())
            agree += pc == wc
            acc_patch += pc == g["label"]
            acc_whole += wc == g["label"]
            margins.append(float(torch.softmax(logits, -1)[g["label"]]))
            d = (maps[1] - maps[0]).numpy()
            x0, y0, x1, y1 = g["box"]
            lesion = np.zeros(d.shape, bool)
            lesion[x0:x1, y0:y1] = True
            tissue = tissue_mask(img)
            diffs["lesion"].append(d[lesion].mean())
            diffs["stroma"].append(d[tissue & ~lesion].mean())
            diffs["glass"].append(d[~tissue].mean())
        n = len(held)
        print(f"{size}: whole-image vs patch-aggregated agreement {agree}/{n}; accuracy patch {acc_patch}/{n}, "
              f"whole {acc_whole}/{n}; whole-image probability of the true class min {min(margins):.2f} "
              f"mean {np.mean(margins):.2f}; mean malignant-benign logit per location: "
              + ", ".join(f"{k} {np.mean(v):+.2f}" for k, v in diffs.items()))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Histology bundle speed on this machine: training patches/second and whole-image (2048x1536) inference time.

Full-size DenseNet121 (3 channels, 4 classes, random weights: speed does not depend on the weights), CPU,
``torch.set_num_threads(--threads)``. The baseline measured in the same run is one forward pass of a single
256x256 patch; other timings are also printed as ratios to it, so numbers taken under different machine load
can be compared. The machine is shared with other engineers: absolute timings vary with their load (the 1-minute
load average is printed at the start and the end of the run).

    python benchmarks/histology.py [--threads 2] [--steps 3] [--batch 8]

``--tiles 2`` (a 512x384 image instead of 8 x 8 tiles = 2048x1536) is only a quick check that the script runs.

The last two lines are the figures the bundle README quotes:
``RESULT training: <n> patches/s ...`` and ``RESULT inference: <s> s per 2048x1536 image ...``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from monai.networks.nets import DenseNet121
from PIL import Image
from timing import best_time

from cadpipe.data.synthetic.histology import synthetic_tissue
from cadpipe.pipelines.tasks.histology import HistologyInferenceWriter, TissuePatchInferer
from cadpipe.transforms import LoadStudyImage
from cadpipe.transforms.histology import RandTissuePatchesd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--tiles", type=int, default=8, help="image = tiles x tiles synthetic 256x192 tiles (8: 2048x1536)")
    a = ap.parse_args()
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.1f}; threads {a.threads}; cpu count {os.cpu_count()}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=4)
    tmp = tempfile.mkdtemp()
    tile, _ = synthetic_tissue(3, (256, 192), rng=0)
    big = np.tile(tile, (a.tiles, a.tiles, 1))  # 8 tiles: 1536 rows x 2048 columns
    size = f"{big.shape[1]}x{big.shape[0]}"
    path = os.path.join(tmp, f"synthetic_{size}.tif")
    Image.fromarray(big).save(path)

    net.eval()
    x1 = torch.rand(1, 3, a.patch, a.patch)
    with torch.no_grad():
        net(x1)
        base = best_time(lambda: net(x1), 2)
    print(f"baseline: one {a.patch}x{a.patch} patch forward = {base:.3f} s")

    # training step: forward + backward + AdamW on a batch of patches
    net.train()
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    lossf = torch.nn.CrossEntropyLoss()
    xb, yb = torch.rand(a.batch, 3, a.patch, a.patch), torch.randint(0, 4, (a.batch,))

    def step():
        opt.zero_grad()
        lossf(net(xb), yb).backward()
        opt.step()

    step()
    t_step = best_time(step, a.steps)
    print(f"training step ({a.batch} patches): {t_step:.2f} s -> {a.batch / t_step:.2f} patches/s "
          f"({t_step / base:.1f}x baseline)")

    # data side of training: load a 2048x1536 photo and draw 8 tissue patches
    load = LoadStudyImage(mode="rgb")
    rp = RandTissuePatchesd("image", patch_size=a.patch, num_samples=8)
    t_load = best_time(lambda: rp({"image": load(path) / 255.0}), 2)
    print(f"data: load {size} + 8 random tissue patches = {t_load:.2f} s ({t_load / base:.1f}x baseline)")

    # whole-image inference: preprocessing + patch-aggregating inferer + writer (whole-image forward, CAM, files)
    net.eval()
    inferer = TissuePatchInferer(a.patch, a.patch // 2, 0.5, "average")
    writer = HistologyInferenceWriter(net, os.path.join(tmp, "out"), ["Normal", "Benign", "InSitu", "Invasive"],
                                      a.patch, a.patch // 2)

    def infer():
        img = load(path) / 255.0
        with torch.no_grad():
            pred = torch.softmax(inferer(img[None], net), -1)[0]
        writer({"image": img, "pred": pred, "path": path})

    t_pre = best_time(lambda: load(path), 1)
    img = load(path) / 255.0
    with torch.no_grad():
        t_patch = best_time(lambda: inferer(img[None], net), 1)
        t_whole = best_time(lambda: net(img[None].as_tensor() if hasattr(img, "as_tensor") else img[None]), 1)
    t_all = best_time(infer, 1)
    n = inferer.patches(img)[0].shape[0]
    print(f"inference {size}: load {t_pre:.2f} s; patch-aggregated ({n} patches) {t_patch:.1f} s; "
          f"whole-image forward alone {t_whole:.1f} s; total with whole-image forward + per-class CAM + files "
          f"{t_all:.1f} s ({t_all / base:.0f}x baseline)")
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.1f}")
    print(f"RESULT training: {a.batch / t_step:.2f} patches/s (step only), {a.batch / (t_step + t_load):.2f} patches/s "
          f"with loading ({a.patch}x{a.patch}, batch {a.batch}, {a.threads} threads)")
    print(f"RESULT inference: {t_all:.1f} s per {size} image (load + {n} patches + whole-image forward + CAM + "
          f"files; patch-aggregated part {t_patch:.1f} s)")


if __name__ == "__main__":
    main()

"""Mammography detection timings on this machine (CPU unless CUDA is present).

1. Training: seconds per epoch for ``--n_train`` images at the bundle's default working size (long side 1024,
   default network), measured over ``--iters`` training iterations of batch ``--batch`` on cached preprocessed
   images and extrapolated to ``--n_train`` images; the one-off preprocessing (load + crop + CLAHE + resize,
   cached by CacheDataset after the first epoch) is timed per image and reported separately.
2. Inference: seconds per full-size synthetic mammogram (``--rows`` x ``--cols`` 12-bit LJPEG, DDSM-sized) through
   the bundle's inference pipeline (preprocessing + sliding-window detector + postprocessing + JSON/PNG writers).

Usage: python benchmarks/mammo_detection.py [--iters 3] [--n_train 100]
Timings on a shared machine vary with the other users' load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mammo_mass_detection"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--n_train", type=int, default=100)
    ap.add_argument("--rows", type=int, default=4696)
    ap.add_argument("--cols", type=int, default=3024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from monai.bundle import ConfigParser, ConfigWorkflow

    from cadpipe.data.synthetic.ddsm import write_ddsm_case

    tmp = Path(tempfile.mkdtemp(prefix="mammo_bench_"))
    try:
        truth = write_ddsm_case(tmp / "data", 1, rows=args.rows, cols=args.cols, n_masses={"LEFT_CC": 1, "RIGHT_CC": 1},
                                radius_range=(150, 300), contrast=900.0)
        b = tmp / "bundle"
        shutil.copytree(BUNDLE, b, ignore=shutil.ignore_patterns("*.pt", "eval"))
        p = ConfigParser()
        p.read_config(str(b / "configs/train.json"))
        p.update({"bundle_root": str(b), "dataset_dir": str(tmp / "data")})
        pre = p.get_parsed_content("validate#preprocessing")
        for e in p.get_parsed_content("detector_ops"):
            pass
        det = p.get_parsed_content("detector")
        opt = p.get_parsed_content("optimizer")
        dev = p.get_parsed_content("device")
        items = []
        t0 = time.perf_counter()
        for view in ("LEFT_CC", "RIGHT_CC"):
            v = truth["views"][view]
            items.append(pre({"image": v["image"], "box": v["boxes"], "label": v["labels"]}))
        t_pre = (time.perf_counter() - t0) / len(items)
        print(f"working image shape {tuple(items[0]['image'].shape)}; preprocessing {t_pre:.2f} s/image (full-size LJPEG)")
        det.train()
        batch = [items[k % len(items)] for k in range(args.batch)]
        times = []
        for k in range(args.iters + 1):
            t0 = time.perf_counter()
            imgs = [d["image"].to(dev) for d in batch]
            tg = [{"box": d["box"].to(dev), "label": d["label"].to(dev)} for d in batch]
            opt.zero_grad()
            losses = det(imgs, tg)
            (losses[det.cls_key] + losses[det.box_reg_key]).backward()
            opt.step()
            if k:
                times.append(time.perf_counter() - t0)
        per_img = sum(times) / len(times) / args.batch
        print(f"training: {per_img:.2f} s/image/iteration (batch {args.batch}, {args.iters} iterations after 1 warm-up)")
        print(f"=> seconds per training epoch for {args.n_train} images (cached data): {per_img * args.n_train:.0f} s "
              f"(+ {t_pre * args.n_train:.0f} s one-off preprocessing in the first epoch)")

        imgs = tmp / "imgs"
        imgs.mkdir()
        for view in ("LEFT_CC", "RIGHT_CC"):
            shutil.copy(truth["views"][view]["image"], imgs)
        shutil.copy(next(Path(truth["case_dir"]).glob("*.ics")), imgs)
        torch.save(det.network.state_dict(), b / "models" / "model.pt")
        wf = ConfigWorkflow(config_file=str(b / "configs/inference.json"), workflow_type="infer", bundle_root=str(b),
                            dataset_dir=str(imgs), output_dir=str(tmp / "out"))
        wf.initialize()
        t0 = time.perf_counter()
        wf.run()
        t_inf = (time.perf_counter() - t0) / 2
        print(f"inference: {t_inf:.2f} s per full-size {args.rows}x{args.cols} mammogram "
              f"(load + preprocessing + sliding-window detector + postprocessing + JSON/PNG writers)")
        print(f"threads {torch.get_num_threads()}, device {dev}; shared machine: timings include other users' load")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

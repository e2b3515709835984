"""Time the brain MRI tumour segmentation bundle at real sizes (default config, untrained weights).

1. Training: seconds per epoch at the LGG kaggle_3m size (3,929 slices of 256x256x3). Runs the bundle's
   ``train#trainer`` for ``--iterations`` iterations on synthetic 256x256 LGG slices and extrapolates linearly to
   one epoch over ``--lgg-slices`` slices (iterations per epoch = slices * num_samples / batch_size).
2. Inference: seconds for one 240x240x155 NIfTI volume through the bundle's ``inference.json`` (load, RAS,
   normalise, slice-by-slice UNet with SliceInferer, Invertd, mask + montage writing), after one warm-up volume.

Usage: python benchmarks/brain_segmentation.py [--iterations 20] [--threads 2] [--device cpu]
Timings depend on the machine's load; on the shared 2-core box they are taken while others work.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch

BUNDLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bundles", "brain_mri_tumor_segmentation")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--lgg-slices", type=int, default=3929)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ignite.engine import Events
    from monai.bundle import ConfigParser

    from cadpipe.data.synthetic.brain import SYNTHETIC_AFFINE, write_lgg_synthetic

    tmp = tempfile.mkdtemp(prefix="brain_bench_synthetic_")
    try:
        bundle = os.path.join(tmp, "bundle")
        shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("*.pt", "*.ts"))
        print(f"device={args.device} threads={args.threads}")
        if not args.skip_train:
            write_lgg_synthetic(os.path.join(tmp, "lgg"), n_patients=5, n_slices=20, size=256, seed=0)
            p = ConfigParser()
            p.read_config(os.path.join(bundle, "configs", "train.json"))
            p.update({"bundle_root": bundle, "dataset_dir": os.path.join(tmp, "lgg"), "num_workers": 0,
                      "device": f"$torch.device('{args.device}')", "epochs": 1000, "test_fraction": 0.0,
                      "val_interval": 100000})
            trainer = p.get_parsed_content("train#trainer")
            p.get_parsed_content("initialize")  # sets the early-stop handler's trainer
            times = []

            def tick(engine):
                times.append(time.perf_counter())
                if len(times) > args.iterations:
                    engine.terminate()

            trainer.add_event_handler(Events.ITERATION_COMPLETED, tick)
            trainer.run()
            per_iter = (times[-1] - times[0]) / (len(times) - 1)  # first iteration excluded (warm-up)
            bs, ns = p.get_parsed_content("batch_size"), p.get_parsed_content("num_samples")
            iters = int(np.ceil(args.lgg_slices * ns / bs))
            print(f"train: {per_iter:.3f} s/iteration (batch {bs} crops of {p['roi_size']}, {len(times) - 1} timed); "
                  f"epoch of {args.lgg_slices} slices x {ns} crops = {iters} iterations -> {per_iter * iters:.0f} s/epoch (extrapolated)")
            ceiling = _preloaded_step_s(trainer, args.device, min(args.iterations, 10))
            print(f"train ceiling: {ceiling:.3f} s/iteration for the same forward + backward + optimiser step on "
                  f"preloaded device tensors; the iteration takes {per_iter / ceiling:.2f}x that")

        import nibabel as nib

        vol_dir = os.path.join(tmp, "vols")
        os.makedirs(vol_dir)
        rng = np.random.default_rng(0)
        for i, shape in enumerate([(64, 64, 4), (240, 240, 155)]):  # a small warm-up volume, then the timed one
            vol = rng.random(shape, dtype=np.float32) * 100
            nib.save(nib.Nifti1Image(vol, SYNTHETIC_AFFINE), os.path.join(vol_dir, f"synthetic_{i}.nii.gz"))
        p = ConfigParser()
        p.read_config(os.path.join(bundle, "configs", "inference.json"))
        p.update({"bundle_root": bundle, "dataset_dir": vol_dir, "output_dir": os.path.join(tmp, "out"),
                  "device": f"$torch.device('{args.device}')", "handlers": []})
        evaluator = p.get_parsed_content("evaluator")
        stamps = []
        evaluator.add_event_handler(Events.ITERATION_STARTED, lambda e: stamps.append(("start", time.perf_counter())))
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(("end", time.perf_counter())))
        t0 = time.perf_counter()
        evaluator.run()
        total = time.perf_counter() - t0
        second = stamps[3][1] - stamps[2][1]
        print(f"inference: 240x240x155 volume: network + postprocessing + writers {second:.1f} s; "
              f"loading + preprocessing {stamps[2][1] - stamps[1][1]:.1f} s; whole run (incl. warm-up volume) {total:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _preloaded_step_s(trainer, device: str, n: int) -> float:
    """Seconds per training step (forward, loss, backward, optimiser step: the trainer's network, loss, optimiser
    and AMP setting) on ``n`` batches taken from the trainer's loader beforehand and kept on the device: the
    training ceiling, with no loading, augmentation or transfer in the loop."""
    batches = []
    for batch in trainer.data_loader:
        batches.append((batch["image"].as_tensor().to(device), batch["label"].as_tensor().to(device)))
        if len(batches) >= n:
            break
    net, loss_fn, opt = trainer.network, trainer.loss_function, trainer.optimizer
    scaler = torch.amp.GradScaler(torch.device(device).type) if trainer.amp else None

    def step(img, lab):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, enabled=bool(trainer.amp)):
            loss = loss_fn(net(img), lab)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    net.train()
    step(*batches[0])  # warm-up
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for img, lab in batches:
        step(img, lab)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / len(batches)


if __name__ == "__main__":
    main()

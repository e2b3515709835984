"""Time one training epoch of this bundle (defaults: full DenseNet121, CLAHE, augmentation) on synthetic CXRs.

Usage: python bundles/cxr_pneumonia_classification/docs/time_epoch.py --image_size 224 --n 320 [--batch_size 16]

Writes ``n`` synthetic images of ``image_size`` pixels in the Kermany layout to a temp folder, runs ``train.json``
for one epoch and prints seconds per training image, the measured epoch time and the extrapolation to 5,000 images
(linear in the number of images: every image costs the same load + CLAHE + resize + forward/backward).
"""

import argparse
import os
import tempfile
import time

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from cadpipe.data.synthetic.cxr import write_synthetic_kermany

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--n", type=int, default=320, help="training images timed")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--target", type=int, default=5000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="cxr_time_")
    n_val = max(2, a.n // 10)
    per_class = {"train": {"NORMAL": (a.n + n_val) // 4, "PNEUMONIA": (a.n + n_val) - (a.n + n_val) // 4}}
    write_synthetic_kermany(tmp + "/data", per_class, size=a.image_size, splits=("train",), vary_size=False)
    os.makedirs(tmp + "/b/models")
    wf = ConfigWorkflow(config_file=os.path.join(HERE, "configs", "train.json"), workflow_type="train",
                        logging_file=False, bundle_root=tmp + "/b", dataset_dir=tmp + "/data", epochs=1,
                        image_size=a.image_size, batch_size=a.batch_size, num_workers=a.num_workers,
                        val_fraction=n_val / (a.n + n_val), output_dir=tmp + "/out")
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    t = {}
    def _start(e):
        t["start"], t["cpu0"] = time.perf_counter(), time.process_time()

    def _iter(e):
        t["last_iter"], t["cpu1"] = time.perf_counter(), time.process_time()

    trainer.add_event_handler(Events.EPOCH_STARTED, _start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, _iter)
    evaluator.add_event_handler(Events.EPOCH_STARTED, lambda e: t.__setitem__("v0", time.perf_counter()))
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: t.__setitem__("v1", time.perf_counter()))
    wf.run()
    n_train = len(wf.parser.get_parsed_content("train#dataset"))
    n_v = len(wf.parser.get_parsed_content("validate#dataset"))
    train_s = t["last_iter"] - t["start"]
    val_s = t["v1"] - t["v0"]
    per_img = train_s / n_train
    cpu_s = t["cpu1"] - t["cpu0"]  # all threads of this process; DataLoader workers not included when num_workers > 0
    print(f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, num_workers {a.num_workers}, batch {a.batch_size}")
    print(f"image_size {a.image_size}: {n_train} training images in {train_s:.1f} s = {per_img:.3f} s/image; "
          f"validation {n_v} images in {val_s:.1f} s = {val_s / max(n_v, 1):.3f} s/image")
    if a.num_workers == 0:
        print(f"CPU time of the training epoch: {cpu_s:.1f} s = {cpu_s / n_train:.3f} CPU-s/image "
              f"-> {cpu_s / n_train * a.target:.0f} CPU-s for {a.target} images (wall >= CPU-s / cores)")
    print(f"extrapolated: {a.target} training images -> {per_img * a.target:.0f} s/epoch "
          f"({per_img * a.target / 60:.1f} min), + validation of {a.target // 10}: {val_s / max(n_v, 1) * a.target / 10:.0f} s")


if __name__ == "__main__":
    main()

"""Time one training epoch of this bundle (default UNet, CLAHE, augmentation) on synthetic radiographs, and the
per-image latency of the lung stage (preprocessing + network + post-processing incl. inversion to the input size).

Usage: python bundles/cxr_lung_segmentation/docs/time_epoch.py --image_size 224 --n 64 [--src_size 512]

Prints seconds per training image, the measured epoch time and the linear extrapolation to ``--target`` (1,000)
images: every image costs the same load + CLAHE + resize + forward/backward.
"""

import argparse
import os
import tempfile
import time

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from cadpipe.data.synthetic.lungs import write_synthetic_montgomery

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--src_size", type=int, default=512, help="size of the synthetic source radiographs")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--num_workers", type=int, default=0)
    ap.add_argument("--target", type=int, default=1000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lung_time_")
    write_synthetic_montgomery(tmp + "/data", a.n, a.src_size)
    import shutil

    shutil.copytree(os.path.join(HERE, "configs"), tmp + "/b/configs")
    os.makedirs(tmp + "/b/models")
    wf = ConfigWorkflow(config_file=tmp + "/b/configs/train.json", workflow_type="train",
                        logging_file=False, bundle_root=tmp + "/b", dataset_dir=tmp + "/data", epochs=1,
                        image_size=a.image_size, batch_size=a.batch_size, num_workers=a.num_workers,
                        val_fraction=0.1, test_fraction=0.0, output_dir=tmp + "/out")
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    t = {}
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: t.__setitem__("start", time.perf_counter()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: t.__setitem__("last", time.perf_counter()))
    wf.run()
    n_train = len(wf.parser.get_parsed_content("train#dataset"))
    per_img = (t["last"] - t["start"]) / n_train
    print(f"train: {n_train} images at {a.image_size} (source {a.src_size}px), {t['last'] - t['start']:.1f} s, "
          f"{per_img:.3f} s/image -> {per_img * a.target:.0f} s per epoch of {a.target} images "
          f"(torch threads {torch.get_num_threads()})")
    from cadpipe.transforms import load_lung_bundle

    pre, net, post = load_lung_bundle(tmp + "/b", "cpu", {"image_size": a.image_size})
    paths = sorted(os.path.join(tmp, "data", "CXR_png", f) for f in os.listdir(os.path.join(tmp, "data", "CXR_png")))[:10]
    t0 = time.perf_counter()
    for p in paths:
        item = pre({"image": p})
        with torch.no_grad():
            item["pred"] = net(item["image"][None])[0]
        post(item)
    print(f"lung-stage inference: {(time.perf_counter() - t0) / len(paths):.3f} s/image ({len(paths)} images)")


if __name__ == "__main__":
    main()

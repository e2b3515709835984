"""Grad-CAM cost: ``cadpipe.pipelines.inference.heatmaps.compute_cam`` vs MONAI's ``GradCAM`` vs the forward alone.

All three on the same DenseNet121 (the CXR bundle's network: 1 channel, 2 classes, random weights: speed does not
depend on training), the same batch of images, the same target layer (``class_layers.relu``), in one process:

- baseline: ``monai.visualize.GradCAM`` (forward with autograd through the whole network, a full backward that
  also computes every parameter's gradient), made once and reused, so its hooks are registered once;
- ``compute_cam``: the same map (up to MONAI's inverted default scaling, see its docstring); the network below the
  target layer runs without autograd and only d(score)/d(activation) is computed;
- the forward alone under ``torch.inference_mode()``: the floor for any Grad-CAM, which needs one forward.

Prints ms per image of each and the ratios; checks that the two maps agree.

    python benchmarks/gradcam.py [--size 224] [--batch 8] [--repeat 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import warnings

import numpy as np
import torch
from timing import best_time


def _best_ms(fn, repeat: int, n_images: int) -> float:
    """Best-of-``repeat`` ms per image after a warm-up call (oneDNN primitives, allocations)."""
    return 1000 * best_time(fn, repeat, warmup=True) / n_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from monai.networks.nets import DenseNet121
    from monai.transforms import ScaleIntensity
    from monai.visualize import GradCAM

    from cadpipe.pipelines.inference.heatmaps import compute_cam

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).eval()
    x = torch.rand(args.batch, 1, args.size, args.size)
    layer = "class_layers.relu"
    scale = lambda m: torch.as_tensor(np.stack([ScaleIntensity(minv=0.0, maxv=1.0)(i) for i in m.detach().numpy()]))  # noqa: E731
    # MONAI's hooks stay on the module they are registered on: give it its own copy of the network
    monai_cam = GradCAM(nn_module=copy.deepcopy(net), target_layers=layer, postprocessing=scale)

    def forward():
        with torch.inference_mode():
            net(x)

    print(f"DenseNet121, batch {args.batch} x 1 x {args.size} x {args.size}, torch threads {torch.get_num_threads()}, "
          f"CPUs {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; best of {args.repeat}")
    ours = _best_ms(lambda: compute_cam(net, x, layer, class_idx=1), args.repeat, args.batch)
    with warnings.catch_warnings():  # MONAI's full backward hook warns that no input requires grad
        warnings.simplefilter("ignore")
        theirs = _best_ms(lambda: monai_cam(x=x, class_idx=1), args.repeat, args.batch)
    fwd = _best_ms(forward, args.repeat, args.batch)
    diff = np.abs(compute_cam(net, x, layer, class_idx=1) - monai_cam(x=x, class_idx=1).numpy()[:, 0]).max()
    print(f"MONAI GradCAM (baseline)   {theirs:8.1f} ms/image   1.00x")
    print(f"cadpipe compute_cam        {ours:8.1f} ms/image   {theirs / ours:.2f}x faster than MONAI's")
    print(f"forward alone (floor)      {fwd:8.1f} ms/image   compute_cam = {ours / fwd:.2f}x the forward")
    print(f"max |compute_cam - MONAI GradCAM (rescaled to 1 = most evidence)| = {diff:.2e}")


if __name__ == "__main__":
    main()

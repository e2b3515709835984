"""Benchmark: cadpipe CLAHE vs skimage.exposure.equalize_adapthist vs OpenCV createCLAHE.

One 4000x3000 uint16 12-bit synthetic mammogram-like image, all three timed in the same run, interleaved
round by round (so load from other processes hits all of them alike); the median of the rounds is reported.

    python benchmarks/clahe.py [--rounds 5] [--size 4000 3000] [--threads 1]

Parameters: skimage and cadpipe use their defaults (kernel_size = 1/8 of each side -> 8x8 tiles,
clip_limit=0.01, nbins=256). OpenCV's semantics differ; comparable settings are:
- ``tileGridSize=(8, 8)``: the same 8x8 tiles as the default kernel_size (OpenCV pads the image to a
  multiple of the grid, skimage reflect-pads; both interpolate bilinearly between tile mappings);
- ``clipLimit``: OpenCV clips each of its 65536 16-bit bins at ``clipLimit * tile_pixels / 65536``;
  skimage clips each of its ``nbins`` bins, which here cover ``4096 / nbins = 16`` 12-bit grey values
  each, at ``clip_limit * tile_pixels``. The same clip per grey value needs
  ``clipLimit = clip_limit * 65536 / 16 = 40.96``. OpenCV's run time does not depend on clipLimit
  (it is a per-tile loop over the histogram), nor does ours.
OpenCV works on raw 16-bit values with 65536-bin histograms; skimage and cadpipe on 2**14 levels and
256 bins: the outputs are not equal (only the two ratios matter here). The script also prints the mean
absolute difference of cadpipe's output to skimage's on this image.

cadpipe runs on a torch tensor made from the numpy array (zero-copy), twice: with ``--threads`` threads
(``CLAHE(num_threads=...)``; default 0 = ``None`` = ``torch.get_num_threads()``, all cores, like OpenCV's
default) and with ``CLAHE(num_threads=1)`` (the transform's default, for pipelines that parallelise across
images). OpenCV runs with its default thread count (printed) and again with ``cv2.setNumThreads(1)``.
The target ratios compare like with like: cadpipe at ``--threads`` vs OpenCV at its default, and
cadpipe on 1 thread vs OpenCV on 1 thread (per-core). Every run includes everything the transform does
for that input (output allocation included) and gives float32 ``[0, 1]`` output.
On the shared 2-core team machine the load from other engineers makes every timing noisy; the load
average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def mammogram_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A 12-bit image with a dark background, a bright breast-shaped region, dense tissue and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((yy - h / 2) / (0.48 * h)) ** 2 + (xx / (0.85 * w)) ** 2)
    breast = r < 1
    img = 300.0 + breast * (1800.0 * np.clip(1 - r**2, 0, None) ** 0.3)
    img += breast * 700.0 * np.sin(xx / 97.0) * np.cos(yy / 131.0) ** 2
    img += rng.normal(0, 60, (h, w)).astype(np.float32)
    return np.clip(img, 0, 4095).astype(np.uint16)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, nargs=2, default=(4000, 3000), metavar=("ROWS", "COLS"))
    p.add_argument("--threads", type=int, default=0,
                   help="CLAHE(num_threads=...) for the main cadpipe run (0: torch.get_num_threads())")
    args = p.parse_args(argv)

    import cv2
    from skimage import exposure

    from cadpipe.transforms import CLAHE

    img = mammogram_like(*args.size)
    x = torch.from_numpy(img)[None]
    ours = CLAHE(num_threads=args.threads or None)  # kernel_size 1/8 of each side, clip_limit 0.01, nbins 256
    ours1 = CLAHE(num_threads=1)
    cv = cv2.createCLAHE(clipLimit=0.01 * 65536 / 16, tileGridSize=(8, 8))

    cv_threads = cv2.getNumThreads()

    def opencv_1thread():
        cv2.setNumThreads(1)
        try:
            return cv.apply(img)
        finally:
            cv2.setNumThreads(cv_threads)

    runs = {
        "cadpipe": lambda: ours(x),
        "cadpipe1t": lambda: ours1(x),
        "skimage": lambda: exposure.equalize_adapthist(img),
        "opencv": lambda: cv.apply(img),
        "opencv1t": opencv_1thread,
    }
    outs = {k: f() for k, f in runs.items()}  # warm-up (and outputs for the difference check)
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}

    mad = float(np.abs(outs["cadpipe"][0].numpy().astype(np.float64) - outs["skimage"]).mean())
    assert torch.equal(outs["cadpipe"], outs["cadpipe1t"])  # threads change nothing in the result
    print(f"image {args.size[0]}x{args.size[1]} uint16 12-bit, {args.rounds} rounds, median seconds")
    print(f"cadpipe threads {args.threads or torch.get_num_threads()}, opencv threads {cv2.getNumThreads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    for k in runs:
        print(f"  {k:9s} {med[k]:.4f} s   (runs: {' '.join(f'{t:.3f}' for t in times[k])})")
    print(f"speed-up vs skimage: {med['skimage'] / med['cadpipe']:.1f}x   (target >= 10x; 1 thread: "
          f"{med['skimage'] / med['cadpipe1t']:.1f}x)")
    print(f"time vs opencv:      {med['cadpipe'] / med['opencv']:.2f}x   (target <= 2x; both on their default threads)")
    print(f"time vs opencv, both on 1 thread (per-core comparison): {med['cadpipe1t'] / med['opencv1t']:.2f}x")
    print(f"mean |cadpipe - skimage| on this image: {mad:.2e}")


if __name__ == "__main__":
    main()

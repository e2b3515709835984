"""LJPEG decode time: cadpipe's reader vs imagecodecs' own decode, same image, same run.

Writes a synthetic 6000x4000 (rows x cols; "4000x6000") 12-bit DDSM-style case into a temporary folder and times

* ``imagecodecs.jpeg8_decode`` (libjpeg-turbo) and ``imagecodecs.ljpeg_decode`` (lj92) on the bytes in memory,
* ``read_ljpeg(path)`` (file read + ``.ics`` parse + decode + checks + reshape) — the reader's work,
* ``LoadImage(reader=LJPEGReader())`` (adds MONAI's MetaTensor and float32 conversion),

for a normal header and a transposed one, and prints the ratios (target: reader < 1.5x the library decode). It
also times the pure-Python SSSS=16 fallback decoder on a crop and extrapolates to the full image (only
non-standard streams pay it).

    python benchmarks/ljpeg.py [--rows 6000 --cols 4000 --repeat 5]

Timings are best-of-``repeat`` wall times, the candidates taking turns, on a shared machine (other work runs
beside it).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from timing import best_time


def interleaved_best(fns: dict, repeat: int) -> dict:
    """Best-of-``repeat`` time of each function, taking turns so that load from other work hits all alike."""
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--cols", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--fallback-crop", type=int, default=400, help="side of the crop for the fallback decoder")
    args = ap.parse_args()

    import imagecodecs
    import torch
    from monai.transforms import LoadImage

    from cadpipe.data.synthetic.ljpeg import encode_ljpeg, synthetic_ljpeg_image, write_ljpeg_case
    from cadpipe.transforms.readers.io_ljpeg import LJPEGReader, decode_ljpeg_python, read_ljpeg

    torch.set_num_threads(1)
    print(f"imagecodecs {imagecodecs.__version__} ({imagecodecs.jpeg8_version()}, {imagecodecs.ljpeg_version()})")
    print(f"image: {args.rows}x{args.cols} (rows x cols), 12-bit, synthetic; best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        truth = write_ljpeg_case(tmp, 1, prefix="B", rows=args.rows, cols=args.cols, views=("LEFT_CC", "LEFT_MLO"),
                                 transposed_views=("LEFT_MLO",))
        for view, label in (("LEFT_CC", "normal header"), ("LEFT_MLO", "transposed header")):
            t = truth["views"][view]
            with open(t["path"], "rb") as f:
                data = f.read()
            arr, meta = read_ljpeg(t["path"])
            assert np.array_equal(arr, t["pixels"]), "reader result differs from the ground truth"
            loader = LoadImage(reader=LJPEGReader(), image_only=True)
            res = interleaved_best(
                {
                    "jpeg8": lambda: imagecodecs.jpeg8_decode(data),
                    "ljpeg": lambda: imagecodecs.ljpeg_decode(data),
                    "reader": lambda: read_ljpeg(t["path"]),
                    "load": lambda: loader(t["path"]),
                },
                args.repeat,
            )
            lib_j8, lib_lj, reader, load = res["jpeg8"], res["ljpeg"], res["reader"], res["load"]
            lib = min(lib_j8, lib_lj)
            print(f"\n[{label}] {t['rows']}x{t['cols']}, {len(data) / 1e6:.1f} MB, decoder used: "
                  f"{meta['ljpeg_decode']['decoder']}")
            print(f"  imagecodecs.jpeg8_decode   {lib_j8 * 1000:8.1f} ms")
            print(f"  imagecodecs.ljpeg_decode   {lib_lj * 1000:8.1f} ms")
            print(f"  read_ljpeg (reader)        {reader * 1000:8.1f} ms")
            print(f"  LoadImage(LJPEGReader)     {load * 1000:8.1f} ms  (+ MetaTensor, float32 copy)")
            print(f"  ratio reader / fastest imagecodecs decode = {reader / lib:.2f}x (target < 1.5x)")
            print(f"  ratio reader / jpeg8_decode               = {reader / lib_j8:.2f}x")
            print(f"  ratio reader / ljpeg_decode               = {reader / lib_lj:.2f}x")
            print(f"  ratio LoadImage / fastest imagecodecs     = {load / lib:.2f}x")

        n = args.fallback_crop
        crop = synthetic_ljpeg_image(n, n, seed=1)
        data = encode_ljpeg(crop, ssss16_extra_bits=True)
        fb = best_time(lambda: decode_ljpeg_python(data, ssss16_extra_bits=True), 1)
        per_px = fb / (n * n)
        print(f"\n[SSSS=16 extra-bits fallback, pure Python] {n}x{n}: {fb:.2f} s = {per_px * 1e6:.2f} us/pixel;"
              f" extrapolated to {args.rows}x{args.cols}: {per_px * args.rows * args.cols:.0f} s")


if __name__ == "__main__":
    main()

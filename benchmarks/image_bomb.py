"""Peak memory of refusing an image bomb, against decoding a smaller one, measured in the same run.

A complete 30000 x 30000 grey PNG of zeros (~0.9 MB on disk, 900 M pixels declared) is loaded with
``LoadStudyImage`` in a fresh process: the pixel-count guard (:mod:`cadpipe.transforms.readers.limits`) refuses it from the
header. The baseline decodes a 10000 x 10000 PNG of the same kind with PIL (guard off: ``Image.MAX_IMAGE_PIXELS =
None``) and converts it to float32 as the loader would, in another fresh process (the 30000 x 30000 one would need
~4.5 GB and more: the portal went from 0.7 GB to 11.5 GB before the guard). Each figure is the process's peak
resident memory (``ru_maxrss``) minus its resident memory after the imports.

    python benchmarks/image_bomb.py [--baseline-size 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from PIL import Image
from cadpipe.transforms.readers.io_any import LoadStudyImage
from cadpipe.errors import CadpipeInputError

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

idle = rss_mb()
t0 = time.perf_counter()
outcome = "decoded"
if sys.argv[1] == "guarded":
    try:
        LoadStudyImage()(sys.argv[2])
    except CadpipeInputError as err:
        outcome = "refused: " + err.reason
else:
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(sys.argv[2]) as im:
        arr = np.asarray(im).astype(np.float32)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"idle_mb": idle, "peak_mb": peak, "above_idle_mb": max(0.0, peak - idle),
                  "seconds": time.perf_counter() - t0, "outcome": outcome}))
"""


def _run(mode: str, path: str) -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, path], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from cadpipe.data.synthetic.hostile import write_png_bomb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-size", type=int, default=10000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bomb = write_png_bomb(os.path.join(tmp, "synthetic_bomb.png"), 30000, 30000, complete=True)
        base = write_png_bomb(os.path.join(tmp, "synthetic_base.png"), args.baseline_size, args.baseline_size,
                              complete=True)
        print(f"wrote the bombs in {time.perf_counter() - t0:.1f} s: 30000x30000 = {bomb['bytes'] / 1e6:.2f} MB, "
              f"{args.baseline_size}x{args.baseline_size} = {base['bytes'] / 1e6:.2f} MB")
        guarded = _run("guarded", bomb["path"])
        baseline = _run("decode", base["path"])
    print(f"guarded LoadStudyImage, 30000x30000: +{guarded['above_idle_mb']:.0f} MB peak above idle "
          f"({guarded['idle_mb']:.0f} MB), {guarded['seconds']:.3f} s, {guarded['outcome']}")
    print(f"baseline PIL decode + float32, {args.baseline_size}x{args.baseline_size}: "
          f"+{baseline['above_idle_mb']:.0f} MB peak above idle, {baseline['seconds']:.2f} s")
    print(f"ratio: the refusal costs {guarded['above_idle_mb'] / max(baseline['above_idle_mb'], 1e-9):.4f}x the "
          f"memory of decoding a bomb {30000**2 / args.baseline_size**2:.0f}x smaller")


if __name__ == "__main__":
    main()

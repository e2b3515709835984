"""``report.pdf`` writing time: as shipped vs how it was written before, in one run.

One study with one heatmap overlay PNG of each size below (synthetic), written by
``cadpipe.pipelines.outputs.report.write_study_report`` (HTML + PDF) three ways:

- baseline (before): the overlay embedded at full size, ASCII85-encoded by reportlab's pure-Python encoder (what
  ran without ``rl_accel``, the ``reportlab[accel]`` C extension);
- full size, C encoder: ``rl_accel`` alone;
- as shipped: the overlay cut to ``PDF_IMAGE_MAX_PX`` on its long side, C encoder.

Prints best-of-``repeat`` seconds and the speed-up over the baseline.

    python benchmarks/report_pdf.py [--sizes 2048x1536 700x460] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import ExitStack
from unittest import mock

import reportlab

reportlab._rl_testing = True  # rl_accel then defines its pure-Python functions beside the C ones (the baseline)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from reportlab.lib import rl_accel  # noqa: E402
from reportlab.pdfbase import pdfdoc  # noqa: E402
from timing import best_time  # noqa: E402

from cadpipe.pipelines.outputs import report  # noqa: E402


def _full_size(path: str):
    with Image.open(path) as img:
        return img.copy()


def _write(study_dir: str, out_dir: str, png: str) -> None:
    rows = [{"series_id": "u", "input_paths": png, "status": "ok", "_findings": [{"text": "synthetic finding"}],
             "_outputs": {"overlays": [os.path.relpath(png, out_dir)]}}]
    report.write_study_report(study_dir, "S1", rows, {}, {"name": "bench", "version": "1", "model_sha256": "0" * 64},
                              out_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["2048x1536", "700x460"], help="overlay WIDTHxHEIGHT")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    c_encoder = "asciiBase85Encode" in rl_accel._c_funcs
    py_encoder = rl_accel._py_funcs["asciiBase85Encode"]
    print(f"reportlab {reportlab.Version}; C ASCII85 encoder (rl_accel) {'installed' if c_encoder else 'MISSING'}; "
          f"PDF_IMAGE_MAX_PX {report.PDF_IMAGE_MAX_PX}; best of {args.repeat}; load average {os.getloadavg()[0]:.1f}")
    variants = {
        "baseline: full size, pure-Python ASCII85": (True, True),
        "full size, C ASCII85": (True, False),
        "as shipped: cut to max px, C ASCII85": (False, False),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            w, h = (int(v) for v in size.lower().split("x"))
            png = os.path.join(tmp, "s", "u", f"overlay_{size}.png")
            rng = np.random.default_rng(0)
            report.overlay_png(rng.random((w, h)), heatmap=rng.random((w // 32, h // 32)), path=png)  # (X, Y)
            times = {}
            for label, (full, pure_python) in variants.items():
                with ExitStack() as patches:
                    if full:
                        patches.enter_context(mock.patch.object(report, "_pdf_image", _full_size))
                    if pure_python:
                        patches.enter_context(mock.patch.object(pdfdoc, "asciiBase85Encode", py_encoder))
                    times[label] = best_time(lambda: _write(os.path.join(tmp, "s"), tmp, png), args.repeat,
                                             warmup=True)
            base = times["baseline: full size, pure-Python ASCII85"]
            print(f"overlay {w}x{h}: report.html + report.pdf")
            for label, t in times.items():
                print(f"  {label:44s} {t:7.3f} s   {base / t:5.1f}x faster than the baseline")


if __name__ == "__main__":
    main()

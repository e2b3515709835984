"""``cadpipe synth --output DIR``: write a small mixed folder of synthetic studies in every supported format.

Layout under DIR: ``dicom/`` (CXRs: MONOCHROME2 with two windows, MONOCHROME1 with a VOI LUT, RLE, JPEG lossless,
JPEG-LS, JPEG 2000), ``dicom/synthetic_ct_series/`` (a CT series folder), ``nifti/`` (lesion volume + mask),
``images/`` (PNG 8/16-bit, RGB CXR PNG, JPEG, TIFF), and, for the generators present in
``cadpipe.data.synthetic`` (ljpeg, cxr, brain, ddsm, histology), one small set each. Prints one line per part.
"""

from __future__ import annotations

import argparse
import importlib
import os

__all__ = ["add_arguments", "run", "write_mixed_folder"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", required=True, help="folder to write into (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--no-datasets", action="store_true", help="only the format samples, no dataset layouts")


def _optional(module: str, func: str):
    try:
        return getattr(importlib.import_module(f"cadpipe.data.synthetic.{module}"), func)
    except (ImportError, AttributeError):
        return None


def write_mixed_folder(output: str | os.PathLike, seed: int = 0, datasets: bool = True) -> dict:
    """Write the folder described in the module docstring; returns ``{part: ground truth}``."""
    from cadpipe.data.synthetic import dicom, images, nifti

    out = os.fspath(output)
    d_dir, n_dir, i_dir = (os.path.join(out, p) for p in ("dicom", "nifti", "images"))
    for p in (d_dir, n_dir, i_dir):
        os.makedirs(p, exist_ok=True)
    truth: dict = {"dicom": [], "images": []}
    for name, kw in [
        ("synthetic_cxr_mono2.dcm", dict(laterality="", view="PA")),
        ("synthetic_cxr_mono1_voilut.dcm", dict(photometric="MONOCHROME1", voi_lut=True, view="AP")),
        ("synthetic_cxr_rle.dcm", dict(transfer_syntax="rle")),
        ("synthetic_cxr_jpeg_lossless.dcm", dict(transfer_syntax="jpeg_lossless")),
        ("synthetic_cxr_jpegls.dcm", dict(transfer_syntax="jpegls", photometric="MONOCHROME1")),
        ("synthetic_cxr_jpeg2000.dcm", dict(transfer_syntax="jpeg2000")),
    ]:
        truth["dicom"].append(dicom.write_cxr_dicom(os.path.join(d_dir, name), rows=96, cols=80, seed=seed, **kw))
    truth["ct_series"] = dicom.write_ct_series(os.path.join(d_dir, "synthetic_ct_series"), seed=seed)
    truth["nifti"] = nifti.write_lesion_volume(os.path.join(n_dir, "synthetic_lesions.nii.gz"), seed=seed)
    for name, kw in [
        ("synthetic_gray8.png", {}),
        ("synthetic_gray16.png", dict(bits=16)),
        ("synthetic_rgb.jpg", dict(channels=3)),
        ("synthetic_gray16.tif", dict(bits=16)),
    ]:
        truth["images"].append(images.write_image(os.path.join(i_dir, name), seed=seed, **kw))
    truth["images"].append(images.write_rgb_cxr(os.path.join(i_dir, "synthetic_cxr_rgb.png"), seed=seed))
    if datasets:
        calls = [
            ("ljpeg", "write_ljpeg_case", "ljpeg", dict(case_number=1)),
            ("cxr", "write_synthetic_kermany", "kermany", dict(n_per_class=2, size=64, splits=("test",))),
            ("brain", "write_msd_synthetic", "msd_brain", dict(n_train=1, n_test=1)),
            ("ddsm", "write_ddsm_dataset", "ddsm", dict(n_cases=1)),
            ("histology", "write_synthetic_bach", "bach", dict(n_per_class=1)),
        ]
        for module, func, sub, kw in calls:
            fn = _optional(module, func)
            if fn is None:
                continue
            try:
                truth[sub] = fn(os.path.join(out, sub), seed=seed, **kw)
            except TypeError:  # another engineer changed the signature: fall back to defaults
                truth[sub] = fn(os.path.join(out, sub))
    return truth


def run(args: argparse.Namespace) -> int:
    write_mixed_folder(args.output, seed=args.seed, datasets=not args.no_datasets)
    root = os.path.abspath(args.output)
    for part in sorted(os.listdir(root)):
        n = sum(len(files) for _, _, files in os.walk(os.path.join(root, part)))
        print(f"{part}: {n} files in {os.path.join(root, part)}")
    return 0

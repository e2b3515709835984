"""Agreement of the batched path on a device with the per-item path on the CPU, and of reduced precision with fp32.

For each classification bundle (untrained random weights: agreement does not depend on training) and a folder of
synthetic DICOM CXRs of every kind the batched path handles (MONOCHROME1/2, VOI LUT, sigmoid VOI function, no
window, RLE), prints the largest probability difference between:

- per-item preprocessing + fp32 forward on the CPU (the reference, what ``monai.bundle run`` computes),
- batched preprocessing + fp32 forward on ``--device``,
- batched preprocessing + ``--precision`` (default bf16) + channels_last on ``--device``.

The bundle READMEs' fp32-vs-bf16 metric differences come from ``benchmarks/precision.py`` (briefly trained weights,
synthetic test splits); this script only checks that the code paths compute the same thing (CI checks the CPU case in
``tests/pipelines/inference/test_batched_preprocess.py``).

    python benchmarks/batched_agreement.py --device cuda [--studies 64] [--precision bf16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import torch

BUNDLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bundles")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--studies", type=int, default=64)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=400)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--bundle", action="append", default=None)
    args = ap.parse_args()

    from cadpipe.data.synthetic.dicom import write_cxr_dicom
    from cadpipe.data.synthetic.weights import copy_bundle_untrained
    from cadpipe.pipelines.inference.bundle_runner import BundleRunner

    kinds = [("MONOCHROME2", {}), ("MONOCHROME1", {}), ("MONOCHROME2", {"voi_lut": True}),
             ("MONOCHROME2", {"voi_function": "SIGMOID"}), ("MONOCHROME2", {"windows": []}),
             ("MONOCHROME2", {"transfer_syntax": "rle"})]
    work = tempfile.mkdtemp(prefix="cadpipe_agree_")
    try:
        paths = []
        for i in range(args.studies):
            photometric, kw = kinds[i % len(kinds)]
            p = os.path.join(work, f"synthetic_{i:03d}.dcm")
            write_cxr_dicom(p, rows=args.rows, cols=args.cols, photometric=photometric, seed=i, **kw)
            paths.append(p)
        for name in args.bundle or ["cxr_pneumonia_classification", "cxr_chestxray14_classification"]:
            root = copy_bundle_untrained(os.path.join(BUNDLES, name), os.path.join(work, name))
            cpu = BundleRunner(root, device="cpu")
            if cpu.task not in ("classification", "multilabel"):  # masks: a Dice, not a probability difference
                print(f"{name}: skipped, task {cpu.task!r} (segmentation agreement, batched vs per item, is checked "
                      f"by tests/pipelines/inference/test_batched_segmentation.py)")
                continue
            ref = torch.cat([torch.stack([torch.as_tensor(o["pred"]).float().reshape(-1) for o in
                                          cpu.predict([cpu.preprocess({"image": p}) for p in paths[i:i + 16]])])
                             for i in range(0, len(paths), 16)])
            dev = BundleRunner(root, device=args.device)
            plan, why = dev.batched_preprocessing()
            if plan is None:
                print(f"{name}: no batched path ({why})")
                continue
            post = dev.batched_postprocessing()
            raws = [plan.decode(p) for p in paths]

            def probs() -> torch.Tensor:
                return torch.cat([post(dev.forward_batch(plan(raws[i:i + 16], dev.device))).float().cpu()
                                  for i in range(0, len(raws), 16)])

            fp32 = probs()
            dev.configure_inference(args.precision, True)
            low = probs()
            print(f"{name} on {args.device}: max |dprob| batched fp32 vs per-item CPU fp32 "
                  f"{float((fp32 - ref).abs().max()):.2e}; {args.precision}+channels_last vs fp32 "
                  f"{float((low - fp32).abs().max()):.2e} (mean {float((low - fp32).abs().mean()):.2e}); "
                  f"{len(paths)} studies {args.rows}x{args.cols}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Command-line options that bound what hostile input can cost, shared by ``cadpipe score`` and ``cadpipe serve``:
the pixel-count limits (:mod:`cadpipe.transforms.readers.limits`), following symbolic links, and logs without header values
(:mod:`cadpipe.pipelines.scoring.log_privacy`)."""

from __future__ import annotations

import argparse
import sys

from cadpipe.transforms.readers.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_VOXELS, PixelLimits

__all__ = ["add_input_safety_arguments", "apply_input_safety"]


def add_input_safety_arguments(parser: argparse.ArgumentParser, links: bool = True) -> None:
    parser.add_argument("--max-pixels", type=float, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse a 2D image declaring more than N pixel values (pixels x samples) before "
                             f"decoding it (default {DEFAULT_MAX_PIXELS:.0e})")
    parser.add_argument("--max-voxels", type=float, default=DEFAULT_MAX_VOXELS, metavar="N",
                        help=f"the same for a volume (NIfTI, multi-frame DICOM, DICOM series; default "
                             f"{DEFAULT_MAX_VOXELS:.0e})")
    if links:
        parser.add_argument("--follow-links", action="store_true",
                            help="follow symbolic links that leave the input folder (default: reported as errors)")


def apply_input_safety(args: argparse.Namespace, prog: str) -> bool:
    """Check and apply the options (limits exported to worker processes, pydicom's logs quieted); False (after a
    message on stderr) for a bad value."""
    if args.max_pixels < 1 or args.max_voxels < 1:
        print(f"{prog}: --max-pixels and --max-voxels must be >= 1", file=sys.stderr)
        return False
    PixelLimits(int(args.max_pixels), int(args.max_voxels)).export()
    from cadpipe.pipelines.scoring.log_privacy import quiet_identifying_logs

    quiet_identifying_logs()
    return True

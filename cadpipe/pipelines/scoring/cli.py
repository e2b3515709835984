"""``cadpipe score``: score a folder of studies with a bundle (see :mod:`cadpipe.pipelines.scoring.score`).

Exit status (also in ``--help``): see :data:`~cadpipe.pipelines.scoring.exit_status.EXIT_STATUS`.
Building the parser imports nothing heavy (``--help`` answers at once); torch, MONAI and the scoring core are
imported by :func:`run`, where the work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cadpipe.errors import CadpipeInputError
from cadpipe.extras import MissingExtraError, require
from cadpipe.pipelines.scoring.exit_status import EXIT_NOTHING_FOUND, EXIT_STATUS, EXIT_USAGE
from cadpipe.pipelines.scoring.input_safety import add_input_safety_arguments, apply_input_safety

DEFAULT_WORKERS = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_STATUS
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/cxr_pneumonia_classification")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="folder of studies (DICOM anywhere, NIfTI, DDSM cases, JPEG/PNG/TIFF); ground "
                                     "truth is skipped: *_mask/*_seg/*_label(s) files, masks/ManualMask/labelsTr/... "
                                     "folders, DICOM SEG/RTSTRUCT/SR (cadpipe.pipelines.scoring.discovery)")
    src.add_argument("--manifest", help="CSV with a 'path' column and optional 'study_id'/'series_id' columns")
    parser.add_argument("--output", required=True, help="output folder (results.csv, per-study outputs, reports)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="units forwarded together (same-shape images are batched across studies; default 4)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"DataLoader worker processes decoding/preprocessing the images (default "
                             f"{DEFAULT_WORKERS}; 0 = in the scoring process)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the forward pass (default: torch's, one per CPU). On a machine "
                             "shared with other busy processes, 1 can be several times faster: torch's threads wait "
                             "for each other and one of them is often descheduled")
    parser.add_argument("--streams", type=int, default=None,
                        help="batches forwarded at once on threads sharing the model, the torch threads split "
                             "between them (default: 2 on a CPU with >= 2 threads, 1 for detection bundles and on a GPU)")
    parser.add_argument("--limit", type=int, default=None, help="score at most N units")
    parser.add_argument("--force", action="store_true",
                        help="rescore everything; without it a re-run skips units scored ok and retries error units. "
                             "An output folder belongs to the bundle that first scored into it: another bundle is "
                             "refused (exit 2) unless --force, which starts the folder's results.csv afresh")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("--no-reports", action="store_true", help="skip report.html/pdf")
    parser.add_argument("--no-heatmaps", action="store_true", help="skip GradCAM heatmaps (classification)")
    parser.add_argument("--no-dicom-results", action="store_true",
                        help="DICOM input: skip the per-unit DICOM SR and Secondary Capture (the SEG of a "
                             "segmentation bundle is still written)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="score on a Ray cluster (Ray Data; docs/scale-out.md); no ADDRESS = a local Ray")
    parser.add_argument("--override", action="append", default=[], metavar="ID=VALUE",
                        help="bundle config override, VALUE parsed as JSON when it can be (e.g. image_size=64)")
    parser.add_argument("--ray-actors", type=int, default=None,
                        help="most model actors on Ray (default: what the cluster can place: one per GPU, or one per "
                             "CPU less one kept for decoding)")
    parser.add_argument("--ray-shared-fs", action="store_true",
                        help="with --ray: the input and output folders are on a file system every node sees at the "
                             "same path; workers read the inputs and write the outputs there (default: the driver "
                             "ships the inputs' bytes and writes the outputs it gets back)")
    add_input_safety_arguments(parser)
    parser.add_argument("--preprocess", choices=("auto", "per-item", "batched"), default="auto",
                        help="per-item: the bundle's MONAI preprocessing in the workers; batched: workers only decode, "
                             "the rest runs batched on the model's device; auto (default): batched where the "
                             "bundle's preprocessing allows it (the log says why when it does not)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="forward precision (default: the bundle's inference.json, fp32); bf16 on a CPU or a GPU "
                             "that supports it, fp16 on a GPU")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory layout for 2D networks (default: the bundle's inference.json)")
    parser.add_argument("--writer-threads", type=int, default=None,
                        help="threads writing output files while the next batches run (default: CPUs / 4, 1 to 4)")



def parse_overrides(texts: list[str]) -> dict:
    """``--override ID=VALUE`` options as a dict: VALUE parsed as JSON where it is JSON, else kept as the string."""
    overrides = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ValueError(f"--override needs ID=VALUE, got {text!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def run(args: argparse.Namespace) -> int:
    from cadpipe.pipelines.scoring.score import ScoreConfig, score  # torch and MONAI: only once the work starts

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if not apply_input_safety(args, "cadpipe score"):
        return EXIT_USAGE
    if args.ray_shared_fs and args.ray is None:
        print("cadpipe score: --ray-shared-fs needs --ray", file=sys.stderr)
        return EXIT_USAGE
    if args.writer_threads is not None and args.writer_threads < 0:
        print("cadpipe score: --writer-threads must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        overrides = parse_overrides(args.override)
    except ValueError as err:
        print(f"cadpipe score: {err}", file=sys.stderr)
        return EXIT_USAGE
    cfg = ScoreConfig(overrides=overrides, bundle=args.bundle, input=args.input, output=args.output, manifest=args.manifest,
                      device=args.device, batch_size=args.batch_size, workers=args.workers, limit=args.limit,
                      force=args.force, quiet=args.quiet, ray=args.ray, ray_actors=args.ray_actors,
                      ray_shared_fs=args.ray_shared_fs,
                      reports=not args.no_reports, heatmaps=not args.no_heatmaps, threads=args.threads,
                      streams=args.streams, follow_links=args.follow_links,
                      preprocess=args.preprocess, precision=args.precision, channels_last=args.channels_last,
                      writer_threads=args.writer_threads, dicom_results=not args.no_dicom_results)
    try:
        backend = None
        if cfg.ray is not None:
            require("ray", "cadpipe score --ray")  # before any work
            from cadpipe.pipelines.scoring.ray_backend import score_with_ray as backend
        summary = score(cfg, backend=backend)
    except (CadpipeInputError, MissingExtraError) as err:
        print(f"cadpipe score: {err}", file=sys.stderr)
        return EXIT_USAGE
    if summary["exit_code"] == EXIT_NOTHING_FOUND:
        print(f"cadpipe score: warning: no scoreable unit in {args.input or args.manifest} (images: DICOM, NIfTI, "
              "NRRD, MetaImage, DDSM cases, JPEG/PNG/TIFF; ground-truth masks are skipped); nothing scored",
              file=sys.stderr)
        return EXIT_NOTHING_FOUND
    if not args.quiet:
        rate = summary["units_per_second"]
        print(f"scored {summary['units']} units in {summary['studies']} studies: {summary['ok']} ok, "
              f"{summary['error']} error ({summary['skipped_already_done']} already done"
              f"{f', {rate} units/s' if rate else ''})")
        print(f"results: {summary['results_csv']}")
        print(f"outputs and reports: {summary['output']}/<study>/")
    return summary["exit_code"]

"""``cadpipe score``: the folder scoring CLI (:mod:`cadpipe.pipelines.scoring.cli`) plus a DICOMweb source.

``--dicomweb URL`` with ``--study UID`` (repeatable) or ``--query KEY=VALUE`` (repeatable, QIDO-RS filters) takes
the studies from a DICOMweb server instead of ``--input``: they are retrieved into ``<output>/dicomweb_cache`` and
scored from there like a folder (resume included: a rerun fetches only missing instances and skips units already
scored). ``--store-results`` then sends the DICOM results (SEG, SR, Secondary Capture) back with STOW-RS; results
already stored by an earlier run are not sent again.

The bundle, device and options are checked before anything is retrieved (a usage error writes nothing). Every
server is bounded (:class:`~cadpipe.pipelines.pacs.dicomweb.DicomwebLimits`, options below). Nothing printed or
logged holds a UID or header value: studies are named by their number in this run, and
``<output>/dicomweb_studies.csv`` maps each number to its Study Instance UID, what was retrieved and why a study
was not.

Exit status: those of the folder CLI (0, 2, 3, 4), and 5: the DICOMweb server could not be used for some or all
studies or results, or the search matched more than ``--max-studies`` (what was retrieved is scored, nothing scored
is lost; a rerun continues).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.private_files import make_private_dirs
from cadpipe.pipelines.scoring import cli as scoring_cli
from cadpipe.pipelines.scoring.log_privacy import escape_controls
from cadpipe.pipelines.scoring.exit_status import EXIT_USAGE

EXIT_SOURCE = 5
CACHE = "dicomweb_cache"
STORED = os.path.join(".cadpipe", "dicomweb_stored.txt")
STUDIES = "dicomweb_studies.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scoring_cli.add_arguments(parser)
    parser.epilog = (parser.epilog or "") + (
        "\n  5  --dicomweb: the server could not be searched, or some studies not retrieved or results not stored "
        "(stderr says which and why); what was retrieved is scored, a rerun continues")
    # --dicomweb joins the required one-of group (--input | --manifest) the folder CLI defines
    source = next(g for g in parser._mutually_exclusive_groups  # noqa: SLF001 - argparse has no public accessor
                  if any("--input" in a.option_strings for a in g._group_actions))  # noqa: SLF001
    source.add_argument("--dicomweb", metavar="URL",
                        help="DICOMweb root of a PACS (e.g. http://127.0.0.1:8042/dicom-web): studies from --study "
                             "or --query are retrieved into <output>/dicomweb_cache and scored")
    web = parser.add_argument_group("DICOMweb source (with --dicomweb)")
    web.add_argument("--study", action="append", default=[], metavar="UID", help="Study Instance UID to score")
    web.add_argument("--query", action="append", default=[], metavar="KEY=VALUE",
                     help="QIDO-RS study filter, e.g. ModalitiesInStudy=CR or StudyDate=20260101-")
    web.add_argument("--dicomweb-auth-file", metavar="PATH",
                     help="file holding 'bearer <token>' or 'basic <user>:<password>' (default: the "
                          "CADPIPE_DICOMWEB_AUTH environment variable; never pass credentials on the command line)")
    web.add_argument("--store-results", action="store_true",
                     help="send the DICOM results (SEG, SR, Secondary Capture) back with STOW-RS")
    from cadpipe.pipelines.pacs.dicomweb import DicomwebLimits

    d = DicomwebLimits()
    web.add_argument("--max-studies", type=int, default=d.max_studies, metavar="N",
                     help=f"score at most N studies of a --query search; more matches are reported, exit 5 "
                          f"(default {d.max_studies})")
    web.add_argument("--max-instance-mb", type=float, default=d.max_instance_mb, metavar="MB",
                     help=f"stop a study's retrieval at an instance over MB (default {d.max_instance_mb:g})")
    web.add_argument("--max-study-mb", type=float, default=d.max_study_mb, metavar="MB",
                     help=f"stop a study's retrieval past MB in all (default {d.max_study_mb:g})")
    web.add_argument("--dicomweb-timeout", type=float, default=d.request_timeout_s, metavar="S",
                     help=f"overall deadline of one search or store request, answer included (default "
                          f"{d.request_timeout_s:g} s; a silent connection fails after {d.read_timeout_s:g} s)")
    web.add_argument("--dicomweb-study-timeout", type=float, default=d.study_timeout_s, metavar="S",
                     help=f"overall deadline of one study's retrieval (default {d.study_timeout_s:g} s)")


def _print_err(text: str) -> None:
    print(f"cadpipe score: {escape_controls(text)}", file=sys.stderr)


def _fail(text: str, code: int) -> int:
    _print_err(text)
    return code


def _limits(args: argparse.Namespace):
    from cadpipe.pipelines.pacs.dicomweb import DicomwebLimits

    for option, value in (("--dicomweb-timeout", args.dicomweb_timeout),
                          ("--dicomweb-study-timeout", args.dicomweb_study_timeout),
                          ("--max-instance-mb", args.max_instance_mb), ("--max-study-mb", args.max_study_mb),
                          ("--max-studies", args.max_studies)):
        if not value > 0:
            raise ValueError(f"{option} must be > 0 (got {value:g})")
    limits = DicomwebLimits(request_timeout_s=args.dicomweb_timeout, study_timeout_s=args.dicomweb_study_timeout,
                            max_instance_mb=args.max_instance_mb, max_study_mb=args.max_study_mb,
                            max_studies=args.max_studies)
    limits.check()
    return limits


def _check_before_retrieval(args: argparse.Namespace) -> None:
    """What ``score`` would refuse as a usage error, checked before anything is retrieved (nothing written)."""
    from cadpipe.pipelines.scoring.preflight import check_bundle, check_device, check_options

    check_options(args)
    if os.path.isfile(args.output):
        raise CadpipeInputError(args.output, "output exists and is a file, not a folder")
    check_bundle(args.bundle)
    if args.ray is None:
        check_device(args.device)


def run(args: argparse.Namespace) -> int:
    if not args.dicomweb:
        used = [n for n, v in (("--study", args.study), ("--query", args.query),
                                ("--dicomweb-auth-file", args.dicomweb_auth_file),
                                ("--store-results", args.store_results)) if v]
        if used:
            return _fail(f"{', '.join(used)} need(s) --dicomweb", EXIT_USAGE)
        return scoring_cli.run(args)
    from cadpipe.pipelines.scoring.log_privacy import quiet_identifying_logs

    quiet_identifying_logs()  # before anything is retrieved: pydicom's warnings quote header values
    try:
        import requests  # noqa: F401
    except ImportError:
        return _fail("--dicomweb needs the 'pacs' extra (requests not installed): pip install 'cadpipe[pacs]'",
                     EXIT_USAGE)
    from cadpipe.pipelines.pacs import dicomweb

    if not args.study and not args.query:
        return _fail("--dicomweb needs --study UID or --query KEY=VALUE", EXIT_USAGE)
    query = {}
    for text in args.query:
        key, sep, value = text.partition("=")
        if not sep or not key:
            return _fail(f"--query needs KEY=VALUE, got {text!r}", EXIT_USAGE)
        query[key] = value
    if any(not s or not s.isprintable() or len(s) > dicomweb.MAX_UID for s in args.study):
        return _fail("--study needs a UID (printable characters)", EXIT_USAGE)
    try:
        limits = _limits(args)
        auth = dicomweb.read_auth(args.dicomweb_auth_file)
        _check_before_retrieval(args)
    except ValueError as err:  # CadpipeInputError included
        return _fail(str(err), EXIT_USAGE)
    client = dicomweb.connect(args.dicomweb, auth, limits)
    cache = os.path.join(args.output, CACHE)
    make_private_dirs(cache)  # retrieved studies are patient data: 0700 (docs/security.md)
    problems: list[str] = []
    studies = list(dict.fromkeys(args.study))
    if query:
        try:
            found, capped = dicomweb.find_studies(client, query)
            studies += [s for s in found if s not in studies]
            if capped:
                problems.append(f"search: more than {limits.max_studies} studies match; the first "
                                f"{limits.max_studies} are retrieved and scored (narrow --query, or raise "
                                f"--max-studies)")
        except Exception as err:  # noqa: BLE001 - the --study studies are still retrieved and scored
            reason = str(err) if isinstance(err, dicomweb.DicomwebError) else f"{client.url}: {type(err).__name__}"
            problems.append(f"search failed: {reason}")
    table = []
    for n, study in enumerate(studies, start=1):
        row = {"study": n, "study_instance_uid": study, "retrieved": 0, "cached": 0, "status": "ok", "error": ""}
        try:
            got = dicomweb.retrieve_study(client, study, cache)
            row.update(retrieved=got.written, cached=got.cached)
            if not args.quiet:
                print(f"study {n}/{len(studies)}: {got.written} instance(s) retrieved, {got.cached} already cached")
        except Exception as err:  # noqa: BLE001 - one study never ends the run: its row says why
            reason = str(err) if isinstance(err, dicomweb.DicomwebError) else f"{client.url}: {type(err).__name__}"
            row.update(status="error", error=reason)
            problems.append(f"study {n}/{len(studies)} not (fully) retrieved: {reason} (its UID: {STUDIES})")
        table.append(row)
    _write_studies(args.output, table)
    for p in problems:
        _print_err(f"DICOMweb {p}")
    args.input, args.manifest = cache, None
    code = scoring_cli.run(args)  # scores whatever is in the cache, earlier runs' retrievals included
    if args.store_results and code in (0, 3):
        try:
            n = _store(client, args.output)
            if not args.quiet:
                print(f"stored {n} DICOM result instance(s) with STOW-RS")
        except dicomweb.DicomwebError as err:
            problems.append(f"results not stored: {err}")
            _print_err(f"DICOMweb results not stored: {err}")
    client.close()
    return EXIT_SOURCE if problems and code != EXIT_USAGE else code


def _write_studies(out_dir: str, rows: list[dict]) -> None:
    """``<output>/dicomweb_studies.csv``: this run's studies by number, UID, counts, status and reason (values a
    spreadsheet would run as formulas neutralised)."""
    from cadpipe.pipelines.outputs.files import atomic_write_text
    from cadpipe.pipelines.outputs.spreadsheet import neutralise_formula

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["study", "study_instance_uid", "retrieved", "cached", "status", "error"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: neutralise_formula(v) for k, v in row.items()})
    atomic_write_text(os.path.join(out_dir, STUDIES), buf.getvalue())




def _store(client, out_dir: str) -> int:
    """STOW-RS the result files not yet stored; remembers what was stored in ``.cadpipe/dicomweb_stored.txt``."""
    from cadpipe.pipelines.pacs.dicomweb import store_files
    from cadpipe.pipelines.pacs.results_files import dicom_result_files

    log_path = os.path.join(out_dir, STORED)
    done = set()
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8") as f:
            done = {line.strip() for line in f if line.strip()}
    todo = [p for p in dicom_result_files(out_dir) if os.path.relpath(p, out_dir) not in done]
    n = 0
    for i in range(0, len(todo), 16):
        chunk = todo[i: i + 16]
        n += store_files(client, chunk)
        with open(log_path, "a", encoding="utf-8") as f:
            f.writelines(os.path.relpath(p, out_dir) + "\n" for p in chunk)
    return n

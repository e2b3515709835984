"""``cadpipe score``: the folder scoring CLI (:mod:`cadpipe.pipelines.scoring.cli`) plus a DICOMweb source.

``--dicomweb URL`` with ``--study UID`` (repeatable) or ``--query KEY=VALUE`` (repeatable, QIDO-RS filters) takes
the studies from a DICOMweb server instead of ``--input``: they are retrieved into ``<output>/dicomweb_cache`` and
scored from there like a folder (resume included: a rerun fetches only missing instances and skips units already
scored). ``--store-results`` then sends the DICOM results (SEG, SR, Secondary Capture) back with STOW-RS; results
already stored by an earlier run are not sent again.

Exit status: those of the folder CLI (0, 2, 3, 4), and 5: the DICOMweb server could not be used for some or all
studies or results (what was retrieved is scored, nothing scored is lost; a rerun continues).
"""

from __future__ import annotations

import argparse
import os
import sys

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.private_files import make_private_dirs
from cadpipe.pipelines.scoring import cli as scoring_cli
from cadpipe.pipelines.scoring.exit_status import EXIT_USAGE

EXIT_SOURCE = 5
CACHE = "dicomweb_cache"
STORED = os.path.join(".cadpipe", "dicomweb_stored.txt")


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


def _fail(text: str, code: int) -> int:
    print(f"cadpipe score: {text}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    if not args.dicomweb:
        used = [n for n, v in (("--study", args.study), ("--query", args.query),
                                ("--dicomweb-auth-file", args.dicomweb_auth_file),
                                ("--store-results", args.store_results)) if v]
        if used:
            return _fail(f"{', '.join(used)} need(s) --dicomweb", EXIT_USAGE)
        return scoring_cli.run(args)
    from cadpipe.pipelines.pacs import dicomweb

    if not args.study and not args.query:
        return _fail("--dicomweb needs --study UID or --query KEY=VALUE", EXIT_USAGE)
    query = {}
    for text in args.query:
        key, sep, value = text.partition("=")
        if not sep or not key:
            return _fail(f"--query needs KEY=VALUE, got {text!r}", EXIT_USAGE)
        query[key] = value
    try:
        auth = dicomweb.read_auth(args.dicomweb_auth_file)
    except CadpipeInputError as err:
        return _fail(str(err), EXIT_USAGE)
    client = dicomweb.connect(args.dicomweb, auth)
    cache = os.path.join(args.output, CACHE)
    make_private_dirs(cache)  # retrieved studies are patient data: 0700 (docs/security.md)
    problems: list[str] = []
    studies = list(dict.fromkeys(args.study))
    if query:
        try:
            studies += [s for s in dicomweb.find_studies(client, query) if s not in studies]
        except dicomweb.DicomwebError as err:
            problems.append(f"search failed: {err}")
    for study in studies:
        try:
            got = dicomweb.retrieve_study(client, study, cache)
            if not args.quiet:
                print(f"study {study}: {got.written} instance(s) retrieved, {got.cached} already cached")
        except dicomweb.DicomwebError as err:
            problems.append(f"study {study} not (fully) retrieved: {err}")
    for p in problems:
        print(f"cadpipe score: DICOMweb {p}", file=sys.stderr)
    args.input, args.manifest = cache, None
    code = scoring_cli.run(args)  # scores whatever is in the cache, earlier runs' retrievals included
    if args.store_results and code in (0, 3):
        try:
            n = _store(client, args.output)
            if not args.quiet:
                print(f"stored {n} DICOM result instance(s) with STOW-RS")
        except dicomweb.DicomwebError as err:
            problems.append(f"results not stored: {err}")
            print(f"cadpipe score: DICOMweb results not stored: {err}", file=sys.stderr)
    return EXIT_SOURCE if problems and code != EXIT_USAGE else code


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

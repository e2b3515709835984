"""Command line entry point: ``cadpipe <command> ...`` and ``python -m cadpipe``.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so one command's optional dependencies never
break another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import cadpipe
from cadpipe.extras import MissingExtraError, extra_for_module

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("cadpipe.pipelines.pacs.score_cli", "score a folder of studies (or a DICOMweb PACS) with a bundle"),
    "listen": ("cadpipe.pipelines.pacs.listener", "receive studies over DICOM (C-STORE), score them, send results"),
    "demo": ("cadpipe.pipelines.demo", "generate synthetic studies, train briefly, score them"),
    "synth": ("cadpipe.data.synthetic.cli", "write synthetic studies in every supported format"),
    "monailabel-app": ("cadpipe.pipelines.monailabel.app", "assemble a MONAI Label app serving our bundles"),
    "serve": ("cadpipe.pipelines.portal.serve", "start the web portal"),
}

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cadpipe", description=cadpipe.__doc__)
    parser.add_argument("--version", action="version", version=f"cadpipe {cadpipe.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # handles --help / --version / unknown command (exit 2)
        parser.print_help()
        return EXIT_USAGE
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        extra = extra_for_module(getattr(err, "name", None))
        hint = f"; pip install 'cadpipe[{extra}]'" if extra else ""
        print(f"cadpipe {name}: not available ({err}){hint}", file=sys.stderr)
        return EXIT_USAGE
    sub_parser = argparse.ArgumentParser(prog=f"cadpipe {name}", description=help_text)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except MissingExtraError as err:  # an optional extra the asked-for run needs: one line, before any work
        print(f"cadpipe {name}: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())

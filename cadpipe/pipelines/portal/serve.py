"""``cadpipe serve``: the web portal (see ``docs/portal.md``).

Loads each bundle's network once, then serves the upload page and the study API with uvicorn. Binds to
127.0.0.1 unless told otherwise; any other address needs an access token (``--token-file``, ``CADPIPE_TOKEN`` or
``--token``; a token on the command line is visible to every user of the machine in ``ps``).

Exit status: 0 after a clean shutdown; 2 usage error (bad option, no bundle with weights, non-local address
without a token).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.scoring.input_safety import add_input_safety_arguments, apply_input_safety

EXIT_USAGE = 2
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("cadpipe.portal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other address "
                                                              "needs --token)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default 8000)")
    parser.add_argument("--bundles", default=None, metavar="PATH[,PATH...]",
                        help="bundle folders to serve (default: every bundle under ./bundles that has weights)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--data-dir", default="portal_data", help="jobs database, uploads and reports "
                                                                  "(default ./portal_data)")
    parser.add_argument("--token", default=None, help="access token (default: $CADPIPE_TOKEN); required when "
                                                      "--host is not a loopback address. Every user of the machine "
                                                      "sees it in `ps`: prefer --token-file or CADPIPE_TOKEN")
    parser.add_argument("--token-file", default=None, metavar="PATH",
                        help="read the access token from PATH (one line; the file must not be readable by other "
                             "users: chmod 600)")
    parser.add_argument("--max-files", type=int, default=20, help="files per upload (default 20)")
    parser.add_argument("--max-file-mb", type=float, default=256.0, help="size limit per file (default 256 MB)")
    parser.add_argument("--max-upload-mb", type=float, default=512.0, help="size limit per upload (default 512 MB)")
    parser.add_argument("--queue-size", type=int, default=16, help="jobs waiting at most (default 16; more: 503)")
    parser.add_argument("--override", action="append", default=[], metavar="[BUNDLE:]ID=VALUE",
                        help="bundle config override, VALUE parsed as JSON when it can be (e.g. image_size=128, or "
                             "cxr_pneumonia_classification:use_clahe=false for one bundle)")
    parser.add_argument("--no-heatmaps", action="store_true",
                        help="skip GradCAM heat maps (classification): faster reports, the overlay is the plain image")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="server log level (default info)")
    parser.add_argument("--allowed-hosts", default="", metavar="NAME[,NAME...]",
                        help="Host header values served besides the bound address (and localhost names on loopback): "
                             "the names users type, e.g. the reverse proxy's public name; other Hosts get 400 (DNS "
                             "rebinding)")
    add_input_safety_arguments(parser, links=False)


def allowed_hosts(host: str, extra: str) -> list[str]:
    """The Host names the portal answers: the bound address, loopback names when bound to loopback, the machine's
    names when bound to every address, and ``--allowed-hosts``."""
    import socket

    names = [host]
    if host in LOCAL_HOSTS:
        names += list(LOCAL_HOSTS)
    elif host in ("0.0.0.0", "::", ""):
        names += [socket.gethostname(), socket.getfqdn(), *LOCAL_HOSTS]
    return names + [h.strip() for h in extra.split(",") if h.strip()]


def parse_overrides(texts: list[str]) -> dict[str | None, dict]:
    """``["a=1", "b:c=\\"x\\""]`` → ``{None: {"a": 1}, "b": {"c": "x"}}``. Raises ValueError on bad syntax."""
    out: dict[str | None, dict] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ValueError(f"--override needs [BUNDLE:]ID=VALUE, got {text!r}")
        bundle, colon, ident = key.partition(":")
        bundle, ident = (bundle, ident) if colon else (None, key)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(bundle, {})[ident] = parsed
    return out


def bundle_paths(spec: str | None) -> tuple[list[str], bool]:
    """The bundle folders to load and whether they were named explicitly."""
    if spec:
        return [p.strip() for p in spec.split(",") if p.strip()], True
    return sorted(p for p in glob.glob(os.path.join("bundles", "*")) if os.path.isdir(p)), False


def load_runners(paths: list[str], explicit: bool, device: str | None, overrides: dict) -> dict:
    """``{task key: BundleRunner}``; the key is the bundle folder's name. Bundles without weights are skipped when
    they were not named explicitly. Raises CadpipeInputError for an explicitly named bundle that cannot load."""
    from cadpipe.pipelines.inference.bundle_runner import bundle_is_complete
    from cadpipe.pipelines.portal.engine import load_runner

    runners = {}
    for path in paths:
        key = os.path.basename(os.path.normpath(path))
        if not explicit and (not bundle_is_complete(path) or not os.path.isfile(os.path.join(path, "models",
                                                                                              "model.pt"))):
            log.warning("skipping bundle %s: no trained weights (models/model.pt)", key)
            continue
        ov = {**overrides.get(None, {}), **overrides.get(key, {})}
        runners[key] = load_runner(path, device, ov)
        log.info("loaded bundle %s (%s, %s)", key, runners[key].task, runners[key].device)
    return runners


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pixel limits for every reader; pydicom's warnings quote header values: kept out of the log (after its import)
    if not apply_input_safety(args, "cadpipe serve"):
        return EXIT_USAGE
    if args.token_file and args.token:
        print("cadpipe serve: give --token or --token-file, not both", file=sys.stderr)
        return EXIT_USAGE
    if args.token_file:
        from cadpipe.pipelines.pacs.secret_file import read_secret_file

        try:
            args.token = read_secret_file(args.token_file, "token file")
        except CadpipeInputError as err:
            print(f"cadpipe serve: {err}", file=sys.stderr)
            return EXIT_USAGE
    token = args.token or os.environ.get("CADPIPE_TOKEN") or None
    if args.host not in LOCAL_HOSTS and not token:
        print(f"cadpipe serve: binding to {args.host} needs an access token (--token-file, CADPIPE_TOKEN or --token); "
              "refusing to start", file=sys.stderr)
        return EXIT_USAGE
    if args.max_files < 1 or args.max_file_mb <= 0 or args.max_upload_mb <= 0 or args.queue_size < 1:
        print("cadpipe serve: --max-files, --max-file-mb, --max-upload-mb and --queue-size must be positive",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        import uvicorn

        from cadpipe.pipelines.portal import PortalSettings, create_app
        from cadpipe.pipelines.portal.uploads import UploadLimits
    except ImportError as err:
        print(f"cadpipe serve: needs the 'serve' extra (pip install -e '.[serve]'): {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        overrides = parse_overrides(args.override)
        paths, explicit = bundle_paths(args.bundles)
        runners = load_runners(paths, explicit, args.device, overrides)
        if args.no_heatmaps:
            for runner in runners.values():
                runner.cam_layers = None  # as `cadpipe score --no-heatmaps`
    except (ValueError, CadpipeInputError) as err:
        print(f"cadpipe serve: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not runners:
        print("cadpipe serve: no bundle with trained weights to serve (train one, or name bundles with --bundles)",
              file=sys.stderr)
        return EXIT_USAGE
    settings = PortalSettings(data_dir=args.data_dir, token=token, queue_size=args.queue_size,
                              limits=UploadLimits(args.max_files, args.max_file_mb, args.max_upload_mb),
                              allowed_hosts=allowed_hosts(args.host, args.allowed_hosts))
    app = create_app(runners, settings)
    print(f"cadpipe serve: http://{args.host}:{args.port}/ ({', '.join(runners)}; data in "
          f"{os.path.abspath(args.data_dir)}){' token required' if token else ''}", flush=True)
    # access_log off: uvicorn's would print query strings (a token may be one); the app logs method/path/status
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level=args.log_level)
    return 0

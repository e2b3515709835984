"""A command module that needs the 'serve' extra at import (for test_preflight's missing-extra message)."""

import fastapi  # noqa: F401


def add_arguments(parser):  # pragma: no cover - never reached without fastapi
    pass


def run(args):  # pragma: no cover
    return 0

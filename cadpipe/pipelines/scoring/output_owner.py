"""Which bundle an output folder belongs to: the bundle whose rows its journal holds.

An output folder's ``results.csv`` is one bundle's table (its columns are that bundle's classes or measures), so
scoring a second bundle into the same folder would silently replace the first one's results. ``cadpipe score`` and
``cadpipe listen`` therefore refuse it (a usage error, before anything is written) unless ``--force`` is given,
which starts the folder's table afresh for the new bundle. Weights retrained for the *same* bundle are not another
owner: their units are rescored on the next run (``score._todo``).
"""

from __future__ import annotations

import json
import os

from cadpipe.errors import CadpipeInputError

__all__ = ["bundle_name", "output_owner", "check_output_owner"]

JOURNAL = os.path.join(".cadpipe", "journal.jsonl")


def bundle_name(bundle_root: str) -> str:
    """The bundle's name as results rows carry it: ``metadata.json``'s ``name``, else the folder's name."""
    path = os.path.join(bundle_root, "configs", "metadata.json")
    try:
        with open(path, encoding="utf-8") as f:
            name = json.load(f).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    return name or os.path.basename(os.path.abspath(bundle_root))


def output_owner(output: str) -> str | None:
    """The bundle named by the first complete row of ``<output>/.cadpipe/journal.jsonl``; None for a new folder."""
    path = os.path.join(output, JOURNAL)
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("bundle"):
                    return str(row["bundle"])
    except OSError:
        return None
    return None


def check_output_owner(output: str, bundle_root: str, force: bool) -> None:
    """Raise :class:`CadpipeInputError` when ``output`` holds another bundle's results and ``force`` is off."""
    owner, name = output_owner(output), bundle_name(bundle_root)
    if owner is None or owner == name or force:
        return
    beside = os.path.join(os.path.dirname(os.path.normpath(output)), os.path.basename(os.path.abspath(bundle_root)))
    raise CadpipeInputError(output, f"this output folder holds the results of bundle '{owner}'; scoring "
                                    f"'{name}' here would replace them. Give another --output (e.g. {beside}) "
                                    f"or --force to start this folder afresh for '{name}'")

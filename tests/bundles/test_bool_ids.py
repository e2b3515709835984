"""Every boolean id in every bundle's configs takes the words a command line gives it.

``python -m monai.bundle run ... --lung_crop false`` passes the *string* ``"false"``; each use of a boolean id goes
through ``cadpipe.as_bool``, so ``"false"``, ``"no"`` and ``"0"`` act as ``False`` and ``"true"``, ``"yes"`` and ``"1"``
as ``True``: each config item that reads the id resolves to the same thing as with the real bool.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from monai.bundle import ConfigParser

BUNDLES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "bundles")
BUNDLES = sorted(n for n in os.listdir(BUNDLES_DIR) if os.path.isfile(os.path.join(BUNDLES_DIR, n, "configs", "metadata.json")))
# config sets as `monai.bundle run` loads them (evaluate is layered on train)
CONFIG_SETS = (("train.json",), ("train.json", "evaluate.json"), ("inference.json",))
WORDS = (("false", False), ("no", False), ("0", False), ("true", True), ("yes", True), ("1", True))
# items that read a dataset folder when resolved: given a tiny datalist instead, so the comparison is about the flag
NO_DATA = {"train#dataset#data": [{"image": "a.png", "label": 0}, {"image": "b.png", "label": 1}]}


def _configs(bundle, names):
    files = [os.path.join(BUNDLES_DIR, bundle, "configs", n) for n in names]
    return files if all(os.path.isfile(f) for f in files) else None


def _bool_ids(files):
    ids = {}
    for f in files:
        ids.update({k: v for k, v in json.load(open(f)).items() if isinstance(v, bool) and "#" not in k})
    return ids


def _paths_reading(config, name, prefix=""):
    """Config paths (``a#b#0``) whose string value refers to ``@name``."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        path = f"{prefix}#{key}" if prefix else str(key)
        if isinstance(value, str) and re.search(rf"@{re.escape(name)}\b", value):
            yield path
        elif isinstance(value, (dict, list)):
            yield from _paths_reading(value, name, path)


def _outcome(files, bundle, path, overrides):
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = os.path.join(BUNDLES_DIR, bundle)
    parser.update({**{k: v for k, v in NO_DATA.items() if k.split("#")[0] in parser.config}, **overrides})
    if "imports" in parser.config:
        parser.get_parsed_content("imports")  # as `monai.bundle run` does first (`import ... as seg`)
    try:
        value = parser.get_parsed_content(path)
    except Exception as err:  # the real bool fails the same way (e.g. a lung crop without a trained lung bundle)
        return ("error", type(err).__name__)
    return ("value", value) if isinstance(value, (bool, type(None))) else ("type", type(value).__name__)


CASES = [(b, names) for b in BUNDLES for names in CONFIG_SETS if _configs(b, names) and _bool_ids(_configs(b, names))]


def test_every_bundle_has_boolean_ids_checked():
    assert {b for b, _ in CASES} >= {"cxr_chestxray14_classification", "cxr_pneumonia_classification",
                                     "breast_histology_classification", "brain_mri_tumor_segmentation",
                                     "cxr_lung_segmentation"}


@pytest.mark.parametrize("bundle,names", CASES, ids=[f"{b}:{'+'.join(n)}" for b, n in CASES])
def test_boolean_ids_accept_words(bundle, names):
    files = _configs(bundle, names)
    config = {}
    for f in files:
        config.update(json.load(open(f)))
    checked = 0
    for name in _bool_ids(files):
        paths = list(_paths_reading(config, name))
        assert paths, f"{bundle}: boolean id {name!r} is defined but never read"
        differs = False
        for path in paths:
            assert f"as_bool(@{name})" in json.dumps(config[path.split("#")[0]]), (bundle, name, path)
            real = {flag: _outcome(files, bundle, path, {name: flag}) for flag in (False, True)}
            differs |= real[False] != real[True]
            for word, flag in WORDS:
                assert _outcome(files, bundle, path, {name: word}) == real[flag], (bundle, name, path, word)
                checked += 1
        assert differs, f"{bundle}: {name} true and false resolve alike"
    assert checked


def test_a_word_that_is_not_a_boolean_is_an_error_naming_the_id():
    files = _configs("cxr_chestxray14_classification", ("inference.json",))
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({"lung_crop": "maybe"})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("crop")
    text = str(err.value) + str(err.value.__cause__ or "")
    assert "lung_crop" in text and "'maybe' is not a boolean" in text

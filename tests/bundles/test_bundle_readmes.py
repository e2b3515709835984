"""Every bundle's ``docs/README.md`` documents training, evaluation, inference, MONAI Label use and batch scoring
(issue 8) with commands in fenced code blocks, and every config file it names exists."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p.parent.parent for p in (REPO / "bundles").glob("*/configs/metadata.json"))
CONFIG_REF = re.compile(r"(?:bundles/[\w.-]+/)?configs/[\w.-]+\.(?:json|yaml|yml|conf)")


def commands(readme: str) -> list[str]:
    """Shell commands of the README's fenced code blocks, ``\\``-continued lines joined."""
    out = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", readme, flags=re.S | re.M):
        block = re.sub(r"\\\n\s*", " ", block)
        out += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    return out


def missing_items(bundle: Path) -> list[str]:
    """What the bundle README lacks (empty when complete)."""
    name = bundle.name
    readme = (bundle / "docs" / "README.md").read_text()
    cmds = commands(readme)
    run = [c for c in cmds if "monai.bundle run" in c]
    missing = []

    def need(what, ok):
        if not ok:
            missing.append(what)

    need("training command (`monai.bundle run` with configs/train.json, no evaluate.json)",
         any("train.json" in c and "evaluate.json" not in c for c in run))
    need("evaluation command (`monai.bundle run` with configs/evaluate.json)", any("evaluate.json" in c for c in run))
    need("inference command (`monai.bundle run` with configs/inference.json)", any("inference.json" in c for c in run))
    need("a '## MONAI Label' section", re.search(r"^#+ .*MONAI Label", readme, flags=re.M) is not None)
    need(f"`cadpipe monailabel-app <dir> --bundles ...{name}...` command",
         any(re.search(rf"cadpipe monailabel-app \S+ .*--bundles \S*\b{name}\b", c) for c in cmds))
    need("`BUNDLE_DOWNLOAD_SRC=github`", "BUNDLE_DOWNLOAD_SRC=github" in readme)
    need(f"`monailabel start_server --app ... --studies ... --conf models ...{name}... --conf sam2 false` command",
         any(re.search(r"monailabel(?:\.main)? start_server", c) and "--app" in c and "--studies" in c
             and re.search(rf"--conf models \S*\b{name}\b", c) and "--conf sam2 false" in c for c in cmds))
    need(f"batch-scoring command `cadpipe score --bundle bundles/{name} --input ... --output ...`",
         any(re.search(rf"cadpipe score --bundle (?:\S*/)?bundles/{name}\b", c) and "--input" in c and "--output" in c
             for c in cmds))
    for ref in sorted(set(CONFIG_REF.findall(readme))):
        path = REPO / ref if ref.startswith("bundles/") else bundle / ref
        need(f"referenced config {ref} exists", path.is_file())
    return missing


def test_bundles_found():
    names = {b.name for b in BUNDLES}
    assert {"brain_mri_tumor_segmentation", "cxr_pneumonia_classification", "mammo_mass_detection"} <= names


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_readme_documents_every_use(bundle):
    assert (bundle / "docs" / "README.md").is_file(), f"{bundle.name}: docs/README.md missing"
    missing = missing_items(bundle)
    assert not missing, f"{bundle.name}/docs/README.md lacks: " + "; ".join(missing)


def test_checker_catches_gaps(tmp_path):
    """The checker itself: a README without MONAI Label / scoring, naming a missing config, is reported."""
    b = tmp_path / "demo_segmentation"
    (b / "docs").mkdir(parents=True)
    (b / "configs").mkdir()
    (b / "configs" / "train.json").write_text("{}")
    (b / "docs" / "README.md").write_text(
        "# demo\n```bash\npython -m monai.bundle run --config_file configs/train.json \\\n    --bundle_root .\n"
        "python -m monai.bundle run --config_file \"['configs/train.json','configs/evaluate.json']\"\n```\n"
        "MONAI Label: see monailabel start_server (prose, not a command)\n")
    missing = missing_items(b)
    assert not any(m.startswith("training command") for m in missing)
    assert not any(m.startswith("evaluation command") for m in missing)
    for start in ("inference command", "a '## MONAI Label' section", "`cadpipe monailabel-app", "`BUNDLE_DOWNLOAD_SRC",
                  "`monailabel start_server", "batch-scoring command", "referenced config configs/evaluate.json"):
        assert any(m.startswith(start) for m in missing), (start, missing)

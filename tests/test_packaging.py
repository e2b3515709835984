"""The package as built: a wheel carries the portal's static files, templates and the metadata schema, and the build
prints no setuptools warning about undeclared packages."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_package_data_and_builds_without_warnings(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "setup.py", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "cadpipe", src / "cadpipe", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "absent from the `packages` configuration" not in r.stdout + r.stderr
    (wheel,) = (tmp_path / "dist").glob("cadpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("cadpipe/metadata_schema.json", "cadpipe/pipelines/portal/templates/portal.html",
              "cadpipe/pipelines/portal/static/portal.js", "cadpipe/pipelines/portal/static/portal.css"):
        assert f in names
    assert not [n for n in names if "__pycache__" in n]

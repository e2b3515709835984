import subprocess
import sys

import cadpipe
from cadpipe.cli import main
from cadpipe.errors import CadpipeInputError


def test_version_flag():
    out = subprocess.run([sys.executable, "-m", "cadpipe", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"cadpipe {cadpipe.__version__}"


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "cadpipe", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in ("score", "demo", "synth", "monailabel-app", "serve"):
        assert name in out.stdout


def test_unknown_command_is_usage_error(capsys):
    try:
        main(["no-such-command"])
    except SystemExit as exc:
        assert exc.code == 2
    else:  # pragma: no cover
        raise AssertionError("expected a usage error")


def test_input_error_names_file_and_reason():
    err = CadpipeInputError("/data/x.dcm", "zero-byte file")
    assert str(err) == "/data/x.dcm: zero-byte file"
    assert err.path == "/data/x.dcm" and err.reason == "zero-byte file"
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)


def _modules_after_help(command: str) -> tuple[str, set[str]]:
    """Run ``cadpipe <command> --help`` in a fresh interpreter; its stdout and the heavy modules it imported."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['cadpipe', {command!r}, '--help']\n"
            "try:\n    runpy.run_module('cadpipe', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = ('torch', 'monai', 'numpy', 'pydicom', 'pynetdicom', 'fastapi')\n"
            "print('LOADED=' + ','.join(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text, _, loaded = out.stdout.rpartition("LOADED=")
    return " ".join(text.split()), {m for m in loaded.strip().split(",") if m}


def test_score_help_imports_no_torch_or_monai():
    text, loaded = _modules_after_help("score")
    assert "--workers" in text and "default 2" in text  # the default is stated
    assert "exit status" in text
    assert not loaded & {"torch", "monai"}, loaded


def test_listen_help_imports_no_torch_or_monai():
    text, loaded = _modules_after_help("listen")
    assert "--workers" in text and "default 0" in text
    assert not loaded & {"torch", "monai", "numpy", "pynetdicom"}, loaded

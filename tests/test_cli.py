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

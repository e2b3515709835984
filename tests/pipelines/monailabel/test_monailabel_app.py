"""``cadpipe monailabel-app``: bundle checks, template lookup and the main.py patch (no MONAI Label needed)."""

from __future__ import annotations

import json

import pytest

from cadpipe.cli import main as cli_main
from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.monailabel.app import assemble_app, cam_class_index, cam_to_label, monailabel_type, patch_main

MAIN = ("from monailabel.tasks.infer.bundle import BundleInferTask\n\n\nclass MyApp:\n    def init_infers(self):\n"
        "        for n, b in self.models.items():\n                i = BundleInferTask(b, self.conf)\n")


def _template(tmp_path, text=MAIN):
    tpl = tmp_path / "tpl"
    (tpl / "lib").mkdir(parents=True)
    (tpl / "main.py").write_text(text)
    return tpl


def _bundle(root, name, task, trained=True, cam_layers="class_layers.relu"):
    b = root / name
    (b / "configs").mkdir(parents=True)
    (b / "models").mkdir()
    (b / "configs" / "metadata.json").write_text(json.dumps({"cadpipe": {"task": task}}))
    (b / "configs" / "inference.json").write_text(json.dumps({"cam_layers": cam_layers} if cam_layers else {}))
    if trained:
        (b / "models" / "model.pt").write_bytes(b"weights")
    return b


@pytest.mark.parametrize("name,kind", [("brain_mri_tumor_segmentation", "segmentation"),
                                       ("mammo_mass_detection", "detection"),
                                       ("cxr_pneumonia_classification", "classification"),
                                       ("something_else", "segmentation")])
def test_monailabel_type_from_name(name, kind):
    assert monailabel_type(name) == kind


def test_assemble_copies_bundles_and_patches_main(tmp_path):
    bundles = tmp_path / "bundles"
    _bundle(bundles, "a_segmentation", "segmentation")
    _bundle(bundles, "b_classification", "classification")
    _bundle(bundles, "c_detection", "detection", trained=False)  # untrained: left out by default
    app = tmp_path / "app"
    types = assemble_app(str(app), None, str(bundles), template=str(_template(tmp_path)))
    assert types == {"a_segmentation": "segmentation", "b_classification": "classification"}
    assert (app / "model" / "b_classification" / "models" / "model.pt").read_bytes() == b"weights"
    main_py = (app / "main.py").read_text()
    assert "from cadpipe.pipelines.monailabel.infer import infer_task as cadpipe_infer_task" in main_py
    assert "                i = cadpipe_infer_task(n, b, self.conf)" in main_py and "BundleInferTask(b" not in main_py
    compile(main_py, "main.py", "exec")
    patch_main(str(app / "main.py"))  # idempotent
    assert (app / "main.py").read_text() == main_py


def test_cli_prints_start_command(tmp_path, capsys):
    bundles = tmp_path / "bundles"
    _bundle(bundles, "a_segmentation", "segmentation")
    rc = cli_main(["monailabel-app", str(tmp_path / "app"), "--bundles", "a_segmentation", "--bundles-dir",
                   str(bundles), "--template", str(_template(tmp_path))])
    out = capsys.readouterr().out
    assert rc == 0 and "a_segmentation: segmentation" in out and "--conf models a_segmentation" in out


def test_untrained_bundle_named(tmp_path):
    bundles = tmp_path / "bundles"
    b = _bundle(bundles, "a_segmentation", "segmentation", trained=False)
    with pytest.raises(CadpipeInputError) as err:
        assemble_app(str(tmp_path / "app"), ["a_segmentation"], str(bundles), template=str(_template(tmp_path)))
    assert str(b / "models" / "model.pt") in str(err.value) and "train the bundle first" in str(err.value)


def test_name_task_mismatch(tmp_path):
    bundles = tmp_path / "bundles"
    b = _bundle(bundles, "cxr_model", "classification")
    with pytest.raises(CadpipeInputError) as err:
        assemble_app(str(tmp_path / "app"), ["cxr_model"], str(bundles), template=str(_template(tmp_path)))
    assert str(b) in str(err.value) and "must contain 'classification'" in str(err.value)


def test_unknown_bundle_and_bad_template(tmp_path, capsys):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    with pytest.raises(CadpipeInputError, match="no such bundle"):
        assemble_app(str(tmp_path / "app"), ["nope"], str(bundles), template=str(_template(tmp_path)))
    _bundle(bundles, "a_segmentation", "segmentation")
    with pytest.raises(CadpipeInputError) as err:
        assemble_app(str(tmp_path / "app"), ["a_segmentation"], str(bundles), template=str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(err.value) and "no main.py" in str(err.value)
    rc = cli_main(["monailabel-app", str(tmp_path / "app"), "--bundles", "nope", "--bundles-dir", str(bundles)])
    assert rc == 1 and "no such bundle" in capsys.readouterr().err


def test_unexpected_main_py(tmp_path):
    main_py = tmp_path / "main.py"
    main_py.write_text("print('another app')\n")
    with pytest.raises(CadpipeInputError) as err:
        patch_main(str(main_py))
    assert str(main_py) in str(err.value) and "unexpected monaibundle main.py" in str(err.value)


@pytest.mark.parametrize("text", ["class MyApp:\n    pass\n",  # neither line
                                  MAIN.replace("from monailabel.tasks.infer.bundle import BundleInferTask\n", "")])
def test_unexpected_main_py_named(tmp_path, text):
    main_py = tmp_path / "main.py"
    main_py.write_text(text)
    with pytest.raises(CadpipeInputError) as err:
        patch_main(str(main_py))
    assert str(main_py) in str(err.value) and "unexpected monaibundle main.py" in str(err.value)
    assert main_py.read_text() == text  # left untouched


def test_cam_class_index():
    labels = {"normal": 0, "pneumonia": 1}
    assert cam_class_index(None, [0.2, 0.9], labels) == 1
    assert cam_class_index("", [3.0, -1.0], labels) == 0
    assert cam_class_index("Pneumonia", [0.9, 0.1], labels) == 1
    assert cam_class_index(0, [0.1, 0.9], labels) == 0 and cam_class_index("1", [0.9, 0.1], labels) == 1
    with pytest.raises(ValueError, match="cam_class 'edema'"):
        cam_class_index("edema", [0.1, 0.9], labels)
    with pytest.raises(ValueError, match="index 2 outside 0..1"):
        cam_class_index(2, [0.1, 0.9], labels)


def test_cam_to_label():
    import numpy as np

    cam = np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32) * 3 + 1
    label = cam_to_label(cam)
    assert label.dtype == np.uint8 and label.tolist() == [[0, 128], [64, 255]]
    assert cam_to_label(np.full((3, 2), 0.7)).tolist() == [[0, 0]] * 3


def test_classification_bundle_without_cam_layers(tmp_path):
    bundles = tmp_path / "bundles"
    b = _bundle(bundles, "x_classification", "classification", cam_layers=None)
    tpl = str(_template(tmp_path))
    with pytest.raises(CadpipeInputError) as err:
        assemble_app(str(tmp_path / "app"), ["x_classification"], str(bundles), template=tpl)
    assert str(b / "configs" / "inference.json") in str(err.value) and "without cam_layers" in str(err.value)
    # metadata.json cadpipe.cam_layers is enough
    (b / "configs" / "metadata.json").write_text(json.dumps({"cadpipe": {"task": "classification",
                                                                         "cam_layers": "features.relu"}}))
    assert assemble_app(str(tmp_path / "app"), ["x_classification"], str(bundles), template=tpl) == {
        "x_classification": "classification"}

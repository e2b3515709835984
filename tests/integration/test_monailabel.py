"""A real MONAI Label 0.8.5 server serving our bundles (assembled by ``cadpipe monailabel-app``).

Creates or reuses the MONAI Label venv (``scripts/monailabel_venv.sh``, cached under ``.build/``), trains the brain
bundle for one tiny epoch on synthetic NIfTI volumes into a tmp copy, assembles the app, starts
``monailabel start_server`` on 127.0.0.1 (own process group, killed in ``finally``), then checks ``/info``,
``/infer`` (label shape and affine equal the input's) and ``/train`` (one epoch writes a new checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from cadpipe.data.synthetic.weights import write_untrained_weights
from cadpipe.pipelines.monailabel_app import REPO_ROOT, assemble_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BRAIN = "brain_mri_tumor_segmentation"
CXR = "cxr_pneumonia_classification"
MAMMO = "mammo_mass_detection"
# tiny network/windows written into the tmp bundle copy's configs: MONAI Label reads the configs as they are
TINY = {"roi_size": [32, 32], "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "num_workers": 0,
        "epochs": 1, "batch_size": 4, "num_samples": 2, "dataset_layout": "nifti", "val_fraction": 0.34,
        "test_fraction": 0.0}
START_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def ml_python():
    """The MONAI Label venv's python (created on first use, ~3 min; reused afterwards)."""
    proc = subprocess.run([os.path.join(REPO_ROOT, "scripts", "monailabel_venv.sh")], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, f"monailabel venv setup failed:\n{proc.stderr[-3000:]}"
    return proc.stdout.strip().splitlines()[-1]


def _tiny_copy(name, dst, tiny=TINY, net=None):
    shutil.copytree(os.path.join(REPO_ROOT, "bundles", name), dst,
                    ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "outputs", "__pycache__"))
    for cfg in ("inference.json", "train.json"):
        path = os.path.join(dst, "configs", cfg)
        with open(path, encoding="utf-8") as fp:
            conf = json.load(fp)
        conf.update({k: v for k, v in tiny.items() if k in conf})
        conf["network_def"].update(net or {})
        with open(path, "w", encoding="utf-8") as fp:
            json.dump(conf, fp, indent=1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Trained tiny brain bundle copy, an assembled app, and a studies folder (images + final labels)."""
    from monai.bundle import run

    from cadpipe.data.synthetic.brain import write_msd_synthetic
    from cadpipe.data.synthetic.cxr import write_synthetic_kermany

    root = tmp_path_factory.mktemp("monailabel")
    bundles = root / "bundles"
    brain = bundles / BRAIN
    _tiny_copy(BRAIN, brain)
    msd = root / "msd"
    write_msd_synthetic(msd, n_train=3, n_test=1, shape=(32, 32, 4), modalities=("FLAIR",), seed=0)
    run(config_file=str(brain / "configs" / "train.json"), bundle_root=str(brain), dataset_dir=str(msd),
        logging_file=str(brain / "configs" / "logging.conf"))
    assert (brain / "models" / "model.pt").is_file()

    cxr = bundles / CXR
    _tiny_copy(CXR, cxr, {"image_size": 64, "num_workers": 0, "epochs": 1, "batch_size": 8},
               {"init_features": 16, "growth_rate": 8})
    kermany = root / "kermany"
    write_synthetic_kermany(str(kermany), {"train": {"NORMAL": 4, "PNEUMONIA": 4}, "test": 2}, size=72, n_dicom=0)
    run(config_file=str(cxr / "configs" / "train.json"), bundle_root=str(cxr), dataset_dir=str(kermany),
        output_dir=str(root / "cxr_train"), logging_file=str(cxr / "configs" / "logging.conf"))
    assert (cxr / "models" / "model.pt").is_file()

    # detection: seeded tiny weights (no training) and score threshold 0: checks the plumbing, boxes come back
    mammo = bundles / MAMMO
    _tiny_copy(MAMMO, mammo, {"image_long_side": 256, "infer_patch_size": [256, 256], "num_workers": 0,
                              "score_thresh": 0.0}, {"layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 64],
                                                    "fpn_channels": 32})
    write_untrained_weights(mammo)

    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    _ljpeg_case_to_png(root / "ddsm", studies / "mammo_0001.png")
    for f in sorted((msd / "imagesTr").glob("*.nii.gz")):
        shutil.copy(f, studies / f.name)
        shutil.copy(msd / "labelsTr" / f.name, studies / "labels" / "final" / f.name)
    shutil.copy(sorted(kermany.glob("test/*/*.png"))[0], studies / "cxr_0001.png")
    return {"root": root, "bundles": bundles, "studies": studies}


def _ljpeg_case_to_png(ddsm_dir, png):
    """One synthetic DDSM view as an 8-bit PNG (MONAI Label's local datastore does not list .LJPEG)."""
    from PIL import Image

    from cadpipe.data.synthetic.ddsm import write_ddsm_dataset
    from cadpipe.transforms import LoadStudyImage

    write_ddsm_dataset(ddsm_dir, n_cases=1, seed=0, radius_range=(12, 20))
    img = np.asarray(LoadStudyImage(mode="gray")(str(sorted(ddsm_dir.rglob("*.LJPEG"))[0]))[0]).T
    Image.fromarray((255 * (img - img.min()) / (np.ptp(img) + 1e-9)).astype(np.uint8)).save(png)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url, method="GET", data=None, timeout=300):
    req = urllib.request.Request(url, method=method, data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


@pytest.fixture(scope="module")
def server(ml_python, workspace):
    app = workspace["root"] / "app"
    types = assemble_app(str(app), [BRAIN, CXR, MAMMO], str(workspace["bundles"]), monailabel_python=ml_python)
    assert types == {BRAIN: "segmentation", CXR: "classification", MAMMO: "detection"}
    port = _free_port()
    env = {**os.environ, "BUNDLE_DOWNLOAD_SRC": "github", "OMP_NUM_THREADS": "1",
           "PATH": os.path.dirname(ml_python) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PYTHONPATH", None)
    log = open(workspace["root"] / "server.log", "wb")
    cmd = [ml_python, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies",
           str(workspace["studies"]), "--conf", "models", f"{BRAIN},{CXR},{MAMMO}", "--conf", "sam2", "false", "--conf", "preload",
           "false", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(workspace["root"]),
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, "server exited:\n" + (workspace["root"] / "server.log").read_text()[-4000:]
            try:
                status, body = _request(base + "/info/", timeout=10)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "server not ready:\n" + (workspace["root"] / "server.log").read_text()[-4000:]
            time.sleep(2)
        yield {"base": base, "app": app, "info": json.loads(body), "log": workspace["root"] / "server.log"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


def test_info_lists_bundles(server):
    models = server["info"]["models"]
    assert set(models) == {BRAIN, CXR, MAMMO}
    assert (models[BRAIN]["type"], models[BRAIN]["labels"], models[BRAIN]["dimension"]) == ("segmentation", {"tumor": 1}, 2)
    assert (models[CXR]["type"], models[CXR]["labels"]) == ("classification", {"normal": 0, "pneumonia": 1})
    assert BRAIN in server["info"]["trainers"]
    assert (models[MAMMO]["type"], models[MAMMO]["labels"]) == ("detection", {"benign": 1, "malignant": 2})
    assert server["info"]["datastore"]["total"] == 5


def _bundle_probabilities(bundle, image):
    """The bundle's own preprocessing -> network -> postprocessing in this (main) venv, for comparison."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    item = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        item["pred"] = net(item["image"][None])[0]
    return parser.get_parsed_content("postprocessing")(item)["pred"].numpy()


def test_infer_classification_returns_probabilities(server, workspace):
    status, body = _request(f"{server['base']}/infer/{CXR}?image=cxr_0001&output=json", method="POST")
    assert status == 200
    pred = {p["label"]: p["score"] for p in json.loads(body)["prediction"]}
    assert set(pred) == {"normal", "pneumonia"}
    expected = _bundle_probabilities(workspace["bundles"] / CXR, workspace["studies"] / "cxr_0001.png")
    np.testing.assert_allclose([pred["normal"], pred["pneumonia"]], expected, atol=1e-4)


def test_infer_segmentation_keeps_geometry(server, workspace, tmp_path):
    import nibabel as nib

    image = "BRATS_synthetic_000"
    status, body = _request(f"{server['base']}/infer/{BRAIN}?image={image}&output=image", method="POST")
    assert status == 200
    out = tmp_path / "label.nii.gz"
    out.write_bytes(body)
    label, ref = nib.load(out), nib.load(workspace["studies"] / f"{image}.nii.gz")
    assert label.shape == ref.shape
    np.testing.assert_allclose(label.affine, ref.affine, atol=1e-5)
    assert set(np.unique(label.get_fdata())) <= {0.0, 1.0}


def test_train_one_epoch_writes_checkpoint(server):
    ckpt = server["app"] / "model" / BRAIN / "models" / "model.pt"
    before = ckpt.read_bytes()
    body = json.dumps({"max_epochs": 1, "val_split": 0.34, "multi_gpu": False, "device": "cpu"}).encode()
    status, _ = _request(f"{server['base']}/train/{BRAIN}?run_sync=true", method="POST", data=body, timeout=600)
    assert status == 200
    assert ckpt.read_bytes() != before, "training did not write a new checkpoint"
    assert "Training Finished" in server["log"].read_text()


def test_infer_detection_returns_boxes(server):
    status, body = _request(f"{server['base']}/infer/{MAMMO}?image=mammo_0001&output=json", method="POST")
    assert status == 200
    result = json.loads(body)
    boxes, labels = np.asarray(result["box"]), np.asarray(result["label"])
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) == len(labels) > 0

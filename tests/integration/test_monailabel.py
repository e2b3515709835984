"""A real MONAI Label 0.8.5 server serving all our bundles (assembled by ``cadpipe monailabel-app``).

Creates or reuses the MONAI Label venv (``scripts/monailabel_venv.sh``, cached under ``.build/``), trains each bundle
for one tiny epoch on synthetic data into a tmp copy (tiny networks written into the copies' configs), assembles
the app, starts ``monailabel start_server`` on
127.0.0.1 (own process group, killed in ``finally``), then checks ``/info`` (every bundle, type, labels),
``/infer`` (segmentation: label shape and geometry equal the input's, for a NIfTI volume and a 2D PNG;
classification: probabilities equal to the bundle's own pipeline, and the label image is the Grad-CAM heatmap in
the input's geometry, equal to the one computed here; detection: boxes) and ``/train`` (one epoch writes a new
checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from cadpipe.pipelines.monailabel.app import REPO_ROOT, assemble_app
from cadpipe.pipelines.portal.server_process import stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BRAIN = "brain_mri_tumor_segmentation"
CXR = "cxr_pneumonia_classification"
MAMMO = "mammo_mass_detection"
LUNG = "cxr_lung_segmentation"
CX14 = "cxr_chestxray14_classification"
HISTO = "breast_histology_classification"
ALL = (BRAIN, CXR, MAMMO, LUNG, CX14, HISTO)
CLASSIFIERS = {CXR: "cxr_0001", CX14: "cxr_0001", HISTO: "histo_0001"}  # bundle -> study it classifies
DENSENET_TINY = {"init_features": 16, "growth_rate": 8, "block_config": [2, 2, 2, 2]}
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
    from cadpipe.data.synthetic.chestxray14 import write_synthetic_chestxray14
    from cadpipe.data.synthetic.cxr import write_synthetic_kermany
    from cadpipe.data.synthetic.ddsm import write_ddsm_dataset
    from cadpipe.data.synthetic.histology import write_synthetic_bach
    from cadpipe.data.synthetic.lungs import write_synthetic_montgomery

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
    write_synthetic_kermany(str(kermany), {"train": {"NORMAL": 4, "PNEUMONIA": 4}, "test": 2}, size=(80, 64), n_dicom=0)
    run(config_file=str(cxr / "configs" / "train.json"), bundle_root=str(cxr), dataset_dir=str(kermany),
        output_dir=str(root / "cxr_train"), logging_file=str(cxr / "configs" / "logging.conf"))
    assert (cxr / "models" / "model.pt").is_file()

    # detection: one tiny epoch (batch size 2: the bundle's validation fails with 1, see docs/monailabel.md) and
    # score threshold 0 so that the barely trained detector still returns boxes: checks the plumbing
    mammo = bundles / MAMMO
    _tiny_copy(MAMMO, mammo, {"image_long_side": 256, "infer_patch_size": [256, 256], "num_workers": 0,
                              "score_thresh": 0.0, "epochs": 1, "batch_size": 2, "split_fractions": [0.5, 0.5, 0.0]},
               {"layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 64], "fpn_channels": 32})
    write_ddsm_dataset(root / "ddsm_train", n_cases=4, seed=1, radius_range=(12, 20))
    _train(mammo, root / "ddsm_train", root)

    lung = bundles / LUNG
    _tiny_copy(LUNG, lung, {"image_size": 64, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1,
                            "num_workers": 0, "epochs": 1, "batch_size": 4, "dataset_layout": "montgomery",
                            "val_fraction": 0.34, "test_fraction": 0.0})
    write_synthetic_montgomery(str(root / "montgomery"), 6, 64, seed=0)
    _train(lung, root / "montgomery", root)

    cx14 = bundles / CX14
    _tiny_copy(CX14, cx14, {"image_size": 64, "num_workers": 0, "epochs": 1, "batch_size": 8, "val_fraction": 0.25},
               DENSENET_TINY)
    write_synthetic_chestxray14(str(root / "cx14"), 8, 2, size=64, classes=(0, 1, 2), p_finding=0.75,
                                test_fraction=0.0, seed=0)
    _train(cx14, root / "cx14", root)

    histo = bundles / HISTO
    _tiny_copy(HISTO, histo, {"patch_size": 64, "num_workers": 0, "epochs": 1, "batch_size": 4,
                              "patches_per_image": 2, "dataset_layout": "bach", "split_fractions": [0.5, 0.5, 0.0]},
               DENSENET_TINY)
    write_synthetic_bach(str(root / "bach"), n_per_class=2, size=(128, 96), seed=0)
    _train(histo, root / "bach", root)

    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    _ljpeg_case_to_png(root / "ddsm", studies / "mammo_0001.png")
    for f in sorted((msd / "imagesTr").glob("*.nii.gz")):
        shutil.copy(f, studies / f.name)
        shutil.copy(msd / "labelsTr" / f.name, studies / "labels" / "final" / f.name)
    shutil.copy(sorted(kermany.glob("test/*/*.png"))[0], studies / "cxr_0001.png")
    shutil.copy(sorted((root / "bach").rglob("*.tif"))[0], studies / "histo_0001.tif")
    return {"root": root, "bundles": bundles, "studies": studies}


def _train(bundle, data, root):
    from monai.bundle import run

    run(config_file=str(bundle / "configs" / "train.json"), bundle_root=str(bundle), dataset_dir=str(data),
        output_dir=str(root / f"{bundle.name}_train"), logging_file=str(bundle / "configs" / "logging.conf"))
    assert (bundle / "models" / "model.pt").is_file(), f"{bundle.name}: training wrote no checkpoint"


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
    types = assemble_app(str(app), list(ALL), str(workspace["bundles"]), monailabel_python=ml_python)
    assert types == {BRAIN: "segmentation", CXR: "classification", MAMMO: "detection", LUNG: "segmentation",
                     CX14: "classification", HISTO: "classification"}
    port = _free_port()
    env = {**os.environ, "BUNDLE_DOWNLOAD_SRC": "github", "OMP_NUM_THREADS": "1",
           "PATH": os.path.dirname(ml_python) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PYTHONPATH", None)
    log = open(workspace["root"] / "server.log", "wb")
    cmd = [ml_python, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies",
           str(workspace["studies"]), "--conf", "models", ",".join(ALL), "--conf", "sam2", "false", "--conf", "preload",
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
        stop_process_group(proc, grace=20)
        log.close()


def test_info_lists_bundles(server):
    models = server["info"]["models"]
    assert set(models) == set(ALL)
    assert (models[BRAIN]["type"], models[BRAIN]["labels"], models[BRAIN]["dimension"]) == ("segmentation", {"tumor": 1}, 2)
    assert (models[CXR]["type"], models[CXR]["labels"]) == ("classification", {"normal": 0, "pneumonia": 1})
    assert BRAIN in server["info"]["trainers"]
    assert (models[MAMMO]["type"], models[MAMMO]["labels"]) == ("detection", {"benign": 1, "malignant": 2})
    assert (models[LUNG]["type"], models[LUNG]["labels"], models[LUNG]["dimension"]) == ("segmentation", {"lung": 1}, 2)
    assert (models[HISTO]["type"], models[HISTO]["labels"]) == (
        "classification", {"normal": 0, "benign": 1, "insitu": 2, "invasive": 3})
    assert models[CX14]["type"] == "classification"
    assert models[CX14]["labels"] == {n.lower(): i for i, n in enumerate(_meta_classes(CX14))} and len(models[CX14]["labels"]) == 15
    assert server["info"]["datastore"]["total"] == 6


def _meta_classes(name):
    with open(os.path.join(REPO_ROOT, "bundles", name, "configs", "metadata.json"), encoding="utf-8") as fp:
        return json.load(fp)["cadpipe"]["class_names"]


def _parser(bundle):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    return parser


def _network(parser, bundle):
    import torch

    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


def _bundle_outputs(bundle, image, cam_class=None):
    """The bundle's own preprocessing -> inferer -> postprocessing in this (main) venv, and the Grad-CAM of
    ``cam_class`` (default: the top class) inverted to the input's geometry, as uint8 — for comparison."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    from cadpipe.pipelines.inference.heatmaps import compute_cam
    from cadpipe.pipelines.monailabel.app import cam_to_label

    parser = _parser(bundle)
    net = _network(parser, bundle)
    pre = parser.get_parsed_content("preprocessing")
    item = pre({"image": str(image)})
    with torch.no_grad():
        item["pred"] = parser.get_parsed_content("inferer")(item["image"][None], net)[0]
    probs = parser.get_parsed_content("postprocessing")(dict(item))["pred"].numpy()
    idx = int(np.argmax(probs)) if cam_class is None else cam_class
    cam = compute_cam(net, item["image"], parser["cam_layers"], class_idx=idx)
    inv = Invertd(keys="cam", transform=pre, orig_keys="image", nearest_interp=False)(
        {"cam": MetaTensor(torch.as_tensor(cam)[None]), "image": item["image"]})
    return probs, idx, cam_to_label(np.asarray(inv["cam"][0]))


def _post_form(url, fields):
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(url, method="POST", data=data,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return resp.status, resp.read()


def _image_rows_cols(path):
    """A 2D image file as numpy (rows, cols[, channels])."""
    from PIL import Image

    return np.asarray(Image.open(path))


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_infer_classification_probabilities_and_cam(server, workspace, tmp_path, name):
    image = CLASSIFIERS[name]
    src = next(workspace["studies"].glob(f"{image}.*"))
    status, body = _request(f"{server['base']}/infer/{name}?image={image}&output=json", method="POST")
    assert status == 200
    result = json.loads(body)
    labels = server["info"]["models"][name]["labels"]
    assert [p["label"] for p in result["prediction"]] == list(labels)
    got = np.asarray([p["score"] for p in result["prediction"]])
    probs, idx, cam = _bundle_outputs(workspace["bundles"] / name, src)
    np.testing.assert_allclose(got, probs, atol=1e-4)
    assert result["cam_class"]["idx"] == idx == int(np.argmax(got))
    calls = result["operating_thresholds"]  # the calls cadpipe score and the portal make with these weights
    assert [c["label"] for c in calls["classes"]] == list(labels)
    np.testing.assert_allclose([c["score"] for c in calls["classes"]], got, atol=1e-6)
    if not calls["thresholds_saved"]:
        assert calls["note"] == "no operating threshold saved with this model: 0.5 used"
        assert all(c["threshold"] == 0.5 for c in calls["classes"])
    positive = {c["label"] for c in calls["classes"] if c["call"] == "positive"}
    assert positive == {n for n in calls["predicted"].split(";") if n}

    status, body = _request(f"{server['base']}/infer/{name}?image={image}&output=image", method="POST")
    assert status == 200
    out = tmp_path / "cam.png"
    out.write_bytes(body)
    label = _image_rows_cols(out).T  # (X, Y) like the channel-first input
    assert label.shape == _image_rows_cols(src).shape[:2][::-1] == cam.shape, "CAM not in the input's geometry"
    assert label.max() > label.min(), "the CAM label image is constant"
    # the heatmap is the one the model gives: same map (up to rounding across torch versions), same peak
    assert np.mean(np.abs(label.astype(int) - cam.astype(int)) <= 3) > 0.99
    assert cam[np.unravel_index(np.argmax(label), label.shape)] >= 250


def test_infer_classification_cam_of_requested_class(server, workspace, tmp_path):
    status, body = _post_form(f"{server['base']}/infer/{CXR}?image=cxr_0001&output=json",
                              {"params": json.dumps({"cam_class": "pneumonia"})})
    assert status == 200 and json.loads(body)["cam_class"]["idx"] == 1
    status, body = _post_form(f"{server['base']}/infer/{CXR}?image=cxr_0001&output=image",
                              {"params": json.dumps({"cam_class": 0})})
    assert status == 200
    out = tmp_path / "cam0.png"
    out.write_bytes(body)
    _, _, cam = _bundle_outputs(workspace["bundles"] / CXR, workspace["studies"] / "cxr_0001.png", cam_class=0)
    label = _image_rows_cols(out).T
    assert np.mean(np.abs(label.astype(int) - cam.astype(int)) <= 3) > 0.99


def test_infer_lung_segmentation_keeps_geometry(server, workspace, tmp_path):
    import torch

    status, body = _request(f"{server['base']}/infer/{LUNG}?image=cxr_0001&output=image", method="POST")
    assert status == 200
    out = tmp_path / "lung.png"
    out.write_bytes(body)
    label = _image_rows_cols(out)
    src = workspace["studies"] / "cxr_0001.png"
    assert label.shape == _image_rows_cols(src).shape[:2]
    assert set(np.unique(label)) <= {0, 1}
    # the same mask as the bundle's own pipeline
    bundle = workspace["bundles"] / LUNG
    parser = _parser(bundle)
    net = _network(parser, bundle)
    item = parser.get_parsed_content("preprocessing")({"image": str(src)})
    with torch.no_grad():
        item["pred"] = net(item["image"][None])[0]
    mask = np.asarray(parser.get_parsed_content("postprocessing")(item)["pred"])[0].T
    assert np.mean(mask == label) > 0.99


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

"""Histology pipeline pieces: aggregation on hand-made cases, patient level, metrics, CAM, inferers."""

import os

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet121
from monai.visualize import CAM

from cadpipe.pipelines.tasks.histology import (
    AggregatePatchesd,
    HistologyMetric,
    PatchStackInferer,
    TissuePatchInferer,
    aggregate,
    aggregate_patients,
    class_activation_maps,
    classification_metrics,
    evaluate_records,
)

# five patches, binary (benign, malignant): two patches say malignant
P = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.7, 0.3], [0.45, 0.55]])


def test_aggregation_methods_hand_made_binary():
    s, pred = aggregate(P, "average")
    assert pred == 0 and np.allclose(s, [0.65, 0.35])
    s, pred = aggregate(P, "vote")
    assert pred == 0 and np.allclose(s, [0.6, 0.4])
    s, pred = aggregate(P, "exist")  # any malignant patch -> malignant
    assert pred == 1 and np.allclose(s, [0.9, 0.6])
    s, pred = aggregate(P, "exist3")  # only two malignant patches -> benign
    assert pred == 0 and np.allclose(s, [0.7, 0.3])
    s, pred = aggregate(np.vstack([P, [[0.2, 0.8]]]), "exist3")  # a third one -> malignant
    assert pred == 1


def test_aggregation_multiclass_severity_and_ties():
    q = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
    assert aggregate(q, "exist")[1] == 3  # most severe class any patch predicts
    assert aggregate(q, "exist3")[1] == 1  # three patches are at least Benign, only two at least InSitu
    tie = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert aggregate(tie, "vote")[1] == 1  # 1:1 vote, higher mean probability wins
    assert aggregate(tie, "exist3")[1] == 0  # fewer than 3 patches: k = N = 2 patches must agree
    with pytest.raises(ValueError):
        aggregate(P, "median")
    with pytest.raises(ValueError):
        aggregate(np.zeros((0, 2)), "average")


def test_patient_aggregation():
    recs = [
        {"patient": "a", "label": 1, "scores": np.array([0.4, 0.6]), "pred": 1},
        {"patient": "a", "label": 1, "scores": np.array([0.7, 0.3]), "pred": 0},
        {"patient": "a", "label": 1, "scores": np.array([0.2, 0.8]), "pred": 1},
        {"patient": "b", "label": 0, "scores": np.array([0.6, 0.4]), "pred": 0},
    ]
    out = {r["patient"]: r for r in aggregate_patients(recs)}
    assert out["a"]["pred"] == 1 and out["a"]["n_images"] == 3
    assert out["a"]["image_accuracy"] == pytest.approx(2 / 3)
    assert np.allclose(out["a"]["scores"], [13 / 30, 17 / 30])
    assert out["b"]["pred"] == 0 and out["b"]["image_accuracy"] == 1.0


def test_classification_metrics_known_case():
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], [[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]], ["b", "m"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["per_class"]["m"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["m"]["recall"] == 1.0
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["auc_macro"] == 1.0


def test_evaluate_records_all_levels_and_methods():
    items = [
        {"path": "x1", "patient": "p1", "label": 1, "patch_probs": P},
        {"path": "x2", "patient": "p1", "label": 1, "patch_probs": np.array([[0.2, 0.8]] * 3)},
        {"path": "x3", "patient": "p2", "label": 0, "patch_probs": np.array([[0.9, 0.1]] * 2)},
    ]
    r = evaluate_records(items, ["benign", "malignant"])
    assert set(r["image"]) == set(r["patient"]) == {"average", "vote", "exist", "exist3"}
    assert r["patch"]["n"] == 10
    assert r["image"]["exist"]["accuracy"] == 1.0 and r["image"]["average"]["accuracy"] == pytest.approx(2 / 3)
    assert r["patient"]["average"]["n"] == 2
    assert r["per_image"][0]["exist_pred"] == "malignant" and r["per_image"][0]["average_pred"] == "benign"


def test_metric_writes_files(tmp_path):
    m = HistologyMetric(["benign", "malignant"], method="exist", output_dir=str(tmp_path))
    post = AggregatePatchesd("pred", method="exist")
    logits = torch.log(torch.as_tensor(P, dtype=torch.float32))
    outs = [post({"pred": logits, "label": torch.tensor(1), "path": "a.png", "patient": "p"}),
            post({"pred": logits.flip(-1), "label": torch.tensor(0), "path": "b.png", "patient": "q"})]
    assert torch.allclose(outs[0]["patch_probs"], torch.as_tensor(P, dtype=torch.float32), atol=1e-6)
    assert outs[0]["pred_label"] == 1 and outs[0]["case_patient"] == "p"
    m.reset()
    m.update(outs)
    assert m.compute() == 0.5  # exist: both images malignant
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "per_image.csv").read_text().count("\n") == 3


def _net(c=2):
    torch.manual_seed(0)
    return DenseNet121(spatial_dims=2, in_channels=3, out_channels=c, init_features=8, growth_rate=4,
                       block_config=(2, 2, 2, 2)).eval()


def test_network_is_size_independent():
    net = _net()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 2)
        assert net(torch.rand(1, 3, 256, 192)).shape == (1, 2)
        assert net(torch.rand(1, 3, 2048 // 8, 1536 // 8)).shape == (1, 2)


def test_cam_matches_monai_cam_and_is_full_resolution():
    net = _net(3)
    x = torch.rand(3, 96, 64)
    maps, logits = class_activation_maps(net, x, centered=False)
    assert maps.shape == (3, 96, 64)
    assert not dict(net.named_modules())["class_layers.relu"]._forward_hooks  # nothing left on the network
    with torch.no_grad():
        assert torch.allclose(logits, net(x[None])[0], atol=1e-5)
    cam = CAM(net, "class_layers.relu", "class_layers.out", postprocessing=lambda t: t)
    for c in range(3):
        ref = cam(x[None], class_idx=torch.tensor([c]))[0, 0]
        assert torch.allclose(maps[c], ref, atol=1e-4)
    # GAP + linear: the mean of the (unscaled, uncentred) map at feature resolution is the class logit
    centred, _ = class_activation_maps(net, x)
    assert torch.allclose(centred.sum(0), torch.zeros(96, 64), atol=1e-4)


def test_inferers():
    net = _net()
    stack = torch.rand(1, 5, 3, 32, 32)
    out = PatchStackInferer(sw_batch_size=2)(stack, net)
    with torch.no_grad():
        assert torch.allclose(out[0], net(stack[0]), atol=1e-5)
    img = torch.rand(1, 3, 96, 64) * 0.5 + 0.2
    with torch.no_grad():
        logp = TissuePatchInferer(32, 16, 0.0, "average", sw_batch_size=3)(img, net)
    assert logp.shape == (1, 2)
    assert torch.allclose(logp.exp().sum(), torch.tensor(1.0), atol=1e-5)


def test_datalist_finds_imagescope_xml_in_annotations_dir(tmp_path):
    import shutil

    from cadpipe.data.synthetic.histology import write_synthetic_bach
    from cadpipe.errors import CadpipeInputError
    from cadpipe.pipelines.tasks.histology import datalist

    gt = write_synthetic_bach(tmp_path / "bach", n_per_class=1, size=(64, 48), imagescope_xml=True)
    ann = tmp_path / "xml"
    ann.mkdir()
    for g in gt:
        shutil.move(g["annotation"], ann / os.path.basename(g["annotation"]))
    assert {it["annotation"] for it in datalist(str(tmp_path / "bach"), "bach")} == {""}  # none beside the images
    items = datalist(str(tmp_path / "bach"), "bach", annotations_dir=str(ann))
    assert sorted(it["annotation"] for it in items) == sorted(str(ann / os.path.basename(g["annotation"])) for g in gt)
    assert {it["annotation"] for it in datalist(str(tmp_path / "bach"), "bach", annotations_dir=str(ann),
                                                region_labels=False)} == {""}
    with pytest.raises(CadpipeInputError) as e:
        datalist(str(tmp_path / "bach"), "bach", annotations_dir=str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(e.value) and "does not exist" in str(e.value)
    # a region class that is not a BACH class: error naming the XML
    bad = ann / os.path.basename(gt[0]["annotation"])
    bad.write_text(bad.read_text().replace('Name="Normal"', 'Name="Stroma"'))
    with pytest.raises(CadpipeInputError) as e:
        datalist(str(tmp_path / "bach"), "bach", annotations_dir=str(ann))
    assert str(bad) in str(e.value) and "'Stroma' not in" in str(e.value)

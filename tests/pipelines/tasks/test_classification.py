import csv
import json

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet121

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.tasks.classification import (
    ClassificationReport,
    argmax_output_transform,
    binary_metrics,
    class_weights,
    load_pretrained,
    multiclass_metrics,
    roc_auc,
    threshold_for_sensitivity,
    torchvision_densenet_to_monai,
    write_metrics_json,
)


def test_binary_metrics_by_hand():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    p = [0.9, 0.6, 0.3, 0.2, 0.55, 0.1, 0.4, 0.8]
    m = binary_metrics(y, p, 0.5)
    # predicted positive: 0.9, 0.6, 0.55, 0.8 -> tp=3 (0.9, 0.6, 0.8), fp=1 (0.55); fn=1 (0.3); tn=3
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 3, 1)
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)
    # AUC: pairs (pos, neg) correctly ordered: pos scores .9 .6 .3 .8 vs neg .2 .55 .1 .4
    pairs = sum((a > b) + 0.5 * (a == b) for a in (0.9, 0.6, 0.3, 0.8) for b in (0.2, 0.55, 0.1, 0.4))
    assert m["auc"] == pytest.approx(pairs / 16)


def test_roc_auc_ties_and_single_class():
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_threshold_for_sensitivity_meets_target_and_keeps_specificity():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(50), np.zeros(150)].astype(int)
    p = np.r_[rng.beta(5, 2, 50), rng.beta(2, 5, 150)]
    for target in (0.5, 0.8, 0.95, 1.0):
        thr = threshold_for_sensitivity(y, p, target)
        m = binary_metrics(y, p, thr)
        assert m["sensitivity"] >= target - 1e-9
        # the next higher positive score would miss the target: thr is the highest that meets it
        higher = np.sort(p[y == 1])
        higher = higher[higher > thr]
        if higher.size:
            assert binary_metrics(y, p, higher[0])["sensitivity"] < target
    assert threshold_for_sensitivity(y, p, 1.0) == pytest.approx(p[y == 1].min())
    with pytest.raises(ValueError):
        threshold_for_sensitivity(y, p, 0)


def test_class_weights_balanced():
    w = class_weights([1, 1, 1, 0])
    assert torch.allclose(w, torch.tensor([2.0, 2.0 / 3.0]))
    # weighted counts are equal across classes
    assert float(w[0] * 1) == pytest.approx(float(w[1] * 3))
    w = class_weights([{"image": "a", "label": 1}, {"image": "b", "label": 0}], num_classes=3, as_tensor=False)
    assert w.tolist() == [1.0, 1.0, 1.0]


def test_multiclass_metrics():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1]])
    m = multiclass_metrics([0, 1, 2, 1], probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["b"]["sensitivity"] == pytest.approx(0.5)


def test_metrics_json_nan_is_null(tmp_path):
    path = write_metrics_json({"auc": float("nan"), "n": np.int64(3)}, tmp_path / "m" / "metrics.json")
    assert json.load(open(path)) == {"auc": None, "n": 3}


def test_argmax_output_transform():
    out = [{"pred": torch.tensor([0.2, 0.8]), "label": torch.tensor([0.0, 1.0])},
           {"pred": torch.tensor([0.9, 0.1]), "label": torch.tensor(1)}]
    p, y = argmax_output_transform(out)
    assert p.tolist() == [1, 0] and y.tolist() == [1, 1]


def _torchvision_like_state_dict(seed=0):
    """A state dict with torchvision DenseNet121's key names and shapes (RGB stem, 1000-class classifier)."""
    torch.manual_seed(seed)
    ref = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000)
    sd = {}
    for k, v in ref.state_dict().items():
        k = k.replace(".layers.", ".")
        k = k.replace("class_layers.out.", "classifier.")
        sd[k] = v.clone()
    assert "features.denseblock1.denselayer1.norm1.weight" in sd and sd["features.conv0.weight"].shape[1] == 3
    return sd


def test_load_torchvision_densenet(tmp_path):
    sd = _torchvision_like_state_dict()
    path = tmp_path / "densenet121-imagenet.pth"
    torch.save(sd, path)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
    head_before = net.class_layers.out.weight.clone()
    load_pretrained(net, str(path))
    got = net.state_dict()
    assert torch.allclose(got["features.conv0.weight"], sd["features.conv0.weight"].mean(1, keepdim=True))
    key = "features.denseblock4.denselayer16.layers.conv2.weight"
    assert torch.equal(got[key], sd["features.denseblock4.denselayer16.conv2.weight"])
    assert torch.equal(got["features.norm5.running_var"], sd["features.norm5.running_var"])
    assert torch.equal(net.class_layers.out.weight, head_before)  # classifier not taken from ImageNet
    assert net(torch.rand(1, 1, 64, 64)).shape == (1, 2)
    renamed = torchvision_densenet_to_monai(sd, in_channels=1)
    assert not any(k.startswith("classifier.") for k in renamed)


def test_load_bundle_checkpoint_and_errors(tmp_path):
    src = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
    path = tmp_path / "model.pt"
    torch.save(src.state_dict(), path)
    dst = load_pretrained(DenseNet121(spatial_dims=2, in_channels=1, out_channels=2), str(path))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
    assert load_pretrained(net, "") is net
    with pytest.raises(CadpipeInputError, match="missing.pt: pretrained weights file not found"):
        load_pretrained(net, str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CadpipeInputError, match=r"bad\.pt: not a readable torch weights file"):
        load_pretrained(net, str(bad))
    other = tmp_path / "other.pt"
    torch.save(DenseNet121(spatial_dims=2, in_channels=1, out_channels=3).state_dict(), other)
    with pytest.raises(CadpipeInputError, match=r"other\.pt: checkpoint does not fit the network"):
        load_pretrained(net, str(other))


class _Engine:
    def __init__(self, output):
        self.state = type("S", (), {"output": output})()


def _item(path, label, p):
    from monai.data import MetaTensor

    img = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": path})
    return {"image": img, "pred": torch.tensor([1 - p, p]), "label": torch.nn.functional.one_hot(torch.tensor(label), 2)}


def test_classification_report_writes_files(tmp_path):
    val = ClassificationReport(str(tmp_path), ["NORMAL", "PNEUMONIA"], 1, 0.5, target_sensitivity=1.0,
                               metrics_name="val_metrics.json", predictions_name="val_predictions.csv")
    val.collect(_Engine([_item("v1.png", 1, 0.3), _item("v2.png", 0, 0.2), _item("v3.png", 1, 0.9)]))
    vm = val.write()
    assert vm["threshold"] == pytest.approx(0.3) and vm["sensitivity"] == 1.0
    test = ClassificationReport(str(tmp_path), ["NORMAL", "PNEUMONIA"], 1, 0.5,
                                threshold_from=lambda: val.metrics["threshold"])
    test.collect(_Engine([_item("t1.png", 1, 0.35), _item("t2.png", 0, 0.25)]))
    m = test.write()
    assert m["threshold_source"] == "validation" and m["tp"] == 1 and m["tn"] == 1
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["confusion_matrix"] == [[1, 0], [0, 1]]
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert rows[0] == {"path": "t1.png", "label": "PNEUMONIA", "prob_pneumonia": "0.350000", "predicted": "PNEUMONIA"}
    assert rows[1]["predicted"] == "NORMAL"

"""MONAI's own bundle checks, for every bundle in ``bundles/``: ``verify_metadata`` (local schema copy, nothing
fetched), ``verify_net_in_out``, and ``ckpt_export`` to TorchScript giving the same outputs as ``model.pt``.

The weights are the network's initial state (seeded): the checks are about the bundle's structure, not training.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

BUNDLES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "bundles")
BUNDLES = sorted(n for n in os.listdir(BUNDLES_DIR) if os.path.isfile(os.path.join(BUNDLES_DIR, n, "configs", "metadata.json")))


@pytest.fixture(params=BUNDLES)
def bundle(request, tmp_path):
    root = tmp_path / request.param
    shutil.copytree(os.path.join(BUNDLES_DIR, request.param), root,
                    ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "outputs", "__pycache__"))
    return root


def _meta(bundle):
    return json.loads((bundle / "configs" / "metadata.json").read_text())


METADATA_KEYS = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
                 "task", "description", "authors", "copyright", "intended_use", "data_source", "references",
                 "network_data_format")
TENSOR_KEYS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "channel_def")


def test_every_bundle_is_checked():
    assert len(BUNDLES) >= 6, BUNDLES


def test_verify_metadata(bundle, tmp_path, metadata_schema):
    from monai.bundle import verify_metadata

    schema = tmp_path / "metadata_schema.json"
    shutil.copy(metadata_schema, schema)
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))
    meta = _meta(bundle)
    assert meta["version"] in meta["changelog"]
    for key in METADATA_KEYS:
        assert meta.get(key), f"metadata.json: {key} missing or empty"
    assert isinstance(meta["references"], list) and all(isinstance(r, str) and r for r in meta["references"])
    fmt = meta["network_data_format"]
    assert fmt.get("inputs") and fmt.get("outputs")
    for tensor in (*fmt["inputs"].values(), *fmt["outputs"].values()):
        assert tensor.get("channel_def"), tensor
        assert not [k for k in TENSOR_KEYS if k not in tensor], (tensor, TENSOR_KEYS)
    task = meta["cadpipe"]["task"]
    assert task in ("classification", "multilabel", "segmentation", "detection")
    # MONAI Label takes the label names from the first output's channel_def: they must be the bundle's classes
    image, pred = next(iter(fmt["inputs"].values())), next(iter(fmt["outputs"].values()))
    names = [pred["channel_def"][k] for k in sorted(pred["channel_def"], key=int)]
    want = meta["cadpipe"]["class_names"]
    assert names == (["background", *want] if task == "detection" else want)
    assert pred["num_channels"] == len(names) and image["num_channels"] == len(image["channel_def"])
    assert meta["cadpipe"]["spatial_dims"] in (len(image["spatial_shape"]), 3)
    assert (bundle / "docs" / "README.md").is_file()


PROJECT_SCHEMA = os.path.join(os.path.dirname(__file__), "..", "..", "cadpipe", "metadata_schema.json")


def test_project_schema_accepts_the_bundle(bundle, tmp_path):
    """The project's own schema (the offline fallback) accepts every shipped bundle's metadata."""
    from monai.bundle import verify_metadata

    schema = tmp_path / "metadata_schema.json"
    shutil.copy(PROJECT_SCHEMA, schema)
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))


@pytest.mark.parametrize("breakage", ["drop network_data_format", "drop authors", "num_channels as text",
                                      "tensor without dtype", "version as number", "no outputs"])
def test_project_schema_rejects_bad_metadata(breakage, tmp_path):
    """... and rejects metadata missing a required key or with a key of the wrong type."""
    from monai.bundle import verify_metadata

    meta = json.loads(open(os.path.join(BUNDLES_DIR, BUNDLES[0], "configs", "metadata.json")).read())
    fmt = meta["network_data_format"]
    first_input = next(iter(fmt["inputs"].values()))
    if breakage == "drop network_data_format":
        del meta["network_data_format"]
    elif breakage == "drop authors":
        del meta["authors"]
    elif breakage == "num_channels as text":
        first_input["num_channels"] = "one"
    elif breakage == "tensor without dtype":
        del first_input["dtype"]
    elif breakage == "version as number":
        meta["version"] = 1
    elif breakage == "no outputs":
        del fmt["outputs"]
    meta_file = tmp_path / "metadata.json"
    meta_file.write_text(json.dumps(meta))
    schema = tmp_path / "metadata_schema.json"
    shutil.copy(PROJECT_SCHEMA, schema)
    with pytest.raises(Exception, match="validat|required|is not of type|is not valid"):
        verify_metadata(meta_file=str(meta_file), filepath=str(schema))


# Known failures, kept visible (strict: the test fails once they are fixed, so the mark gets removed).
EXPORT_XFAIL: dict[str, str] = {}  # bundle name -> reason (none now: mammo's backbone became scriptable in 55d23bd)


def test_verify_net_in_out(bundle):
    from monai.bundle import verify_net_in_out

    if _meta(bundle)["cadpipe"]["task"] == "detection":
        pytest.skip("MONAI verify_net_in_out compares a tensor's shape; a RetinaNet returns a dict of head outputs")
    # '16*n' -> 64 with n=4; '*' -> 64 (a DenseNet cannot take the 1-pixel default)
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), n=4, any=64, device="cpu")


def _sample_input(meta):
    image = next(iter(meta["network_data_format"]["inputs"].values()))
    dims = len(image["spatial_shape"])
    size = [64] * dims if dims == 2 else [32] * dims
    return torch.rand(1, image["num_channels"], *size)


def test_ckpt_export_torchscript_matches(bundle, request):
    from monai.bundle import ConfigParser, ckpt_export

    if bundle.name in EXPORT_XFAIL:
        request.applymarker(pytest.mark.xfail(reason=EXPORT_XFAIL[bundle.name], strict=True))

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    ts = bundle / "models" / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=str(bundle / "configs" / "metadata.json"),
                config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle))
    scripted = torch.jit.load(str(ts)).eval()
    x = _sample_input(_meta(bundle))
    with torch.no_grad():
        want, got = net(x), scripted(x)
    if isinstance(want, dict):
        assert want.keys() == got.keys()
        for k in want:
            for a, b in zip(want[k], got[k]):
                torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    else:
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# Multi-GPU configs (torchrun, 2 processes, gloo on CPU) for every bundle: tests/bundles/test_multi_gpu.py

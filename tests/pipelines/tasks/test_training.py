"""The train configs' device pipeline (cache on the device, augment there, thread loader, AMP) on the CPU: the logic
a GPU run uses, checked without a GPU; and the CPU defaults unchanged."""

from __future__ import annotations

import os

import pytest
import torch
from monai.bundle import ConfigParser

from cadpipe.pipelines.tasks.training import default_workers, to_device_steps, train_loader

BRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "bundles",
                     "brain_mri_tumor_segmentation")


def _parser(data: str, **overrides) -> ConfigParser:
    p = ConfigParser()
    p.read_config(os.path.join(BRAIN, "configs", "train.json"))
    p.update({"bundle_root": BRAIN, "dataset_dir": data, "device": "$torch.device('cpu')", "test_fraction": 0.0,
              **overrides})
    return p


@pytest.fixture(scope="module")
def lgg(tmp_path_factory):
    from cadpipe.data.synthetic.brain import write_lgg_synthetic

    root = str(tmp_path_factory.mktemp("lgg"))
    write_lgg_synthetic(root, n_patients=3, n_slices=4, size=64, seed=0)
    return root


def test_cpu_defaults_unchanged(lgg):
    p = _parser(lgg)
    assert p.get_parsed_content("device_pipeline") is False and p.get_parsed_content("amp") is False
    assert p.get_parsed_content("num_workers") == 2 and p.get_parsed_content("cache_rate") == 0.0
    loader = p.get_parsed_content("train#dataloader")
    assert type(loader).__name__ == "DataLoader" and loader.num_workers == 2
    names = [type(t).__name__ for t in p.get_parsed_content("train#preprocessing").transforms]
    assert "ToDeviced" not in names


def test_device_pipeline_trains_from_a_device_cache(lgg):
    p = _parser(lgg, device_pipeline=True, epochs=1, val_interval=100)
    loader = p.get_parsed_content("train#dataloader")
    assert type(loader).__name__ == "ThreadDataLoader" and loader.num_workers == 0
    ds = p.get_parsed_content("train#dataset")
    assert p.get_parsed_content("cache_rate") == 1.0 and ds.cache_num == len(ds.data)
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert names.index("ToDeviced") < names.index("RandCropByPosNegLabeld")  # cached on the device, augmented there
    batch = next(iter(loader))
    crops = p.get_parsed_content("batch_size") * p.get_parsed_content("num_samples")
    assert batch["image"].shape[0] == crops and batch["image"].device.type == "cpu"
    trainer = p.get_parsed_content("train#trainer")
    p.get_parsed_content("initialize")  # sets the early-stop handler's trainer
    assert trainer.amp is False  # AMP only on CUDA
    trainer.run()
    assert trainer.state.iteration >= 1 and torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))


def test_helpers():
    assert to_device_steps("cpu", ["image"], False) == []
    (step,) = to_device_steps("cpu", ["image", "label"], True)
    assert type(step).__name__ == "ToDeviced"
    assert default_workers("cpu", 2) == 2 and 1 <= default_workers("cuda", 2) <= 16
    loader = train_loader(list(range(10)), 4, shuffle=False, device_pipeline=True)
    assert [b.tolist() for b in loader][0] == [0, 1, 2, 3]

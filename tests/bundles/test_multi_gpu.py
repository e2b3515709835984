"""Every bundle's ``multi_gpu_train.json`` (model-zoo pattern) checked statically and run for real on CPU.

Static (fast): ``DistributedSampler`` for train and validation, a ``DistributedDataParallel`` network, and handlers
split by rank the way the model zoo does it, through ``cadpipe.pipelines.tasks.distributed.handlers_for_rank`` (by
handler type, not position): on rank 1 the handlers that change the training
(``ValidationHandler`` — its metrics are all-gathered, every rank must validate —, ``LrScheduleHandler``,
``EarlyStopHandler``) are all still there, and none that writes output (``StatsHandler``, TensorBoard,
``CheckpointSaver``, ...) is. A rank that skipped an ``EarlyStopHandler`` would keep training alone and hang the
next all-reduce; one that skipped a plateau ``LrScheduleHandler`` would train with another learning rate.

Real (slow): ``torchrun --standalone --nproc_per_node 2`` runs ``train.json + multi_gpu_train.json`` with the gloo
backend on CPU (an extra config file sets ``device`` to CPU, drops ``device_ids`` and the ``torch.cuda`` call and
swaps ``nccl`` for ``gloo``, plus tiny network/data sizes) for one epoch of a few iterations on synthetic data;
rank 0 alone writes ``models/model.pt``, a plain ``state_dict`` that loads into the inference ``network_def``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

BUNDLES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "bundles")
BUNDLES = sorted(n for n in os.listdir(BUNDLES_DIR) if os.path.isfile(os.path.join(BUNDLES_DIR, n, "configs", "multi_gpu_train.json")))

# handler classes that must run on every rank / only on rank 0
STATE_HANDLERS = ("ValidationHandler", "LrScheduleHandler", "EarlyStopHandler")
OUTPUT_HANDLERS = ("StatsHandler", "TensorBoardStatsHandler", "CheckpointSaver", "MetricsSaver", "ClassificationSaver",
                   "TensorBoardImageHandler", "MLFlowHandler")


def test_every_bundle_has_a_multi_gpu_config():
    every = sorted(n for n in os.listdir(BUNDLES_DIR) if os.path.isfile(os.path.join(BUNDLES_DIR, n, "configs", "metadata.json")))
    assert BUNDLES == every and len(every) >= 6


def _load(name, cfg):
    with open(os.path.join(BUNDLES_DIR, name, "configs", cfg), encoding="utf-8") as fp:
        return json.load(fp)


def _node(conf, ref):
    for part in ref.split("#"):
        conf = conf[int(part)] if isinstance(conf, list) else conf[part]
    return conf


def _handler_kinds(train, ref):
    """Class names of the handlers listed at ``ref`` (e.g. ``train#handlers``) in the raw train.json."""
    kinds = []
    for item in _node(train, ref):
        if isinstance(item, str) and item.startswith("@"):
            item = _node(train, item[1:])
        assert isinstance(item, dict) and "_target_" in item, f"{ref}: not a handler component: {item!r}"
        kinds.append(item["_target_"])
    return kinds


def _handler_class(target: str):
    """A handler class from a config ``_target_``: a dotted path, or a bare name in ``monai.handlers``."""
    import monai.handlers
    from monai.utils import optional_import

    if "." not in target:
        return getattr(monai.handlers, target)
    module, _, name = target.rpartition(".")
    return getattr(optional_import(module)[0], name)


def _kept(component, ref, kinds, rank):
    """The kinds of handlers that the multi-GPU config's handler choice keeps on ``rank``, from stand-ins of the
    handler classes named in train.json (built without arguments: only their type matters)."""
    from cadpipe.pipelines.tasks.distributed import handlers_for_rank

    assert component == {"_target_": "cadpipe.pipelines.tasks.distributed.handlers_for_rank", "handlers": "@" + ref}, \
        f"handlers for {ref} are not chosen by rank: {component!r}"
    stand_ins = [object.__new__(_handler_class(k)) for k in kinds]
    out = handlers_for_rank(stand_ins, rank=rank)
    return [] if out is None else [kinds[stand_ins.index(h)] for h in out]


def test_handlers_for_rank():
    import monai.handlers

    from cadpipe.pipelines.tasks.distributed import handlers_for_rank

    every = [object.__new__(getattr(monai.handlers, k)) for k in STATE_HANDLERS + OUTPUT_HANDLERS]
    assert handlers_for_rank(every, rank=0) == every and handlers_for_rank(None, rank=1) is None
    assert [type(h).__name__ for h in handlers_for_rank(every, rank=1)] == list(STATE_HANDLERS)
    assert handlers_for_rank(every) == every  # no process group: rank 0


def test_handlers_dropped_on_other_ranks_close_their_writers(tmp_path):
    from monai.handlers import StatsHandler, TensorBoardStatsHandler, ValidationHandler

    from cadpipe.pipelines.tasks.distributed import handlers_for_rank

    kept, dropped, own = (object.__new__(ValidationHandler), TensorBoardStatsHandler(log_dir=str(tmp_path / "a")),
                          TensorBoardStatsHandler(log_dir=str(tmp_path / "b")))
    assert handlers_for_rank([kept, dropped, StatsHandler()], rank=0)[1] is dropped
    assert dropped._writer.file_writer is not None  # rank 0 keeps its writer open
    dropped.close()
    assert handlers_for_rank([kept, own, StatsHandler()], rank=1) == [kept]
    assert own._writer.file_writer is None  # SummaryWriter.close() drops its file writer (and thread)


def test_leave_process_group(tmp_path):
    """A real one-rank gloo group: left (barrier, destroy) once; without a group nothing happens."""
    import torch.distributed as dist

    from cadpipe.pipelines.tasks.distributed import leave_process_group

    assert not dist.is_initialized() and leave_process_group() is False
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert leave_process_group() is True
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("name", BUNDLES)
def test_model_zoo_pattern(name):
    multi, train = _load(name, "multi_gpu_train.json"), _load(name, "train.json")
    assert multi["network"]["_target_"].endswith("DistributedDataParallel")
    if name.startswith("mammo"):  # an image without masses leaves the box-regression head without gradient
        assert multi["network"].get("find_unused_parameters") is True
    assert multi["train#sampler"]["_target_"] == "DistributedSampler"
    assert multi["validate#sampler"]["_target_"] == "DistributedSampler"
    assert multi["train#dataloader#sampler"] == "@train#sampler" and multi["train#dataloader#shuffle"] is False
    assert multi["validate#dataloader#sampler"] == "@validate#sampler"
    assert any("init_process_group" in s for s in multi["initialize"])
    assert multi["finalize"] == ["$cadpipe.pipelines.tasks.distributed.leave_process_group()"]
    assert "$import cadpipe" in train["imports"], "the finalize expression names cadpipe"

    for ref, key in (("train#handlers", "train#trainer#train_handlers"),
                     ("validate#handlers", "validate#evaluator#val_handlers")):
        kinds = _handler_kinds(train, ref)
        assert _kept(multi[key], ref, kinds, 0) == kinds, f"{key}: rank 0 must keep every handler"
        kept = _kept(multi[key], ref, kinds, 1)
        names, kept_names = [k.split(".")[-1] for k in kinds], [k.split(".")[-1] for k in kept]
        assert not [k for k in kept_names if k in OUTPUT_HANDLERS], f"{key}: rank 1 writes output: {kept}"
        state = [k for k in names if k in STATE_HANDLERS]
        assert state == [k for k in kept_names if k in STATE_HANDLERS], f"{key}: rank 1 must keep {state}, keeps {kept}"


# ------------------------------------------------------------------------------------------- torchrun on CPU
def _brain(data):
    from cadpipe.data.synthetic.brain import write_msd_synthetic

    write_msd_synthetic(data, n_train=4, n_test=0, shape=(32, 32, 4), modalities=("FLAIR",), seed=0)
    return ({"roi_size": [32, 32], "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "batch_size": 2,
             "num_samples": 2, "dataset_layout": "nifti", "val_fraction": 0.5, "test_fraction": 0.0, "cache_rate": 0.0},
            {"roi_size": [32, 32], "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1})


def _pneumonia(data):
    from cadpipe.data.synthetic.cxr import write_synthetic_kermany

    write_synthetic_kermany(str(data), {"train": {"NORMAL": 4, "PNEUMONIA": 4}, "test": 1}, size=40, n_dicom=0)
    net = {"image_size": 32, "network_def#init_features": 8, "network_def#growth_rate": 4,
           "network_def#block_config": [1, 1, 1, 1]}
    return {**net, "batch_size": 2, "val_fraction": 0.5}, net


def _lung(data):
    from cadpipe.data.synthetic.lungs import write_synthetic_montgomery

    write_synthetic_montgomery(str(data), 6, 48, seed=0)
    net = {"image_size": 32, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
    return {**net, "batch_size": 2, "dataset_layout": "montgomery", "val_fraction": 0.34, "test_fraction": 0.0}, net


def _chestxray14(data):
    from cadpipe.data.synthetic.chestxray14 import write_synthetic_chestxray14

    write_synthetic_chestxray14(str(data), 8, 1, size=40, classes=(0, 1, 2), p_finding=0.75, test_fraction=0.0, seed=0)
    net = {"image_size": 32, "network_def#init_features": 8, "network_def#growth_rate": 4,
           "network_def#block_config": [1, 1, 1, 1]}
    return {**net, "batch_size": 2, "val_fraction": 0.5, "train#augmentation": []}, net


def _histology(data):
    from cadpipe.data.synthetic.histology import write_synthetic_bach

    write_synthetic_bach(str(data), n_per_class=2, size=(96, 80), seed=0)
    net = {"network_def#block_config": [1, 1, 1, 1], "network_def#init_features": 8, "network_def#growth_rate": 4}
    return {**net, "patch_size": 32, "patches_per_image": 2, "batch_size": 2, "split_fractions": [0.5, 0.5, 0.0]}, net


def _mammo(data):
    from cadpipe.data.synthetic.ddsm import write_ddsm_dataset

    write_ddsm_dataset(data, n_cases=4, seed=0, radius_range=(12, 20))
    net = {"image_long_side": 256, "infer_patch_size": [256, 256], "network_def#layers": [1, 1, 1, 1],
           "network_def#block_inplanes": [8, 16, 32, 64], "network_def#fpn_channels": 32}
    return {**net, "batch_size": 2, "split_fractions": [0.5, 0.5, 0.0]}, net


TINY = {"brain_mri_tumor_segmentation": _brain, "cxr_pneumonia_classification": _pneumonia,
        "cxr_lung_segmentation": _lung, "cxr_chestxray14_classification": _chestxray14,
        "breast_histology_classification": _histology, "mammo_mass_detection": _mammo}


def test_tiny_setups_cover_every_bundle():
    assert sorted(TINY) == BUNDLES


def _cpu_gloo_config(bundle, tiny):
    """multi_gpu_train.json turned into a CPU/gloo run: device cpu, no device_ids, no cuda calls; tiny sizes."""
    conf = json.loads((bundle / "configs" / "multi_gpu_train.json").read_text())
    init = [s.replace("'nccl'", "'gloo'").replace('"nccl"', '"gloo"') for s in conf["initialize"] if "cuda" not in s]
    assert any("gloo" in s for s in init), "multi_gpu_train.json does not initialise a process group"
    network = {k: v for k, v in conf["network"].items() if k != "device_ids"}
    override = {"device": "$torch.device('cpu')", "network": network, "initialize": init, "epochs": 1,
                "val_interval": 1, "num_workers": 0, **tiny}
    path = bundle / "configs" / "cpu_gloo.json"
    path.write_text(json.dumps(override))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_torchrun_two_processes_gloo_cpu(name, tmp_path):
    from monai.bundle import ConfigParser

    bundle = tmp_path / name
    shutil.copytree(os.path.join(BUNDLES_DIR, name), bundle,
                    ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "outputs", "__pycache__"))
    data = tmp_path / "data"
    data.mkdir()
    tiny, net = TINY[name](data)
    cpu = _cpu_gloo_config(bundle, tiny)
    configs = [str(bundle / "configs" / c) for c in ("train.json", "multi_gpu_train.json")] + [str(cpu)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "monai.bundle", "run", "--config_file", repr(configs), "--bundle_root", str(bundle),
           "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out"),
           "--logging_file", str(bundle / "configs" / "logging.conf")]
    # PYTHONFAULTHANDLER: a rank that dies of a signal (SIGABRT from native code) prints every thread's Python stack
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=str(tmp_path))
    errors = [line for line in proc.stderr.splitlines() if "Error" in line and "File " not in line]
    assert proc.returncode == 0, ("\n".join(errors[:20]) + "\n--- stderr\n" + proc.stderr[-4000:]
                                  + "\n--- stdout (training log)\n" + proc.stdout[-2000:])
    ckpt = bundle / "models" / "model.pt"
    assert ckpt.is_file(), "rank 0 wrote no checkpoint"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "checkpoint should hold the plain network state_dict"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    for k, v in net.items():
        parser[k] = v
    parser.get_parsed_content("network_def").load_state_dict(state)  # strict: the served network takes it

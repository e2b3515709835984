"""``cadpipe score --ray`` on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head
and two worker nodes, each its own raylet and object store, all on 127.0.0.1; one worker node declares 1 GPU and 16
CPUs). The workers may not write into the output folders (an audit hook in every worker process refuses it, see
``ray_cluster_helpers``): outputs must travel back to the driver.

Faults are injected from the driver while rows stream in: a worker node removed, an actor killed, a unit that
kills the process forwarding it."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

pytest.importorskip("ray")
pytest.importorskip("ray.data")

from cadpipe.errors import CadpipeInputError  # noqa: E402
from cadpipe.pipelines.scoring.ray_attempts import MAX_CRASHES  # noqa: E402
from cadpipe.pipelines.scoring.ray_backend import RayBackend, actor_plan  # noqa: E402
from cadpipe.pipelines.scoring.score import ScoreConfig, score  # noqa: E402
from tests.pipelines.scoring import ray_cluster_helpers as helpers  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.pipelines.scoring.score_helpers import make_bundle, mixed_2d_folder, write_png  # noqa: E402

MB = 1 << 20
PREPROCESSING = {"_target_": "Compose", "transforms": [  # the CXR bundles' chain: batched on the actors
    {"_target_": "cadpipe.transforms.LoadStudyImaged", "keys": "image", "mode": "gray"},
    {"_target_": "cadpipe.transforms.Windowd", "keys": "image"},
    {"_target_": "Resized", "keys": "image", "spatial_size": [32, 32], "mode": "area"},
    {"_target_": "NormalizeIntensityd", "keys": "image"},
    {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    outs = tmp_path_factory.mktemp("outs")  # every Ray output folder of this module lives here
    log = tmp_path_factory.mktemp("log") / "refused_writes.log"
    small = {"object_store_memory": 200 * MB, "node_ip_address": "127.0.0.1"}  # every node on loopback
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, **small, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    cpu_node = c.add_node(num_cpus=1, **small)
    gpu_node = c.add_node(num_cpus=16, num_gpus=1, **small)  # declared: 1 GPU, 16 CPUs (no real GPU needed)
    c.wait_for_nodes()
    ray.init(address=c.address, _node_ip_address="127.0.0.1", log_to_driver=False, runtime_env={
        "worker_process_setup_hook": "tests.pipelines.scoring.ray_cluster_helpers.forbid_output_writes",
        # the setup hook lives in tests/: the workers import it from the repository, as this process does
        "env_vars": {helpers.FORBIDDEN_ENV: str(outs), helpers.LOG_ENV: str(log),
                     "PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)}})
    try:
        yield {"cluster": c, "outs": str(outs), "log": str(log), "cpu_node": cpu_node, "gpu_node": gpu_node}
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = make_bundle("tiny_classification_bundle", str(tmp_path_factory.mktemp("b")))
    path = os.path.join(root, "configs", "inference.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["preprocessing"] = PREPROCESSING
    with open(path, "w") as f:
        json.dump(cfg, f)
    return root


def _pngs(root: str, n: int, poison: int = 0) -> None:
    for i in range(n):
        write_png(os.path.join(root, f"s{i % 17:02d}", f"img{i:04d}.png"), seed=i, shape=(28 + i % 3, 36))
    for i in range(poison):
        write_png(os.path.join(root, "s00", f"{helpers.POISON}{i}.png"), seed=1000 + i)


def _rows(out: str) -> pd.DataFrame:
    return pd.read_csv(os.path.join(out, "results.csv")).drop(columns=["elapsed_s"])


def _journal_ids(out: str) -> list[str]:
    with open(os.path.join(out, ".cadpipe", "journal.jsonl")) as f:
        return [json.loads(line)["unit_id"] for line in f if line.strip()]


def _no_refused_writes(cluster) -> None:
    refused = open(cluster["log"]).read() if os.path.exists(cluster["log"]) else ""
    assert refused == "", f"workers tried to write into the output folder:\n{refused}"


def _on_ray(cluster, name: str, src: str, bundle: str, backend=None, **kw):
    backend = backend or RayBackend()
    cfg = ScoreConfig(bundle=bundle, input=src, output=os.path.join(cluster["outs"], name), quiet=True, ray="",
                      **({"device": "cpu", "batch_size": 4, "ray_actors": 2} | kw))
    return score(cfg, backend=backend), backend, cfg.output


def _faulty(backend, at: int, fault):
    """A backend that runs ``backend`` and calls ``fault(backend)`` once, when the ``at``-th row arrives."""
    def run(cfg, todo, emit, progress=None):
        count = [0]

        def emit_and_fault(row):
            emit(row)
            count[0] += 1
            if count[0] == at:
                fault(backend)

        backend(cfg, todo, emit_and_fault, progress)

    return run


@pytest.mark.slow
def test_cluster_rows_equal_local(cluster, bundle, tmp_path):
    """200+ units (PNGs, DICOMs, corrupt files) on three nodes: the rows of a local run, probabilities within 1e-5,
    the same output files, none written by a worker."""
    src = str(tmp_path / "in")
    _pngs(src, 200)
    mixed_2d_folder(src)
    local = score(ScoreConfig(bundle=bundle, input=src, output=str(tmp_path / "local"), device="cpu", workers=0,
                              quiet=True))
    on_ray, backend, out = _on_ray(cluster, "equal", src, bundle)
    assert local["units"] == on_ray["units"] >= 210 and on_ray["ok"] == local["ok"] == 208
    assert on_ray["exit_code"] == local["exit_code"] == 3  # the two corrupt files
    a = _rows(str(tmp_path / "local")).sort_values("unit_id").reset_index(drop=True)
    b = _rows(out).sort_values("unit_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-5)
    listing = lambda root: sorted(os.path.relpath(os.path.join(d, f), root)  # noqa: E731
                                  for d, _, fs in os.walk(root) for f in fs if ".cadpipe" not in d)
    assert listing(str(tmp_path / "local")) == listing(out)
    assert backend.stats["actors_started"] >= 1 and backend.stats["crashes"] == 0
    _no_refused_writes(cluster)


def test_device_cuda_without_gpus_is_one_line():
    with pytest.raises(CadpipeInputError) as err:
        actor_plan("cuda", None, [{"CPU": 8}, {"CPU": 8}], 100)
    assert "no GPU" in str(err.value) and "--device cpu" in str(err.value) and "\n" not in str(err.value)


def test_actor_plan_never_more_than_can_be_placed():
    one_gpu = [{"CPU": 16, "GPU": 1}, {"CPU": 1}]
    assert actor_plan(None, None, one_gpu, 100).max_actors == 1  # GPU actors: one per GPU
    p = actor_plan("cuda", 16, one_gpu, 100)
    assert (p.max_actors, p.gpus) == (1, 1.0) and "lowered to 1" in p.note
    cpu = actor_plan("cpu", None, [{"CPU": 2}, {"CPU": 2}], 100)
    assert (cpu.max_actors, cpu.gpus, cpu.cpus) == (3, 0.0, 1.0)  # one CPU kept for decoding
    assert actor_plan("cpu", None, [{"CPU": 1}], 100).max_actors == 1  # half a CPU each
    assert actor_plan("cpu", 8, [{"CPU": 64}], 3).max_actors == 3  # no more actors than batches


@pytest.mark.slow
def test_gpu_node_gets_at_most_one_gpu_actor(cluster, bundle, tmp_path):
    """No --device on a cluster declaring a GPU: GPU actors, --ray-actors 4 lowered to the one GPU, all placed on
    the GPU node; the run completes (nothing waits for actors that cannot be placed)."""
    src = str(tmp_path / "in")
    _pngs(src, 24)
    summary, backend, _ = _on_ray(cluster, "gpu", src, bundle, device=None, ray_actors=4)
    assert summary["ok"] == 24 and summary["exit_code"] == 0
    gpu_node = cluster["gpu_node"].node_id
    assert len(backend.actors) == 1
    assert all(a["node_id"] == gpu_node and a["gpu_ids"] for a in backend.actors), backend.actors


@pytest.mark.slow
def test_shared_fs_workers_write_in_place(cluster, bundle, tmp_path):
    """--ray-shared-fs: the workers read the inputs by path and write the outputs into the output folder (here
    outside the folders they may not write to); the rows and files are the local run's."""
    src = str(tmp_path / "in")
    _pngs(src, 12)
    local = score(ScoreConfig(bundle=bundle, input=src, output=str(tmp_path / "local"), device="cpu", workers=0,
                              quiet=True))
    out = str(tmp_path / "shared")
    s = score(ScoreConfig(bundle=bundle, input=src, output=out, quiet=True, ray="", device="cpu", batch_size=4,
                          ray_actors=2, ray_shared_fs=True), backend=RayBackend())
    assert s["ok"] == local["ok"] == 12 and s["exit_code"] == 0
    pd.testing.assert_frame_equal(_rows(str(tmp_path / "local")).sort_values("unit_id").reset_index(drop=True),
                                  _rows(out).sort_values("unit_id").reset_index(drop=True),
                                  check_exact=False, rtol=1e-5, atol=1e-5)
    pngs = lambda root: sorted(os.path.relpath(os.path.join(d, f), root)  # noqa: E731
                               for d, _, fs in os.walk(root) for f in fs if f.endswith(".png"))
    assert pngs(out) == pngs(str(tmp_path / "local"))
    assert len([p for p in pngs(out) if p.endswith("_heatmap.png")]) == 12  # one heat map per unit


@pytest.mark.slow
def test_actor_killed_mid_batch(cluster, bundle, tmp_path):
    import ray

    src = str(tmp_path / "in")
    _pngs(src, 48)
    inner = RayBackend()

    def kill_one(b):
        actors = ray.get(b.ledger.actor_list.remote())
        ray.kill(actors[0]["actor"], no_restart=False)

    summary, _, out = _on_ray(cluster, "kill", src, bundle, backend=_faulty(inner, 12, kill_one),
                              runner_hook=helpers.slow_forward)
    assert summary["ok"] == 48 and summary["error"] == 0 and summary["exit_code"] == 0
    ids = _journal_ids(out)
    assert len(ids) == len(set(ids)) == 48  # no unit journaled twice
    assert inner.stats["actors_started"] >= 3  # two, and the killed one restarted
    _no_refused_writes(cluster)


@pytest.mark.slow
def test_poison_unit_becomes_an_error_row(cluster, bundle, tmp_path):
    src = str(tmp_path / "in")
    _pngs(src, 12, poison=1)
    summary, backend, out = _on_ray(cluster, "poison", src, bundle, runner_hook=helpers.poison_kills_worker)
    rows = _rows(out)
    bad = rows[rows["input_paths"].str.contains(f"/{helpers.POISON}0.png", regex=False)]
    assert len(bad) == 1 and bad["status"].iloc[0] == "error"
    assert f"died {MAX_CRASHES} times" in bad["error"].iloc[0] and "poison0.png" in bad["error"].iloc[0]
    assert summary["ok"] == 12 and summary["error"] == 1 and summary["exit_code"] == 3
    assert backend.stats["crashes"] >= MAX_CRASHES
    _no_refused_writes(cluster)


@pytest.mark.slow
def test_node_removed_mid_run(cluster, bundle, tmp_path):
    """The worker node running an actor is removed while rows stream in: the run completes on the other nodes,
    every unit ok, each journaled once."""
    import ray

    src = str(tmp_path / "in")
    _pngs(src, 48)
    inner = RayBackend()
    removed = []

    def remove_node(b):
        actors = ray.get(b.ledger.actor_list.remote())
        driver = ray.get_runtime_context().get_node_id()
        nodes = {n.node_id: n for n in (cluster["cpu_node"], cluster["gpu_node"])}
        victim = next(a["node_id"] for a in actors if a["node_id"] in nodes and a["node_id"] != driver)
        cluster["cluster"].remove_node(nodes[victim], allow_graceful=False)
        removed.append(victim)

    summary, _, out = _on_ray(cluster, "node", src, bundle, backend=_faulty(inner, 12, remove_node),
                              runner_hook=helpers.slow_forward)
    assert removed
    assert summary["ok"] == 48 and summary["error"] == 0 and summary["exit_code"] == 0
    ids = _journal_ids(out)
    assert len(ids) == len(set(ids)) == 48
    _no_refused_writes(cluster)

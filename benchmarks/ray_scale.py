"""``cadpipe score`` locally vs ``cadpipe score --ray`` on 1, 2 and 3 Ray nodes, and the time from a node's loss to
the run's completion.

One command, one process, one study folder (``--studies`` one-image synthetic DICOM CXR studies), one bundle (the
CXR pneumonia bundle as shipped, untrained seeded weights; ``--override image_size=64`` for a small network):

- local: ``score()`` in this process with ``--workers`` DataLoader workers;
- Ray: a ``ray.cluster_utils.Cluster`` on this machine with 1, 2, 3 nodes of ``--cpus-per-node`` CPUs each (every
  node its own raylet and object store), the driver attached; the inputs' bytes and the outputs travel through
  the object store as on a cluster without a shared file system;
- node loss: on the largest cluster, a worker node is removed when a third of the rows are in; printed: the
  seconds from the removal to the last row, and whether every unit ended ``ok`` exactly once.

All nodes share this machine's cores, so more nodes measure Ray's overhead, not a speed-up. Printed per run:
seconds, units/s (whole run, start-up included) and the steady rate (after the first quarter of the rows), with
the ratio of each to local. Every run starts fresh Ray worker processes; the first Ray run pays for their start.

    python benchmarks/ray_scale.py --studies 1024
"""

from __future__ import annotations

import os

# every node on loopback (Ray otherwise picks the machine's routable address even for a one-machine cluster)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import json
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from score import _studies  # noqa: E402 - benchmarks/score.py: the same synthetic study folder

MB = 1 << 20


def _cluster(nodes: int, cpus: int):
    import ray
    from ray.cluster_utils import Cluster

    small = {"object_store_memory": 300 * MB, "node_ip_address": "127.0.0.1"}  # every node on loopback
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus, **small, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    workers = [c.add_node(num_cpus=cpus, **small) for _ in range(nodes - 1)]
    c.wait_for_nodes()
    ray.init(address=c.address, _node_ip_address="127.0.0.1", log_to_driver=False)
    return c, workers


def _line(label: str, s: dict, local: dict | None, extra: str = "") -> str:
    rate, steady = s["units_per_second"] or 0.0, s["steady_units_per_second"] or 0.0
    ratio = (f"  {rate / local['units_per_second']:.2f}x local, steady {steady / local['steady_units_per_second']:.2f}x"
             if local and local["units_per_second"] and local["steady_units_per_second"] and steady else "")
    return (f"{label:<28} {s['seconds']:8.1f} s  {rate:7.2f} units/s  steady {steady:7.2f} units/s  "
            f"ok {s['ok']}/{s['units']}{ratio}{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=1024)
    ap.add_argument("--size", type=int, default=256, help="image rows = cols")
    ap.add_argument("--bundle", default=os.path.join("bundles", "cxr_pneumonia_classification"))
    ap.add_argument("--override", action="append", default=["image_size=64"], metavar="ID=VALUE")
    ap.add_argument("--nodes", default="1,2,3", help="Ray cluster sizes to run")
    ap.add_argument("--cpus-per-node", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="local DataLoader workers")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--no-node-loss", action="store_true")
    args = ap.parse_args()

    import ray

    from cadpipe.data.synthetic.weights import copy_bundle_untrained
    from cadpipe.pipelines.scoring.cli import parse_overrides
    from cadpipe.pipelines.scoring.ray_backend import RayBackend
    from cadpipe.pipelines.scoring.score import ScoreConfig, score

    tmp = tempfile.mkdtemp(prefix="cadpipe_ray_scale_")
    try:
        overrides = parse_overrides(args.override)
        bundle = copy_bundle_untrained(args.bundle, os.path.join(tmp, "bundle"), overrides)
        src = os.path.join(tmp, "in")
        t0 = time.perf_counter()
        _studies(src, args.studies, args.size, args.size)
        print(f"{args.studies} studies {args.size}x{args.size} written in {time.perf_counter() - t0:.1f} s; bundle "
              f"{os.path.basename(args.bundle)} {json.dumps(overrides)}; batch {args.batch_size}; "
              f"{os.cpu_count()} cores here")
        common = dict(bundle=bundle, input=src, overrides=overrides, device="cpu", batch_size=args.batch_size,
                      quiet=True, heatmaps=False, reports=False, dicom_results=False)
        local = score(ScoreConfig(output=os.path.join(tmp, "local"), workers=args.workers, **common))
        print(_line(f"local (--workers {args.workers})", local, None))
        sizes = [int(n) for n in args.nodes.split(",") if n.strip()]
        for n in sizes:
            c, workers = _cluster(n, args.cpus_per_node)
            try:
                backend = RayBackend()
                s = score(ScoreConfig(output=os.path.join(tmp, f"ray{n}"), ray="", **common), backend=backend)
                print(_line(f"Ray, {n} node(s) x {args.cpus_per_node} CPUs", s, local,
                            f"  ({backend.stats.get('actors_started')} actors)"))
                if n == max(sizes) and n > 1 and not args.no_node_loss:
                    _node_loss(c, workers, common, tmp, args.studies, local)
            finally:
                ray.shutdown()
                c.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _node_loss(c, workers, common, tmp, n_units, local) -> None:
    """The same run with a worker node (one running an actor, when there is one) removed a third of the way."""
    import ray

    from cadpipe.pipelines.scoring.ray_backend import RayBackend
    from cadpipe.pipelines.scoring.score import ScoreConfig, score

    inner = RayBackend()
    marks: dict[str, float] = {}

    def backend(cfg, todo, emit, progress=None):
        count = [0]

        def emit_and_fault(row):
            emit(row)
            count[0] += 1
            marks["last"] = time.perf_counter()
            if count[0] == max(1, len(todo) // 3):
                actors = ray.get(inner.ledger.actor_list.remote())
                used = {a["node_id"] for a in actors}
                victim = next((w for w in workers if w.node_id in used), workers[-1])
                c.remove_node(victim, allow_graceful=False)
                marks["removed"] = time.perf_counter()

        inner(cfg, todo, emit_and_fault, progress)

    out = os.path.join(tmp, "loss")
    s = score(ScoreConfig(output=out, ray="", **common), backend=backend)
    with open(os.path.join(out, ".cadpipe", "journal.jsonl")) as f:
        ids = [json.loads(line)["unit_id"] for line in f if line.strip()]
    once = len(ids) == len(set(ids)) == n_units
    after = marks.get("last", 0) - marks.get("removed", 0) if "removed" in marks else float("nan")
    print(_line(f"Ray, node removed at 1/3", s, local,
                f"  node loss -> completion {after:.1f} s; every unit ok once: {once and s['ok'] == n_units}"
                f"; {inner.stats}"))


if __name__ == "__main__":
    main()

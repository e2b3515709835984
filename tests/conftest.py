import os

import pytest
import torch

# Test traffic stays on loopback: Ray nodes started by the tests (ray.cluster_utils.Cluster, --ray local) take
# 127.0.0.1 as their address instead of the machine's routable one (Ray reads this before it picks an address; only
# `ray start` of a worker node looks at it otherwise). Inherited by every Ray process and `cadpipe` subprocess.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Shared 2-core machines: keep each test process to one thread; pytest-xdist gives the parallelism.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Without CUDA, Triton kernels (cadpipe.transforms.clahe.clahe_triton) run only under Triton's interpreter, which must be
# chosen before the kernels are decorated, i.e. before anything in this test process imports that module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model or runs a server (skipped by `make test-quick`)")
    config.addinivalue_line("markers", "integration: starts real external servers (MONAI Label, browser, Orthanc)")


@pytest.fixture(scope="session")
def shared_dir():
    """The read-only ../shared folder beside the checkout (MONAI schema, notes)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(os.path.dirname(here), "shared")
    if not os.path.isdir(path):
        pytest.skip("../shared is not present beside the checkout")
    return path


@pytest.fixture(scope="session")
def metadata_schema():
    """The JSON schema bundle metadata is checked against: MONAI's published schema when a copy lies in
    ``../shared/monai`` beside the checkout, otherwise the project's own (``cadpipe/metadata_schema.json``, written
    from the MONAI Bundle Specification), so the check runs on a fresh clone without network access."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monai_copy = os.path.join(os.path.dirname(here), "shared", "monai", "meta_schema_20240725.json")
    if os.path.isfile(monai_copy):
        return monai_copy
    return os.path.join(here, "cadpipe", "metadata_schema.json")

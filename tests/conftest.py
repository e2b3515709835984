import os

import pytest
import torch

# Shared 2-core machines: keep each test process to one thread; pytest-xdist gives the parallelism.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model or runs a server (skipped by `make test-quick`)")
    config.addinivalue_line("markers", "integration: starts real external servers (MONAI Label, browser)")


@pytest.fixture(scope="session")
def shared_dir():
    """The read-only ../shared folder beside the checkout (MONAI schema, notes)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(os.path.dirname(here), "shared")
    if not os.path.isdir(path):
        pytest.skip("../shared is not present beside the checkout")
    return path

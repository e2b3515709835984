"""The bundle's network is built on the meta device without random initialisation (bundle_runner._SkipMetaInit)."""

from __future__ import annotations

import torch

from cadpipe.pipelines.inference.bundle_runner import _SkipMetaInit


def test_meta_init_skipped_real_tensors_untouched():
    with torch.device("meta"), _SkipMetaInit():
        conv = torch.nn.Conv2d(3, 4, 3)
        torch.nn.init.kaiming_normal_(conv.weight)
        torch.nn.init.trunc_normal_(conv.bias)
        assert conv.weight.is_meta and conv.weight.shape == (4, 3, 3, 3)
    with _SkipMetaInit():  # tensors with data are still initialised
        real = torch.zeros(1000)
        torch.nn.init.normal_(real)
        assert real.std() > 0.5
        real.fill_(2.0)
        assert bool((real == 2).all())


def test_meta_built_network_equals_ordinary_build():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    ref.eval()
    with torch.device("meta"), _SkipMetaInit():
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    net.load_state_dict(ref.state_dict(), assign=True)
    net.eval()
    x = torch.randn(2, 1, 8, 8)
    assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()])
    assert torch.equal(net(x), ref(x))

"""Monte Carlo dropout on TransFuse: dropout samples, everything else behaves as at inference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transfuse_monai.networks import TransFuse, enable_mc_dropout


def test_mc_dropout_samples_with_batchnorm_in_inference_mode(single_thread):
    torch.manual_seed(0)
    net = TransFuse(in_channels=3, out_channels=2, img_size=(32, 32), dropout=0.3)
    x = torch.randn(1, 3, 32, 32)
    assert enable_mc_dropout(net) > 0
    batchnorms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batchnorms and not any(m.training for m in batchnorms)
    before = [m.running_mean.clone() for m in batchnorms]
    with torch.no_grad():
        first, second = net(x), net(x)
    assert first.shape == (1, 2, 32, 32)  # the final head, not the stacked training heads
    assert not torch.allclose(first, second)  # each pass samples its own dropout masks
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, batchnorms))  # statistics untouched
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))  # plain inference is deterministic again


def test_mc_dropout_needs_dropout():
    net = TransFuse(in_channels=1, out_channels=1, img_size=(32, 32), dropout=0.0)
    with pytest.raises(ValueError, match="no dropout layer with a positive rate"):
        enable_mc_dropout(net)

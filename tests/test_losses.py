"""Tests of StructureLoss and its deep-supervision wrapper."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transfuse_monai.losses import DeepSupervisionStructureLoss, StructureLoss


@pytest.fixture()
def square_mask() -> torch.Tensor:
    mask = torch.zeros(1, 1, 352, 352)
    mask[..., 100:252, 120:232] = 1
    return mask


def test_reference_values(square_mask):
    loss = StructureLoss()
    assert loss(torch.zeros_like(square_mask), square_mask).item() == pytest.approx(1.53528309, abs=1e-6)
    logits = torch.where(square_mask > 0, 4.0, -4.0)
    assert loss(logits, square_mask).item() == pytest.approx(0.10716231, abs=1e-6)


def test_boundary_weighting(square_mask):
    """An error on the boundary costs more than the same error far inside the object."""
    loss = StructureLoss()
    good = torch.where(square_mask > 0, 4.0, -4.0)
    inner, edge = good.clone(), good.clone()
    inner[..., 170:175, 170:175] = -4.0  # 25 wrong pixels deep inside
    edge[..., 100:105, 170:175] = -4.0  # 25 wrong pixels on the border
    assert loss(edge, square_mask) > loss(inner, square_mask) > loss(good, square_mask)
    plain = StructureLoss(boundary_weight=0.0)
    assert plain(edge, square_mask).item() == pytest.approx(plain(inner, square_mask).item(), rel=1e-6)


def test_multichannel_is_per_class(square_mask):
    other = torch.zeros_like(square_mask)
    other[..., 10:60, 10:60] = 1
    target = torch.cat([square_mask, other], dim=1)
    logits = torch.randn_like(target)
    per_class = StructureLoss(reduction="none")(logits, target)
    assert per_class.shape == (1, 2)
    single = StructureLoss()(logits[:, 1:], other)
    assert per_class[0, 1].item() == pytest.approx(single.item(), rel=1e-6)
    no_bg = StructureLoss(include_background=False)(logits, target)
    assert no_bg.item() == pytest.approx(single.item(), rel=1e-6)


def test_gradient_flows(square_mask):
    logits = torch.zeros_like(square_mask, requires_grad=True)
    StructureLoss()(logits, square_mask).backward()
    assert logits.grad is not None and logits.grad[square_mask > 0].mean() < 0  # push logits up inside


def test_deep_supervision_weights(square_mask):
    heads = [torch.where(square_mask > 0, 4.0, -4.0), torch.zeros_like(square_mask), torch.randn_like(square_mask)]
    single = [StructureLoss()(h, square_mask).item() for h in heads]
    stacked = torch.stack(heads, dim=1)
    ds = DeepSupervisionStructureLoss()
    expected = 0.5 * single[0] + 0.3 * single[1] + 0.2 * single[2]
    assert ds(stacked, square_mask).item() == pytest.approx(expected, rel=1e-6)
    assert ds(heads, square_mask).item() == pytest.approx(expected, rel=1e-6)
    assert ds(heads[0], square_mask).item() == pytest.approx(single[0], rel=1e-6)  # eval output: plain loss
    custom = DeepSupervisionStructureLoss(weights=(1.0, 0.0, 0.0))
    assert custom(stacked, square_mask).item() == pytest.approx(single[0], rel=1e-6)


def test_bad_inputs(square_mask):
    with pytest.raises(ValueError, match="same shape"):
        StructureLoss()(torch.zeros(1, 2, 352, 352), square_mask)
    with pytest.raises(ValueError, match="odd"):
        StructureLoss(kernel_size=30)
    with pytest.raises(ValueError, match="deep-supervision weights"):
        DeepSupervisionStructureLoss(weights=(0.5, 0.5))(torch.zeros(1, 3, 1, 352, 352), square_mask)


def test_matches_pooling_definition():
    """The weight map is 1 + 5 * |avgpool31 - mask| with zero padding counted in the average."""
    torch.manual_seed(0)
    mask = (torch.rand(2, 1, 48, 40) > 0.7).float()
    logits = torch.randn(2, 1, 48, 40)
    w = 1 + 5 * (F.avg_pool2d(mask, 31, stride=1, padding=15) - mask).abs()
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (w * bce).sum((2, 3)) / w.sum((2, 3))
    p = logits.sigmoid()
    inter, union = (p * mask * w).sum((2, 3)), ((p + mask) * w).sum((2, 3))
    expected = (wbce + 1 - (inter + 1) / (union - inter + 1)).mean()
    assert StructureLoss()(logits, mask).item() == pytest.approx(expected.item(), rel=1e-6)

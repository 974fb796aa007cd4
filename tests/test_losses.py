"""Tests of StructureLoss, its deep-supervision wrapper and TransFuseLoss (binary and multi-class tasks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai.losses import DiceCELoss

from transfuse_monai.losses import DeepSupervisionStructureLoss, StructureLoss, TransFuseLoss
from transfuse_monai.losses.structure_loss import box_mean


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


@pytest.mark.parametrize(
    "shape, kernel", [((2, 1, 48, 40), 31), ((1, 3, 9, 70), 31), ((2, 2, 17, 23), 5), ((1, 1, 6, 6), 1)]
)
def test_box_mean_is_zero_padded_average_pooling(shape, kernel):
    """The two one-dimensional passes give avg_pool2d's window mean, padding counted, also for windows wider than the
    image and for soft targets."""
    torch.manual_seed(0)
    for x in ((torch.rand(shape) > 0.6).float(), torch.rand(shape)):
        expected = F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2)
        got = box_mean(x, kernel)
        assert got.shape == x.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


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


# ---------------------------------------------------------------------------------------------------------------------
# TransFuseLoss: every task (sigmoid / softmax) with the structure loss or DiceCE
# ---------------------------------------------------------------------------------------------------------------------


def _index_label(seed: int = 0, shape=(2, 1, 32, 32)) -> torch.Tensor:
    """A class-index map with classes 1 and 2 as blocks, plus random noise labels, as float (as loaders give)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(shape)
    label[..., 4:14, 4:20] = 1
    label[..., 18:30, 10:28] = 2
    flip = torch.rand(shape, generator=g) < 0.05
    return torch.where(flip, torch.randint(0, 3, shape, generator=g).float(), label)


def _heads(seed: int = 0, shape=(2, 3, 3, 32, 32)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["structure", "dicece"])
def test_transfuse_loss_index_map_equals_one_hot(kind):
    label = _index_label()
    onehot = F.one_hot(label[:, 0].long(), 3).permute(0, 3, 1, 2).float()
    loss = TransFuseLoss(kind, activation="softmax", num_classes=3)
    heads = _heads()
    from_index, from_onehot = loss(heads, label), loss(heads, onehot)
    assert from_index.item() == pytest.approx(from_onehot.item(), rel=1e-6)
    assert from_index.item() > 0
    # a different label gives a different loss (the label is really used)
    assert loss(heads, _index_label(seed=1)).item() != pytest.approx(from_index.item(), rel=1e-4)


@pytest.mark.parametrize("include_background", [True, False])
def test_transfuse_loss_weights_structure_softmax(include_background):
    label = _index_label()
    onehot = F.one_hot(label[:, 0].long(), 3).permute(0, 3, 1, 2).float()
    heads = _heads()
    per_head = [StructureLoss(include_background=include_background)(heads[:, i], onehot).item() for i in range(3)]
    expected = 0.5 * per_head[0] + 0.3 * per_head[1] + 0.2 * per_head[2]
    loss = TransFuseLoss("structure", activation="softmax", num_classes=3, include_background=include_background)
    assert loss(heads, label).item() == pytest.approx(expected, rel=1e-6)
    assert loss(list(heads.unbind(1)), label).item() == pytest.approx(expected, rel=1e-6)  # list of heads
    assert loss(heads[:, 0], label).item() == pytest.approx(per_head[0], rel=1e-6)  # eval output: plain loss
    # per-class on the logits: without the background, channel 0 is ignored entirely
    if not include_background:
        changed = heads.clone()
        changed[:, :, 0] = 100.0
        assert loss(changed, label).item() == pytest.approx(expected, rel=1e-6)


def test_transfuse_loss_weights_dicece_softmax():
    label = _index_label()
    heads = _heads()
    dicece = DiceCELoss(to_onehot_y=True, softmax=True)
    per_head = [dicece(heads[:, i], label).item() for i in range(3)]
    loss = TransFuseLoss("dicece", activation="softmax", weights=(0.5, 0.3, 0.2))
    expected = 0.5 * per_head[0] + 0.3 * per_head[1] + 0.2 * per_head[2]
    assert loss(heads, label).item() == pytest.approx(expected, rel=1e-5)
    custom = TransFuseLoss("dicece", activation="softmax", weights=(0.0, 1.0, 0.0), lambda_ce=0.0)
    dice_only = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.0)(heads[:, 1], label).item()
    assert custom(heads, label).item() == pytest.approx(dice_only, rel=1e-5)


def test_transfuse_loss_sigmoid_equals_structure_loss(square_mask):
    heads = torch.stack(
        [torch.where(square_mask > 0, 4.0, -4.0), torch.zeros_like(square_mask), torch.randn_like(square_mask)], dim=1
    )
    new = TransFuseLoss("structure", activation="sigmoid", num_classes=1)
    old = DeepSupervisionStructureLoss()
    assert new(heads, square_mask).item() == pytest.approx(old(heads, square_mask).item(), rel=1e-7)
    assert TransFuseLoss()(heads[:, 0], square_mask).item() == pytest.approx(
        StructureLoss()(heads[:, 0], square_mask).item(), rel=1e-7
    )
    bce_dice = TransFuseLoss("dicece", activation="sigmoid")
    monai_loss = DiceCELoss(sigmoid=True)
    expected = sum(w * monai_loss(heads[:, i], square_mask).item() for i, w in enumerate((0.5, 0.3, 0.2)))
    assert bce_dice(heads, square_mask).item() == pytest.approx(expected, rel=1e-5)


def test_transfuse_loss_gradient_and_kwargs():
    label = _index_label()
    heads = _heads().requires_grad_(True)
    TransFuseLoss("structure", activation="softmax", kernel_size=5, boundary_weight=0.0)(heads, label).backward()
    assert heads.grad is not None and heads.grad.abs().sum() > 0
    # kwargs reach the per-head loss
    plain = TransFuseLoss("structure", activation="softmax", boundary_weight=0.0)(heads.detach(), label)
    weighted = TransFuseLoss("structure", activation="softmax")(heads.detach(), label)
    assert plain.item() != pytest.approx(weighted.item(), rel=1e-3)


def test_transfuse_loss_bad_inputs():
    heads, label = _heads(), _index_label()
    with pytest.raises(ValueError, match="num_classes=4"):
        TransFuseLoss("dicece", activation="softmax", num_classes=4)(heads, label)
    with pytest.raises(ValueError, match="neither a class-index map"):
        TransFuseLoss(activation="softmax")(heads, label.repeat(1, 2, 1, 1))
    with pytest.raises(ValueError, match=r"values in \[0, 2\]"):
        TransFuseLoss(activation="softmax")(heads, label + 1)
    with pytest.raises(ValueError, match="non-integer"):
        TransFuseLoss(activation="softmax")(heads, label * 0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        TransFuseLoss(activation="softmax")(heads, torch.ones(2, 3, 32, 32))
    with pytest.raises(ValueError, match="one binary mask per output channel"):
        TransFuseLoss(activation="sigmoid")(heads, label)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        TransFuseLoss(activation="sigmoid")(heads, label.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="at least 2 output channels"):
        TransFuseLoss(activation="softmax")(heads[:, :, :1], label.clamp(max=0))
    with pytest.raises(ValueError, match="deep-supervision weights"):
        TransFuseLoss(activation="softmax")(list(heads.unbind(1))[:2], label)
    with pytest.raises(ValueError, match="spatial shape"):
        TransFuseLoss(activation="softmax")(heads, label[..., :16])
    with pytest.raises(ValueError, match="Unknown loss"):
        TransFuseLoss("focal")
    with pytest.raises(ValueError, match="Unknown activation"):
        TransFuseLoss(activation="relu")
    with pytest.raises(ValueError, match="num_classes >= 2"):
        TransFuseLoss(activation="softmax", num_classes=1)
    with pytest.raises(ValueError, match="to_onehot_y"):
        TransFuseLoss("dicece", activation="softmax", to_onehot_y=True)

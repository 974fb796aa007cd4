"""Tests of transfuse_monai.metrics.SegmentationMetrics: per-class Dice / IoU / surface distances in mm, checked
against analytic values (shifted disc, shifted anisotropic box) and the documented empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai.data import MetaTensor

from transfuse_monai.metrics import DISTANCE_METRICS, SEGMENTATION_METRICS, SegmentationMetrics

BINARY = ("background", "lesion")
THREE = ("background", "liver", "tumour")


def _disc(size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.float32)[None]


@pytest.mark.parametrize("shift", [2, 6])
def test_shifted_disc_distances_match_geometry(shift):
    """A disc of radius R shifted by k pixels at 0.143 mm: HD = HD95 = k * 0.143 mm, and the ASD is the mean over
    the circle of the distance to the shifted circle, |sqrt(R^2 + k^2 - 2Rk cos t) - R|, within one pixel."""
    spacing, radius = 0.143, 24
    label = _disc(96, 48, 40, radius)
    pred = _disc(96, 48, 40 + shift, radius)
    metric = SegmentationMetrics(BINARY, metrics=("hd", "hd95", "asd", "dice"))
    out = metric(pred, label, spacing=spacing)

    assert out["hd_lesion"] == pytest.approx(shift * spacing, abs=spacing)
    assert out["hd95_lesion"] == pytest.approx(shift * spacing, abs=spacing)
    t = np.linspace(0.0, 2.0 * np.pi, 200_001)[:-1]
    expected_asd = np.mean(np.abs(np.sqrt(radius**2 + shift**2 - 2 * radius * shift * np.cos(t)) - radius)) * spacing
    assert out["asd_lesion"] == pytest.approx(expected_asd, abs=spacing)
    assert 0 < out["asd_lesion"] < out["hd_lesion"]
    # the spacing scales the distances: in pixels the same shift gives k
    px = SegmentationMetrics(BINARY, metrics=("hd", "asd"), distance_unit="px")(pred, label)
    assert px["hd_px_lesion"] == pytest.approx(out["hd_lesion"] / spacing, rel=1e-5)
    assert px["asd_px_lesion"] == pytest.approx(out["asd_lesion"] / spacing, rel=1e-5)
    # Dice of two discs of area A overlapping by the lens area
    lens = 2 * radius**2 * math.acos(shift / (2 * radius)) - shift / 2 * math.sqrt(4 * radius**2 - shift**2)
    assert out["dice_lesion"] == pytest.approx(lens / (math.pi * radius**2), abs=0.02)


@pytest.mark.parametrize("shift", [1, 2])
def test_shifted_box_anisotropic_3d(shift):
    """A box shifted by k voxels along the slice axis, spacing (0.5, 0.5, 3.0) mm: HD = 3k mm, and the ASD follows
    from the geometry of the two boundaries (voxel shells):

    * bottom face of one box: distance 3k to the other's bottom face;
    * top face: inside the other box, at min(3k, 0.5 * in-plane distance to the side walls);
    * side walls: 0 where both boxes overlap, 3(k - j) for the j-th slice (1 <= j < k) below the other box.

    Both directions are the same by symmetry, so the symmetric ASD is the mean over one shell's voxels."""
    a, b, c, z0 = 20, 14, 8, 3
    label = np.zeros((1, 28, 22, 16), dtype=np.float32)
    label[0, 4 : 4 + a, 5 : 5 + b, z0 : z0 + c] = 1
    pred = np.zeros_like(label)
    pred[0, 4 : 4 + a, 5 : 5 + b, z0 + shift : z0 + shift + c] = 1
    out = SegmentationMetrics(BINARY, metrics=("hd", "hd95", "asd"))(pred, label, spacing=(0.5, 0.5, 3.0))

    assert out["hd_lesion"] == pytest.approx(3.0 * shift, abs=0.5)
    assert out["hd95_lesion"] == pytest.approx(3.0 * shift, abs=0.5)
    ii, jj = np.mgrid[:a, :b]
    wall = np.minimum.reduce([ii, a - 1 - ii, jj, b - 1 - jj])  # in-plane voxel distance to the side walls
    ring = 2 * a + 2 * b - 4  # voxels of a side-wall ring in one slice
    total = a * b * 3.0 * shift + np.minimum(3.0 * shift, 0.5 * wall).sum()
    total += ring * sum(3.0 * (shift - j) for j in range(1, shift))
    expected_asd = total / (2 * a * b + ring * (c - 2))
    assert out["asd_lesion"] == pytest.approx(expected_asd, abs=0.5)  # within the smallest voxel size
    assert out["asd_lesion"] == pytest.approx(expected_asd, rel=1e-3)  # in fact exact for voxel shells


def test_spacing_follows_array_axes():
    label = _disc(64, 32, 32, 12)
    along_w = np.roll(label, 3, axis=2)
    along_h = np.roll(label, 3, axis=1)
    metric = SegmentationMetrics(BINARY, metrics=("hd",))
    assert metric(along_w, label, spacing=(1.0, 0.25))["hd"] == pytest.approx(0.75, abs=1e-4)
    assert metric(along_h, label, spacing=(1.0, 0.25))["hd"] == pytest.approx(3.0, abs=1e-4)
    assert metric(along_h, label, spacing=torch.tensor([1.0, 0.25], dtype=torch.float64))["hd"] == pytest.approx(3.0)


def test_keys_units_and_order():
    metric = SegmentationMetrics(THREE, activation="softmax")
    label = np.zeros((1, 32, 32))
    label[0, 2:12, 2:12], label[0, 16:28, 16:28] = 1, 2
    out = metric(label, label, spacing=1.0)
    means = list(SEGMENTATION_METRICS)
    per_class = [f"{m}_{c}" for m in SEGMENTATION_METRICS for c in ("liver", "tumour")]
    assert list(out) == means + per_class == list(metric.keys)
    assert all(isinstance(v, float) for v in out.values())
    assert metric.units == {"dice": "", "iou": "", "hd": "mm", "hd95": "mm", "asd": "mm"}
    assert metric.reported_classes == ("liver", "tumour")
    with_bg = SegmentationMetrics(THREE, activation="softmax", metrics=("dice",), include_background=True)
    assert list(with_bg(label, label)) == ["dice", "dice_background", "dice_liver", "dice_tumour"]
    px = SegmentationMetrics(THREE, activation="softmax", metrics=("dice", "hd95"), distance_unit="px")
    assert list(px(label, label)) == ["dice", "hd95_px", "dice_liver", "dice_tumour", "hd95_px_liver", "hd95_px_tumour"]
    assert px.units == {"dice": "", "hd95_px": "px"}


def test_three_classes_one_perfect():
    label = np.zeros((1, 48, 48), dtype=np.int64)
    label[0, 4:20, 4:20] = 1
    label[0, 26:44, 24:44] = 2
    pred = label.copy()
    pred[label == 2] = 0
    pred[0, 30:44, 24:44] = 2  # tumour: top 4 rows missed
    out = SegmentationMetrics(THREE, activation="softmax")(pred, label, spacing=0.5)
    assert out["dice_liver"] == 1.0 and out["iou_liver"] == 1.0
    assert out["hd_liver"] == 0.0 and out["hd95_liver"] == 0.0 and out["asd_liver"] == 0.0
    tp, n_pred, n_gt = 14 * 20, 14 * 20, 18 * 20
    assert out["dice_tumour"] == pytest.approx(2 * tp / (n_pred + n_gt), rel=1e-6)
    assert out["iou_tumour"] == pytest.approx(tp / n_gt, rel=1e-6)
    assert out["hd_tumour"] == pytest.approx(4 * 0.5, abs=1e-5)
    for m in SEGMENTATION_METRICS:
        assert out[m] == pytest.approx((out[f"{m}_liver"] + out[f"{m}_tumour"]) / 2, rel=1e-6)


def test_empty_class_conventions():
    metric = SegmentationMetrics(THREE, activation="softmax")
    label = np.zeros((1, 32, 32))
    label[0, 4:14, 4:14] = 1  # no tumour in the label
    # tumour empty in both: Dice/IoU 1, distances 0
    both_empty = metric(label, label, spacing=1.0)
    assert both_empty["dice_tumour"] == 1.0 and both_empty["iou_tumour"] == 1.0
    assert all(both_empty[f"{m}_tumour"] == 0.0 for m in DISTANCE_METRICS)
    # tumour predicted but absent, liver missed: Dice/IoU 0, distances NaN; means skip NaN
    pred = np.zeros((1, 32, 32))
    pred[0, 20:28, 20:28] = 2
    out = metric(pred, label, spacing=1.0)
    for c in ("liver", "tumour"):
        assert out[f"dice_{c}"] == 0.0 and out[f"iou_{c}"] == 0.0
        assert all(math.isnan(out[f"{m}_{c}"]) for m in DISTANCE_METRICS)
    assert out["dice"] == 0.0 and all(math.isnan(out[m]) for m in DISTANCE_METRICS)
    # one class defined, one not: the mean distance is the defined one
    pred2 = label.copy()
    pred2[0, 20:28, 20:28] = 2
    out2 = metric(pred2, label, spacing=1.0)
    assert math.isnan(out2["hd_tumour"]) and out2["hd_liver"] == 0.0 and out2["hd"] == 0.0
    assert out2["dice"] == pytest.approx(0.5)


def test_softmax_probabilities_and_index_map_agree():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 24, 24, generator=g)
    probs = torch.softmax(logits, dim=0)
    index = probs.argmax(dim=0, keepdim=True)
    label = torch.randint(0, 3, (1, 24, 24), generator=g).float()
    metric = SegmentationMetrics(THREE, activation="softmax")
    from_probs = metric(probs, label, spacing=1.0)
    from_index = metric(index, label, spacing=1.0)
    assert from_probs == pytest.approx(from_index, nan_ok=True)
    one_hot = torch.nn.functional.one_hot(label[0].long(), 3).permute(2, 0, 1)
    assert metric(probs, one_hot, spacing=1.0) == pytest.approx(from_probs, nan_ok=True)
    meta = metric(MetaTensor(probs), MetaTensor(label), spacing=1.0)  # MetaTensors and numpy too
    assert meta == pytest.approx(from_probs, nan_ok=True)
    assert metric(probs.numpy(), label.numpy(), spacing=1.0) == pytest.approx(from_probs, nan_ok=True)


def test_sigmoid_threshold_and_multichannel():
    label = np.zeros((1, 16, 16))
    label[0, 4:12, 4:12] = 1
    metric = SegmentationMetrics(BINARY, metrics=("dice",), threshold=0.5)
    assert metric(label * 0.6, label)["dice"] == 1.0
    assert metric(label * 0.5, label)["dice"] == 0.0  # pred > threshold
    assert SegmentationMetrics(BINARY, metrics=("dice",), threshold=0.4)(label * 0.5, label)["dice"] == 1.0
    # multi-label sigmoid: one probability map per foreground class, label as index map or per-class masks
    two = SegmentationMetrics(THREE, activation="sigmoid", metrics=("dice",))
    masks = np.concatenate([label, np.roll(label, 8, axis=2)])
    index = masks[0:1] + 2 * masks[1:2]
    assert two(masks * 0.9, index) == two(masks * 0.9, masks) == {"dice": 1.0, "dice_liver": 1.0, "dice_tumour": 1.0}


def test_bad_inputs():
    metric = SegmentationMetrics(THREE, activation="softmax")
    label = np.zeros((1, 16, 16))
    with pytest.raises(ValueError, match="need the pixel spacing"):
        metric(label, label)
    with pytest.raises(ValueError, match="spatial shape"):
        metric(np.zeros((1, 16, 8)), label, spacing=1.0)
    with pytest.raises(ValueError, match="channel-first"):
        metric(np.zeros((16, 16)), np.zeros((16, 16)), spacing=1.0)
    with pytest.raises(ValueError, match="3 channels"):
        metric(np.zeros((2, 16, 16)), label, spacing=1.0)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        metric(label, label + 3, spacing=1.0)
    with pytest.raises(ValueError, match="one per spatial dimension"):
        metric(label, label, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        metric(label, label, spacing=0.0)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        SegmentationMetrics(BINARY, metrics=("dice",))(label - 3.0, label)
    with pytest.raises(ValueError, match="background and at least one class"):
        SegmentationMetrics(("background",))
    with pytest.raises(ValueError, match="unique"):
        SegmentationMetrics(("background", "a", "a"))
    with pytest.raises(ValueError, match="metrics must be"):
        SegmentationMetrics(BINARY, metrics=("dice", "nsd"))
    with pytest.raises(ValueError, match="distance_unit"):
        SegmentationMetrics(BINARY, distance_unit="cm")
    # overlap metrics alone need no spacing
    assert SegmentationMetrics(BINARY, metrics=("dice", "iou"))(label, label)["dice"] == 1.0

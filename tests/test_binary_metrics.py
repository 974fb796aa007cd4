"""Tests for :mod:`transfuse_monai.metrics.binary` (per-image Jaccard, Dice and pixel accuracy of ISIC 2017)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transfuse_monai.metrics import BINARY_METRIC_KEYS, BinarySegmentationMetrics, binary_segmentation_metrics


def _oracle(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Set-based definitions, written out independently of MONAI."""
    p = pred > threshold
    g = gt.astype(bool)
    inter = np.logical_and(p, g).sum()
    union = np.logical_or(p, g).sum()
    size = p.sum() + g.sum()
    return {
        "jaccard": inter / union if union else 1.0,
        "dice": 2 * inter / size if size else 1.0,
        "accuracy": (p == g).mean(),
    }


def test_known_values():
    gt = np.zeros((4, 4))
    gt[:2] = 1  # 8 lesion pixels
    pred = np.zeros((4, 4))
    pred[:1] = 0.9  # 4 of them found, no false positive
    pred[3, 3] = 0.7  # one false positive
    values = binary_segmentation_metrics(pred, gt)
    assert list(values) == list(BINARY_METRIC_KEYS)
    assert values["jaccard"] == pytest.approx(4 / 9)
    assert values["dice"] == pytest.approx(8 / 13)
    assert values["accuracy"] == pytest.approx(11 / 16)


def test_perfect_disjoint_and_empty():
    gt = np.zeros((8, 8), dtype=bool)
    gt[2:6, 2:6] = True
    assert binary_segmentation_metrics(gt * 0.8, gt) == {"jaccard": 1.0, "dice": 1.0, "accuracy": 1.0}
    disjoint = binary_segmentation_metrics((~gt) * 1.0, gt)
    assert disjoint["jaccard"] == 0.0 and disjoint["dice"] == 0.0 and disjoint["accuracy"] == 0.0
    empty = np.zeros((8, 8))
    assert binary_segmentation_metrics(empty, empty) == {"jaccard": 1.0, "dice": 1.0, "accuracy": 1.0}
    # an empty prediction of a lesion: nothing found
    missed = binary_segmentation_metrics(empty, gt)
    assert missed["jaccard"] == 0.0 and missed["dice"] == 0.0 and missed["accuracy"] == pytest.approx(48 / 64)


def test_threshold_is_strict():
    gt = np.ones((2, 2))
    at = np.full((2, 2), 0.5)
    assert binary_segmentation_metrics(at, gt)["jaccard"] == 0.0  # pred > 0.5, as the TransFuse evaluation
    assert binary_segmentation_metrics(at, gt, threshold=0.4)["jaccard"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_random_maps_match_set_definitions(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 40, size=2)
    pred = rng.random((h, w))
    gt = rng.random((h, w)) > rng.uniform(0.2, 0.8)
    threshold = float(rng.uniform(0.1, 0.9))
    values = binary_segmentation_metrics(pred, gt, threshold=threshold)
    for key, expected in _oracle(pred, gt, threshold).items():
        assert values[key] == pytest.approx(float(expected), abs=1e-6)


def test_tensor_and_channel_inputs_agree_with_numpy():
    rng = np.random.default_rng(7)
    pred = rng.random((1, 12, 20)).astype(np.float32)
    gt = (rng.random((1, 12, 20)) > 0.5).astype(np.float32)
    from_numpy = binary_segmentation_metrics(pred[0], gt[0])
    from_torch = binary_segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(gt))
    assert from_torch == pytest.approx(from_numpy)


def test_callable_with_suffix():
    metric = BinarySegmentationMetrics(threshold=0.3, suffix="_orig")
    assert metric.keys == ("jaccard_orig", "dice_orig", "accuracy_orig")
    gt = np.ones((3, 3))
    out = metric(np.full((3, 3), 0.4), gt)
    assert out == {"jaccard_orig": 1.0, "dice_orig": 1.0, "accuracy_orig": 1.0}
    assert "suffix='_orig'" in repr(metric)


@pytest.mark.parametrize(
    "pred, gt, match",
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), "Shape mismatch"),
        (np.full((4, 4), 3.0), np.zeros((4, 4)), r"\[0, 1\]"),  # logits passed by mistake
        (np.full((4, 4), np.nan), np.zeros((4, 4)), "non-finite"),
        (np.zeros((4, 4)), np.full((4, 4), 255), "binary"),  # 0/255 mask not binarised
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), "2D"),  # two channels
        (np.zeros((0, 4)), np.zeros((0, 4)), "empty"),
    ],
)
def test_bad_input_is_rejected(pred, gt, match):
    with pytest.raises(ValueError, match=match):
        binary_segmentation_metrics(pred, gt)


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 2])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        binary_segmentation_metrics(np.zeros((2, 2)), np.zeros((2, 2)), threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        BinarySegmentationMetrics(threshold=threshold)

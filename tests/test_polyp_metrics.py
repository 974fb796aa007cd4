"""Tests for :mod:`transfuse_monai.metrics.polyp`.

Two groups:

* oracle-free tests asserting known values and input validation;
* oracle tests comparing every metric with ``pysodmetrics`` (``py_sod_metrics``),
  the Python port of the PraNet / SOD evaluation toolbox, called with
  ``normalize=False`` (probability maps used as given, as this module does).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from transfuse_monai.metrics import (
    EPS,
    METRIC_KEYS,
    PolypMetrics,
    dice_iou,
    e_measure,
    e_measure_curve,
    mae,
    s_measure,
    summarize,
    weighted_f_measure,
)

REL = 1e-6


# --------------------------------------------------------------------------- #
# synthetic data
# --------------------------------------------------------------------------- #
def ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    """Boolean mask of a (rotated) filled ellipse."""
    y, x = np.mgrid[:h, :w]
    c, s = math.cos(angle), math.sin(angle)
    u = ((x - cx) * c + (y - cy) * s) / rx
    v = (-(x - cx) * s + (y - cy) * c) / ry
    return u * u + v * v <= 1.0


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An ellipse mask and a blurred, shifted, noisy probability map of it."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(24, 96, size=2))
    gt = ellipse(
        h,
        w,
        cy=rng.uniform(0.3, 0.7) * h,
        cx=rng.uniform(0.3, 0.7) * w,
        ry=rng.uniform(0.1, 0.3) * h,
        rx=rng.uniform(0.1, 0.3) * w,
        angle=rng.uniform(0.0, math.pi),
    )
    pred = ndimage.gaussian_filter(gt.astype(np.float64), sigma=rng.uniform(0.5, 4.0))
    pred = ndimage.shift(pred, rng.uniform(-4.0, 4.0, size=2), order=1)
    pred = pred + rng.normal(0.0, rng.uniform(0.0, 0.3), size=gt.shape)
    return np.clip(pred, 0.0, 1.0), gt


def centred_ellipse(h: int = 48, w: int = 64) -> np.ndarray:
    return ellipse(h, w, cy=h / 2 - 0.5, cx=w / 2 - 0.5, ry=h / 4, rx=w / 4)


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1234)
    gt = centred_ellipse()
    cases = {f"ellipse-{seed}": random_case(seed) for seed in range(6)}
    cases["uniform-noise"] = (rng.uniform(0.0, 1.0, size=(40, 50)), ellipse(40, 50, 15, 30, 8, 12))
    cases["perfect"] = (gt.astype(np.float64), gt)
    cases["inverted"] = ((~gt).astype(np.float64), gt)
    cases["soft-perfect"] = (np.where(gt, 0.8, 0.1), gt)
    cases["empty-gt-noise"] = (rng.uniform(0.0, 0.6, size=(32, 40)), np.zeros((32, 40), dtype=bool))
    cases["empty-gt-zeros"] = (np.zeros((32, 40)), np.zeros((32, 40), dtype=bool))
    cases["full-gt-noise"] = (rng.uniform(0.3, 1.0, size=(32, 40)), np.ones((32, 40), dtype=bool))
    cases["full-gt-ones"] = (np.ones((32, 40)), np.ones((32, 40), dtype=bool))
    single = np.zeros((20, 20), dtype=bool)
    single[7, 11] = True
    cases["single-pixel"] = (ndimage.gaussian_filter(single.astype(np.float64), 1.0) * 5.0, single)
    return cases


CASES = _cases()


# --------------------------------------------------------------------------- #
# oracle-free tests
# --------------------------------------------------------------------------- #
def test_perfect_prediction_known_values():
    gt = centred_ellipse()
    n = gt.size
    row = PolypMetrics().compute(gt.astype(np.float32), gt)
    assert list(row) == list(METRIC_KEYS)
    assert row["dice"] == 1.0 and row["iou"] == 1.0
    assert row["s_measure"] == pytest.approx(1.0, abs=1e-12)
    assert row["weighted_f_measure"] == pytest.approx(1.0, abs=1e-12)
    assert row["mae"] == 0.0
    # threshold 0 marks everything foreground (enhanced value 1/4 per pixel); the other 255 are perfect
    assert row["mean_e_measure"] == pytest.approx((255.25 / 256) * n / (n - 1), rel=1e-12)
    curve = e_measure_curve(gt, gt)
    assert curve.shape == (256,)
    assert curve[0] == pytest.approx(0.25 * n / (n - 1), rel=1e-12)
    np.testing.assert_allclose(curve[1:], n / (n - 1), rtol=1e-12)
    assert curve.max() == pytest.approx(1.0, abs=2.0 / n)


def test_all_wrong_prediction_known_values():
    gt = centred_ellipse()
    n = gt.size
    pred = (~gt).astype(np.float64)
    assert dice_iou(pred, gt) == (0.0, 0.0)
    assert mae(pred, gt) == 1.0
    assert s_measure(pred, gt) == 0.0
    assert weighted_f_measure(pred, gt) == pytest.approx(0.0, abs=1e-12)
    # only threshold 0 (all foreground) scores: N/4 / (N - 1); the inverted map scores 0
    assert e_measure(pred, gt) == pytest.approx(0.25 * n / (n - 1) / 256, rel=1e-12)


def test_empty_and_full_gt_special_cases():
    empty = np.zeros((16, 24), dtype=bool)
    full = np.ones((16, 24), dtype=bool)
    n = empty.size
    pred = np.full(empty.shape, 0.25)
    assert s_measure(pred, empty) == pytest.approx(0.75)
    assert s_measure(pred, full) == pytest.approx(0.25)
    assert mae(pred, empty) == pytest.approx(0.25)
    assert weighted_f_measure(pred, empty) == 0.0
    # correct empty prediction: Dice/IoU are 1 by convention; wrong one: 0
    assert dice_iou(np.zeros(empty.shape), empty) == (1.0, 1.0)
    assert dice_iou(np.ones(empty.shape), empty) == (0.0, 0.0)
    # empty gt, zero prediction: every threshold but 0 is perfect
    assert e_measure(np.zeros(empty.shape), empty) == pytest.approx((255 / 256) * n / (n - 1), rel=1e-12)
    assert e_measure(np.ones(full.shape), full) == pytest.approx(n / (n - 1), rel=1e-12)


def test_dice_iou_values_and_threshold():
    gt = np.zeros((10, 10), dtype=bool)
    gt[2:6, 2:6] = True  # 16 px
    pred = np.zeros((10, 10))
    pred[4:8, 2:6] = 0.7  # 16 px, 8 overlapping
    dice, iou = dice_iou(pred, gt)
    assert dice == pytest.approx(0.5)
    assert iou == pytest.approx(8 / 24)
    assert dice_iou(pred, gt, threshold=0.7) == (0.0, 0.0)  # strict: pred > threshold
    assert dice_iou(np.where(gt, 0.5, 0.0), gt) == (0.0, 0.0)


def test_metric_ranges_and_ordering():
    gt = centred_ellipse()
    good = np.clip(ndimage.gaussian_filter(gt.astype(float), 1.0), 0, 1)
    bad = np.clip(ndimage.gaussian_filter(gt.astype(float), 6.0) * 0.5, 0, 1)
    pm = PolypMetrics()
    r_good, r_bad = pm.compute(good, gt), pm(bad, gt)
    for row in (r_good, r_bad):
        for key in METRIC_KEYS:
            assert isinstance(row[key], float)
            assert 0.0 <= row[key] <= 1.0 + 1e-9
    for key in ("dice", "iou", "s_measure", "mean_e_measure", "weighted_f_measure"):
        assert r_good[key] > r_bad[key]
    assert r_good["mae"] < r_bad["mae"]


def test_s_measure_alpha_and_weighted_f_beta():
    pred, gt = random_case(7)
    assert s_measure(pred, gt, alpha=0.5) != pytest.approx(s_measure(pred, gt, alpha=0.9))
    assert weighted_f_measure(pred, gt, beta2=0.3) != pytest.approx(weighted_f_measure(pred, gt, beta2=1.0))


def test_s_measure_centroid_on_last_column_is_finite():
    # the right quadrants are empty; they get weight 0 here (pysodmetrics returns NaN)
    gt = np.zeros((10, 10), dtype=bool)
    gt[2:6, 9] = True
    value = s_measure(np.full((10, 10), 0.3), gt)
    assert math.isfinite(value) and 0.0 <= value <= 1.0


def test_accepts_torch_tensors_and_channel_dim():
    torch = pytest.importorskip("torch")
    pred, gt = random_case(3)
    expected = PolypMetrics().compute(pred, gt)
    t_pred = torch.from_numpy(pred).float()[None]  # (1, H, W) float32
    t_gt = torch.from_numpy(gt)[None].to(torch.uint8)
    got = PolypMetrics().compute(t_pred, t_gt)
    for key in METRIC_KEYS:  # float32 rounding only
        assert got[key] == pytest.approx(expected[key], abs=1e-4)
    assert mae(torch.from_numpy(pred), torch.from_numpy(gt)) == pytest.approx(mae(pred, gt), rel=1e-12)
    assert s_measure(pred[None], gt) == pytest.approx(s_measure(pred, gt), rel=1e-12)


@pytest.mark.parametrize("func", [mae, s_measure, e_measure, e_measure_curve, weighted_f_measure, dice_iou])
@pytest.mark.parametrize(
    ("pred", "gt", "match"),
    [
        (np.zeros((8, 8)), np.zeros((8, 9), dtype=bool), "Shape mismatch"),
        (np.zeros((2, 8, 8)), np.zeros((2, 8, 8), dtype=bool), "2D"),
        (np.zeros(8), np.zeros(8, dtype=bool), "2D"),
        (np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 8), dtype=bool), "2D"),
        (np.zeros((0, 8)), np.zeros((0, 8), dtype=bool), "empty"),
        (np.full((8, 8), 1.5), np.zeros((8, 8), dtype=bool), r"\[0, 1\]"),
        (np.full((8, 8), -0.1), np.zeros((8, 8), dtype=bool), r"\[0, 1\]"),
        (np.full((8, 8), np.nan), np.zeros((8, 8), dtype=bool), "non-finite"),
        (np.zeros((8, 8)), np.full((8, 8), 255, dtype=np.uint8), "binary"),
        (np.zeros((8, 8)), np.full((8, 8), 0.5), "binary"),
    ],
)
def test_invalid_inputs_raise(func, pred, gt, match):
    with pytest.raises(ValueError, match=match):
        func(pred, gt)


def test_gt_as_integers_equals_bool():
    pred, gt = random_case(2)
    assert PolypMetrics().compute(pred, gt.astype(np.int64)) == PolypMetrics().compute(pred, gt)


def test_summarize():
    rows = [
        {"name": "a", "dice": 1.0, "mae": 0.0, "flag": True},
        {"name": "b", "dice": 0.5, "mae": 0.2, "extra": 3},
    ]
    assert summarize(rows) == pytest.approx({"dice": 0.75, "mae": 0.1, "extra": 3.0})
    pm = PolypMetrics()
    computed = [pm.compute(*CASES[k]) for k in ("ellipse-0", "ellipse-1")]
    summary = summarize(computed)
    assert list(summary) == list(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert summary[key] == pytest.approx((computed[0][key] + computed[1][key]) / 2)
    with pytest.raises(ValueError):
        summarize([])


def test_eps_is_matlab_eps():
    assert EPS == np.finfo(np.float64).eps


# --------------------------------------------------------------------------- #
# oracle tests against pysodmetrics
# --------------------------------------------------------------------------- #
def _oracle(name: str, pred: np.ndarray, gt: np.ndarray):
    psm = pytest.importorskip("py_sod_metrics")
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=bool)
    if name == "s_measure":
        m = psm.Smeasure(alpha=0.5)
        m.step(pred, gt, normalize=False)
        return float(m.get_results()["sm"])
    if name == "e_curve":
        m = psm.Emeasure()
        m.step(pred, gt, normalize=False)
        return np.asarray(m.get_results()["em"]["curve"])
    if name == "weighted_f_measure":
        m = psm.WeightedFmeasure(beta=1)
        m.step(pred, gt, normalize=False)
        return float(m.get_results()["wfm"])
    if name == "mae":
        m = psm.MAE()
        m.step(pred, gt, normalize=False)
        return float(m.get_results()["mae"])
    if name == "dice_iou":
        kw = dict(with_dynamic=False, with_adaptive=False, with_binary=True, sample_based=True)
        m = psm.FmeasureV2(metric_handlers={"dice": psm.DICEHandler(**kw), "iou": psm.IOUHandler(**kw)})
        m.step(pred, gt, normalize=False)
        res = m.get_results()
        return float(res["dice"]["binary"]), float(res["iou"]["binary"])
    raise KeyError(name)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_pysodmetrics(case):
    pytest.importorskip("py_sod_metrics")
    pred, gt = CASES[case]

    assert s_measure(pred, gt) == pytest.approx(_oracle("s_measure", pred, gt), rel=REL, abs=1e-12)
    assert weighted_f_measure(pred, gt) == pytest.approx(
        _oracle("weighted_f_measure", pred, gt), rel=REL, abs=1e-12
    )
    assert mae(pred, gt) == pytest.approx(_oracle("mae", pred, gt), rel=REL, abs=1e-12)

    # pysodmetrics stores the curve from threshold 255 down to 0; ours is ascending
    ref_curve = _oracle("e_curve", pred, gt)
    np.testing.assert_allclose(e_measure_curve(pred, gt), ref_curve[::-1], rtol=REL, atol=1e-12)
    assert e_measure(pred, gt) == pytest.approx(float(ref_curve.mean()), rel=REL, abs=1e-12)

    dice, iou = dice_iou(pred, gt)
    ref_dice, ref_iou = _oracle("dice_iou", pred, gt)
    if not (pred > 0.5).any() and not gt.any():
        # documented divergence: a correct empty prediction scores 1 here, 0 in pysodmetrics
        assert (dice, iou) == (1.0, 1.0) and (ref_dice, ref_iou) == (0.0, 0.0)
    else:
        assert dice == pytest.approx(ref_dice, rel=REL, abs=1e-12)
        assert iou == pytest.approx(ref_iou, rel=REL, abs=1e-12)


def test_quantisation_boundaries_match_pysodmetrics():
    # values on and next to the k/255 grid exercise the floor(255 * pred) quantisation
    pytest.importorskip("py_sod_metrics")
    levels = np.arange(256) / 255.0
    values = np.concatenate([levels, np.nextafter(levels, 0.0)[1:], np.nextafter(levels, 1.0)[:-1]])
    rng = np.random.default_rng(5)
    pred = rng.permutation(np.resize(values, 48 * 32)).reshape(48, 32)
    gt = ellipse(48, 32, 20, 15, 10, 8)
    np.testing.assert_allclose(e_measure_curve(pred, gt), _oracle("e_curve", pred, gt)[::-1], rtol=REL, atol=1e-12)

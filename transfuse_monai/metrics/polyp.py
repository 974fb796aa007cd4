"""Per-image metrics used by polyp-segmentation papers.

This module implements, with numpy and scipy only, the per-image metrics that
polyp-segmentation papers (PraNet, TransFuse, Polyp-PVT, ...) report from the
PraNet / SOD evaluation toolbox, following the conventions of the Python port
``pysodmetrics`` (module ``py_sod_metrics``), which the tests use as an oracle:

* :func:`s_measure` -- structure measure ``S_alpha`` (Fan et al., ICCV 2017).
* :func:`e_measure` -- mean enhanced-alignment measure ``mean E_phi``
  (Fan et al., IJCAI 2018); :func:`e_measure_curve` gives the 256 values it
  averages.
* :func:`weighted_f_measure` -- weighted F-measure ``F^w_beta``
  (Margolin et al., CVPR 2014).
* :func:`mae` -- mean absolute error.
* :func:`dice_iou` -- binary Dice and IoU of the thresholded prediction.

:class:`PolypMetrics` computes all of them for one image and :func:`summarize`
averages a list of such per-image results (papers report the mean over the
images of a test set).

Inputs:
    ``pred`` is a probability map with values in ``[0, 1]`` and ``gt`` a
    binary mask (``bool`` or ``0``/``1`` values) of the same 2D shape
    ``(H, W)``. numpy arrays and torch tensors (including MONAI
    ``MetaTensor``) are accepted; a leading singleton channel (``(1, H, W)``)
    is squeezed. The prediction is used as given: unlike the toolbox, which
    reads 8-bit PNG maps and min-max normalises each of them, no rescaling is
    applied. Everything is computed in float64.

Conventions (shared with ``pysodmetrics``; they matter for exact agreement):
    * ``EPS = np.spacing(1)`` (MATLAB's ``eps``) guards every division.
    * S-measure: the foreground centroid is rounded with numpy's
      round-half-to-even (MATLAB rounds halves away from zero), and the
      variances are unbiased (``N - 1``). If the centroid falls on the last
      row/column a quadrant is empty; it has weight 0 and contributes 0 here,
      whereas ``pysodmetrics`` returns NaN in that degenerate case.
    * Mean E-measure: the prediction is quantised to ``q = floor(255 * pred)``
      (``(pred * 255).astype(np.uint8)``) and binarised as ``q >= t`` for each
      of the 256 thresholds ``t = 0, ..., 255``; the E-measure of each binary
      map is divided by ``H * W - 1`` (as in the MATLAB code) and the 256
      values are averaged. The MATLAB toolbox instead uses ``pred > t / 255``
      on the unquantised map; the two agree up to quantisation. Because the
      threshold ``t = 0`` always marks every pixel as foreground, the mean
      E-measure of a perfect binary prediction is
      ``(255.25 / 256) * N / (N - 1)`` (about 0.997), not exactly 1, in both
      conventions; its maximum over the thresholds is ``N / (N - 1)``.
    * Weighted F-measure: ``beta2`` is ``beta ** 2`` (1 in the papers); an
      all-background ``gt`` scores 0.
    * Dice / IoU: the prediction is binarised as ``pred > threshold`` (as the
      ``pysodmetrics`` binary mode and the TransFuse test script do); when
      both the binarised prediction and ``gt`` are empty, Dice and IoU are 1
      (a correct empty prediction; ``pysodmetrics`` would report 0).

Example:
    >>> import numpy as np
    >>> gt = np.zeros((64, 64), dtype=bool)
    >>> gt[16:48, 16:48] = True
    >>> row = PolypMetrics().compute(gt.astype(float), gt)
    >>> round(row["dice"], 6), round(row["s_measure"], 6), round(row["mae"], 6)
    (1.0, 1.0, 0.0)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "EPS",
    "METRIC_KEYS",
    "PolypMetrics",
    "dice_iou",
    "e_measure",
    "e_measure_curve",
    "mae",
    "prepare_binary_pair",
    "s_measure",
    "summarize",
    "weighted_f_measure",
]

#: MATLAB's ``eps`` (``2.220446049250313e-16``), used to guard divisions.
EPS: float = float(np.spacing(1))

#: Keys of the dictionary returned by :meth:`PolypMetrics.compute`, in order.
METRIC_KEYS: tuple[str, ...] = ("dice", "iou", "s_measure", "mean_e_measure", "weighted_f_measure", "mae")

_NUM_LEVELS = 256  # thresholds / grey levels of the 8-bit toolbox convention


# --------------------------------------------------------------------------- #
# input handling
# --------------------------------------------------------------------------- #
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert ``x`` (numpy array, torch tensor or array-like) to a 2D numpy array.

    Args:
        x: The input.
        name: Name used in error messages (``"pred"`` or ``"gt"``).

    Returns:
        A 2D numpy array (a leading singleton channel is squeezed).

    Raises:
        ValueError: If the input is not 2D (after squeezing) or is empty.
    """
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # float16/bfloat16 have no (exact) numpy counterpart
        x = x.numpy()
    arr = np.asarray(x)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2D array of shape (H, W) or (1, H, W), got an array of shape {tuple(arr.shape)}."
        )
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got an array of shape {tuple(arr.shape)}.")
    return arr


def prepare_binary_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a ``(pred, gt)`` pair.

    Args:
        pred: Probability map with values in ``[0, 1]``, shape ``(H, W)`` or ``(1, H, W)``.
        gt: Binary mask of the same shape.

    Returns:
        ``(pred, gt)`` as a float64 array and a bool array of shape ``(H, W)``.

    Raises:
        ValueError: On non-2D or empty input, mismatched shapes, a non-numeric or
            non-finite ``pred``, ``pred`` values outside ``[0, 1]`` or a
            non-binary ``gt``.
    """
    p = _to_numpy(pred, "pred")
    g = _to_numpy(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"Shape mismatch: pred has shape {p.shape} but gt has shape {g.shape}.")
    if not (np.issubdtype(p.dtype, np.number) or p.dtype == bool):
        raise ValueError(f"pred must be numeric, got dtype {p.dtype}.")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError("pred contains non-finite values (NaN or inf).")
    p_min, p_max = float(p.min()), float(p.max())
    if p_min < 0.0 or p_max > 1.0:
        raise ValueError(f"pred values must lie in [0, 1], got range [{p_min}, {p_max}].")
    if g.dtype != bool:
        if not (np.issubdtype(g.dtype, np.number) and np.all((g == 0) | (g == 1))):
            raise ValueError(
                "gt must be binary (bool or values in {0, 1}); binarise it first "
                "(e.g. gt > 128 for an 8-bit mask)."
            )
        g = g == 1
    return p, g


# --------------------------------------------------------------------------- #
# MAE, Dice, IoU
# --------------------------------------------------------------------------- #
def mae(pred: Any, gt: Any) -> float:
    """Mean absolute error between the probability map and the mask.

    Args:
        pred: Probability map in ``[0, 1]``, shape ``(H, W)`` or ``(1, H, W)``.
        gt: Binary mask of the same shape.

    Returns:
        ``mean(|pred - gt|)`` in ``[0, 1]`` (lower is better).

    Raises:
        ValueError: On invalid input (see module docstring).
    """
    p, g = prepare_binary_pair(pred, gt)
    return float(np.mean(np.abs(p - g)))


def dice_iou(pred: Any, gt: Any, threshold: float = 0.5) -> tuple[float, float]:
    """Binary Dice coefficient and IoU of one image.

    The prediction is binarised as ``pred > threshold``. If both the binarised
    prediction and ``gt`` are empty, both scores are 1.

    Args:
        pred: Probability map in ``[0, 1]``, shape ``(H, W)`` or ``(1, H, W)``.
        gt: Binary mask of the same shape.
        threshold: Binarisation threshold. Defaults to 0.5.

    Returns:
        ``(dice, iou)``, each in ``[0, 1]`` (higher is better).

    Raises:
        ValueError: On invalid input (see module docstring).
    """
    p, g = prepare_binary_pair(pred, gt)
    binary = p > threshold
    tp = int(np.count_nonzero(binary & g))
    n_pred = int(np.count_nonzero(binary))
    n_gt = int(np.count_nonzero(g))
    union = n_pred + n_gt - tp
    if union == 0:
        return 1.0, 1.0
    return 2.0 * tp / (n_pred + n_gt), tp / union


# --------------------------------------------------------------------------- #
# S-measure
# --------------------------------------------------------------------------- #
def _object_similarity(values: np.ndarray) -> float:
    """Object-aware similarity of one region (foreground or inverted background).

    ``2 * mean / (mean**2 + 1 + std + EPS)`` with the unbiased standard deviation
    (0 for a single pixel).
    """
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return 2.0 * mean / (mean * mean + 1.0 + std + EPS)


def _block_ssim(p: np.ndarray, g: np.ndarray) -> float:
    """SSIM-like structural similarity of one quadrant, as in the S-measure paper.

    Returns 0 for an empty block (which always has weight 0).
    """
    n = p.size
    if n == 0:
        return 0.0
    gf = g.astype(np.float64)
    mx, my = float(p.mean()), float(gf.mean())
    dx, dy = p - mx, gf - my
    denom = n - 1 + EPS
    var_x = float(np.sum(dx * dx)) / denom
    var_y = float(np.sum(dy * dy)) / denom
    cov = float(np.sum(dx * dy)) / denom
    num = 4.0 * mx * my * cov
    den = (mx * mx + my * my) * (var_x + var_y)
    if num != 0.0:
        return num / (den + EPS)
    return 1.0 if den == 0.0 else 0.0


def s_measure(pred: Any, gt: Any, alpha: float = 0.5) -> float:
    """Structure measure ``S_alpha`` (Fan et al., ICCV 2017).

    ``S = alpha * S_object + (1 - alpha) * S_region`` (clipped at 0), where the
    object term compares foreground and background distributions and the
    region term is the area-weighted SSIM of the four quadrants split at the
    foreground centroid. Special cases: an all-background ``gt`` gives
    ``1 - mean(pred)`` and an all-foreground ``gt`` gives ``mean(pred)``.

    Args:
        pred: Probability map in ``[0, 1]``, shape ``(H, W)`` or ``(1, H, W)``.
        gt: Binary mask of the same shape.
        alpha: Weight of the object-aware term. Defaults to 0.5.

    Returns:
        S-measure in ``[0, 1]`` (higher is better).

    Raises:
        ValueError: On invalid input (see module docstring).
    """
    p, g = prepare_binary_pair(pred, gt)
    fg_ratio = float(np.mean(g))
    if fg_ratio == 0.0:
        return float(1.0 - np.mean(p))
    if fg_ratio == 1.0:
        return float(np.mean(p))

    # object-aware term: foreground similarity of pred, background similarity of 1 - pred
    s_obj = fg_ratio * _object_similarity(p[g]) + (1.0 - fg_ratio) * _object_similarity(1.0 - p[~g])

    # region-aware term: split at the (rounded) centroid; the +1 reproduces MATLAB's 1-based ``1:X``
    h, w = g.shape
    rows, cols = np.nonzero(g)
    cy = int(np.round(rows.mean())) + 1
    cx = int(np.round(cols.mean())) + 1
    area = float(h * w)
    s_reg = 0.0
    for rs, ry in ((slice(0, cy), cy), (slice(cy, h), h - cy)):
        for cs, rx in ((slice(0, cx), cx), (slice(cx, w), w - cx)):
            weight = ry * rx / area
            if weight > 0:
                s_reg += weight * _block_ssim(p[rs, cs], g[rs, cs])

    return float(max(0.0, alpha * s_obj + (1.0 - alpha) * s_reg))


# --------------------------------------------------------------------------- #
# E-measure
# --------------------------------------------------------------------------- #
def _enhanced_alignment_sum(
    n_fg_fg: np.ndarray, n_fg_bg: np.ndarray, n_gt_fg: int, n_total: int
) -> np.ndarray:
    """Sum of the enhanced alignment matrix of binary maps, from pixel counts.

    For a binary foreground map ``FM`` and binary ``GT`` every pixel falls into
    one of four (FM, GT) classes, and the enhanced alignment value only depends
    on the class, so the sum is a count-weighted sum of four values.

    Args:
        n_fg_fg: Predicted-foreground pixels inside gt (one entry per threshold).
        n_fg_bg: Predicted-foreground pixels outside gt (one entry per threshold).
        n_gt_fg: Number of gt foreground pixels.
        n_total: Number of pixels.

    Returns:
        The sum of the enhanced alignment matrix, one entry per threshold.
    """
    n_fg_fg = np.asarray(n_fg_fg, dtype=np.float64)
    n_fg_bg = np.asarray(n_fg_bg, dtype=np.float64)
    n_pred_fg = n_fg_fg + n_fg_bg
    if n_gt_fg == 0:  # enhanced matrix is 1 - FM
        return n_total - n_pred_fg
    if n_gt_fg == n_total:  # enhanced matrix is FM
        return n_pred_fg

    mu_pred = n_pred_fg / n_total  # mean of the binary map (per threshold)
    mu_gt = n_gt_fg / n_total
    n_bg_fg = n_gt_fg - n_fg_fg  # predicted background inside gt
    n_bg_bg = (n_total - n_gt_fg) - n_fg_bg  # predicted background outside gt

    def enhanced(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
        align = 2.0 * a * b / (a * a + b * b + EPS)
        return (align + 1.0) ** 2 / 4.0

    # (bias-corrected FM value, bias-corrected GT value) for each class
    total = n_fg_fg * enhanced(1.0 - mu_pred, 1.0 - mu_gt)
    total = total + n_fg_bg * enhanced(1.0 - mu_pred, -mu_gt)
    total = total + n_bg_fg * enhanced(-mu_pred, 1.0 - mu_gt)
    total = total + n_bg_bg * enhanced(-mu_pred, -mu_gt)
    return total


def e_measure_curve(pred: Any, gt: Any) -> np.ndarray:
    """E-measure of the binarised prediction for each of the 256 thresholds.

    The prediction is quantised to ``q = floor(255 * pred)`` and binarised as
    ``q >= t``; entry ``t`` of the result is the E-measure of that binary map
    (enhanced alignment sum divided by ``H * W - 1``, as in the toolbox). This
    is the curve of ``pysodmetrics.Emeasure`` in ascending threshold order
    (``pysodmetrics`` stores it from ``t = 255`` down to ``t = 0``).

    Args:
        pred: Probability map in ``[0, 1]``, shape ``(H, W)`` or ``(1, H, W)``.
        gt: Binary mask of the same shape.

    Returns:
        Float64 array of shape ``(256,)``; entry ``t`` is for threshold ``t / 255``.

    Raises:
        ValueError: On invalid input (see module docstring).
    """
    p, g = prepare_binary_pair(pred, gt)
    q = np.floor(p * 255.0).astype(np.int64)  # == (p * 255).astype(np.uint8) for p in [0, 1]
    hist_in = np.bincount(q[g], minlength=_NUM_LEVELS)
    hist_out = np.bincount(q[~g], minlength=_NUM_LEVELS)
    # number of pixels with q >= t, for t = 0..255 (reverse cumulative sums)
    n_fg_fg = np.cumsum(hist_in[::-1])[::-1]
    n_fg_bg = np.cumsum(hist_out[::-1])[::-1]
    n_total = int(g.size)
    sums = _enhanced_alignment_sum(n_fg_fg, n_fg_bg, int(np.count_nonzero(g)), n_total)
    return sums / (n_total - 1 + EPS)


def e_measure(pred: Any, gt: Any) -> float:
    """Mean enhanced-alignment measure ``mean E_phi`` (Fan et al., IJCAI 2018).

    The mean over the 256 thresholds of :func:`e_measure_curve` -- the
    "mean E-measure" of the toolbox and of ``pysodmetrics``. Note that a perfect
    binary prediction scores ``(255.25 / 256) * N / (N - 1)`` (about 0.997),
    because threshold 0 marks every pixel as foreground.

    Args:
        pred: Probability map in ``[0, 1]``, shape ``(H, W)`` or ``(1, H, W)``.
        gt: Binary mask of the same shape.

    Returns:
        Mean E-measure, about in ``[0, 1]`` (higher is better).

    Raises:
        ValueError: On invalid input (see module docstring).
    """
    return float(np.mean(e_measure_curve(pred, gt)))


# --------------------------------------------------------------------------- #
# weighted F-measure
# --------------------------------------------------------------------------- #
def _gaussian_kernel(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """Normalised 2D Gaussian kernel, as MATLAB's ``fspecial('gaussian', size, sigma)``."""
    r = (size - 1) / 2.0
    ax = np.arange(-r, r + 1)
    k = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2.0 * sigma * sigma))
    k[k < np.finfo(k.dtype).eps * k.max()] = 0.0
    return k / k.sum()


def weighted_f_measure(pred: Any, gt: Any, beta2: float = 1.0) -> float:
    """Weighted F-measure ``F^w_beta`` (Margolin et al., CVPR 2014).

    Follows the authors' MATLAB code: background errors are taken from the
    nearest foreground pixel (Euclidean distance transform), foreground errors
    are smoothed by a 7x7 Gaussian with sigma 5 (zero padding) where that
    lowers them, and background errors are weighted by
    ``2 - exp(log(0.5) / 5 * distance)``. An all-background ``gt`` scores 0.

    Args:
        pred: Probability map in ``[0, 1]``, shape ``(H, W)`` or ``(1, H, W)``.
        gt: Binary mask of the same shape.
        beta2: ``beta ** 2``, the weight of recall relative to precision. Defaults to 1.

    Returns:
        Weighted F-measure in ``[0, 1]`` (higher is better).

    Raises:
        ValueError: On invalid input (see module docstring).
    """
    p, g = prepare_binary_pair(pred, gt)
    if not g.any():
        return 0.0

    # distance of every pixel to the nearest foreground pixel, and that pixel's index
    dist, (iy, ix) = ndimage.distance_transform_edt(~g, return_indices=True)

    err = np.abs(p - g)
    # pixel dependency: background pixels take the error of their nearest foreground pixel
    err_t = np.where(g, err, err[iy, ix])
    err_a = ndimage.correlate(err_t, _gaussian_kernel(7, 5.0), mode="constant", cval=0.0)
    err_min = np.where(g & (err_a < err), err_a, err)
    # pixel importance: background errors grow with the distance to the foreground
    importance = np.where(g, 1.0, 2.0 - np.exp(np.log(0.5) / 5.0 * dist))
    err_w = err_min * importance

    tp_w = np.count_nonzero(g) - np.sum(err_w[g])
    fp_w = np.sum(err_w[~g])
    recall = 1.0 - np.mean(err_w[g])
    precision = tp_w / (tp_w + fp_w + EPS)
    return float((1.0 + beta2) * recall * precision / (recall + beta2 * precision + EPS))


# --------------------------------------------------------------------------- #
# aggregation helpers
# --------------------------------------------------------------------------- #
class PolypMetrics:
    """Compute all per-image polyp metrics at once.

    Args:
        threshold: Binarisation threshold for Dice / IoU (``pred > threshold``). Defaults to 0.5.
        alpha: Object/region balance of the S-measure. Defaults to 0.5.
        beta2: ``beta ** 2`` of the weighted F-measure. Defaults to 1.

    Example:
        >>> import numpy as np
        >>> gt = np.zeros((32, 32), dtype=bool); gt[8:24, 8:24] = True
        >>> pm = PolypMetrics()
        >>> rows = [pm.compute(gt * 0.9, gt), pm.compute(gt * 0.7, gt)]
        >>> summary = summarize(rows)
        >>> sorted(summary) == sorted(METRIC_KEYS)
        True
    """

    def __init__(self, threshold: float = 0.5, alpha: float = 0.5, beta2: float = 1.0) -> None:
        self.threshold = threshold
        self.alpha = alpha
        self.beta2 = beta2

    def compute(self, pred: Any, gt: Any) -> dict[str, float]:
        """Compute every metric for one image.

        Args:
            pred: Probability map in ``[0, 1]``, shape ``(H, W)`` or ``(1, H, W)``.
            gt: Binary mask of the same shape.

        Returns:
            ``{"dice", "iou", "s_measure", "mean_e_measure", "weighted_f_measure", "mae"}``
            mapped to Python floats (see :data:`METRIC_KEYS`).

        Raises:
            ValueError: On invalid input (see module docstring).
        """
        p, g = prepare_binary_pair(pred, gt)  # validate/convert once; the metrics accept the result as is
        dice, iou = dice_iou(p, g, threshold=self.threshold)
        return {
            "dice": dice,
            "iou": iou,
            "s_measure": s_measure(p, g, alpha=self.alpha),
            "mean_e_measure": e_measure(p, g),
            "weighted_f_measure": weighted_f_measure(p, g, beta2=self.beta2),
            "mae": mae(p, g),
        }

    __call__ = compute


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Average per-image metric dictionaries (e.g. from :meth:`PolypMetrics.compute`).

    Every numeric value (not ``bool``) is averaged over the rows that contain
    its key; other values (such as an image name) are ignored. Keys keep the
    order in which they first appear.

    Args:
        rows: Per-image metric dictionaries.

    Returns:
        Mapping from metric name to its mean over the images.

    Raises:
        ValueError: If ``rows`` is empty.
    """
    if len(rows) == 0:
        raise ValueError("summarize() needs at least one row of metrics.")
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
                continue
            values.setdefault(key, []).append(float(value))
    return {key: float(np.mean(vals)) for key, vals in values.items()}

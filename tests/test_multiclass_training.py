"""Multi-class training of TransFuse (3 classes, softmax) with TransFuseLoss ("dicece" and "structure") on generated
images: the loss falls and the per-class Dice of SegmentationMetrics on the training images rises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transfuse_monai.losses import TransFuseLoss
from transfuse_monai.metrics import SegmentationMetrics
from transfuse_monai.networks.nets import TransFuse

CLASS_NAMES = ("background", "disc", "square")
SIZE = 64
ITERATIONS = 12


def _make_data(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey ``SIZE``-square images with a bright disc (class 1) on the left and a mid-grey square (class 2) on the
    right, random sizes and positions, Gaussian noise; labels are class-index maps ``(n, 1, SIZE, SIZE)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, labels = [], []
    for _ in range(n):
        label = np.zeros((SIZE, SIZE), dtype=np.int64)
        r = int(rng.integers(9, 13))
        cy, cx = rng.integers(r + 2, SIZE - r - 2), rng.integers(r + 2, SIZE // 2 - 1)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        s = int(rng.integers(14, 20))
        y0, x0 = rng.integers(2, SIZE - s - 2), rng.integers(SIZE // 2 + 1, SIZE - s - 1)
        label[y0 : y0 + s, x0 : x0 + s] = 2
        image = np.choose(label, [0.1, 0.9, 0.5]) + rng.normal(0.0, 0.05, label.shape)
        images.append(image[None].astype(np.float32))
        labels.append(label[None].astype(np.float32))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def _per_class_dice(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean over the images of the per-class Dice, in eval mode (softmax, argmax in the metric).

    BatchNorm running statistics lag far behind the weights after a few dozen steps from scratch, so they are first
    recomputed on the training images (``torch.optim.swa_utils.update_bn``, as after SWA); this changes no weight."""
    torch.optim.swa_utils.update_bn([images], net)
    net.eval()
    with torch.no_grad():
        probs = torch.softmax(net(images), dim=1)
    net.train()
    metric = SegmentationMetrics(CLASS_NAMES, activation="softmax", metrics=("dice",))
    rows = [metric(p, y) for p, y in zip(probs, labels)]
    return {c: float(np.mean([r[f"dice_{c}"] for r in rows])) for c in CLASS_NAMES[1:]}


@pytest.mark.parametrize("loss_name", ["dicece", "structure"])
def test_multiclass_training_learns(loss_name, two_threads):
    images, labels = _make_data()
    torch.manual_seed(0)
    # a small TransFuse (ResNet-18 + ViT-Tiny, 2 blocks) keeps the test fast on two CPU cores; dropout off, so that
    # the few steps fit the training images
    net = TransFuse(
        in_channels=1, out_channels=3, img_size=(SIZE, SIZE), cnn_name="resnet18", vit_name="vit_tiny_patch16_224",
        depth=2, dropout=0.0, pretrained=False,
    )
    loss_fn = TransFuseLoss(loss_name, activation="softmax", num_classes=3)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = _per_class_dice(net, images, labels)

    losses = []
    net.train()
    for _ in range(ITERATIONS):
        heads = net(images)
        assert heads.shape == (4, 3, 3, SIZE, SIZE)  # deep supervision: (B, heads, classes, H, W)
        loss = loss_fn(heads, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    after = _per_class_dice(net, images, labels)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    assert all(after[c] > 0.8 for c in CLASS_NAMES[1:]), (before, after)
    assert all(after[c] > before[c] + 0.3 for c in CLASS_NAMES[1:]), (before, after)

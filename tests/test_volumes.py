"""3D volumes through the 2D TransFuse: class-balanced 2D / 2.5D training samples from a volume
(transfuse_monai.transforms.slices) and slice-by-slice inference inverted onto the input's grid
(transfuse_monai.inferers.slice_inferer), on small generated NIfTI volumes with an oblique, non-RAS affine."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn

from monai.data import decollate_batch, list_data_collate
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandCropByLabelClassesd,
    Resized,
    SaveImaged,
    SqueezeDimd,
)

from transfuse_monai.inferers import VolumeSliceInferer, slice_inferer
from transfuse_monai.networks.nets import TransFuse
from transfuse_monai.transforms.slices import StackSliceNeighbours, StackSliceNeighboursd, stack_slice_neighbours

IN_PLANE = (40, 48)  # after reorientation to RAS
SIZE = (32, 32)  # network input: every slice resized in-plane
RATIOS = [1, 2, 3]  # background, class 1 (PZ), class 2 (TZ)


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Tiny CPU models: one intra-op thread (see conftest)."""


def _affine() -> np.ndarray:
    """Oblique and not RAS: the voxel axes are (slice, x, y) = S, L, P (axcodes ('S', 'L', 'P')), spacing 3.6 between
    slices and 0.6 in-plane, rotated 10 degrees about z and 5 about x; reorientation to RAS moves the slices last."""
    def rot(axis: int, degrees: float) -> np.ndarray:
        a, (i, j) = np.deg2rad(degrees), [(1, 2), (0, 2), (0, 1)][axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        return r

    columns = np.array([[0.0, -0.6, 0.0], [0.0, 0.0, -0.6], [3.6, 0.0, 0.0]])  # voxel axis -> world (RAS) direction
    affine = np.eye(4)
    affine[:3, :3] = rot(2, 10) @ rot(0, 5) @ columns
    affine[:3, 3] = (12.0, -30.0, 40.0)
    return affine


def _write_case(folder: Path, n_slices: int, seed: int) -> tuple[Path, Path]:
    """A 2-channel 4D NIfTI (as MSD Task05: channels last) and its 0/1/2 label; voxel order (slice, x, y)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((n_slices, *IN_PLANE), np.uint8)
    label[1:4, 5:20, 8:30] = 1  # class 1 on slices 1-3
    label[2:5, 22:35, 25:44] = 2  # class 2 on slices 2-4 (the first slice and the last have background only)
    t2 = 50.0 + 100.0 * label + rng.normal(0.0, 2.0, label.shape)  # brightness tells the class
    adc = 20.0 + rng.uniform(0.0, 10.0, label.shape) + np.arange(n_slices)[:, None, None]
    image = np.stack([t2, adc], axis=-1).astype(np.float32)
    image_path, label_path = folder / f"case{n_slices}.nii.gz", folder / f"case{n_slices}_label.nii.gz"
    nib.save(nib.Nifti1Image(image, _affine()), image_path)
    nib.save(nib.Nifti1Image(label, _affine()), label_path)
    return image_path, label_path


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[int, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("volumes")
    return {n: _write_case(folder, n, seed=n) for n in (6, 9)}


def _loader(keys=("image", "label")) -> list:
    return [LoadImaged(list(keys)), EnsureChannelFirstd(list(keys)), Orientationd(list(keys), axcodes="RAS")]


def test_generated_volume_is_oblique_and_not_ras(cases):
    image_path, _ = cases[6]
    img = nib.load(image_path)
    assert nib.aff2axcodes(img.affine) == ("S", "L", "P") and img.shape == (6, 40, 48, 2)
    oriented = Compose(_loader(["image"]))({"image": image_path})["image"]
    assert oriented.shape == (2, *IN_PLANE, 6)


# ---------------------------------------------------------------------------------------------------------------------
# training: class-balanced 2D and 2.5D samples
# ---------------------------------------------------------------------------------------------------------------------


def _slice_of(sample: torch.Tensor, volume: torch.Tensor) -> int:
    """Index of the slice of ``volume`` (C, H, W, D) that equals ``sample`` (C, H, W)."""
    matches = [z for z in range(volume.shape[-1]) if torch.equal(volume[..., z], sample)]
    assert len(matches) == 1, f"the sample matches slices {matches}"
    return matches[0]


@pytest.mark.parametrize("context", [0, 1])
def test_training_samples_are_2d_class_balanced_and_stack_the_right_neighbours(cases, context):
    image_path, label_path = cases[6]
    volume = Compose(_loader())({"image": image_path, "label": label_path})
    img, lbl = volume["image"].as_tensor(), volume["label"].as_tensor()
    n, k = 400, 2 * context + 1
    sampler = Compose([
        *_loader(),
        StackSliceNeighboursd("image", context=context),
        RandCropByLabelClassesd(["image", "label"], "label", spatial_size=(-1, -1, 1), ratios=RATIOS, num_classes=3,
                                num_samples=n),
        SqueezeDimd(["image", "label"], dim=3),
    ]).set_random_state(seed=0)
    samples = sampler({"image": image_path, "label": label_path})
    assert len(samples) == n
    picked = []
    for s in samples:
        assert s["image"].shape == (2 * k, *IN_PLANE) and s["label"].shape == (1, *IN_PLANE)
        z = _slice_of(s["image"][context::k], img)  # channel c * k + context is the slice itself
        assert torch.equal(s["label"].as_tensor(), lbl[..., z])
        for j in range(k):  # neighbours, channel-major; the first and last slices repeat at the border ("edge")
            neighbour = min(max(z + j - context, 0), img.shape[-1] - 1)
            assert torch.equal(s["image"][j::k].as_tensor(), img[..., neighbour])
        picked.append(z)
    # a class c is drawn with probability ratio_c / sum(ratios), then one of its voxels uniformly
    counts = torch.stack([(lbl == c).sum(dim=(0, 1, 2)).double() for c in range(3)])  # (class, slice)
    expected = (torch.tensor(RATIOS, dtype=torch.float64)[:, None] * counts / counts.sum(1, keepdim=True)).sum(0)
    expected /= sum(RATIOS)
    observed = torch.bincount(torch.tensor(picked), minlength=6).double() / n
    assert (observed - expected).abs().max() < 0.06, (observed, expected)
    with_foreground = (counts[1:].sum(0) > 0).double()
    assert abs((observed * with_foreground).sum() - (expected * with_foreground).sum()) < 0.04
    assert (expected * with_foreground).sum() > 5 / 6, "the ratios favour the foreground slices"


def test_stacking_at_the_borders_and_along_other_axes():
    vol = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    zeros = stack_slice_neighbours(vol, 2, mode="constant")
    assert zeros.shape == (10, 3, 4, 5)
    assert torch.equal(zeros[0, ..., :2], torch.zeros(3, 4, 2)) and torch.equal(zeros[0, ..., 2:], vol[0, ..., :3])
    assert torch.equal(zeros[7], vol[1]) and torch.equal(zeros[9, ..., :3], vol[1, ..., 2:])
    along_h = stack_slice_neighbours(vol, 1, slice_dim=0)  # slices along H
    assert along_h.shape == (6, 3, 4, 5)
    assert torch.equal(along_h[3:6, 1], vol[1, 0:3]) and torch.equal(along_h[0, 0], vol[0, 0])
    assert stack_slice_neighbours(vol, 0) is vol
    assert StackSliceNeighbours(1)(vol.numpy()).shape == (6, 3, 4, 5)


@pytest.mark.parametrize(
    "kwargs, shape, match",
    [({"context": 1}, (3, 4, 5), "channel-first volume"), ({"context": 1}, (1, 2, 3, 4, 5), "channel-first volume"),
     ({"context": -1}, (1, 2, 3, 4), "non-negative integer"), ({"context": 1.5}, (1, 2, 3, 4), "non-negative integer"),
     ({"context": 1, "slice_dim": 3}, (1, 2, 3, 4), "0, 1 or 2"),
     ({"context": 1, "mode": "reflect"}, (1, 2, 3, 4), "one of")],
)
def test_stacking_errors_name_the_problem(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        stack_slice_neighbours(torch.zeros(shape), **kwargs)
    if len(shape) == 4:
        with pytest.raises(ValueError, match=match):
            StackSliceNeighboursd("image", **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# inference: slice by slice, inverted onto the input's grid
# ---------------------------------------------------------------------------------------------------------------------


def _preprocessing(context: int, keys=("image",)) -> Compose:
    steps = [
        *_loader(keys),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        Resized(list(keys), spatial_size=(*SIZE, -1), mode=["bilinear", "nearest"][: len(keys)]),
    ]
    if context:
        steps.append(StackSliceNeighboursd("image", context=context))
    return Compose(steps)


def _postprocessing(pre: Compose, output_dir: Path) -> Compose:
    return Compose([
        Activationsd("pred", softmax=True),
        AsDiscreted("pred", argmax=True),
        Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True),
        SaveImaged("pred", output_dir=output_dir, output_postfix="seg", separate_folder=False, output_dtype=np.uint8,
                   print_log=False),
    ])


def _infer(image_path: Path, net, pre: Compose, inferer, output_dir: Path | None = None):
    """The engine's flow: pre-process, collate, infer, decollate, post-process (invert and save)."""
    batch = list_data_collate([pre({"image": image_path})])
    with torch.no_grad():
        batch["pred"] = inferer(batch["image"], net)
    item = decollate_batch(batch)[0]
    if output_dir is not None:
        item = _postprocessing(pre, output_dir)(item)
    return batch, item


@pytest.fixture(scope="module")
def nets() -> dict[int, TransFuse]:
    """Small TransFuse networks (random weights) for 2D slices (2 channels) and 2.5D stacks (3 x 2 channels)."""
    out = {}
    for context in (0, 1):
        torch.manual_seed(context)
        out[context] = TransFuse(in_channels=2 * (2 * context + 1), out_channels=3, img_size=SIZE, cnn_name="resnet18",
                                 vit_name="vit_tiny_patch16_224", depth=2, pretrained=False).eval()
    return out


@pytest.mark.parametrize("context", [0, 1])
@pytest.mark.parametrize("n_slices", [6, 9])
def test_slice_inference_returns_the_input_geometry(cases, nets, tmp_path, context, n_slices):
    image_path, _ = cases[n_slices]
    net = nets[context]
    pre = _preprocessing(context)
    batch, item = _infer(image_path, net, pre, slice_inferer(sw_batch_size=4), tmp_path)
    x, logits = batch["image"].as_tensor(), batch["pred"].as_tensor()
    assert x.shape == (1, 2 * (2 * context + 1), *SIZE, n_slices) and logits.shape == (1, 3, *SIZE, n_slices)
    with torch.no_grad():  # the network on each slice of the (stacked) pre-processed volume
        expected = torch.stack([net(x[..., z]) for z in range(n_slices)], dim=-1)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    # written on the input's grid: read back with nibabel and compared with the input file
    source = nib.load(image_path)
    written = nib.load(tmp_path / f"case{n_slices}_seg.nii.gz")
    assert written.shape == source.shape[:3] == (n_slices, *IN_PLANE)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}


@pytest.mark.parametrize("context", [0, 1])
def test_sw_batch_size_does_not_change_the_result(cases, nets, context):
    image_path, _ = cases[9]
    pre = _preprocessing(context)
    outs = [_infer(image_path, nets[context], pre, slice_inferer(sw_batch_size=b))[0]["pred"] for b in (1, 4, 16)]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-5, rtol=0)


class _Oracle(nn.Module):
    """A 2D "network" that segments by brightness of the first channel: logits -|x - level_k| for class k."""

    def __init__(self, levels: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("levels", levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 4, "slices reach the network as (B, C, H, W)"
        return -(x[:, :1] - self.levels[None, :, None, None]).abs()


def test_inverted_prediction_lands_on_the_right_voxels(cases, tmp_path):
    """A wrong flip, transpose or slice order in the inversion would move the asymmetric classes: compare with the
    label file voxel by voxel (the in-plane resize to 32x32 and back loses a little at the edges)."""
    image_path, label_path = cases[6]
    pre_with_label = _preprocessing(0, keys=("image", "label"))
    data = pre_with_label({"image": image_path, "label": label_path})
    levels = torch.stack([data["image"][0][data["label"][0] == c].median() for c in range(3)])
    _infer(image_path, _Oracle(levels), _preprocessing(0), slice_inferer(sw_batch_size=3), tmp_path)
    written = np.asarray(nib.load(tmp_path / "case6_seg.nii.gz").dataobj)
    label = np.asarray(nib.load(label_path).dataobj)
    assert written.shape == label.shape
    for c in (1, 2):
        dice = 2 * np.sum((written == c) & (label == c)) / (np.sum(written == c) + np.sum(label == c))
        assert dice > 0.85, (c, dice)  # about 0.93 and 0.97; a flipped axis gives about 0.5
    assert np.mean(written == label) > 0.95


def test_training_mode_and_bad_inputs_are_refused(nets):
    net = nets[0]
    volume = torch.randn(1, 2, *SIZE, 3)
    net.train()
    try:
        with pytest.raises(ValueError, match=r"\(3, 3, 3, 32, 32\).*network.eval\(\)"):
            slice_inferer(sw_batch_size=3)(volume, net)
    finally:
        net.eval()
    with pytest.raises(ValueError, match=r"batched volumes \(B, C, H, W, D\), got \(2, 32, 32, 3\)"):
        slice_inferer()(volume[0], net)
    with pytest.raises(ValueError, match="roi_size must be the 2D size"):
        slice_inferer(roi_size=(32, 32, 1))
    with pytest.raises(ValueError, match="spatial_dim must be 0, 1 or 2"):
        VolumeSliceInferer(spatial_dim=3, roi_size=(32, 32))
    with pytest.raises(ValueError, match="sw_batch_size must be a positive integer"):
        slice_inferer(sw_batch_size=0)


def test_slice_inferer_options_reach_the_wrapped_inferers():
    inferer = slice_inferer(roi_size=(320, 320), sw_batch_size=8, spatial_dim=1, amp=True, dtype="bfloat16",
                            channels_last=True, overlap=0.5)
    inner = inferer.inferer
    assert isinstance(inner, VolumeSliceInferer) and inner.spatial_dim == 1 and inner.sw_batch_size == 8
    assert tuple(inner.orig_roi_size) == (320, 320) and inner.overlap == 0.5
    assert inferer.enabled and inferer.dtype == torch.bfloat16 and inferer.channels_last

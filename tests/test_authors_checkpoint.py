"""Tests for transfuse_monai.networks.nets.convert_authors_state_dict (authors' TransFuse_S checkpoints).

The checkpoints are produced by ``authors_reference.AuthorsTransFuseS``, an independent re-implementation with the
authors' state-dict layout. When ``TRANSFUSE_AUTHORS_REPO`` points to a checkout of github.com/Rayicer/TransFuse,
the authors' own ``TransFuse_S`` is checked as well.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_reference import AuthorsTransFuseS  # noqa: E402

from transfuse_monai.networks.nets import TransFuse, convert_authors_state_dict  # noqa: E402

AUTHORS_REPO_ENV = "TRANSFUSE_AUTHORS_REPO"
IMG_SIZE = (192, 256)  # the authors' TransFuse_S input size (12x16 token grid)
ATOL = 1e-4


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Give ``model`` a trained-looking state: random conv biases and batch-norm affine parameters, then running
    batch-norm statistics from train-mode forwards (so every conv bias also sits in a running mean, which the
    converter must fold for the bias-free convolutions). Returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.2, 0.2, generator=gen)
        for head in (model.final_x, model.final_1, model.final_2):
            head[-1].conv.weight.mul_(0.1)  # logit-scale outputs (|y| of a few units) for an absolute tolerance
        for m in norms:
            m.weight.uniform_(0.8, 1.2, generator=gen)
            m.bias.uniform_(-0.1, 0.1, generator=gen)
            m.momentum = None  # cumulative averages: statistics that fit the random weights
        model.train()
        for _ in range(2):
            model(torch.randn(2, 3, *IMG_SIZE, generator=gen))
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def _ours(sd: dict, align_corners: bool, img_size=IMG_SIZE, **kwargs) -> TransFuse:
    model = TransFuse(variant="S", img_size=img_size, out_channels=1, align_corners=align_corners, **kwargs)
    model.load_state_dict(convert_authors_state_dict(sd, img_size=img_size), strict=True)
    return model.eval()


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint in the authors' format: ``torch.save(model.state_dict(), path)`` as their train script does."""
    torch.manual_seed(0)
    ref = _randomise(AuthorsTransFuseS(num_classes=1), seed=1)
    path = tmp_path_factory.mktemp("authors") / "TransFuse-best.pth"
    torch.save(ref.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def authors_sd(checkpoint) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, *IMG_SIZE, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("align_corners", [True, False])
def test_checkpoint_matches_reference(checkpoint, images, align_corners):
    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ref = AuthorsTransFuseS(num_classes=1, align_corners=align_corners)
    ref.load_state_dict(sd, strict=True)
    ref.eval()
    ours = _ours(sd, align_corners)
    with torch.no_grad():
        expected = ref(images)[2]
        got = ours(images)
    assert got.shape == (2, 1, *IMG_SIZE)
    assert expected.abs().max() > 0.5 and expected.std() > 0.05  # a non-trivial function is compared
    assert _max_err(got, expected) < ATOL


def test_checkpoint_auxiliary_heads(authors_sd, images):
    """The deep-supervision outputs map onto the authors' map_1 (transformer) and map_x (deepest fusion)."""
    ref = AuthorsTransFuseS(num_classes=1)
    ref.load_state_dict(authors_sd, strict=True)
    ref.eval()
    ours = _ours(authors_sd, True, dropout=0.0)
    ours.train()  # deep supervision; batch norms kept on their running statistics
    for m in ours.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    with torch.no_grad():
        map_x, map_1, map_2 = ref(images)
        got = ours(images)
    assert got.shape == (2, 3, 1, *IMG_SIZE)
    for i, expected in enumerate((map_2, map_1, map_x)):
        assert _max_err(got[:, i], expected) < ATOL, i


def test_wrapped_and_data_parallel_checkpoint(authors_sd):
    plain = convert_authors_state_dict(authors_sd)
    wrapped = convert_authors_state_dict({"state_dict": {f"module.{k}": v for k, v in authors_sd.items()}})
    assert plain.keys() == wrapped.keys()
    assert all(torch.equal(plain[k], wrapped[k]) for k in plain)
    # removed stages / unused tensors of the authors' model are dropped, not rejected
    extra = dict(authors_sd)
    extra["resnet.fc.weight"] = torch.zeros(1000, 512)
    extra["transformer.head.weight"] = torch.zeros(1000, 384)
    assert convert_authors_state_dict(extra).keys() == plain.keys()


def test_unknown_keys_rejected(authors_sd):
    bad = dict(authors_sd)
    bad["decoder.extra.weight"] = torch.zeros(1)
    bad["transformer.dist_head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"decoder\.extra\.weight") as err:
        convert_authors_state_dict(bad)
    assert "transformer.dist_head.weight" in str(err.value)
    bad = dict(authors_sd)
    bad["up_c.fc3.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"up_c\.fc3\.weight"):
        convert_authors_state_dict(bad)


def test_pos_embed_resampled_for_other_size(authors_sd):
    img_size = (352, 352)
    converted = convert_authors_state_dict(authors_sd, img_size=img_size)
    assert converted["transformer.pos_embed"].shape == (1, 22 * 22, 384)
    same = convert_authors_state_dict(authors_sd)
    assert same["transformer.pos_embed"].shape == (1, 12 * 16, 384)
    assert all(torch.equal(converted[k], same[k]) for k in same if k != "transformer.pos_embed")
    model = TransFuse(variant="S", img_size=img_size, out_channels=1).eval()
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *img_size))
    assert out.shape == (1, 1, *img_size)
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------------------------
# optional: the authors' own implementation


def _import_authors_module(repo: str):
    """Import ``lib.TransFuse`` from the authors' checkout. Their modules re-register timm model names (e.g.
    ``deit_small_patch16_224``) with incompatible entrypoints, so timm's registry is restored afterwards."""
    import timm.models._registry as registry

    saved = {
        k: copy.deepcopy(v) for k, v in vars(registry).items() if k.startswith("_model") or k.startswith("_module")
    }
    saved_modules = set(sys.modules)
    sys.path.insert(0, repo)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module("lib.TransFuse")
    finally:
        sys.path.remove(repo)
        for k, v in saved.items():
            setattr(registry, k, v)
        for name in set(sys.modules) - saved_modules:  # the generic "lib" package name must not leak
            if name == "lib" or name.startswith("lib."):
                del sys.modules[name]
    return module


class _HeadResizeFunctional:
    """Stands in for ``torch.nn.functional`` inside the authors' module: its only ``F.interpolate`` calls are the
    heads' final resizes (the decoders use ``nn.Upsample``), whose ``align_corners`` is overridden."""

    def __init__(self, align_corners: bool):
        self._align_corners = align_corners

    def __getattr__(self, name):
        return getattr(F, name)

    def interpolate(self, *args, **kwargs):
        kwargs["align_corners"] = self._align_corners
        return F.interpolate(*args, **kwargs)


@pytest.fixture(scope="module")
def authors_module():
    repo = os.environ.get(AUTHORS_REPO_ENV)
    if not repo:
        pytest.skip(f"set {AUTHORS_REPO_ENV} to a checkout of github.com/Rayicer/TransFuse")
    if not (Path(repo) / "lib" / "TransFuse.py").is_file():
        pytest.fail(f"{AUTHORS_REPO_ENV}={repo} has no lib/TransFuse.py")
    return _import_authors_module(str(Path(repo).resolve()))


@pytest.fixture(scope="module")
def authors_model(authors_module):
    torch.manual_seed(3)
    model = authors_module.TransFuse_S(num_classes=1, pretrained=False)
    with torch.no_grad():  # their pos_embed starts at zero without the DeiT weights
        model.transformer.pos_embed.normal_(0.0, 0.02)
    return _randomise(model, seed=4)


@pytest.mark.parametrize("align_corners", [True, False])
def test_authors_model(authors_module, authors_model, images, monkeypatch, align_corners):
    monkeypatch.setattr(authors_module, "F", _HeadResizeFunctional(align_corners))
    sd = authors_model.state_dict()
    ours = _ours(sd, align_corners)
    ref = AuthorsTransFuseS(num_classes=1, align_corners=align_corners)
    ref.load_state_dict(sd, strict=True)  # same layout as the stand-in used above
    ref.eval()
    with torch.no_grad():
        expected = authors_model(images)
        got = ours(images)
        mirrored = ref(images)
    assert expected[2].abs().max() > 0.5
    assert _max_err(got, expected[2]) < ATOL
    for a, b in zip(mirrored, expected):
        assert _max_err(a, b) < 1e-5

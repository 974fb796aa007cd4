"""Grey-scale and N-channel inputs with ImageNet backbones: the first convolution of the CNN and the ViT's patch
embedding are adapted from the RGB weights of local ImageNet-format files as timm does for ``in_chans``
(``timm.models.adapt_input_conv``); every other backbone weight is the file's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from transfuse_monai.networks.nets import TransFuse

IMG_SIZE = (64, 64)  # a 4x4 token grid: the file's 14x14 position embedding is resampled by timm when loading


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Tiny CPU inputs: one intra-op thread (see conftest)."""


@pytest.fixture(scope="module")
def imagenet_files(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """ResNet-34 and DeiT-S classification checkpoints in the released formats (random weights): the torchvision /
    timm state dict, and DeiT's ``{"model": state_dict}``. About 87 and 88 MB, written once for the module."""
    folder = tmp_path_factory.mktemp("imagenet")
    torch.manual_seed(0)
    cnn = timm.create_model("resnet34", pretrained=False).state_dict()
    vit = timm.create_model("deit_small_patch16_224", pretrained=False).state_dict()
    torch.save(cnn, folder / "resnet34.pth")
    torch.save({"model": vit}, folder / "deit_small_patch16_224.pth")
    return {"cnn": (folder / "resnet34.pth", cnn), "vit": (folder / "deit_small_patch16_224.pth", vit)}


def _timm_rule(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """timm's documented adaptation of RGB filters, written out: sum over RGB for one channel; otherwise the RGB
    filters repeated up to ``in_chans`` and scaled by ``3 / in_chans``."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_chans / 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (3 / in_chans)


@pytest.mark.parametrize("in_channels", [1, 2, 3])
def test_imagenet_weights_are_adapted_to_the_input_channels(imagenet_files, in_channels):
    (cnn_file, cnn), (vit_file, vit) = imagenet_files["cnn"], imagenet_files["vit"]
    model = TransFuse(in_channels=in_channels, img_size=IMG_SIZE, variant="S", cnn_weights=cnn_file,
                      vit_weights=vit_file).eval()
    first_conv, patch = model.cnn.conv1.weight.detach(), model.transformer.patch_embed.proj.weight.detach()
    assert first_conv.shape == (64, in_channels, 7, 7) and patch.shape == (384, in_channels, 16, 16)
    for ours, rgb in ((first_conv, cnn["conv1.weight"]), (patch, vit["patch_embed.proj.weight"])):
        torch.testing.assert_close(ours, adapt_input_conv(in_channels, rgb), atol=0, rtol=0)
        torch.testing.assert_close(ours, _timm_rule(rgb, in_channels), atol=1e-6, rtol=1e-6)
    if in_channels == 3:
        assert torch.equal(first_conv, cnn["conv1.weight"])

    # every other weight of the CNN (stages up to layer3) and of the kept transformer blocks is the file's
    cnn_state = model.cnn.state_dict()
    assert len(cnn_state) > 100
    for key, value in cnn_state.items():
        if key != "conv1.weight":
            assert torch.equal(value, cnn[key]), key
    vit_state = model.transformer.state_dict()
    assert any(k.startswith("blocks.7.") for k in vit_state) and not any(k.startswith("blocks.8.") for k in vit_state)
    for key, value in vit_state.items():
        if key == "pos_embed":  # class token dropped, 14x14 grid resampled to 4x4 by timm's checkpoint filter
            expected = resample_abs_pos_embed(vit["pos_embed"], [4, 4], num_prefix_tokens=1)[:, 1:]
            torch.testing.assert_close(value, expected, atol=1e-6, rtol=0)
        elif key != "patch_embed.proj.weight":
            assert torch.equal(value, vit[key]), key

    x = torch.randn(2, in_channels, *IMG_SIZE)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 1, *IMG_SIZE) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=f"built for {in_channels} input channels, got {in_channels + 1}"):
        model(torch.randn(1, in_channels + 1, *IMG_SIZE))


@pytest.mark.parametrize("branch, name", [("cnn_weights", "resnet34"), ("vit_weights", "deit_small_patch16_224")])
def test_missing_weight_file_names_the_model_and_the_path(imagenet_files, tmp_path, branch, name):
    others = {"cnn_weights": imagenet_files["cnn"][0], "vit_weights": imagenet_files["vit"][0]}
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=f"timm model '{name}' not found: .*nope.pth"):
        TransFuse(in_channels=1, img_size=IMG_SIZE, **{**others, branch: missing})

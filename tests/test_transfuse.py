"""Tests of the TransFuse network: shapes, presets, ablations, weights loading, scripting and input checks."""

from __future__ import annotations

import pytest
import timm
import torch

from transfuse_monai.networks.blocks import BIFUSION_COMPONENTS, BiFusion
from transfuse_monai.networks.nets import TABLE5_ABLATIONS, TRANSFUSE_PRESETS, TransFuse, pretrained_normalization

AUTHORS_TRANSFUSE_S_PARAMS = 26_248_725  # parameters of the authors' TransFuse_S at 192x256 with one class


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def net_s() -> TransFuse:
    torch.manual_seed(0)
    return TransFuse(in_channels=3, out_channels=1, img_size=(352, 352), variant="S")


@pytest.mark.parametrize("size", [(192, 256), (352, 352), (320, 320), (448, 448)])
def test_output_shapes_one_model_several_sizes(net_s, size):
    x = torch.randn(2, 3, *size)
    net_s.train()
    with torch.no_grad():
        stacked = net_s(x)
    assert stacked.shape == (2, 3, 1, *size)
    net_s.eval()
    with torch.no_grad():
        out = net_s(x)
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_eval_output_is_first_head_of_training_output(net_s):
    """Eval returns the final map; in train mode it is stacked first (dropout is the only train/eval difference)."""
    net_s.eval()
    x = torch.randn(1, 3, 192, 256)
    with torch.no_grad():
        out = net_s(x)
        net_s.deep_supervision = False
        try:
            assert net_s(x).shape == (1, 1, 192, 256)
        finally:
            net_s.deep_supervision = True
    # in train mode with dropout disabled and BN in eval, the first head equals the eval output
    net_s.train()
    for m in net_s.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout, torch.nn.Dropout2d)):
            m.eval()
    with torch.no_grad():
        stacked = net_s(x)
    net_s.eval()
    torch.testing.assert_close(stacked[:, 0], out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stacked[:, 1], stacked[:, 0])


def test_parameter_count_matches_authors_model():
    model = TransFuse(img_size=(192, 256), out_channels=1, variant="S")
    count = n_params(model)
    assert abs(count - AUTHORS_TRANSFUSE_S_PARAMS) / AUTHORS_TRANSFUSE_S_PARAMS < 1e-3, count


def test_channels_in_2_out_3():
    model = TransFuse(in_channels=2, out_channels=3, img_size=(320, 320)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 320, 320)).shape == (1, 3, 320, 320)
    assert model.transformer.patch_embed.proj.in_channels == 2
    assert model.cnn.conv1.in_channels == 2


def test_gradients_reach_both_branches(net_s):
    net_s.train()
    net_s.zero_grad()
    out = net_s(torch.randn(2, 3, 64, 64))
    out.mean().backward()
    grads = {
        "cnn stem": net_s.cnn.conv1.weight.grad,
        "cnn stage 3": net_s.cnn.layer3[0].downsample[0].weight.grad,
        "patch embedding": net_s.transformer.patch_embed.proj.weight.grad,
        "position embedding": net_s.transformer.pos_embed.grad,
        "first transformer block": net_s.transformer.blocks[0].attn.qkv.weight.grad,
        "fusion": net_s.fusion0.residual.conv1.conv.weight.grad,
    }
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reaches the {name}"
    net_s.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "components",
    [(), ("spatial",), ("spatial", "channel"), ("spatial", "channel", "hadamard")],
    ids=["concat+res", "+spatial", "+channel", "+hadamard"],
)
def test_bifusion_ablation_switches(components):
    block = BiFusion(2, cnn_channels=8, transformer_channels=12, out_channels=8, reduction=2, components=components)
    assert (block.hadamard_conv is not None) == ("hadamard" in components)
    assert isinstance(block.spatial_attention, torch.nn.Identity) == ("spatial" not in components)
    assert isinstance(block.channel_attention, torch.nn.Identity) == ("channel" not in components)
    expected_in = 8 + 12 + (8 if "hadamard" in components else 0)
    assert block.residual.norm1.num_features == expected_in
    out = block.eval()(torch.randn(2, 8, 6, 6), torch.randn(2, 12, 6, 6))
    assert out.shape == (2, 8, 6, 6)


def test_ablation_through_the_network_constructor():
    full = TransFuse(img_size=(64, 64), cnn_name="resnet18", bifusion=BIFUSION_COMPONENTS)
    base = TransFuse(img_size=(64, 64), cnn_name="resnet18", bifusion=())
    assert n_params(base) < n_params(full)
    assert base.fusion0.proj_cnn is None and not any(k.startswith("fusion0.proj_cnn") for k in base.state_dict())
    with torch.no_grad():
        assert base.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="Unknown BiFusion component"):
        TransFuse(img_size=(64, 64), bifusion=("spatial", "dot"))


def test_presets_and_overrides():
    assert TRANSFUSE_PRESETS["S"]["depth"] == 8 and TRANSFUSE_PRESETS["L"]["depth"] == 10
    model = TransFuse(img_size=(64, 64), variant="S")
    assert len(model.transformer.blocks) == 8 and model.cnn_name == "resnet34"
    assert model.transformer.embed_dim == 384
    custom = TransFuse(img_size=(64, 96), cnn_name="resnet18", vit_name="vit_tiny_patch16_224", depth=3)
    assert len(custom.transformer.blocks) == 3 and custom.transformer.embed_dim == 192
    assert custom.transformer.pos_embed.shape == (1, 4 * 6, 192)  # no class token, grid of img_size
    with torch.no_grad():
        assert custom.eval()(torch.randn(1, 3, 64, 96)).shape == (1, 1, 64, 96)



@pytest.mark.parametrize("variant", sorted(TRANSFUSE_PRESETS))
def test_pretrained_normalization_is_the_backbones(variant):
    """The input normalisation is the timm ``pretrained_cfg`` of the variant's CNN (the weights ``pretrained`` loads),
    which the preset's transformer shares; one grey channel takes the average (timm sums the colour filters), more
    channels repeat the colours cyclically (as timm repeats the filters)."""
    from timm.models import get_pretrained_cfg

    preset = TRANSFUSE_PRESETS[variant]
    cnn, vit = get_pretrained_cfg(preset["cnn_name"]), get_pretrained_cfg(preset["vit_name"])
    assert (cnn.mean, cnn.std) == (vit.mean, vit.std), "a preset's backbones share their normalisation"
    mean, std = list(cnn.mean), list(cnn.std)
    assert pretrained_normalization(variant, 3) == {"mean": mean, "std": std}
    assert pretrained_normalization(variant, 1) == {"mean": [sum(mean) / 3], "std": [sum(std) / 3]}
    assert pretrained_normalization(variant, 4) == {"mean": mean + mean[:1], "std": std + std[:1]}
    assert pretrained_normalization(variant, 3, cnn_name="resnetv2_50x1_bit")["mean"] == [0.5, 0.5, 0.5]


def test_pretrained_normalization_values_and_errors():
    """TransFuse-S: ImageNet's statistics, exactly the floats the bundles' configs once typed (0.449 / 0.226 grey)."""
    assert pretrained_normalization("S", 3) == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert pretrained_normalization("S", 1) == {"mean": [0.449], "std": [0.226]}
    with pytest.raises(ValueError, match="Unknown TransFuse variant 'XL'"):
        pretrained_normalization("XL")
    with pytest.raises(ValueError, match="in_channels must be positive"):
        pretrained_normalization("S", 0)
    with pytest.raises(ValueError, match="no pretrained config with a per-channel mean and std"):
        pretrained_normalization("S", 3, cnn_name="not_a_timm_model")

@pytest.mark.parametrize("variant,cnn_channels,embed_dim,depth", [("L", 1024, 768, 10), ("L*", 1024, 768, 12)])
def test_large_variants_build(variant, cnn_channels, embed_dim, depth):
    model = TransFuse(img_size=(64, 64), variant=variant, dropout=0.0)
    assert model.feature_channels[0] == cnn_channels
    assert model.transformer.embed_dim == embed_dim and len(model.transformer.blocks) == depth
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_local_weight_files_are_loaded(tmp_path):
    torch.manual_seed(1)
    cnn = timm.create_model("resnet18")
    vit = timm.create_model("vit_tiny_patch16_224")
    cnn_file, vit_file = tmp_path / "resnet18.pth", tmp_path / "vit_tiny.pth"
    torch.save(cnn.state_dict(), cnn_file)
    torch.save({"model": vit.state_dict()}, vit_file)  # the DeiT release format wraps the state dict
    model = TransFuse(
        img_size=(224, 224), cnn_name="resnet18", vit_name="vit_tiny_patch16_224", depth=4,
        cnn_weights=str(cnn_file), vit_weights=vit_file,
    )
    torch.testing.assert_close(model.cnn.conv1.weight, cnn.conv1.weight)
    torch.testing.assert_close(model.cnn.layer3[1].conv2.weight, cnn.layer3[1].conv2.weight)
    torch.testing.assert_close(model.transformer.blocks[3].mlp.fc2.weight, vit.blocks[3].mlp.fc2.weight)
    torch.testing.assert_close(model.transformer.pos_embed, vit.pos_embed[:, 1:])  # class token dropped
    # another input size: the position embedding is resampled from the checkpoint's 14x14 grid
    small = TransFuse(img_size=(64, 96), cnn_name="resnet18", vit_name="vit_tiny_patch16_224", depth=4,
                      vit_weights=vit_file)
    assert small.transformer.pos_embed.shape == (1, 24, 192)
    torch.testing.assert_close(small.transformer.patch_embed.proj.weight, vit.patch_embed.proj.weight)


def test_missing_weight_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TransFuse(img_size=(64, 64), cnn_weights=tmp_path / "nope.pth")


def test_pretrained_goes_through_timm_hub(monkeypatch, tmp_path):
    """``pretrained=True`` resolves timm's default pretrained config and loads through timm's hub loader."""
    import timm.models._builder as builder

    calls = []
    real_load = builder.load_pretrained

    def spy(model, pretrained_cfg=None, *args, **kwargs):
        calls.append(pretrained_cfg)
        src = {"resnet18": timm.create_model("resnet18"),
               "vit_tiny_patch16_224": timm.create_model("vit_tiny_patch16_224")}[pretrained_cfg["architecture"]]
        torch.save(src.state_dict(), tmp_path / "w.pth")
        # same code path as a hub download, from a local copy of the file the hub would serve
        return real_load(model, {**pretrained_cfg, "file": str(tmp_path / "w.pth"), "custom_load": False}, *args, **kwargs)

    monkeypatch.setattr(builder, "load_pretrained", spy)
    from transfuse_monai.networks.blocks import backbones

    # not cached and the hub "reachable": the path a first online run takes (the offline paths have their own tests)
    monkeypatch.setattr(backbones._PretrainedSource, "cached_file", lambda self: None)
    monkeypatch.setattr(backbones._PretrainedSource, "check_reachable", lambda self: None)
    TransFuse(img_size=(64, 64), cnn_name="resnet18", vit_name="vit_tiny_patch16_224", depth=2, pretrained=True)
    archs = sorted(cfg["architecture"] for cfg in calls)
    assert archs == ["resnet18", "vit_tiny_patch16_224"]
    assert all(cfg.get("hf_hub_id") for cfg in calls), "expected timm's hub configuration"


def test_torchscript_matches_eager(net_s):
    net_s.eval()
    scripted = torch.jit.script(net_s)
    x = torch.randn(1, 3, 192, 256)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net_s(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "shape,match",
    [((1, 3, 100, 352), "multiples of 16"), ((1, 3, 352, 350), "multiples of 16"), ((1, 1, 352, 352), "3 input ch"),
     ((3, 352, 352), "dimensions")],
)
def test_bad_input_gives_clear_error(net_s, shape, match):
    net_s.eval()
    with pytest.raises(ValueError, match=match):
        net_s(torch.randn(*shape))


@pytest.mark.parametrize(
    "kwargs,match",
    [({"img_size": (100, 352)}, "multiples of 16"), ({"variant": "XL"}, "Unknown TransFuse variant"),
     ({"spatial_dims": 3}, "2D network"), ({"depth": 20}, "depth must be"), ({"dropout": 1.5}, "dropout")],
)
def test_bad_constructor_arguments(kwargs, match):
    args = {"img_size": (64, 64), **kwargs}
    with pytest.raises(ValueError, match=match):
        TransFuse(**args)


# ---------------------------------------------------------------------------------------------------------------------
# DeviceAwareAttention: timm's attention with the kernel chosen per call
# ---------------------------------------------------------------------------------------------------------------------


def _timm_attention(**kwargs):
    from timm.layers import Attention

    torch.manual_seed(0)
    return Attention(dim=64, num_heads=4, qkv_bias=True, **kwargs).eval()


def test_transformer_blocks_use_device_aware_attention_with_timm_keys(net_s):
    from transfuse_monai.networks.blocks import DeviceAwareAttention

    blocks = net_s.transformer.blocks
    assert all(isinstance(b.attn, DeviceAwareAttention) for b in blocks) and len(blocks) == 8
    timm_keys = {k for k in timm.create_model("deit_small_patch16_224", pretrained=False).state_dict()
                 if k.startswith("blocks.0.attn.")}
    ours = {k.removeprefix("transformer.") for k in net_s.state_dict() if k.startswith("transformer.blocks.0.attn.")}
    assert ours == timm_keys, "checkpoints of timm / the authors must load unchanged"


def test_device_aware_attention_picks_the_kernel_and_matches_timm(monkeypatch):
    import transfuse_monai.networks.blocks.backbones as backbones
    from transfuse_monai.networks.blocks import DeviceAwareAttention

    timm_attn = _timm_attention()
    ours = DeviceAwareAttention(timm_attn)
    x = torch.randn(2, 50, 64)
    with torch.no_grad():  # timm's references first: it calls the same torch function
        ref_fp32 = timm_attn(x)
        timm_attn.fused_attn = False
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16 = timm_attn(x)
    calls = []
    sdpa = backbones.F.scaled_dot_product_attention
    monkeypatch.setattr(backbones.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref_fp32, atol=1e-6, rtol=1e-5)
        assert len(calls) == 1, "float32 on CPU: the fused kernel"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = ours(x)
        assert len(calls) == 1, "bfloat16 on CPU: explicit matrix products, no fused kernel"
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), ref_bf16.float(), atol=2e-2, rtol=2e-2)
        mask = torch.ones(50, 50).tril().bool()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours(x, attn_mask=mask)
        assert len(calls) == 2, "masked attention always uses the fused kernel"


def test_device_aware_attention_refuses_what_it_cannot_compute():
    from transfuse_monai.networks.blocks import DeviceAwareAttention

    try:
        gated = _timm_attention(gated=True)
    except TypeError:  # timm < 1.0.23 (nnU-Net's dynamic-network-architectures pins it) has no gated attention
        gated = _timm_attention()
        gated.gate = torch.nn.Linear(64, 64)
    assert not DeviceAwareAttention.can_replace(gated) and not DeviceAwareAttention.can_replace(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="gated"):
        DeviceAwareAttention(gated)


# ---------------------------------------------------------------------------------------------------------------------
# position embedding: timm's resampling at run time and when a checkpoint of another input size is loaded
# ---------------------------------------------------------------------------------------------------------------------


def _handwritten_resample(pos: torch.Tensor, src, dst) -> torch.Tensor:
    """The resampling this package used before timm's (the numerics it must keep)."""
    grid = pos.reshape(1, src[0], src[1], pos.shape[-1]).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=tuple(dst), mode="bicubic", align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(pos.dtype)


@pytest.mark.parametrize("grid", [(12, 16), (28, 28), (4, 4), (22, 22)])
def test_run_time_position_embedding_is_timms_resampling_with_unchanged_numerics(net_s, grid):
    from timm.layers import resample_abs_pos_embed

    with torch.no_grad():
        pos = net_s.transformer.pos_embed  # 22x22 grid of img_size 352
        ours = net_s.transformer.resampled_pos_embed(*grid)
        timm_ref = resample_abs_pos_embed(pos, list(grid), [22, 22], num_prefix_tokens=0, antialias=False)
        assert ours.shape == (1, grid[0] * grid[1], 384)
        assert torch.equal(ours, timm_ref)
        torch.testing.assert_close(ours, _handwritten_resample(pos, (22, 22), grid), atol=1e-6, rtol=0)
        if grid != (22, 22):  # timm's default antialias=True (PIL's cubic kernel) would change the values
            aa = resample_abs_pos_embed(pos, list(grid), [22, 22], num_prefix_tokens=0)
            assert (aa - ours).abs().max() > 1e-3


def test_resample_pos_embed_checks_the_grid_and_scripts():
    from transfuse_monai.networks.blocks.backbones import resample_pos_embed

    pos = torch.randn(1, 36, 8)
    scripted = torch.jit.script(resample_pos_embed)
    torch.testing.assert_close(scripted(pos, [3, 5], [6, 6]), resample_pos_embed(pos, [3, 5], [6, 6]))
    assert resample_pos_embed(pos, [6, 6], [6, 6]) is pos
    with pytest.raises(ValueError, match=r"\[1, 36, 8\] does not hold the 5x5 token grid"):
        resample_pos_embed(pos, [2, 2], [5, 5])


def _tiny(img_size, seed=0) -> TransFuse:
    torch.manual_seed(seed)
    return TransFuse(img_size=img_size, cnn_name="resnet18", vit_name="vit_tiny_patch16_224", depth=2).eval()


def test_checkpoint_of_another_input_size_loads_with_resampled_position_embedding(tmp_path, single_thread):
    from timm.layers import resample_abs_pos_embed

    from transfuse_monai.networks.nets.checkpoint import load_transfuse_checkpoint

    small = _tiny((96, 96), seed=0)
    path = tmp_path / "model_96.pt"
    torch.save(small.state_dict(), path)
    saved = torch.load(path, weights_only=True)
    assert saved["transformer.pos_embed"].shape == (1, 36, 192)
    big = _tiny((352, 352), seed=1)
    assert load_transfuse_checkpoint(big, path) is big
    loaded = big.state_dict()
    assert loaded["transformer.pos_embed"].shape == (1, 484, 192)
    expected = resample_abs_pos_embed(saved["transformer.pos_embed"], [22, 22], [6, 6], num_prefix_tokens=0,
                                      antialias=False)
    assert torch.equal(loaded["transformer.pos_embed"], expected)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items() if k != "transformer.pos_embed")
    # the loaded network computes what the 96x96 one computes at 352x352 (it resamples the same way on the fly)
    x = torch.randn(1, 3, 352, 352)
    with torch.no_grad():
        out = big(x)
        torch.testing.assert_close(out, small(x), atol=1e-5, rtol=0)
    assert out.shape == (1, 1, 352, 352) and torch.isfinite(out).all()


def test_position_embedding_grid_inference_and_its_errors():
    from transfuse_monai.networks.blocks.backbones import resample_pos_embed
    from transfuse_monai.networks.nets.checkpoint import load_transfuse_checkpoint, resample_pos_embed_in_state_dict

    wide = _tiny((192, 256), seed=0)  # 12x16 grid, aspect 3:4
    state = wide.state_dict()
    key = "transformer.pos_embed"
    pos = torch.randn(1, 48, 192)  # not square: the model's aspect ratio, 6x8
    out = resample_pos_embed_in_state_dict({"model": {**state, key: pos}}, wide)
    assert torch.equal(out[key], resample_pos_embed(pos, [12, 16], [6, 8])) and out[key].shape == (1, 192, 192)
    assert all(out[k] is v for k, v in state.items() if k != key)  # other entries untouched
    with pytest.raises(ValueError, match=r"transformer.pos_embed \(1, 6, 192\).*img_size=\(192, 256\).*source_grid"):
        load_transfuse_checkpoint(wide, {**state, key: torch.zeros(1, 6, 192)})
    with pytest.raises(ValueError, match=r"source_grid \(7, 7\) does not hold the 48 tokens"):
        load_transfuse_checkpoint(wide, {**state, key: pos}, source_grid=(7, 7))
    load_transfuse_checkpoint(wide, {**state, key: pos}, source_grid=(8, 6))  # a portrait checkpoint, given
    assert torch.equal(wide.transformer.pos_embed, resample_pos_embed(pos, [12, 16], [8, 6]))
    # strict checking of every other key stays
    with pytest.raises(ValueError, match="1 unexpected: extra.weight"):
        load_transfuse_checkpoint(wide, {**state, "extra.weight": torch.zeros(1)})
    # 576 tokens for a 9x16 model: 24x24 or 18x32, ambiguous
    tall = _tiny((144, 256), seed=1)
    with pytest.raises(ValueError, match="could be 24x24 or 18x32"):
        resample_pos_embed_in_state_dict({**state, key: torch.zeros(1, 576, 192)}, tall)


# -- the branch ablations of the paper's Table 5 -----------------------------------------------------------------------
@pytest.mark.parametrize("ablation", sorted(TABLE5_ABLATIONS))
def test_table5_ablation_builds_trains_and_scripts(ablation):
    """Every row of Table 5 builds, runs forward and backward in training mode (three heads) at two input sizes,
    predicts in eval mode and scripts with the same output."""
    torch.manual_seed(0)
    model = TransFuse(img_size=(64, 64), out_channels=2, ablation=ablation)
    for size in ((64, 64), (96, 64)):
        model.train()
        out = model(torch.randn(2, 3, *size))
        assert out.shape == (2, 3, 2, *size)
        out.square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), "a parameter of the network takes no part in the loss"
        model.zero_grad()
    model.eval()
    x = torch.randn(1, 3, 96, 64)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-6, rtol=0)
        assert model(x).shape == (1, 2, 96, 64)


def test_table5_ablations_are_the_papers_models():
    """The branches and fusion of each row: what is built, and what is not."""
    nets = {k: TransFuse(img_size=(64, 64), ablation=k) for k in TABLE5_ABLATIONS}
    assert nets["E.1"].transformer is None and nets["E.1"].fusion0 is None and nets["E.1"].cnn is not None
    assert nets["E.2"].cnn is None and nets["E.2"].fusion0 is None
    # a transformer alone is decoded at the widths of the preset's CNN: only the encoder differs from E.6
    assert nets["E.2"].feature_channels == nets["E.6"].feature_channels == (256, 128, 64)
    assert [v.shape for v in nets["E.2"].decoder2.state_dict().values()] == [
        v.shape for v in nets["E.6"].decoder2.state_dict().values()]
    e3 = nets["E.3"]
    assert e3.transformer.patch_embed.proj.kernel_size == (1, 1) and e3.transformer.patch_embed.proj.in_channels == 256
    assert e3.transformer.pos_embed.shape == (1, 16, 384) and e3.fusion0 is None  # a 4x4 grid at 64x64
    e4 = nets["E.4"]
    assert e4.transformer is None and e4.second_cnn_name == "vgg16" and e4.fusion0.components == BIFUSION_COMPONENTS
    assert e4.fusion0.proj_transformer.conv.in_channels == 512  # VGG-16's stride-16 map
    assert nets["E.5"].fusion0.components == () and nets["E.5"].fusion0.hadamard_conv is None
    assert nets["E.6"].fusion0.components == BIFUSION_COMPONENTS
    sizes = {k: n_params(v) for k, v in nets.items()}
    assert sizes["E.1"] < sizes["E.2"] < sizes["E.3"] < sizes["E.5"] < sizes["E.6"] < sizes["E.4"], sizes


def test_default_network_is_e6_and_unchanged():
    """``ablation="E.6"`` is the default network, module for module and value for value (same random stream)."""
    torch.manual_seed(3)
    default = TransFuse(img_size=(64, 64))
    torch.manual_seed(3)
    e6 = TransFuse(img_size=(64, 64), ablation="E.6")
    a, b = default.state_dict(), e6.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert default.branches == ("cnn", "transformer") and default.composition == "parallel"
    assert default.fusion0.components == BIFUSION_COMPONENTS


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ablation": "E.7"}, "Unknown ablation 'E.7'"),
        ({"ablation": "E.1", "branches": ("cnn", "transformer")}, "ablation 'E.1' .* sets branches"),
        ({"ablation": "E.5", "bifusion": ("spatial",)}, "ablation 'E.5' .* sets bifusion"),
        ({"ablation": "E.3", "composition": "parallel"}, "ablation 'E.3' .* sets composition"),
        ({"branches": ("cnn", "cnn2"), "composition": "sequential"}, "needs branches \\('cnn', 'transformer'\\)"),
        ({"branches": ("transformer", "cnn2")}, "not one of the paper's"),
        ({"branches": ("cnn", "vit")}, "distinct names from"),
        ({"branches": ("cnn",), "bifusion": ("spatial",)}, "nothing to fuse"),
        ({"composition": "serial"}, "composition must be one of"),
    ],
)
def test_table5_combinations_the_paper_does_not_define_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransFuse(img_size=(64, 64), **kwargs)


def test_ablation_branch_weights_load_from_files(tmp_path):
    """The sequential transformer (1x1 patches on the CNN's 256 channels) and the second CNN load local ImageNet
    files through timm's filters: the patch embedding resampled and adapted, the blocks and VGG layers copied."""
    torch.manual_seed(1)
    vit = timm.create_model("vit_tiny_patch16_224")
    vgg = timm.create_model("vgg11")
    vit_file, vgg_file = tmp_path / "vit_tiny.pth", tmp_path / "vgg11.pth"
    torch.save(vit.state_dict(), vit_file)
    torch.save(vgg.state_dict(), vgg_file)
    e3 = TransFuse(img_size=(64, 64), cnn_name="resnet18", vit_name="vit_tiny_patch16_224", depth=2,
                   ablation="E.3", vit_weights=vit_file)
    torch.testing.assert_close(e3.transformer.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    assert e3.transformer.patch_embed.proj.weight.shape == (192, 256, 1, 1)
    assert e3.transformer.pos_embed.shape == (1, 16, 192)  # resampled from the file's 14x14 grid
    e4 = TransFuse(img_size=(64, 64), cnn_name="resnet18", ablation="E.4", second_cnn_name="vgg11",
                   second_cnn_weights=vgg_file)
    torch.testing.assert_close(e4.cnn2.features_0.weight, vgg.features[0].weight)
    with pytest.raises(FileNotFoundError, match="not found"):
        TransFuse(img_size=(64, 64), ablation="E.4", second_cnn_weights=tmp_path / "nope.pth")


def test_checkpoint_of_another_ablation_is_refused_with_the_way_out(tmp_path):
    from transfuse_monai.networks.nets import load_transfuse_checkpoint

    torch.save(TransFuse(img_size=(64, 64)).state_dict(), tmp_path / "e6.pt")
    e1 = TransFuse(img_size=(64, 64), ablation="E.1")
    before = {k: v.clone() for k, v in e1.state_dict().items()}
    with pytest.raises(ValueError, match="unexpected: transformer.pos_embed.*--ablation"):
        load_transfuse_checkpoint(e1, tmp_path / "e6.pt")
    assert all(torch.equal(before[k], v) for k, v in e1.state_dict().items()), "a refused checkpoint changed weights"

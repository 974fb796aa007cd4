"""Tests for transfuse_monai.inferers.AutocastInferer, bundle.place_network and the bundles' fast-path flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from monai.inferers import SimpleInferer, SliceInferer, SlidingWindowInferer

from transfuse_monai.bundle import place_network
from transfuse_monai.inferers import AutocastInferer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Tiny CPU models: one intra-op thread (see conftest)."""


class Recorder(nn.Module):
    """A small conv net that records, for each call, the autocast state and the dtype/layout its layers saw."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 2, 1)
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        self.calls.append({
            "autocast": torch.is_autocast_enabled("cpu"),
            "hidden_dtype": h.dtype,
            "input_channels_last": x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
        })
        return self.out(torch.relu(self.norm(h)))


def test_enabled_on_cpu_computes_in_bfloat16_and_returns_float32():
    net = Recorder().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = SimpleInferer()(x, net)
        out = AutocastInferer()(x, net)
    assert net.calls[0] == {"autocast": False, "hidden_dtype": torch.float32, "input_channels_last": False}
    assert net.calls[1]["autocast"] and net.calls[1]["hidden_dtype"] == torch.bfloat16
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert not torch.equal(out, ref), "bfloat16 compute should round differently from float32"
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=5e-2)


def test_disabled_is_the_wrapped_inferer_exactly():
    net = Recorder().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref = SimpleInferer()(x, net)
        out = AutocastInferer(enabled=False)(x, net)
    assert not net.calls[1]["autocast"] and net.calls[1]["hidden_dtype"] == torch.float32
    assert torch.equal(out, ref)


def test_output_dtype_none_keeps_the_autocast_dtype():
    net = Recorder().eval()
    with torch.no_grad():
        out = AutocastInferer(output_dtype=None)(torch.randn(1, 3, 8, 8), net)
    assert out.dtype == torch.bfloat16


def test_channels_last_inputs_match_contiguous_ones():
    net = Recorder().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = SimpleInferer()(x, net)
        out = AutocastInferer(enabled=False, channels_last=True)(x, place_network(net, "cpu", "true"))
    assert net.calls[1]["input_channels_last"]
    assert net.conv.weight.is_contiguous(memory_format=torch.channels_last) and not net.conv.weight.is_contiguous()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_wraps_a_sliding_window_inferer():
    net = Recorder().eval()
    x = torch.randn(1, 3, 40, 40)
    window = SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2, overlap=0.25)
    with torch.no_grad():
        ref = window(x, net)
        out = AutocastInferer(window)(x, net)
    assert len(net.calls) > 2 and all(c["autocast"] for c in net.calls[len(net.calls) // 2 + 1:])
    assert out.dtype == torch.float32 and out.shape == ref.shape == (1, 2, 40, 40)
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(
    "inner, x",
    [(SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2), torch.randn(1, 3, 40, 40)),
     (SliceInferer(roi_size=(16, 16), sw_batch_size=3, spatial_dim=2), torch.randn(1, 3, 16, 16, 5))],
    ids=["sliding-window-4d", "slices-of-5d-volumes"],
)
def test_channels_last_applies_to_what_the_network_receives(inner, x):
    """The windows and the slices cut from 5D volumes reach the network channels-last, not only 4D inputs."""
    net = Recorder().eval()
    with torch.no_grad():
        ref = inner(x, net)
        n = len(net.calls)
        out = AutocastInferer(inner, enabled=False, channels_last=True)(x, net)
    assert n > 1 and not any(c["input_channels_last"] for c in net.calls[:n])
    assert len(net.calls) == 2 * n and all(c["input_channels_last"] for c in net.calls[n:])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_training_forward_backpropagates_float32_gradients():
    net = Recorder().train()
    x = torch.randn(2, 3, 16, 16)
    loss = AutocastInferer(channels_last=True)(x, place_network(net, "cpu", True)).square().mean()
    loss.backward()
    assert net.calls[-1]["hidden_dtype"] == torch.bfloat16
    for p in net.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


def test_structured_outputs_are_cast():
    def net(x):
        return {"a": x * 2, "b": [x.round().long(), x]}

    with torch.no_grad():
        out = AutocastInferer(output_dtype="float64")(torch.ones(1, 1, 2, 2), net)
    assert out["a"].dtype == torch.float64 and out["b"][1].dtype == torch.float64
    assert out["b"][0].dtype == torch.int64, "integer outputs are left alone"


@pytest.mark.parametrize(
    "kwargs, error",
    [({"dtype": torch.float32}, "bfloat16 or torch.float16"), ({"dtype": "half-ish"}, "torch.dtype or its name"),
     ({"inferer": "SimpleInferer"}, "callable MONAI Inferer"), ({"output_dtype": 3}, "output_dtype")],
)
def test_bad_arguments_are_named(kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        AutocastInferer(**kwargs)


def test_unknown_device_type_needs_an_explicit_dtype():
    with pytest.raises(ValueError, match="no default dtype for device type 'mps'"):
        AutocastInferer().autocast_dtype("mps")
    assert AutocastInferer(dtype="float16").autocast_dtype("mps") == torch.float16


def test_place_network_keeps_the_layout_unless_asked():
    net = nn.Conv2d(3, 4, 3)
    assert place_network(net, torch.device("cpu"), "false") is net and net.weight.is_contiguous()
    with pytest.raises(ValueError, match="as a boolean"):
        place_network(net, "cpu", "maybe")


# ------------------------------------------------------------------------------------------------ the bundles' flags
@pytest.mark.parametrize("bundle, size", [("polyp", [64, 64]), ("isic2017", [64, 96])])
@pytest.mark.parametrize("config", ["inference.json", "train.json"])
def test_bundle_fast_path_flags_on_cpu(bundle, size, config):
    """On CPU: the defaults are plain fp32; ``amp`` reaches the inferer (bfloat16) and not the engine (whose amp is
    CUDA-only) and brings channels-last network and inputs with it unless ``--channels_last false``; ``compile``
    reaches the engine; a device given as a string (as MONAI Label does) works too."""
    from monai.bundle import ConfigParser

    def parse(**overrides):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / config))
        parser.update({"device": "$torch.device('cpu')", "image_size": size, "pretrained": False})
        parser.update(overrides)
        return parser

    parser = parse(amp="true", compile=True)
    prefix = "train#" if config == "train.json" else ""
    inferer = parser.get_parsed_content(f"{prefix}inferer")
    assert isinstance(inferer, AutocastInferer) and inferer.enabled and inferer.channels_last
    assert inferer.autocast_dtype("cpu") == torch.bfloat16
    net = parser.get_parsed_content("network")
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert parser.get_parsed_content("fast_paths").engine_amp is False
    if config == "train.json":
        assert parser.get_parsed_content("validate#inferer") is inferer
    engines = ("train#trainer", "validate#evaluator") if config == "train.json" else ("evaluator",)
    for engine in engines:  # building the engines needs data; their arguments are checked as written
        assert parser.get(f"{engine}#amp") == "$@fast_paths.engine_amp"
        assert parser.get(f"{engine}#amp_kwargs") == "$@fast_paths.engine_amp_kwargs"
        assert parser.get(f"{engine}#compile") == "$@fast_paths.compile"
    assert parser.get_parsed_content("fast_paths").compile is True

    for overrides in ({"amp": "false"}, {"amp": "true", "channels_last": "false", "device": "cpu"}):  # Label: str
        parser = parse(**overrides)
        inferer = parser.get_parsed_content(f"{prefix}inferer")
        assert inferer.enabled == (overrides["amp"] == "true") and not inferer.channels_last
        conv = next(m for m in parser.get_parsed_content("network").modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous()
        assert parser.get_parsed_content("fast_paths").compile is False

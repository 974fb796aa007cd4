# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The hardware probe and the ``auto`` precision the bundles choose from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from transfuse_monai.bundle import FastPaths, choose_precision
from transfuse_monai.bundle import options as options_module
from transfuse_monai.utils import hardware


def _probe_in(env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "transfuse_monai.utils.hardware", "--json"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_probe_is_consistent_with_torch():
    info = hardware.probe()
    assert info.torch_capability == torch.backends.cpu.get_cpu_capability()
    assert info.cores >= 1 and info.cpu
    assert info.cpu_amx <= info.cpu_bf16, "AMX implies native bf16"
    assert info.cpu_kind in ("AMX", "AVX512-BF16", "AVX-512", "AVX2", "older")
    assert len(info.cuda) == torch.cuda.device_count()
    text = hardware.describe(info)
    assert info.cpu in text and f"PyTorch kernels: {info.torch_capability}" in text


def test_kernel_limits_hide_what_they_forbid():
    """An AVX2 host emulated on a newer one (the ways the brief's ISA matrix runs) reports no native bf16 or int8."""
    emulated = _probe_in({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert emulated["torch_capability"] == "AVX2"
    assert not emulated["cpu_bf16"] and not emulated["cpu_amx"]
    assert set(emulated["isa"]) <= {"avx2", "avx_vnni"}
    assert emulated["cpu_kind"] in ("AVX2", "older")
    onednn_only = _probe_in({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
    assert not onednn_only["cpu_bf16"] and "avx512_bf16" not in onednn_only["isa"]


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_native_bf16(monkeypatch, caplog, native):
    fake = replace(hardware.probe(), cpu_bf16=native, cpu_amx=False)
    monkeypatch.setattr(hardware, "probe", lambda: fake)
    chosen = choose_precision("cpu", "auto")
    assert chosen.amp is native and chosen.dtype == (torch.bfloat16 if native else None)
    assert ("native bfloat16" if native else "emulated bfloat16 is slower") in chosen.reason
    with caplog.at_level("INFO", logger=options_module.__name__):
        paths = FastPaths("cpu", "auto")
    assert paths.inferer_amp is native and paths.channels_last is native and not paths.engine_amp
    assert paths.engine_amp_kwargs == {}
    assert ("bfloat16, channels-last" if native else "float32") in caplog.text and chosen.reason in caplog.text
    inferer = paths.inferer()
    assert inferer.enabled is native


@pytest.mark.parametrize("given, expected", [(False, False), ("false", False), (True, True), ("on", True)])
def test_explicit_precision_overrides_auto(monkeypatch, given, expected):
    monkeypatch.setattr(hardware, "probe", lambda: pytest.fail("an explicit value must not probe"))
    chosen = choose_precision("cpu", given)
    assert chosen.amp is expected and chosen.reason.startswith("amp=")
    assert (chosen.dtype == torch.bfloat16) is expected


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="amp must be true, false or auto, got 'fastest'"):
        choose_precision("cpu", "fastest")


@pytest.mark.parametrize("bundle", ["polyp", "isic2017", "hip", "prostate"])
def test_bundles_default_to_auto_outside_training(bundle):
    """Evaluation and inference pick the hardware's precision; training stays float32 unless asked."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs"
    train = ConfigParser.load_config_file(configs / "train.json")
    assert train["amp"] is False
    for layers in (["train.json", "evaluate.json"], ["inference.json"]):
        parser = ConfigParser()
        parser.read_config([str(configs / name) for name in layers])
        assert parser["amp"] == "auto", layers

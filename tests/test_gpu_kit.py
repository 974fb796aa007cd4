"""The GPU run kit (``benchmarks/gpu``): its smoke mode end to end on the CPU, and the parts a GPU run relies on that
a CPU can check (peak table, CUDA-graph path rules, the report of a run cut short, PNG curves)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import kit
from benchmarks.gpu import report as kit_report
from benchmarks.gpu.curves import COLOURS, line_chart

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "benchmarks" / "gpu"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and v == v  # finite enough: not NaN


def test_smoke_run_writes_every_stage(tmp_path):
    """``run.sh --smoke``: all stages run on the CPU with generated data; results.json holds each stage's figures and
    results.md their tables, the training curves are PNGs."""
    out = tmp_path / "gpu"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(KIT / "run.sh"), "--smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    assert list(stages) == ["models", "compile", "train_transfuse_s", "train_flexunet_resnet34"]

    models = stages["models"]
    assert models["status"] == "ok", models
    ok = [r for r in models["rows"] if r["status"] == "ok"]
    assert {r["model"] for r in ok} == {"transfuse_s", "flexible_unet"}
    assert {r["path"] for r in ok} == {"eager", "auto", "channels_last+bf16"}  # auto: the bundles' default
    for r in ok:
        assert r["latency_ms"]["median"] > 0 and r["throughput_img_s"] > 0 and r["gmacs"] > 0
        assert _number(r["parity"]["max_abs_diff"]) and r["parity"]["passed"] in (True, False)
    # the CUDA-only paths are recorded as not available on this device, not as errors
    na = {r["path"] for r in models["rows"] if r.get("device_na")}
    assert na == {"fp16", "cudagraphs", "channels_last+bf16+cudagraphs"}
    assert stages["compile"]["status"] == "skipped" and stages["compile"]["note"]

    for name in kit.TRAIN_MODELS:
        s = stages[name]
        assert s["status"] == "ok", s
        m = s["metrics"]
        assert m["iterations"] >= 1 and m["epochs_completed"] > 0 and m["images_per_s"] > 0
        assert 0.0 <= m["data_wait_share"] <= 1.0
        assert 0.0 <= m["best_val_dice"] <= 1.0
        assert m["loss_curve"] and m["val_dice_curve"]
        for test_set in kit_report.TEST_SETS:
            assert 0.0 <= m["test"][test_set]["dice"] <= 1.0

    md = (out / "results.md").read_text()
    for heading in ("## Stages", "## Inference", "## Training"):
        assert heading in md
    assert "| TransFuse-S | eager |" in md and "| FlexibleUNet (ResNet-34) |" in md
    for png in ("training_loss.png", "val_dice.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peak_table_matches_device_names():
    assert kit.peak_for("NVIDIA H200")["half"] == 989.0
    assert kit.peak_for("NVIDIA H100 80GB HBM3")["fp32"] == 67.0
    assert kit.peak_for("NVIDIA H100 PCIe")["half"] == 756.0
    assert kit.peak_for("NVIDIA H100 NVL")["match"] == "H100 NVL"
    assert kit.peak_for("Tesla T4") is None and kit.peak_for(None) is None


def test_cudagraphs_path_rules():
    import torch

    from benchmarks.models.paths import PathUnavailable, parse_path, prepare

    assert parse_path("channels_last+bf16+cudagraphs") == {"channels_last", "bf16", "cudagraphs"}
    for bad in ("cudagraphs+compile", "cudagraphs+onnx", "cudagraphs+trt"):
        with pytest.raises(ValueError, match="cudagraphs"):
            parse_path(bad)
    with pytest.raises(PathUnavailable, match="no GPU"):
        prepare(torch.nn.Conv2d(3, 1, 1), parse_path("cudagraphs"), torch.device("cpu"), (32, 32), 2, Path("."), 1)


def test_report_of_a_run_cut_short(tmp_path):
    """A failed and a skipped stage still give a report: the error and the note are in results.md."""
    results = {
        "settings": {"smoke": False, "total_s": 470.0}, "elapsed_s": 12.0, "notes": ["pranet: skipped, no checkout."],
        "env": {"python": "3.12", "torch": "2.x", "monai": "1.6.1", "ignite": "0.5.5", "timm": "1.0", "cpu_count": 16,
                "gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "cuda": "12.8", "cudnn": 91000,
                "cudnn_allow_tf32": True, "matmul_allow_tf32": False, "peak_tflops": kit.peak_for("NVIDIA H200")},
        "stages": {"models": {"status": "timeout", "seconds": 95.0, "error": "killed after 95 s (stage deadline)"},
                   "train_transfuse_s": {"status": "skipped", "note": "no packed data"}},
    }
    kit_report.write(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| models | timeout | 95 | killed after 95 s (stage deadline) |" in md
    assert "| train_transfuse_s | skipped | n/a | no packed data |" in md
    assert "No inference results" in md and "No training results" in md and "pranet: skipped" in md
    assert json.loads((tmp_path / "results.json").read_text())["stages"]["models"]["status"] == "timeout"
    assert not (tmp_path / "training_loss.png").exists()


def test_line_chart_draws_each_series(tmp_path):
    from PIL import Image

    path = line_chart({"a": [(0, 1.0), (10, 0.5)], "b": [(0, 0.8), (5, 0.9), (10, 0.2)], "c": []},
                      tmp_path / "c.png", "t", "x", "y", size=(320, 200))
    img = Image.open(path).convert("RGB")
    assert img.size == (320, 200)
    colours = {c for _, c in img.getcolors(1 << 20)}
    assert COLOURS[0] in colours and COLOURS[1] in colours  # both non-empty series are drawn
    assert COLOURS[3] not in colours  # no fourth series

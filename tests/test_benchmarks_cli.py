"""The benchmarks' one entry point, ``python -m benchmarks <command>``: the command list, every command's options, and
one cheap command end to end. The benchmarks themselves are not tests (no figure is asserted); the GPU kit's smoke
run is in ``test_gpu_kit.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_on_one_line():
    """``python -m benchmarks --help`` names each command with its summary on one line."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, (_, summary) in COMMANDS.items():
        assert any(line.split() == [name, *summary.split()] for line in lines), (name, proc.stdout)


def test_listing_the_commands_imports_none():
    """The command list comes without importing the commands (most of them import torch and MONAI)."""
    code = "import sys; from benchmarks.__main__ import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "<command>" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_declares_its_options(command, capsys):
    """``<command> --help`` prints the module's docstring and options under ``python -m benchmarks <command>``."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m benchmarks {command} [-h]")
    module = sys.modules[COMMANDS[command][0]]
    assert module.__doc__.splitlines()[0] in out
    options = out.split("\noptions:\n", 1)[1]
    assert "\n  --" in options, f"{command} declares no options besides --help"


def test_usage_error_of_a_command(capsys):
    """An option check that fails after parsing is reported by the command's parser (exit code 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(["models", "--sizes", "64x48"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "python -m benchmarks models: error: sizes must be multiples of 32" in err


def test_summary_end_to_end(capsys):
    """``summary`` on a tiny size prints its Markdown table: header, separator and one row per variant."""
    main(["summary", "--size", "32", "32", "--variants", "S", "L*"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| variant | CNN | transformer (blocks) | parameters at 32x32 |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2].startswith("| TransFuse-S | resnet34 | deit_small_patch16_224 (8) | 26,")
    assert lines[3].startswith("| TransFuse-L* | resnetv2_50x1_bit | vit_base_patch16_224 (12) | ")
    assert len(lines) == 4


def test_training_override_imports_the_timers():
    """The override config of ``training`` imports its Ignite timers in the bundle process from this package."""
    from monai.bundle import ConfigParser

    from benchmarks.training import attach_timers, timing_override

    parser = ConfigParser({**timing_override(Path("timing.json")), "timers": "$attach_timers"})
    assert parser.get_parsed_content("timers") is attach_timers


def test_folder_inference_timers_split_the_evaluator_loop(tmp_path):
    """The timers that ``folder-inference`` attaches to a bundle's evaluator attribute the network and the
    post-processing to the right phases (a post-processing that sleeps shows up there, not in the network) and
    count images, not batches (OpenVINO's throughput mode feeds batches of 2)."""
    import json
    import time

    import torch
    from monai.engines import SupervisedEvaluator

    from benchmarks.folder_inference import attach_timers

    def slow_post(data):
        time.sleep(0.05)
        return data

    loader = torch.utils.data.DataLoader([{"image": torch.rand(1, 8, 8)} for _ in range(3)], batch_size=2)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader,
                                    network=torch.nn.Conv2d(1, 1, 3, padding=1), postprocessing=slow_post)
    attach_timers(evaluator, str(tmp_path / "timing.json"))
    evaluator.run()
    rec = json.loads((tmp_path / "timing.json").read_text())
    assert (rec["images"], rec["batches"], rec["batch_size"], rec["num_workers"]) == (3, 2, 2, 0)
    assert rec["post_s"] >= 0.15 and rec["network_s"] < 0.15
    assert rec["data_wait_s"] + rec["network_s"] + rec["post_s"] <= rec["loop_s"]


def test_budget_override_stops_at_equal_iterations():
    """``budget --max-iterations`` adds a stop at the first validation (trainer epoch end) at or after N iterations
    and records the training precision."""
    from benchmarks.budget import budget_override

    plain = budget_override(60, 50, "wall", 120, ("val_mean_dice",))
    capped = budget_override(60, 50, "wall", 120, ("val_mean_dice",), max_iterations=200)
    added = [e for e in capped["+initialize"] if e not in plain["+initialize"]]
    assert added == ["$@train#trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.terminate() "
                     "if e.state.iteration >= 200 else None)"]
    record = capped["+finalize"][-1]
    assert "'precision': @fast_paths.precision.reason" in record and capped["train#trainer#epoch_length"] == 50


def test_cpu_bound_bounds_every_mac_at_its_peak():
    """The bound is each class's MACs at its measured rate; int8 counts the attention at the best float rate."""
    from benchmarks.cpu_bound import bounds

    macs = {"conv": 4e9, "matmul": 2e9, "attention": 1e9}
    peaks = {"f32": {"conv": 100.0, "matmul": 100.0}, "bf16": {"conv": 200.0, "matmul": 250.0},
             "int8": {"conv": 400.0, "matmul": 500.0}}
    got = bounds(macs, peaks)
    assert got["f32"] == pytest.approx(70.0) and got["bf16"] == pytest.approx(32.0)
    assert got["int8"] == pytest.approx(10.0 + 4.0 + 4.0)


def test_cpu_bound_smoke_measures_peaks_and_an_ir(tmp_path, capsys):
    """``cpu-bound --smoke`` end to end: the network's MACs, OpenVINO's peaks per precision this CPU offers, fp32
    eager and a given IR in one table; an IR of another input size is refused before anything is measured."""
    pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'transfuse-monai[openvino]')")
    import json

    import torch

    from benchmarks.cpu_bound import precisions
    from transfuse_monai.export import export_openvino_model
    from transfuse_monai.networks.nets import TransFuse

    torch.manual_seed(0)
    export_openvino_model(TransFuse(img_size=(64, 64)), tmp_path / "ir" / "model.xml", (3, 64, 64))
    export_openvino_model(TransFuse(img_size=(96, 96)), tmp_path / "ir96" / "model.xml", (3, 96, 96))
    with pytest.raises(SystemExit, match=r"ir96/model.xml takes inputs of \[\?,3,96,96\], not 64x64"):
        main(["cpu-bound", "--smoke", "--ir", str(tmp_path / "ir96" / "model.xml"), "--out", str(tmp_path / "no")])
    assert not (tmp_path / "no").exists()
    main(["cpu-bound", "--smoke", "--threads", "1", "--ir", str(tmp_path / "ir" / "model.xml"),
          "--out", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(data["peaks_gmac_per_s"]) == set(precisions()) and "f32" in data["peaks_gmac_per_s"]
    assert all(v > 0 for peak in data["peaks_gmac_per_s"].values() for v in peak.values())
    assert data["macs"]["conv"] > data["macs"]["matmul"] > data["macs"]["attention"] > 0
    (precision, ms), = data["irs"].values()
    assert ms > 0 and precision in ("f32", "bf16", "f16")
    out = capsys.readouterr().out
    assert "| fp32 eager PyTorch |" in out and "| bound, f32 |" in out and "| model.xml (" in out

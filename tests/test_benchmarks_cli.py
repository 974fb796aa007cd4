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
    post-processing to the right phases (a post-processing that sleeps shows up there, not in the network)."""
    import json
    import time

    import torch
    from monai.engines import SupervisedEvaluator

    from benchmarks.folder_inference import attach_timers

    def slow_post(data):
        time.sleep(0.05)
        return data

    loader = torch.utils.data.DataLoader([{"image": torch.rand(1, 8, 8)} for _ in range(3)], batch_size=1)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader,
                                    network=torch.nn.Conv2d(1, 1, 3, padding=1), postprocessing=slow_post)
    attach_timers(evaluator, str(tmp_path / "timing.json"))
    evaluator.run()
    rec = json.loads((tmp_path / "timing.json").read_text())
    assert rec["images"] == 3 and rec["num_workers"] == 0
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

"""Multi-GPU evaluation (``torchrun`` + ``multi_gpu_evaluate.json``) of every bundle, run as 2 CPU processes (gloo).

Each rank evaluates its share of the test images (``DistributedSampler``, ``even_divisible=False``); the per-image
reports, the overlays and the seconds per volume are gathered across the ranks and written by rank 0 only. With the
same weights (a seeded random initialisation) the 2-process evaluation must give the single-process one's files:
the same images, each once and in the same order, the same metrics, the same overlays, the tables printed once.
Rank 1 gets an output folder of its own (``--output_dir`` is an expression of ``RANK``), which must stay unwritten.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

#: bundle -> (generated sample: 5 evaluated items, uneven shares 3 + 2; evaluation options)
CASES = {
    "polyp": (
        dict(n_train=2, test_sets={"Kvasir": 3, "CVC-300": 2}, size=(64, 64), test_sizes=[(64, 64), (72, 80)]),
        ["--image_size", "[64,64]"],
    ),
    "isic2017": (dict(n_train=1, n_val=1, n_test=5, size=(48, 72)), ["--image_size", "[64,64]"]),
    "hip": (dict(n_train=1, n_val=1, n_test=5, size=[(72, 64), (64, 80)]), ["--image_size", "[64,64]"]),
    # fold 0 of 15 cases validates on 3 volumes (2 + 1)
    "prostate": (dict(n_train=15, size=(40, 48, 6)), ["--image_size", "[32,32]", "--fold", "0"]),
}


def configs(bundle: str, *names: str) -> str:
    return "[" + ",".join(f"'bundles/{bundle}/configs/{n}'" for n in names) + "]"


def random_checkpoint(bundle: str, image_size: list[int], path: Path) -> None:
    """``model.pt`` of the bundle's network, randomly initialised with a fixed seed."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / n) for n in ("train.json", "evaluate.json")])
    parser.update({"image_size": image_size, "pretrained": False, "demo": False})
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    path.parent.mkdir(parents=True)
    torch.save(network.state_dict(), path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def assert_close(actual, expected, where: str) -> None:
    if isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for k in expected:
            assert_close(actual[k], expected[k], f"{where}/{k}")
    elif expected is None or (isinstance(expected, float) and math.isnan(expected)):
        assert actual is None or (isinstance(actual, float) and math.isnan(actual)), where
    elif isinstance(expected, str):
        assert actual == expected, where
    else:
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6), where


@pytest.mark.parametrize("bundle", sorted(CASES))
def test_two_process_evaluation_equals_the_single_process_one(bundle, tmp_path, torchrun):
    sample, options = CASES[bundle]
    data = Path(get_task(bundle).make_sample(tmp_path / "data", seed=1, **sample))
    ckpt_dir = tmp_path / "models"
    random_checkpoint(bundle, json.loads(options[options.index("--image_size") + 1]), ckpt_dir / "model.pt")
    common = ["--dataset_dir", data, "--ckpt_dir", ckpt_dir, "--num_workers", "0", "--num_overlays", "3", *options]

    single = tmp_path / "single"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file",
           configs(bundle, "train.json", "evaluate.json"), *map(str, common), "--output_dir", str(single)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    single_log = proc.stdout

    multi = tmp_path / "multi"
    multi_log = torchrun.run(
        "evaluating", "--config_file", configs(bundle, "train.json", "evaluate.json", "multi_gpu_evaluate.json"),
        *common, "--output_dir", f"$'{multi}/rank' + os.environ['RANK']",
    )

    assert not (multi / "rank1").exists(), f"rank 1 wrote {sorted(files_under(multi / 'rank1'))}"
    rank0 = multi / "rank0"
    written = files_under(single)
    assert files_under(rank0) == written  # the same reports, the same 3 overlays (and their legend)
    assert len([f for f in written if f.startswith("overlays/") and f.endswith(".png")]) == 3

    reports = sorted(f for f in written if f.endswith("per_image.csv") or f.endswith("per_volume.csv"))
    assert len(reports) >= 2
    for name in reports:
        expected, actual = read_csv(single / name), read_csv(rank0 / name)
        keys = [(r.get("set"), r["name"]) for r in expected]
        assert len(keys) == len(set(keys)) == (3 if bundle == "prostate" else 5)
        assert [(r.get("set"), r["name"]) for r in actual] == keys, f"{name}: not every image once, in order"
        if "seconds" in name:
            continue
        for got, want in zip(actual, expected):
            assert_close({k: float(v) for k, v in got.items() if k not in ("set", "name")},
                         {k: float(v) for k, v in want.items() if k not in ("set", "name")}, f"{name}/{want['name']}")

    for name in sorted(f for f in written if f.endswith("summary.json")):
        expected, actual = (json.loads((d / name).read_text()) for d in (single, rank0))
        if name.startswith("seconds_"):
            assert (actual["n"], actual["processes"], expected["processes"]) == (expected["n"], 2, 1)
        else:
            assert_close(actual, expected, name)

    tables = "| set | n |"  # the header of every report's table, printed by rank 0 only
    assert multi_log.count(tables) == single_log.count(tables) >= 1

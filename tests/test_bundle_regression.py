"""Regression: the polyp and ISIC 2017 bundles, rebuilt on the core v2 task pattern, give the same evaluation metrics
as before (``tests/data/bundle_regression_baseline.json``, recorded with commit 99307e7's bundles) on a fixed generated
sample, a fixed train/validation split and seed 0: 2 epochs of training at 64x64 from scratch, then the bundle's
``evaluate.json``.

The split is given explicitly because the polyp bundle's random hold-out now comes from MONAI's
``partition_dataset`` (another shuffle than the hand-written one it replaced); everything else is the bundles' own
default path. Runs the bundles as a user does, ``python -m monai.bundle run`` from the repository root.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path


from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BASELINE = json.loads((Path(__file__).parent / "data" / "bundle_regression_baseline.json").read_text())
SMALL = ["--image_size", "[64,64]", "--num_workers", "0", "--pretrained", "false", "--batch_size", "4", "--epochs", "2"]
# same machine kind, same libraries: the runs are deterministic; the tolerance only absorbs summation order
ATOL = 1e-5


def run_bundle(*args: str) -> str:
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def assert_same_summary(actual: dict, expected: dict, what: str) -> None:
    assert set(actual) == set(expected), f"{what}: groups {sorted(actual)} != {sorted(expected)}"
    for group, values in expected.items():
        for metric, value in values.items():
            got = actual[group][metric]
            assert math.isclose(got, value, abs_tol=ATOL), f"{what} {group}/{metric}: {got} != baseline {value}"


def test_polyp_bundle_metrics_unchanged(tmp_path):
    task = get_task("polyp")
    data = Path(task.make_sample(
        tmp_path / "polyp", n_train=12, test_sets={"Kvasir": 3, "CVC-ClinicDB": 3}, size=(72, 72),
        test_sizes=[(70, 90), (96, 80)], seed=3,
    ))
    items = task.datalist(data, "train")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"split": [items[:9], items[9:]]}))
    common = ["--dataset_dir", str(data), *SMALL, "--ckpt_dir", str(tmp_path / "models"),
              "--output_dir", str(tmp_path / "eval")]
    run_bundle("--config_file", f"['bundles/polyp/configs/train.json','{split}']", *common)
    run_bundle("--config_file", "['bundles/polyp/configs/train.json','bundles/polyp/configs/evaluate.json']", *common)
    summary = json.loads((tmp_path / "eval" / "polyp_summary.json").read_text())
    assert_same_summary(summary, BASELINE["polyp"], "polyp")


def test_isic2017_bundle_metrics_unchanged(tmp_path):
    data = Path(get_task("isic2017").make_sample(tmp_path / "isic", n_train=8, n_val=3, n_test=3, size=(60, 84), seed=5))
    common = ["--dataset_dir", str(data), *SMALL, "--ckpt_dir", str(tmp_path / "models"),
              "--output_dir", str(tmp_path / "eval")]
    run_bundle("--config_file", "bundles/isic2017/configs/train.json", *common)
    run_bundle("--config_file", "['bundles/isic2017/configs/train.json','bundles/isic2017/configs/evaluate.json']",
               *common)
    for name in ("isic2017_model_res_summary.json", "isic2017_original_res_summary.json"):
        summary = json.loads((tmp_path / "eval" / name).read_text())
        assert_same_summary(summary, BASELINE[f"isic2017/{name}"], f"isic2017 {name}")

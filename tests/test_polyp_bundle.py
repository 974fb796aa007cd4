"""End-to-end test of the polyp bundle on a tiny generated dataset in the PraNet layout.

Runs the bundle exactly as a user does (``python -m monai.bundle ...`` from the repository root): train 2 epochs,
resume for a third, evaluate (table + files), infer (mask sizes equal the inputs'), export ``model.ts`` and reload it;
plus metadata, network I/O and workflow-property checks, and 2-process DDP training on CPU (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "polyp"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
SMALL = ["--image_size", "[64,64]", "--num_workers", "0", "--pretrained", "false"]


def bundle(*args: str, cwd: Path = REPO, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("polyp")
    data = Path(
        get_task("polyp").make_sample(
            root / "data", n_train=12, test_sets={"Kvasir": 3, "CVC-ClinicDB": 3}, size=(72, 72),
            test_sizes=[(70, 90), (96, 80)], seed=3,
        )
    )
    return {"data": data, "ckpt": root / "models", "out": root / "eval", "pred": root / "pred", "root": root}


@pytest.fixture(scope="module")
def trained(work) -> dict[str, Path]:
    bundle(
        "run", "training", "--config_file", "bundles/polyp/configs/train.json", "--dataset_dir", str(work["data"]),
        "--epochs", "2", "--batch_size", "4", "--val_fraction", "0.25", *SMALL,
        "--ckpt_dir", str(work["ckpt"]), "--output_dir", str(work["out"]),
    )
    return work


def test_training_writes_checkpoints(trained):
    ckpt = trained["ckpt"]
    assert (ckpt / "model.pt").is_file(), "best checkpoint (by validation Dice) missing"
    last = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert set(last) >= {"model", "optimizer", "trainer"}
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]  # ignite stores iterations
    assert (trained["out"] / "tensorboard").is_dir()


def test_resume_for_a_third_epoch(trained):
    ckpt = trained["ckpt"]
    before = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    proc = bundle(
        "run", "--config_file", "bundles/polyp/configs/train.json", "--dataset_dir", str(trained["data"]),
        "--epochs", "3", "--batch_size", "4", "--val_fraction", "0.25", *SMALL,
        "--ckpt_dir", str(ckpt), "--output_dir", str(trained["out"]),
        "--resume_ckpt", str(ckpt / "checkpoint_last.pt"),
    )
    after = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    per_epoch = before["trainer"]["epoch_length"]
    assert after["trainer"]["iteration"] == before["trainer"]["iteration"] + per_epoch == 3 * per_epoch
    assert (ckpt / "checkpoint_epoch=3.pt").is_file()
    assert "Epoch[1]" not in proc.stdout + proc.stderr.replace("Epoch[1] Metrics", "")  # did not start over
    assert after["optimizer"]["state"], "optimizer state was not saved"


def test_evaluate_writes_table_and_files(trained):
    proc = bundle(
        "run", "--config_file", "['bundles/polyp/configs/train.json','bundles/polyp/configs/evaluate.json']",
        "--dataset_dir", str(trained["data"]), *SMALL, "--ckpt_dir", str(trained["ckpt"]),
        "--output_dir", str(trained["out"]), "--tracking", "mlflow",
    )
    out = proc.stdout
    assert "| set | n | dice | iou | s_measure | mean_e_measure | weighted_f_measure | mae |" in out
    assert "| Kvasir | 3 |" in out and "| CVC-ClinicDB | 3 |" in out
    for missing in ("CVC-ColonDB", "CVC-300", "ETIS-LaribPolypDB"):
        assert (proc.stdout + proc.stderr).count(f"PraNet test set '{missing}' not found") == 1
    summary = json.loads((trained["out"] / "polyp_summary.json").read_text())
    assert set(summary) == {"Kvasir", "CVC-ClinicDB", "all images"}
    for values in summary.values():
        assert 0.0 <= values["dice"] <= 1.0 and 0.0 <= values["mae"] <= 1.0
    rows = (trained["out"] / "polyp_per_image.csv").read_text().strip().splitlines()
    assert rows[0].startswith("set,name,dice,iou") and len(rows) == 7

    # the generic per-class report (distances in pixels: frames carry no spacing) and the overlay pictures
    per_class = json.loads((trained["out"] / "segmentation_summary.json").read_text())
    assert {"dice_polyp", "iou_polyp", "hd_px_polyp", "hd95_px_polyp", "asd_px_polyp"} <= set(per_class["Kvasir"])
    assert (trained["out"] / "segmentation_per_class.md").read_text().count("polyp") >= 1
    overlays = sorted((trained["out"] / "overlays").glob("*.png"))
    assert len(overlays) == 6, overlays
    mask_sizes = {Image.open(m).size for m in (trained["data"] / "TestDataset").glob("*/masks/*.png")}
    for png in overlays:  # drawn at each mask's original size
        with Image.open(png) as pic:
            assert pic.size in mask_sizes and pic.mode == "RGB"


def test_evaluation_is_tracked_with_mlflow(trained):
    """``--tracking mlflow`` (MONAI's built-in tracking; the [mlflow] extra) logs the evaluation's metrics to a local
    SQLite store in ``output_dir`` (MONAI's default ``tracking_uri``); runs after the evaluation above."""
    import mlflow

    store = trained["out"] / "mlruns.db"
    assert store.is_file(), "no MLflow store was written"
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs, "no MLflow run recorded"
    logged = {k for run in runs for k in run.data.metrics}
    assert any(k.startswith("Kvasir") and k.endswith("dice") for k in logged), sorted(logged)


def test_inference_masks_match_input_sizes(trained):
    images = trained["data"] / "TestDataset" / "Kvasir" / "images"
    bundle(
        "run", "--config_file", "bundles/polyp/configs/inference.json", "--input_dir", str(images),
        "--image_size", "[64,64]", "--num_workers", "0", "--ckpt_dir", str(trained["ckpt"]),
        "--output_dir", str(trained["pred"]),
    )
    inputs = sorted(images.iterdir())
    report = json.loads((trained["pred"] / "inference_report.json").read_text())
    assert len(report["processed"]) == len(inputs) and report["skipped"] == []
    outputs = sorted(p for p in trained["pred"].iterdir() if p.name != "inference_report.json")
    assert [p.stem for p in outputs] == [p.stem for p in inputs]
    assert all(p.suffix == ".png" for p in outputs), "no temporary or partial files may remain"
    for src, mask in zip(inputs, outputs):
        with Image.open(src) as a, Image.open(mask) as b:
            assert a.size == b.size
            assert b.mode == "L" and set(np.unique(np.asarray(b))) <= {0, 255}


def test_export_and_reload_torchscript(trained):
    ts = trained["root"] / "model.ts"
    bundle(
        "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(trained["ckpt"] / "model.pt"),
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--image_size", "[64,64]",
        cwd=BUNDLE,
    )
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"]
    assert "network_def" in json.loads(extra["inference.json"])

    from transfuse_monai.networks.nets import TransFuse

    eager = TransFuse(img_size=(64, 64)).eval()
    eager.load_state_dict(torch.load(trained["ckpt"] / "model.pt", map_location="cpu", weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=0)


def test_metadata_and_network_io():
    if not SCHEMA.is_file():
        pytest.skip(f"schema not available at {SCHEMA}")
    bundle("verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"), "--filepath", str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert {"version", "changelog", "required_packages_version", "network_data_format"} <= set(meta)
    assert meta["version"] in meta["changelog"]


def test_verify_net_in_out():
    bundle(
        "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.json", cwd=BUNDLE,
    )


def test_workflow_properties(work):
    from monai.bundle import ConfigWorkflow

    train = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="train", dataset_dir=str(work["data"]),
        pretrained=False, image_size=[64, 64], num_workers=0,
    )
    train.initialize()
    assert train.check_properties() == []
    infer = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer",
        input_dir=str(work["data"] / "TestDataset" / "Kvasir" / "images"),
    )
    infer.initialize()
    assert infer.check_properties() == []


def test_bad_dataset_is_reported_before_training(tmp_path):
    data = Path(get_task("polyp").make_sample(tmp_path / "bad", n_train=4, test_sets={}, size=(32, 32)))
    victim = sorted((data / "TrainDataset" / "masks").iterdir())[1]
    victim.unlink()
    proc = bundle(
        "run", "--config_file", "bundles/polyp/configs/train.json", "--dataset_dir", str(data), "--epochs", "1",
        *SMALL, "--ckpt_dir", str(tmp_path / "m"), "--output_dir", str(tmp_path / "o"), check=False,
    )
    assert proc.returncode != 0
    assert victim.stem in proc.stderr and "mask" in proc.stderr.lower()
    assert not (tmp_path / "m").exists(), "nothing may be written when the dataset is invalid"


def test_multi_gpu_config_runs_ddp_on_cpu_with_gloo(work, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29631",
        "-m", "monai.bundle", "run", "training", "--config_file",
        "['bundles/polyp/configs/train.json','bundles/polyp/configs/multi_gpu_train.json']",
        "--dataset_dir", str(work["data"]), "--epochs", "1", "--batch_size", "2", "--val_fraction", "0.25",
        "--multi_scale", "[1.0]", *SMALL, "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    log = proc.stdout + proc.stderr
    assert "gloo" in log or "Train completed" in log
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper must not leak into the saved weights"
    last = torch.load(tmp_path / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    # each of the two ranks saw half of the 9 training images (DistributedSampler, even_divisible): 5 -> 3 batches
    assert last["trainer"]["iteration"] == 3

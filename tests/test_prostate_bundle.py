"""End-to-end test of the prostate bundle on a tiny generated MSD Task05 dataset (two-channel 4D NIfTI volumes,
0.6 x 0.6 x 3.6 mm, non-square in-plane, not RAS, two nested ellipsoid zones).

Runs the bundle as a user does (``python -m monai.bundle ...`` from the repository root): train one fold for an
epoch, evaluate it (per-class Dice, HD95 and ASD in mm, seconds per volume), infer (NIfTI with the input's shape and
affine, labels in {0, 1, 2}), aggregate the folds, export to TorchScript; the same training and inference with
``modalities [0]`` on single-channel 3D volumes; a broken dataset is refused before training. The evaluation's
figures are checked against the metrics of the written predictions, with the spacing from the NIfTI headers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "prostate"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny networks: one thread each, other tests run beside
SMALL = ["--image_size", "[32,32]", "--num_workers", "0"]
TRAIN = [*SMALL, "--pretrained", "false", "--epochs", "1", "--batch_size", "2", "--slices_per_volume", "2",
         "--val_interval", "1", "--fold", "0"]
TRAIN_JSON = "bundles/prostate/configs/train.json"


def bundle(*args: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prostate")
    data = Path(get_task("prostate").make_sample(root / "data", n_train=6, n_test=2, size=(40, 48, 6), seed=3))
    return {"root": root, "data": data, "ckpt": root / "models" / "fold0", "eval": root / "eval" / "fold0"}


@pytest.fixture(scope="module")
def trained(work) -> dict:
    proc = bundle("run", "training", "--config_file", TRAIN_JSON, "--dataset_dir", work["data"], *TRAIN,
                  "--ckpt_dir", work["ckpt"], "--output_dir", work["eval"])
    return {**work, "log": proc.stdout + proc.stderr}


@pytest.fixture(scope="module")
def evaluated(trained) -> dict:
    proc = bundle("run", "--config_file", f"['{TRAIN_JSON}','bundles/prostate/configs/evaluate.json']",
                  "--dataset_dir", trained["data"], *SMALL, "--fold", "0", "--ckpt_dir", trained["ckpt"],
                  "--output_dir", trained["eval"])
    return {**trained, "eval_stdout": proc.stdout}


@pytest.fixture(scope="module")
def inferred(trained) -> dict:
    """Inference on the fold's validation volumes (to compare with the evaluation) and the unlabelled test ones."""
    task = get_task("prostate")
    images = [d["image"] for d in task.datalist(trained["data"], "val", fold=0)]
    images += [d["image"] for d in task.datalist(trained["data"], "test")]
    listing = trained["root"] / "to_segment.json"
    listing.write_text(json.dumps({"testing": [{"image": p} for p in images]}))
    out = trained["root"] / "pred"
    bundle("run", "--config_file", "bundles/prostate/configs/inference.json", "--input_dir", listing, *SMALL,
           "--ckpt_dir", trained["ckpt"], "--output_dir", out)
    return {**trained, "pred": out, "images": images}


def test_training_one_fold(trained):
    task = get_task("prostate")
    n_train = len(task.datalist(trained["data"], "train", fold=0))
    assert (trained["ckpt"] / "model.pt").is_file(), "best checkpoint (by mean foreground Dice) missing"
    last = torch.load(trained["ckpt"] / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert set(last) >= {"model", "optimizer", "trainer"}
    assert last["trainer"]["epoch_length"] == math.ceil(n_train / 2) and last["trainer"]["iteration"] == 2
    assert "val_dice_PZ" in trained["log"] and "val_dice_TZ" in trained["log"] and "val_mean_dice" in trained["log"]
    state = torch.load(trained["ckpt"] / "model.pt", map_location="cpu", weights_only=True)
    assert state["head_final.1.conv.weight"].shape[0] == 3, "softmax over background, PZ, TZ"


def test_evaluation_reports_per_volume_metrics_and_seconds(evaluated):
    out, stdout = evaluated["eval"], evaluated["eval_stdout"]
    names = [d["name"] for d in get_task("prostate").datalist(evaluated["data"], "val", fold=0)]
    rows = (out / "segmentation_per_image.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    assert header[:2] == ["set", "name"]
    assert {"dice", "dice_PZ", "dice_TZ", "hd95_PZ", "hd95_TZ", "asd_PZ", "asd_TZ"} <= set(header)
    assert [r.split(",")[1] for r in rows[1:]] == names and all(r.startswith("fold0,") for r in rows[1:])
    summary = json.loads((out / "segmentation_summary.json").read_text())
    assert list(summary) == ["fold0"] and summary["fold0"]["n"] == len(names)
    assert "hd95 (mm)" in stdout and "| PZ " in stdout and "| TZ " in stdout
    seconds = json.loads((out / "seconds_summary.json").read_text())
    assert seconds["n"] == len(names) and 0 < seconds["seconds_per_volume"] < 60
    assert 25e6 < seconds["parameters"] < 28e6  # TransFuse-S
    assert "seconds per volume:" in stdout
    per_volume = (out / "seconds_per_volume.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in per_volume[1:]] == names
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.name.split("_slice")[0] for p in overlays] == names


def test_inference_writes_labels_on_the_input_grid(inferred):
    outputs = sorted(p.name for p in inferred["pred"].iterdir() if p.name != "inference_report.json")
    assert outputs == sorted(Path(p).name for p in inferred["images"]), "no partial or extra files"
    for image in inferred["images"]:
        source = nib.load(image)
        written = nib.load(inferred["pred"] / Path(image).name)
        assert written.shape == source.shape[:3]
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
        assert written.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2}


def test_evaluation_figures_are_those_of_the_written_predictions_in_mm(evaluated, inferred):
    """The evaluation's per-volume Dice, HD95 and ASD equal the metrics of the inference output against the label
    file, with the voxel spacing of the NIfTI header: the distances are in mm on the original grid."""
    from transfuse_monai.metrics import SegmentationMetrics

    metric = SegmentationMetrics(("background", "PZ", "TZ"), activation="softmax")
    rows = (evaluated["eval"] / "segmentation_per_image.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    checked = 0
    for row in rows[1:]:
        values = dict(zip(header, row.split(",")))
        label = nib.load(evaluated["data"] / "labelsTr" / f"{values['name']}.nii.gz")
        pred = np.asarray(nib.load(inferred["pred"] / f"{values['name']}.nii.gz").dataobj)
        expected = metric(pred[None], np.asarray(label.dataobj)[None], spacing=label.header.get_zooms()[:3])
        for key in ("dice_PZ", "dice_TZ", "hd95_PZ", "hd95_TZ", "asd_PZ", "asd_TZ"):
            got = float(values[key])
            if math.isnan(expected[key]):
                assert math.isnan(got), key
            else:
                assert got == pytest.approx(expected[key], abs=1e-4), (values["name"], key)
                checked += "hd95" in key or "asd" in key
    assert checked > 0, "no distance was compared (every class missed)"


def test_aggregate_command_writes_the_cross_validation_table(evaluated, capsys, monkeypatch):
    from monai.bundle import run

    out = evaluated["root"] / "cv"
    monkeypatch.chdir(REPO)  # `python -m monai.bundle run aggregating ...`, in-process: no second interpreter start
    run("aggregating", config_file=str(CONFIGS / "aggregate.json"), eval_root=str(evaluated["eval"].parent),
        folds=[0], output_dir=str(out))
    assert "| TransFuse-S (this bundle), 1 fold(s) | 26.1 |" in capsys.readouterr().out
    result = json.loads((out / "cross_validation.json").read_text())
    summary = json.loads((evaluated["eval"] / "segmentation_summary.json").read_text())["fold0"]
    assert result["mean"]["dice_PZ"] == pytest.approx(summary["dice_PZ"])
    assert (out / "cross_validation.md").read_text().startswith("| method | params (M) | PZ Dice | TZ Dice |")


def test_export_and_reload_torchscript(trained):
    from monai.bundle import ckpt_export

    from transfuse_monai.networks.nets import TransFuse

    ts = trained["root"] / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(trained["ckpt"] / "model.pt"),
                meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.json"),
                image_size=[32, 32], bundle_root=str(BUNDLE))
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    eager = TransFuse(in_channels=2, out_channels=3, img_size=(32, 32)).eval()
    eager.load_state_dict(torch.load(trained["ckpt"] / "model.pt", map_location="cpu", weights_only=True))
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=0)


def test_metadata_and_network_io(single_thread):
    from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

    if SCHEMA.is_file():
        verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "PZ", "2": "TZ"}
    # a volume of any depth (MONAI Label serves the bundle as 3D), each slice resized in-plane for the 2D network
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    in_plane = parser.get_parsed_content("image_size")
    for spec in (*meta["network_data_format"]["inputs"].values(), *meta["network_data_format"]["outputs"].values()):
        assert spec["spatial_shape"] == [*in_plane, "*"]
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE),
                      **{"_meta_#network_data_format#inputs#image#spatial_shape": in_plane})


def test_t2_only_on_single_channel_3d_volumes(tmp_path, monkeypatch, single_thread):
    data = Path(get_task("prostate").make_sample(tmp_path / "t2", n_train=5, n_test=1, size=(36, 44, 5), seed=5,
                                                 channels=1))
    bundle("run", "training", "--config_file", TRAIN_JSON, "--dataset_dir", data, "--modalities", "[0]", *TRAIN,
           "--ckpt_dir", tmp_path / "models", "--output_dir", tmp_path / "eval")
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["cnn.conv1.weight"].shape[1] == 1, "in_channels follows modalities"
    from monai.bundle import run

    monkeypatch.chdir(REPO)  # inference in-process (`python -m monai.bundle run --config_file ...inference.json`)
    run("run", config_file=str(CONFIGS / "inference.json"), modalities=[0], input_dir=str(data / "imagesTs"),
        image_size=[32, 32], num_workers=0, ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "pred"))
    (image,) = sorted((data / "imagesTs").iterdir())
    written = nib.load(tmp_path / "pred" / image.name)
    assert written.shape == nib.load(image).shape == (36, 44, 5)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2}


def test_bad_dataset_is_reported_before_training(work, tmp_path, monkeypatch):
    import shutil

    data = tmp_path / "bad"
    shutil.copytree(work["data"], data)
    (data / "labelsTr" / "prostate_02.nii.gz").unlink()
    image = nib.load(data / "imagesTr" / "prostate_04.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine), data / "imagesTr" / "prostate_04.nii.gz")
    from monai.bundle import run

    monkeypatch.chdir(REPO)  # `python -m monai.bundle run ...`, in-process
    with pytest.raises(Exception) as err:
        run("run", config_file=str(REPO / TRAIN_JSON), dataset_dir=str(data), image_size=[32, 32], num_workers=0,
            pretrained=False, epochs=1, fold=0, ckpt_dir=str(tmp_path / "m"), output_dir=str(tmp_path / "o"))
    chain, error = [], err.value
    while error is not None:  # MONAI's config parser wraps the task's ValueError
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    message = "\n".join(chain)
    assert "label file not found: 'prostate_02.nii.gz'" in message
    assert "image 'prostate_04.nii.gz' is 3D" in message and "modalities [0]" in message
    assert not (tmp_path / "m").exists(), "nothing may be written when the dataset is invalid"


def test_monai_label_infers_a_label_volume_on_the_input_grid(trained, tmp_path):
    """The bundle loads in MONAI Label's bundle machinery as a 3D bundle: ``BundleInferTask`` on a NIfTI volume returns
    a label volume of the input's shape (and affine) with the zones' values, and its labels are PZ = 1, TZ = 2."""
    pytest.importorskip("monailabel")
    from monailabel.tasks.infer.bundle import BundleInferTask

    path = tmp_path / "prostate"
    shutil.copytree(BUNDLE, path, ignore=shutil.ignore_patterns("models", "eval", "output"))
    infer_json = path / "configs" / "inference.json"
    config = json.loads(infer_json.read_text())
    config.update({"image_size": [32, 32], "num_workers": 0})
    infer_json.write_text(json.dumps(config, indent=2))
    (path / "models").mkdir()
    shutil.copy(trained["ckpt"] / "model.pt", path / "models" / "model.pt")

    task = BundleInferTask(str(path), {})
    assert task.is_valid(), "MONAI Label did not accept the bundle"
    assert task.dimension == 3, "MONAI Label must serve the volume bundle as 3D (len(spatial_shape) in metadata.json)"
    assert task.labels == {"pz": 1, "tz": 2}  # MONAI Label lower-cases channel_def names
    image = get_task("prostate").datalist(trained["data"], "test")[0]["image"]
    label_file, _ = task({"image": image, "device": "cpu"})
    label, source = nib.load(label_file), nib.load(image)
    assert label.shape == source.shape[:3], (label.shape, source.shape)
    np.testing.assert_allclose(label.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1, 2}


def test_largest_component_keeps_one_component_per_zone(trained, tmp_path, monkeypatch, single_thread):
    """``--largest_component true`` keeps, per zone, the largest 3D connected component of the plain prediction (full
    connectivity, as MONAI's ``KeepLargestConnectedComponentd``), and nothing else changes."""
    from monai.bundle import run
    from scipy import ndimage

    image = get_task("prostate").datalist(trained["data"], "test")[0]["image"]
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(image, folder)
    monkeypatch.chdir(REPO)  # `python -m monai.bundle run --config_file .../inference.json`, in-process
    outputs = {}
    for flag in (False, True):
        out = tmp_path / f"lcc_{flag}"
        run("run", config_file=str(CONFIGS / "inference.json"), input_dir=str(folder), image_size=[32, 32],
            num_workers=0, ckpt_dir=str(trained["ckpt"]), output_dir=str(out), largest_component=flag)
        outputs[flag] = np.asarray(nib.load(out / Path(image).name).dataobj)
    plain, kept = outputs[False], outputs[True]
    assert (plain > 0).any(), "the trained model predicts no zone at all: nothing to check"
    structure = np.ones((3, 3, 3), bool)
    expected = np.zeros_like(plain)
    for zone in (1, 2):
        components, n = ndimage.label(plain == zone, structure=structure)
        if n:
            sizes = np.bincount(components.ravel())[1:]
            expected[components == 1 + int(np.argmax(sizes))] = zone
        assert ndimage.label(kept == zone, structure=structure)[1] <= 1, f"zone {zone}: more than one component"
    np.testing.assert_array_equal(kept, expected)


def test_multi_gpu_config_runs_ddp_on_cpu_with_gloo(work, tmp_path):
    """The multi-GPU config (``torchrun`` + ``multi_gpu_train.json``) trains one fold with 2 processes (gloo on CPU):
    the slices are shared between the ranks and the saved weights carry no DDP prefix."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29659",
        "-m", "monai.bundle", "run", "training", "--config_file",
        f"['{TRAIN_JSON}','bundles/prostate/configs/multi_gpu_train.json']",
        "--dataset_dir", str(work["data"]), *TRAIN,
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper must not leak into the saved weights"
    assert state["head_final.1.conv.weight"].shape[0] == 3
    last = torch.load(tmp_path / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    n_train = len(get_task("prostate").datalist(work["data"], "train", fold=0))
    per_rank = math.ceil(n_train / 2)  # DistributedSampler(even_divisible=True)
    assert last["trainer"]["iteration"] == math.ceil(per_rank / 2), "each rank sees half the volumes, batches of 2"

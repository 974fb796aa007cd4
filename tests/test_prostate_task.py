"""The prostate task (MSD Task05) in-process: the generated sample, the fixed 5-fold cross-validation, the start-up
check of the data (every problem named with its file), the input-channel selection, class-balanced 2D slices, the
atomic NIfTI writer, the seconds-per-volume handler and the fold table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from transfuse_monai.tasks import NUM_FOLDS, ProstateTask, get_task
from transfuse_monai.data import AtomicNibabelWriter
from transfuse_monai.handlers import SecondsPerVolume
from transfuse_monai.handlers import aggregate_folds
from transfuse_monai.tasks.prostate import PAPER_TABLE4
from transfuse_monai.transforms import SelectModalitiesd
from transfuse_monai.transforms import RandClassSlicesd

SIZE = (40, 48, 6)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return Path(get_task("prostate").make_sample(tmp_path_factory.mktemp("prostate") / "data", n_train=7, n_test=2,
                                                 size=SIZE, seed=1))


def _fresh_copy(sample: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(sample, dest)
    return dest


# ------------------------------------------------------------------------------------------------------ sample


def test_generated_sample_has_the_msd_layout_and_learnable_zones(sample):
    meta = json.loads((sample / "dataset.json").read_text())
    assert meta["modality"] == {"0": "T2", "1": "ADC"} and meta["labels"] == {"0": "background", "1": "PZ", "2": "TZ"}
    assert len(meta["training"]) == 7 and len(meta["test"]) == 2
    image = nib.load(sample / "imagesTr" / "prostate_00.nii.gz")
    label = nib.load(sample / "labelsTr" / "prostate_00.nii.gz")
    assert image.shape == (*SIZE, 2) and label.shape == SIZE  # channel last, non-square in-plane
    np.testing.assert_allclose(image.header.get_zooms()[:3], (0.6, 0.6, 3.6), rtol=1e-5)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # not RAS: the bundle must reorient and invert
    np.testing.assert_allclose(image.affine, label.affine)
    img, lbl = np.asarray(image.dataobj), np.asarray(label.dataobj)
    assert set(np.unique(lbl).tolist()) == {0, 1, 2}
    assert not lbl[..., 0].any() and not lbl[..., -1].any(), "first and last slices are background only"
    body = (img[..., 0] > 0) & (lbl == 0)
    t2 = [img[..., 0][m].mean() for m in (body, lbl == 1, lbl == 2)]
    adc = [img[..., 1][m].mean() for m in (body, lbl == 1, lbl == 2)]
    assert t2[1] > t2[2] > t2[0] and adc[1] > adc[2] > adc[0]
    assert (img[..., 0] == 0).mean() > 0.1, "outside the body is zero (z-scores over the non-zero region)"


def test_t2_only_sample_is_3d(tmp_path):
    root = Path(get_task("prostate").make_sample(tmp_path, n_train=5, size=(24, 20, 4), channels=1))
    assert nib.load(root / "imagesTr" / "prostate_00.nii.gz").shape == (24, 20, 4)
    assert json.loads((root / "dataset.json").read_text())["modality"] == {"0": "T2"}
    with pytest.raises(ValueError, match="channels must be 1"):
        get_task("prostate").make_sample(tmp_path / "x", channels=3)


def test_task_declares_classes_channels_and_modalities():
    task = get_task("prostate")
    assert task.class_names == ("background", "PZ", "TZ") and task.activation == "softmax"
    assert (task.in_channels, task.out_channels, task.spatial_dims) == (2, 3, 3)
    assert task.channel_def() == {"0": "background", "1": "PZ", "2": "TZ"} and task.labels() == {"PZ": 1, "TZ": 2}
    t2 = get_task("prostate", modalities=[0])
    assert t2.in_channels == 1 and t2.channel_names == ("T2",)
    assert get_task("prostate", modalities=[1]).channel_names == ("ADC",)
    for bad in ([], [2], [0, 0], 0):
        with pytest.raises(ValueError, match="modalities"):
            ProstateTask(modalities=bad)


# ------------------------------------------------------------------------------------------------------ folds


def _fake_msd(root: Path, n: int, reverse: bool = False) -> Path:
    """A dataset.json listing ``n`` cases with MSD-like gaps in the numbering (files are not needed for folds)."""
    ids = [i for i in range(2 * n) if i % 3 != 1][:n]
    items = [{"image": f"./imagesTr/prostate_{i:02d}.nii.gz", "label": f"./labelsTr/prostate_{i:02d}.nii.gz"}
             for i in ids]
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"training": items[::-1] if reverse else items}))
    return root


def test_folds_are_deterministic_disjoint_and_complete(tmp_path):
    task = get_task("prostate")
    folds = task.folds(_fake_msd(tmp_path / "a", 32))
    names = sorted(n for fold in folds for n in fold)
    assert len(folds) == NUM_FOLDS == 5
    assert len(names) == len(set(names)) == 32, "every case in exactly one fold"
    assert sorted(len(f) for f in folds) == [6, 6, 6, 7, 7]
    assert folds == ProstateTask().folds(tmp_path / "a"), "same folds from another instance"
    assert folds == task.folds(_fake_msd(tmp_path / "b", 32, reverse=True)), "independent of dataset.json's order"
    assert folds != ProstateTask(fold_seed=1).folds(tmp_path / "a")
    assert folds[0] != names[: len(folds[0])], "shuffled, not dealt in name order"


def test_train_and_val_datalists_of_each_fold(sample):
    task = get_task("prostate")
    every = task.datalist(sample, "all")
    assert [d["name"] for d in every] == [f"prostate_{i:02d}" for i in range(7)]
    seen = []
    for k in range(NUM_FOLDS):
        train = task.datalist(sample, "train", fold=k)
        val = task.datalist(sample, "val", fold=k)
        assert val and {d["name"] for d in train}.isdisjoint(d["name"] for d in val)
        assert sorted(d["name"] for d in train + val) == [d["name"] for d in every]
        assert all(d["fold"] == k for d in val) and all(d["fold"] != k for d in train)
        assert all(os.path.isabs(d["image"]) and os.path.isabs(d["label"]) for d in val)
        seen += [d["name"] for d in val]
    assert sorted(seen) == [d["name"] for d in every]
    assert task.datalist(sample, "train", fold="all") == task.datalist(sample, "val", fold="all") == every
    assert task.datalist(sample, "train", fold="3") == task.datalist(sample, "train", fold=3)
    test = task.datalist(sample, "test")
    assert [d["name"] for d in test] == ["prostate_07", "prostate_08"] and "label" not in test[0]


@pytest.mark.parametrize("fold, match", [(5, "0..4 or 'all'"), (-1, "0..4 or 'all'"), ("first", "0..4 or 'all'"),
                                         (None, "needs a fold"), (True, "0..4 or 'all'")])
def test_bad_fold_is_refused(sample, fold, match):
    with pytest.raises(ValueError, match=match):
        get_task("prostate").datalist(sample, "train", fold=fold)


def test_too_few_cases_for_five_folds(tmp_path):
    root = Path(get_task("prostate").make_sample(tmp_path, n_train=4, size=(16, 16, 3)))
    with pytest.raises(ValueError, match="4 training case.*5-fold cross-validation needs at least 5"):
        get_task("prostate").datalist(root, "all")


# ------------------------------------------------------------------------------------------------------ checks


def test_every_bad_input_is_named_in_one_error(sample, tmp_path):
    root = _fresh_copy(sample, tmp_path / "bad")
    labels, images = root / "labelsTr", root / "imagesTr"
    (labels / "prostate_01.nii.gz").unlink()  # missing label
    lbl = nib.load(labels / "prostate_02.nii.gz")
    data = np.asarray(lbl.dataobj).copy()
    data[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(data, lbl.affine), labels / "prostate_02.nii.gz")  # value outside {0, 1, 2}
    nib.save(nib.Nifti1Image(np.zeros((40, 46, 6), np.uint8), lbl.affine), labels / "prostate_03.nii.gz")  # shape
    img = nib.load(images / "prostate_04.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), images / "prostate_04.nii.gz")  # 3D
    shifted = img.affine.copy()
    shifted[0, 3] += 5.0
    lbl5 = nib.load(labels / "prostate_05.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lbl5.dataobj), shifted), labels / "prostate_05.nii.gz")  # affine
    (images / "prostate_06.nii.gz").write_bytes(b"not a nifti file")  # unreadable
    with pytest.raises(ValueError) as err:
        get_task("prostate").datalist(root, "train", fold=0)
    message = str(err.value)
    assert "6 problem(s)" in message and str(root) in message
    expected = {
        "prostate_01": "label file not found: 'prostate_01.nii.gz'",
        "prostate_02": "label 'prostate_02.nii.gz' holds value(s) 0, 1, 2, 3 outside the class indices 0..2",
        "prostate_03": "shape mismatch: image 'prostate_03.nii.gz' is (40, 48, 6) but label 'prostate_03.nii.gz' is "
                       "(40, 46, 6)",
        "prostate_04": "image 'prostate_04.nii.gz' is 3D (40, 48, 6), but modalities [0, 1] need a 4D image with 2 "
                       "channels (T2, ADC)",
        "prostate_05": "affine mismatch: image 'prostate_05.nii.gz' and label 'prostate_05.nii.gz'",
        "prostate_06": "unreadable image file 'prostate_06.nii.gz'",
    }
    for case, text in expected.items():
        assert text in message, (case, message)
    assert "prostate_00" not in message


def test_t2_only_accepts_3d_images_and_checks_channels(sample, tmp_path):
    root = _fresh_copy(sample, tmp_path / "t2")
    img = nib.load(root / "imagesTr" / "prostate_04.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), root / "imagesTr" / "prostate_04.nii.gz")
    assert len(get_task("prostate", modalities=[0]).datalist(root, "all")) == 7  # a 3D image is channel 0
    with pytest.raises(ValueError, match="prostate_04.nii.gz.*is 3D"):
        get_task("prostate").datalist(root, "all")


def test_missing_dataset_json_and_test_list(tmp_path, sample):
    task = get_task("prostate")
    assert task.is_dataset(sample) and not task.is_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="No dataset.json"):
        task.datalist(tmp_path, "all")
    root = _fake_msd(tmp_path / "no_test", 5)
    with pytest.raises(ValueError, match="no 'test' list"):
        task.datalist(root, "test", validate=False)
    with pytest.raises(ValueError, match="Unknown prostate split 'validation'"):
        task.datalist(sample, "validation")


def test_inference_datalist_sources(sample, tmp_path):
    task = get_task("prostate")
    folder = task.inference_datalist(sample / "imagesTs")
    assert [d["name"] for d in folder] == ["prostate_07", "prostate_08"]
    assert task.inference_datalist(sample) == folder  # an MSD folder: its test list
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"testing": [{"image": str(sample / "imagesTr" / "prostate_00.nii.gz")}]}))
    assert [d["name"] for d in task.inference_datalist(listing)] == ["prostate_00"]
    assert len(task.inference_datalist([sample / "imagesTs" / "prostate_07.nii.gz"])) == 1
    one = task.inference_datalist(sample / "imagesTs" / "prostate_08.nii.gz")  # one volume as the input
    assert one == [folder[1]]
    with pytest.raises(FileNotFoundError, match="not found"):
        task.inference_datalist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No NIfTI image"):
        task.inference_datalist(tmp_path / "empty")
    single = tmp_path / "single"
    single.mkdir()
    img = nib.load(sample / "imagesTs" / "prostate_07.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), single / "t2.nii.gz")
    with pytest.raises(ValueError, match="t2.nii.gz.*is 3D"):
        task.inference_datalist(single)
    assert len(get_task("prostate", modalities=[0]).inference_datalist(single)) == 1


def test_download_option_uses_monai_decathlon_dataset(tmp_path, monkeypatch):
    import monai.apps

    calls = []

    class FakeDecathlon:
        def __init__(self, root_dir, task, section, download, **kwargs):
            calls.append((root_dir, task, section, download))
            _fake_msd(Path(root_dir) / task, 5)

    monkeypatch.setattr(monai.apps, "DecathlonDataset", FakeDecathlon)
    found = get_task("prostate", download=True).resolve_dataset(tmp_path / "msd", tmp_path / "demo")
    assert calls == [(str(tmp_path / "msd"), "Task05_Prostate", "training", True)]
    assert found == str(tmp_path / "msd" / "Task05_Prostate")
    # once there, the dataset is found without downloading again, from either folder
    assert get_task("prostate", download=True).resolve_dataset(tmp_path / "msd", tmp_path / "demo") == found
    assert len(calls) == 1 and not (tmp_path / "demo").exists()


# ------------------------------------------------------------------------------------------------------ transforms


def test_select_modalities():
    from monai.data import MetaTensor

    volume = MetaTensor(torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).reshape(2, 4, 5, 3),
                        meta={"filename_or_obj": "case.nii.gz"})
    adc = SelectModalitiesd("image", [1])({"image": volume})["image"]
    assert adc.shape == (1, 4, 5, 3) and torch.equal(adc.as_tensor(), volume[1:].as_tensor())
    swapped = SelectModalitiesd("image", [1, 0])({"image": volume})["image"]
    assert torch.equal(swapped[0].as_tensor(), volume[1].as_tensor())
    single = volume[:1]
    assert SelectModalitiesd("image", [0])({"image": single})["image"] is single
    with pytest.raises(ValueError, match=r"case.nii.gz.*3D image \(1 channel\).*modalities \[0, 1\]"):
        SelectModalitiesd("image", [0, 1])({"image": single})
    with pytest.raises(ValueError, match="non-empty list"):
        SelectModalitiesd("image", [])


def test_class_balanced_slices_are_2d_and_favour_the_zones():
    label = torch.zeros(1, 8, 10, 12)
    label[0, 2:6, 3:7, 5] = 1  # PZ on slice 5 only
    label[0, 3:5, 4:6, 9] = 2  # TZ on slice 9 only
    image = torch.arange(12, dtype=torch.float32).view(1, 1, 1, 12).expand(2, 8, 10, 12).clone()  # value = slice
    sampler = RandClassSlicesd(["image", "label"], "label", num_classes=3, ratios=[1, 1, 1], num_samples=300)
    sampler.set_random_state(seed=0)
    samples = sampler({"image": image, "label": label})
    assert len(samples) == 300
    slices = []
    for s in samples:
        assert s["image"].shape == (2, 8, 10) and s["label"].shape == (1, 8, 10)
        z = int(s["image"][0, 0, 0])
        assert torch.equal(torch.as_tensor(s["label"]), label[..., z])
        slices.append(z)
    counts = np.bincount(slices, minlength=12) / len(slices)
    assert abs(counts[5] - 1 / 3) < 0.08 and abs(counts[9] - 1 / 3) < 0.08  # 10 of 12 slices share the rest
    again = RandClassSlicesd(["image", "label"], "label", num_classes=3, num_samples=300)
    again.set_random_state(seed=0)
    assert [int(s["image"][0, 0, 0]) for s in again({"image": image, "label": label})] == slices
    with pytest.raises(ValueError, match="slice_dim"):
        RandClassSlicesd(["image", "label"], "label", num_classes=3, slice_dim=3)


def test_atomic_nibabel_writer(tmp_path, monkeypatch):
    writer = AtomicNibabelWriter(output_dtype=np.uint8)
    data = torch.randint(0, 3, (1, 6, 7, 4))
    affine = torch.diag(torch.tensor([-0.6, -0.6, 3.6, 1.0], dtype=torch.float64))
    writer.set_data_array(data, channel_dim=0)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    writer.write(tmp_path / "case.nii.gz")
    written = nib.load(tmp_path / "case.nii.gz")
    assert written.shape == (6, 7, 4) and np.array_equal(np.asarray(written.dataobj), data[0].numpy())
    np.testing.assert_allclose(written.affine, affine.numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"]

    import monai.data

    def broken(self, filename, verbose=False, **kwargs):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(monai.data.NibabelWriter, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        writer.write(tmp_path / "other.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"], "no partial file and no truncated output"


# ------------------------------------------------------------------------------------------------------ timing


def test_seconds_per_volume_handler(tmp_path):
    import time

    from ignite.engine import Engine

    def step(engine, batch):
        time.sleep(0.02 * len(batch))
        return [{"pred": None} for _ in batch]

    net = torch.nn.Conv2d(2, 3, 3)
    timer = SecondsPerVolume(tmp_path, network=net, print_summary=False)
    engine = Engine(step)
    timer.attach(engine)
    engine.run([[{"name": "a"}], [{"name": "b"}], [{"name": "c"}, {"name": "d"}]], max_epochs=1)
    rows = (tmp_path / "seconds_per_volume.csv").read_text().strip().splitlines()
    assert rows[0] == "name,seconds" and [r.split(",")[0] for r in rows[1:]] == ["a", "b", "c", "d"]
    seconds = [float(r.split(",")[1]) for r in rows[1:]]
    assert all(0.018 < s < 0.5 for s in seconds)
    summary = json.loads((tmp_path / "seconds_summary.json").read_text())
    assert summary["n"] == 4 and summary["parameters"] == sum(p.numel() for p in net.parameters()) == 57
    assert summary["seconds_per_volume"] == pytest.approx(np.mean(seconds))
    assert engine.state.metrics["seconds_per_volume"] == pytest.approx(np.mean(seconds))


def _fold_dir(path: Path, pz: float, tz: float, seconds: float | None) -> Path:
    path.mkdir(parents=True)
    summary = {"fold": {"n": 6, "dice": (pz + tz) / 2, "dice_PZ": pz, "dice_TZ": tz, "hd95": 4.0, "asd": None}}
    (path / "segmentation_summary.json").write_text(json.dumps(summary))
    if seconds is not None:
        (path / "seconds_summary.json").write_text(json.dumps({"seconds_per_volume": seconds, "parameters": 26077019}))
    return path


def test_fold_table(tmp_path):
    dirs = [_fold_dir(tmp_path / f"fold{k}", pz, tz, s)
            for k, (pz, tz, s) in enumerate([(0.6, 0.8, 0.2), (0.7, 0.9, 0.3), (0.8, 0.85, None)])]
    result = aggregate_folds(dirs, tmp_path, reference=PAPER_TABLE4)
    assert list(result["folds"]) == ["fold0", "fold1", "fold2"]
    assert result["mean"]["dice_PZ"] == pytest.approx(0.7) and result["std"]["dice_PZ"] == pytest.approx(0.1)
    assert result["mean"]["dice"] == pytest.approx(np.mean([0.7, 0.8, 0.825]))
    assert result["mean"]["seconds_per_volume"] == pytest.approx(0.25)  # folds without timing are skipped
    assert np.isnan(result["mean"]["asd"])
    table = (tmp_path / "cross_validation.md").read_text()
    assert "| TransFuse-S (this bundle), 3 fold(s) | 26.1 | 0.7000 +- 0.1000 | 0.8500 +- 0.0500 |" in table
    assert "| TransFuse-S (paper) | n/a | 0.6738 | 0.8539 | 0.7639 |" in table
    assert PAPER_TABLE4["nnU-Net 3D full resolution"]["seconds_per_volume"] == 0.381
    saved = json.loads((tmp_path / "cross_validation.json").read_text())
    assert saved["mean"]["asd"] is None and saved["folds"]["fold1"]["dice_TZ"] == 0.9
    with pytest.raises(FileNotFoundError, match="evaluate this fold first"):
        aggregate_folds([tmp_path / "fold9"])
    with pytest.raises(ValueError, match="at least one fold"):
        aggregate_folds([])

# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The hip task: radiograph loading (DICOM DX MONOCHROME1/2, rescale, windowing, spacing; grey and 3-channel PNG;
NIfTI), the datalist JSON and its start-up checks, the spacing rules, the left/right-swapping flip, the 7:1:2 split
command, and distances in mm through the bundle's own evaluation code on discs shifted by a known number of pixels."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from monai.transforms import EnsureChannelFirstd, LoadImaged

from transfuse_monai.data import RadiographReader, read_radiograph, write_split_datalist
from transfuse_monai.data.__main__ import main
from transfuse_monai.data.formats import KNOWN_EXTENSIONS
from transfuse_monai.data.synthetic import draw_hip, write_dicom
from transfuse_monai.tasks import HIP_CLASSES, HipTask, get_task
from transfuse_monai.transforms import RadiographSpacingd, RandHorizontalFlipSwapd

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "hip" / "configs"


def _ramp(h: int = 24, w: int = 32) -> np.ndarray:
    """A [0, 1] image whose value grows along the columns (orientation and intensity checks)."""
    return np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))


def _write_dataset(root: Path, entries: dict, spacing=None) -> Path:
    content = {k: v for k, v in entries.items()}
    if spacing is not None:
        content["spacing"] = spacing
    root.mkdir(parents=True, exist_ok=True)
    (root / "datalist.json").write_text(json.dumps(content))
    return root


def test_task_declaration():
    task = get_task("hip")
    assert isinstance(task, HipTask)
    assert task.class_names == HIP_CLASSES == ("background", "pelvis", "left femur", "right femur")
    assert (task.activation, task.in_channels, task.out_channels, task.spatial_dims) == ("softmax", 1, 4, 2)
    assert task.distance_unit == "mm"
    assert task.channel_def() == {"0": "background", "1": "pelvis", "2": "left femur", "3": "right femur"}
    assert task.labels() == {"pelvis": 1, "left femur": 2, "right femur": 3}


def test_dicom_monochrome2_rescale_and_imager_spacing(tmp_path):
    ramp = _ramp()
    path = write_dicom(tmp_path / "a.dcm", ramp, spacing=(0.1, 0.143), bits_stored=12, slope=2.0, intercept=-1000.0)
    array, info = read_radiograph(path, window=False)
    stored = np.round(ramp * 4095)
    np.testing.assert_allclose(array, stored * 2.0 - 1000.0)  # modality LUT applied
    assert info["spacing"] == (0.1, 0.143) and info["spacing_source"] == "ImagerPixelSpacing"
    assert info["photometric_interpretation"] == "MONOCHROME2"


def test_dicom_monochrome1_16bit_is_inverted(tmp_path):
    ramp = _ramp()
    mono1 = write_dicom(tmp_path / "m1.dcm", ramp, monochrome1=True, bits_stored=16)
    mono2 = write_dicom(tmp_path / "m2.dcm", ramp, monochrome1=False, bits_stored=16)
    a1, info = read_radiograph(mono1)
    a2, _ = read_radiograph(mono2)
    assert info["photometric_interpretation"] == "MONOCHROME1"
    # bright bone in both: values grow along the columns after the inversion of MONOCHROME1
    assert np.all(np.diff(a1[0]) > 0) and np.all(np.diff(a2[0]) > 0)
    np.testing.assert_allclose((a1 - a1.min()) / np.ptp(a1), (a2 - a2.min()) / np.ptp(a2), atol=1e-4)
    raw, _ = read_radiograph(mono1, invert_monochrome1=False, window=False)
    assert np.all(np.diff(raw[0]) < 0)


def test_dicom_windowing_clips_to_the_window(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "w.dcm", _ramp(), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = "2048", "1024"  # a narrow window: the ends of the ramp saturate
    ds.save_as(path)
    windowed, _ = read_radiograph(path, window=True)
    plain, _ = read_radiograph(path, window=False)
    assert np.ptp(plain) == 4095
    row = windowed[0]
    assert row[0] == row[1] == row.min() and row[-1] == row[-2] == row.max()  # clipped outside the window
    assert len(np.unique(row)) < len(np.unique(plain[0]))


def test_dicom_pixel_spacing_is_preferred(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "p.dcm", _ramp(), spacing=(0.15, 0.15))
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = ["0.12", "0.13"]  # calibrated in the patient plane
    ds.save_as(path)
    _, info = read_radiograph(path)
    assert info["spacing"] == (0.12, 0.13) and info["spacing_source"] == "PixelSpacing"


def test_png_grey_and_rgb_and_nifti(tmp_path):
    import nibabel as nib

    grey = np.round(_ramp() * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    nib.save(nib.Nifti1Image(grey.astype(np.int16), np.diag([0.2, 0.3, 1, 1])), str(tmp_path / "n.nii.gz"))
    g, gi = read_radiograph(tmp_path / "g.png")
    c, _ = read_radiograph(tmp_path / "rgb.png")
    n, ni = read_radiograph(tmp_path / "n.nii.gz")
    assert g.shape == c.shape == n.shape == (24, 32)
    np.testing.assert_allclose(g, c)
    np.testing.assert_allclose(g, n)
    assert gi["spacing"] is None and ni["spacing"] == pytest.approx((0.2, 0.3))


def test_reader_and_spacing_transform(tmp_path):
    write_dicom(tmp_path / "d.dcm", _ramp(), spacing=(0.1, 0.143))
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "l.png")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "i.png")
    load = [
        LoadImaged("image", reader=RadiographReader(), image_only=True),
        LoadImaged("label", reader=RadiographReader(label=True), image_only=True),
        EnsureChannelFirstd(["image", "label"]),
    ]

    def run(item, **kwargs):
        for t in load:
            item = t(item)
        return RadiographSpacingd(["image", "label"], **kwargs)(item)

    # the file's spacing wins over the datalist's and reaches the PNG label
    out = run({"image": str(tmp_path / "d.dcm"), "label": str(tmp_path / "l.png"), "spacing": [9.0, 9.0]})
    assert out["image"].shape == (1, 24, 32) and "spacing" not in out
    for key in ("image", "label"):
        assert out[key].pixdim[:2].tolist() == pytest.approx([0.1, 0.143])
    # a PNG takes the datalist's spacing (a single number: both axes)
    out = run({"image": str(tmp_path / "i.png"), "label": str(tmp_path / "l.png"), "spacing": 0.2})
    assert out["label"].pixdim[:2].tolist() == pytest.approx([0.2, 0.2])
    # none at all: a clear error when required, nothing invented otherwise
    with pytest.raises(ValueError, match=r"no pixel spacing for '.*i\.png'"):
        run({"image": str(tmp_path / "i.png"), "label": str(tmp_path / "l.png")}, required=True)
    out = run({"image": str(tmp_path / "i.png"), "label": str(tmp_path / "l.png")})
    assert "spacing" not in out["image"].meta


def test_flip_swaps_left_and_right_femur():
    label = torch.zeros(1, 8, 10)
    label[0, 2:6, 1:3] = 3  # patient's right femur on the image's left
    label[0, 2:6, 7:9] = 2  # patient's left femur on the image's right
    label[0, 0, 4:6] = 1  # pelvis
    image = torch.arange(80, dtype=torch.float32).reshape(1, 8, 10)
    flip = RandHorizontalFlipSwapd(["image", "label"], label_keys="label", prob=1.0)
    out = flip({"image": image, "label": label})
    torch.testing.assert_close(torch.as_tensor(out["image"]), image.flip(-1))
    expected = label.flip(-1)
    expected = torch.where(expected == 2, 3.0, torch.where(expected == 3, 2.0, expected))
    torch.testing.assert_close(torch.as_tensor(out["label"]), expected)
    # still right femur (3) on the image's left, left femur (2) on the image's right after the flip
    assert set(torch.as_tensor(out["label"])[0, :, :5].unique().tolist()) == {0.0, 1.0, 3.0}
    assert set(torch.as_tensor(out["label"])[0, :, 5:].unique().tolist()) == {0.0, 1.0, 2.0}
    off = RandHorizontalFlipSwapd(["image", "label"], prob=0.0)({"image": image, "label": label})
    torch.testing.assert_close(torch.as_tensor(off["label"]), label)
    with pytest.raises(ValueError, match="must not share"):
        RandHorizontalFlipSwapd("label", swap=[(2, 3), (3, 1)])


def test_sample_datalist_and_formats(tmp_path):
    task = get_task("hip")
    root = Path(task.make_sample(tmp_path / "hip", n_train=5, n_val=1, n_test=1, size=(40, 48)))
    assert task.is_dataset(root) and not task.is_dataset(tmp_path)
    train = task.datalist(root, "train")
    assert [Path(i["image"]).suffix for i in train] == [".dcm", ".dcm", ".png", ".png", ".gz"]
    assert all(Path(i["image"]).is_absolute() for i in train)
    assert train[2]["spacing"] == [0.143, 0.143] and train[3]["spacing"] == [0.143, 0.143]  # item, file level
    assert len(task.datalist(root, "val")) == len(task.datalist(root, "test")) == 1
    with pytest.raises(ValueError, match="Unknown hip split"):
        task.datalist(root, "validation")
    # the patient's left femur (2) is drawn on the image's right
    _, label = draw_hip(np.random.default_rng(0), 80, 96)
    cols = np.nonzero(label == 2)[1].mean(), np.nonzero(label == 3)[1].mean()
    assert cols[0] > 48 > cols[1]


def test_bad_inputs_are_named_before_training(tmp_path):
    root = tmp_path / "bad"
    (root / "i").mkdir(parents=True)
    grey = np.zeros((20, 30), np.uint8)
    Image.fromarray(grey).save(root / "i" / "ok.png")
    Image.fromarray(grey).save(root / "i" / "small.png")
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(root / "i" / "values.png")
    Image.fromarray(np.zeros((10, 30), np.uint8)).save(root / "i" / "tiny_label.png")
    (root / "i" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    entries = {
        "training": [
            {"image": "i/ok.png", "label": "i/values.png"},
            {"image": "i/small.png", "label": "i/tiny_label.png"},
            {"image": "i/broken.dcm", "label": "i/ok.png"},
            {"image": "i/missing.png", "label": "i/ok.png"},
            {"image": "i/ok.png", "label": "i/ok.png", "spacing": "wide"},
        ],
        "validation": [{"image": "i/ok.png", "label": "i/ok.png"}],
    }
    _write_dataset(root, entries, spacing=0.143)
    task = get_task("hip")
    with pytest.raises(ValueError) as err:
        task.datalist(root, "train")
    message = str(err.value)
    assert "5 problem(s)" in message, message
    assert "values.png' holds value(s) [7] outside the classes 0..3" in message
    assert "size mismatch" in message and "small.png' is 20x30" in message and "tiny_label.png' is 10x30" in message
    assert "unreadable or corrupt file" in message and "broken.dcm" in message
    assert "file not found" in message and "missing.png" in message
    assert "'spacing' must be a positive number" in message
    # no spacing anywhere: a clear error, unless explicitly not required (e.g. training without evaluation in mm)
    _write_dataset(root, entries)
    with pytest.raises(ValueError, match=r"no pixel spacing for '.*ok\.png'"):
        task.datalist(root, "val")
    assert len(task.datalist(root, "val", require_spacing=False)) == 1
    with pytest.raises(ValueError, match="'test' list .* missing or empty"):
        task.datalist(root, "test")
    with pytest.raises(FileNotFoundError, match="datalist file not found"):
        task.datalist(tmp_path, "train")


def test_split_command_is_seeded_7_1_2(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    for i in range(20):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img" / f"{i:02d}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "lbl" / f"{i:02d}.png")
    out = tmp_path / "datalist.json"
    assert main(["split", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lbl"),
                 "--output", str(out), "--seed", "3", "--spacing", "0.143"]) == 0
    first = json.loads(out.read_text())
    assert [len(first[k]) for k in ("training", "validation", "test")] == [14, 2, 4]
    assert first["spacing"] == [0.143, 0.143]
    names = [e["image"] for k in ("training", "validation", "test") for e in first[k]]
    assert sorted(names) == [f"img/{i:02d}.png" for i in range(20)]
    assert first["training"][0]["label"].startswith("lbl/")
    again = write_split_datalist(tmp_path / "img", tmp_path / "lbl", tmp_path / "again.json", seed=3,
                                 extensions=KNOWN_EXTENSIONS, extra={"spacing": [0.143, 0.143]})
    assert again["test"] == first["test"]
    other = write_split_datalist(tmp_path / "img", tmp_path / "lbl", tmp_path / "other.json", seed=4)
    assert other["test"] != first["test"] and "spacing" not in other
    assert len(get_task("hip").datalist(tmp_path, "train")) == 14  # the written file is the task's datalist
    (tmp_path / "lbl" / "05.png").unlink()
    with pytest.raises(ValueError, match=r"image without label: '.*05\.png'"):
        write_split_datalist(tmp_path / "img", tmp_path / "lbl", tmp_path / "x.json")
    proc = subprocess.run(
        [sys.executable, "-m", "transfuse_monai.data", "split", "--images", str(tmp_path / "img"),
         "--labels", str(tmp_path / "img"), "--output", str(tmp_path / "cli.json")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training 14, validation 2, test 4" in proc.stdout


def test_inference_datalist_from_folder_or_json(tmp_path):
    root = Path(get_task("hip").make_sample(tmp_path / "hip", n_train=2, n_val=1, n_test=3, size=(32, 32)))
    task = get_task("hip")
    items = task.inference_datalist(root / "datalist.json")
    assert len(items) == 3 and all(Path(i["image"]).is_file() for i in items)
    assert all(i["spacing"] == [0.143, 0.143] for i in items)
    assert len(task.inference_datalist(root / "images")) == 6
    first = task.inference_datalist(root / "images")[0]["image"]
    assert task.inference_datalist(first) == [{"image": first}]  # one radiograph as the input
    with pytest.raises(FileNotFoundError, match="inference input not found"):
        task.inference_datalist(tmp_path / "nothing")


# ------------------------------------------------------------------ distances through the bundle's evaluation code


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _expected_asd(r: float, k: float) -> float:
    """Mean distance (in pixels) from a circle of radius r to the same circle shifted by k (both directions)."""
    theta = np.linspace(0.0, 2.0 * np.pi, 20000, endpoint=False)
    return float(np.mean(np.abs(np.sqrt(r * r + k * k - 2.0 * r * k * np.cos(theta)) - r)))


@pytest.fixture(scope="module")
def evaluation_parts(tmp_path_factory):
    """The bundle's own evaluation pieces (train.json + evaluate.json): preprocessing and the two reports."""
    from monai.bundle import ConfigParser

    out = tmp_path_factory.mktemp("hip_eval")
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    parser.update({"output_dir": str(out), "dataset_dir": str(out / "none"), "demo": False, "image_size": [32, 32]})
    return {
        "preprocessing": parser.get_parsed_content("validate#preprocessing"),
        "report": parser.get_parsed_content("evaluation_report"),
        "table3": parser.get_parsed_content("table3_report"),
        "out": out,
    }


@pytest.mark.parametrize("source", ["dicom", "png_spacing"])
def test_distances_in_mm_of_shifted_discs(evaluation_parts, tmp_path, source):
    h, w, r, k = 96, 112, 26.0, 5
    spacing = (0.1, 0.143)  # anisotropic: the shift along the columns must be measured with the column spacing
    label = _disc(h, w, 48, 50, r)  # pelvis (1)
    image = 0.2 + 0.6 * label.astype(np.float32)
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    Image.fromarray(label).save(root / "img" / "disc_label.png")
    entry = {"image": "img/disc.dcm" if source == "dicom" else "img/disc.png", "label": "img/disc_label.png"}
    if source == "dicom":
        write_dicom(root / "img" / "disc.dcm", image, spacing=spacing, monochrome1=True, bits_stored=16)
    else:
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(root / "img" / "disc.png")
        entry["spacing"] = list(spacing)
    _write_dataset(root, {"test": [entry]})
    (item,) = get_task("hip").datalist(root, "test")
    data = evaluation_parts["preprocessing"]({**item, "set": "test"})
    truth = data["label_original"]
    assert truth.shape == (1, h, w) and data["image"].shape == (1, 32, 32)
    shifted = torch.roll(torch.as_tensor(truth), shifts=k, dims=-1)  # the "prediction": the disc k pixels right
    pred = torch.nn.functional.one_hot(shifted[0].long(), 4).permute(2, 0, 1).float()
    engine = SimpleNamespace(state=SimpleNamespace(
        batch=[{"set": "test", "name": source}], output=[{"pred_original": pred, "label_original": truth}], metrics={},
    ))
    for report in (evaluation_parts["report"], evaluation_parts["table3"]):
        report.reset()
        report.iteration_completed(engine)
        report.epoch_completed(engine)
    row = evaluation_parts["report"].rows[0]
    px = spacing[1]
    assert row["hd_pelvis"] == pytest.approx(k * px, abs=px)
    assert row["asd_pelvis"] == pytest.approx(_expected_asd(r, k) * px, abs=px)
    assert row["hd95_pelvis"] <= row["hd_pelvis"] + 1e-6
    assert row["dice_pelvis"] == pytest.approx(1 - (2 * r * k) / (math.pi * r * r), abs=0.03)
    assert row["hd_left femur"] == 0.0 and row["dice_left femur"] == 1.0  # both empty: a correct empty prediction
    table3 = json.loads((evaluation_parts["out"] / "hip_table3_summary.json").read_text())["test"]
    assert set(table3) == {"n", "hd", "asd", "hd_pelvis", "hd_left femur", "hd_right femur", "asd_pelvis",
                           "asd_left femur", "asd_right femur"}
    assert table3["hd_pelvis"] == pytest.approx(row["hd_pelvis"])
    assert "pelvis" in (evaluation_parts["out"] / "hip_table3_per_class.md").read_text()


def test_png_without_spacing_is_a_clear_error(evaluation_parts, tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    label = _disc(40, 40, 20, 20, 10)
    Image.fromarray(label).save(root / "img" / "l.png")
    Image.fromarray(label * 200).save(root / "img" / "disc.png")
    _write_dataset(root, {"test": [{"image": "img/disc.png", "label": "img/l.png"}]})
    with pytest.raises(ValueError, match=r"no pixel spacing for '.*disc\.png'.*'spacing'"):
        get_task("hip").datalist(root, "test")
    (item,) = get_task("hip").datalist(root, "test", require_spacing=False)
    with pytest.raises(RuntimeError) as err:  # the evaluation pipeline refuses it too (MONAI wraps the error)
        evaluation_parts["preprocessing"](item)
    assert "no pixel spacing for" in str(err.value.__cause__) and "disc.png" in str(err.value.__cause__)


@pytest.mark.parametrize("loss_name", ["dicece", "structure"])
def test_bundle_loss_and_flip_config(loss_name, single_thread):
    """train.json's loss takes TransFuse's (B, 3 heads, 4 classes, H, W) logits and index-map labels with both
    per-head losses, and its only horizontal flip is the femur-swapping one."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"loss_name": loss_name, "demo": False, "image_size": [32, 32]})
    loss = parser.get_parsed_content("loss")
    label = torch.randint(0, 4, (2, 1, 16, 16)).float()
    perfect = torch.nn.functional.one_hot(label[:, 0].long(), 4).permute(0, 3, 1, 2).float() * 20 - 10
    heads = torch.stack([perfect] * 3, 1)
    good, bad = float(loss(heads, label)), float(loss(-heads, label))
    assert np.isfinite(good) and good < bad
    flips = [t for t in parser.get_parsed_content("train#random_transforms") if "Flip" in type(t).__name__]
    assert [type(t) for t in flips] == [RandHorizontalFlipSwapd] and flips[0].swap == [(2, 3)]

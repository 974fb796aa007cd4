"""Bad input never breaks obscurely.

* Training / evaluation: the start-up datalist check reports every bad file with its reason in one error (truncated
  JPEG, palette image, multi-frame file, mask of another size, mask values that are not classes, missing or unreadable
  mask); grey-scale and RGBA images, sizes that are not multiples of 16 and non-image files in the folders just work;
  background-only masks give one warning listing them.
* Inference over a folder: unreadable inputs are skipped and reported in ``inference_report.json``, every other input
  gets its output, and a re-run skips inputs whose output exists unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from transfuse_monai.data import REPORT_NAME, InferenceInputs, check_picture, mask_value_problem
from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "polyp" / "configs"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _frame(rng, h: int = 40, w: int = 56) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture()
def faulty_polyp(tmp_path) -> dict:
    """A PraNet-layout training set (40x56 frames: not multiples of 16) with one fault per frame."""
    data = Path(get_task("polyp").make_sample(tmp_path / "data", n_train=12, test_sets={}, size=(40, 56)))
    images, masks = data / "TrainDataset" / "images", data / "TrainDataset" / "masks"
    rng = np.random.default_rng(0)
    _truncate(images / "0001.jpg")  # corrupt: decoding fails with "image file is truncated"
    Image.open(images / "0002.png").convert("L").save(images / "0002.png")  # grey-scale: fine (repeated)
    Image.open(images / "0003.jpg").convert("RGBA").save(images / "0003.png")  # RGBA: fine (alpha dropped)
    (images / "0003.jpg").unlink()
    Image.open(images / "0004.png").convert("P").save(images / "0004.png")  # palette: indices, not colours
    Image.open(masks / "0005.png").resize((30, 30)).save(masks / "0005.png")  # size mismatch
    Image.fromarray((np.asarray(Image.open(masks / "0006.png")) // 2).astype(np.uint8)).save(masks / "0006.png")
    Image.fromarray(np.zeros((40, 56), np.uint8)).save(masks / "0007.png")  # empty: a warning only
    (masks / "0008.png").unlink()  # missing mask
    frames = [_frame(rng) for _ in range(3)]
    frames[0].save(images / "0009.tif", save_all=True, append_images=frames[1:])  # a 3D stack where 2D is expected
    (images / "0009.jpg").unlink()
    (masks / "0010.png").write_text("not an image")  # unreadable mask
    (images / "notes.txt").write_text("acquisition notes")  # a non-image file: ignored by the scan
    return {"data": data, "images": images, "masks": masks}


def test_datalist_check_reports_every_problem_in_one_error(faulty_polyp):
    with pytest.warns(UserWarning, match=r"1 mask\(s\) hold background only.*0007\.png"):
        with pytest.raises(ValueError) as info:
            get_task("polyp").datalist(faulty_polyp["data"], "train")
    message = str(info.value)
    assert "found 7 problem(s)" in message, message
    expected = {
        "0001.jpg": "truncated",
        "0004.png": "palette",
        "0005": "size mismatch",
        "0006.png": "0/1 or 0/255",
        "0008.png": "missing mask",
        "0009.tif": "3 frames",
        "0010.png": "unreadable",
    }
    lines = message.splitlines()[1:]
    for name, reason in expected.items():
        assert any(name in line and reason in line for line in lines), f"{name} ({reason}) not reported:\n{message}"
    for fine in ("0000", "0002", "0003", "0007", "0011", "notes.txt"):
        assert not any(f"'{fine}" in line for line in lines), f"{fine} wrongly reported:\n{message}"


def test_accepted_oddities_load_through_the_training_transforms(faulty_polyp):
    """Grey-scale and RGBA frames, 40x56 sizes and an empty mask pass the check and the bundle's transforms."""
    from monai.bundle import ConfigParser

    keep = {"0000", "0002", "0003", "0007", "0011"}
    for folder in (faulty_polyp["images"], faulty_polyp["masks"]):
        for p in folder.iterdir():
            if p.suffix != ".txt" and p.stem not in keep:
                p.unlink()
    with pytest.warns(UserWarning, match="0007"):
        datalist = get_task("polyp").datalist(faulty_polyp["data"], "train")
    assert [d["name"] for d in datalist] == sorted(keep)

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"image_size": [32, 32], "pretrained": False, "num_workers": 0})
    transform = parser.get_parsed_content("validate#preprocessing")
    for item in datalist:
        out = transform(item)
        assert tuple(out["image"].shape) == (3, 32, 32), item["name"]
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
    grey = transform(next(d for d in datalist if d["name"] == "0002"))["image"]
    torch.testing.assert_close(grey[0] * 0.229 + 0.485, grey[1] * 0.224 + 0.456)  # the grey channel, repeated


def test_each_task_names_unreadable_inference_inputs(tmp_path):
    rng = np.random.default_rng(1)
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    _frame(rng).save(good)
    _frame(rng).save(bad)
    _truncate(bad)
    for name in ("polyp", "isic2017", "hip"):
        task = get_task(name)
        assert task.input_problems(good) == [], name
        (problem,) = task.input_problems(bad)
        assert "bad.jpg" in problem and "truncated" in problem, (name, problem)
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), volume)
    assert "not a 2D radiograph" in get_task("hip").input_problems(volume)[0]

    prostate = get_task("prostate")
    image = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), image)
    assert prostate.input_problems(image) == []
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), flat)
    assert "expected 4D" in prostate.input_problems(flat)[0]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not a volume")
    assert "unreadable" in prostate.input_problems(broken)[0]


def test_mask_values_follow_the_task_classes(tmp_path):
    assert mask_value_problem([0, 1], 2) is None
    assert mask_value_problem([0, 128, 255], 2) is None  # 0/255 with anti-aliased edges
    assert "0/1 or 0/255" in mask_value_problem([0, 1, 2], 2)  # a class map given to a binary task
    assert "0/1 or 0/255" in mask_value_problem([0, 128], 2)
    assert mask_value_problem([0, 1, 2, 3], 4) is None
    assert "outside the class indices 0..3" in mask_value_problem([0, 5], 4)
    assert check_picture(tmp_path / "x.png", "mask").problems[0].startswith("mask file not found")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "empty.png")
    assert check_picture(tmp_path / "empty.png", "mask", num_classes=2) == ((4, 4), [], True)


def test_inference_inputs_skip_unreadable_and_existing(tmp_path):
    rng = np.random.default_rng(2)
    for name in ("a.png", "b.jpg"):
        _frame(rng).save(tmp_path / name)
    _frame(rng).save(tmp_path / "c.jpg")
    _truncate(tmp_path / "c.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"existing output")
    items = [{"image": str(tmp_path / n)} for n in ("a.png", "b.jpg", "c.jpg")]
    task = get_task("polyp")

    inputs = InferenceInputs(items, out, ".png", task.input_problems)
    assert [Path(d["image"]).name for d in inputs.items] == ["b.jpg"]
    assert [Path(d["file"]).name for d in inputs.existing] == ["a.png"]
    assert [Path(d["file"]).name for d in inputs.skipped] == ["c.jpg"] and "truncated" in inputs.skipped[0]["reason"]
    report = json.loads(inputs.write_report().read_text())
    assert [Path(d["output"]).name for d in report["processed"]] == ["b.png"]

    again = InferenceInputs(items, out, ".png", task.input_problems, overwrite=True)
    assert [Path(d["image"]).name for d in again.items] == ["a.png", "b.jpg"] and not again.existing


def _infer(input_dir: Path, output_dir: Path, ckpt: Path, **overrides) -> dict:
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), meta_file=str(CONFIGS / "metadata.json"), workflow_type="infer",
        logging_file=str(CONFIGS / "logging.conf"), input_dir=str(input_dir), output_dir=str(output_dir),
        ckpt_path=str(ckpt), image_size=[32, 32], num_workers=0, **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return json.loads((output_dir / REPORT_NAME).read_text())


def test_bundle_inference_over_a_folder_skips_bad_files_and_resumes(tmp_path, single_thread):
    from transfuse_monai.networks.nets import TransFuse

    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(TransFuse(img_size=(32, 32)).state_dict(), ckpt)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    _frame(rng, 40, 56).save(inputs / "f1.png")
    _frame(rng, 33, 47).save(inputs / "f2.jpg")
    _frame(rng).convert("L").save(inputs / "f3.png")
    _frame(rng).save(inputs / "broken.jpg")
    _truncate(inputs / "broken.jpg")
    (inputs / "notes.txt").write_text("not an image")

    report = _infer(inputs, out, ckpt)
    outputs = {p.name for p in out.iterdir()}
    assert outputs == {"f1.png", "f2.png", "f3.png", REPORT_NAME}, outputs
    for name, size in (("f1.png", (56, 40)), ("f2.png", (47, 33))):
        with Image.open(out / name) as mask:
            assert mask.size == size
    assert sorted(Path(d["file"]).name for d in report["processed"]) == ["f1.png", "f2.jpg", "f3.png"]
    assert [Path(d["file"]).name for d in report["skipped"]] == ["broken.jpg"]
    assert "truncated" in report["skipped"][0]["reason"]
    assert report["existing"] == []

    old = 1_000_000_000
    for name in ("f1.png", "f2.png", "f3.png"):
        os.utime(out / name, (old, old))
    report = _infer(inputs, out, ckpt)
    assert report["processed"] == [] and len(report["existing"]) == 3
    assert all((out / n).stat().st_mtime == old for n in ("f1.png", "f2.png", "f3.png")), "outputs were rewritten"

    report = _infer(inputs, out, ckpt, overwrite="true")
    assert len(report["processed"]) == 3 and report["existing"] == []
    assert all((out / n).stat().st_mtime != old for n in ("f1.png", "f2.png", "f3.png"))

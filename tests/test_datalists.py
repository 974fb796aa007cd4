"""Tests of the generic datalist helpers (transfuse_monai.data) and of the polyp / ISIC 2017 task modules' layouts,
datalists and generated samples (transfuse_monai.tasks)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfuse_monai.data import build_image_mask_datalist, split_datalist, validate_datalist
from transfuse_monai.tasks import get_task

POLYP = get_task("polyp")
ISIC = get_task("isic2017")


@pytest.fixture(scope="module")
def pranet_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("pranet")
    return POLYP.make_sample(
        root, n_train=6, test_sets={"Kvasir": 3, "CVC-ClinicDB": 2}, size=(32, 32), test_sizes=(35, 45), seed=1
    )


def _make_pair_dir(root: Path, n: int = 3, size: tuple[int, int] = (16, 16)) -> tuple[Path, Path]:
    """Small images/masks folders with n matching PNG pairs named a0..a{n-1}."""
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (size[1], size[0]), (i * 40, 10, 10)).save(images / f"a{i}.png")
        Image.new("L", (size[1], size[0]), 0).save(masks / f"a{i}.png")
    return images, masks


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_pranet_layout_and_content(pranet_root: str) -> None:
    root = Path(pranet_root)
    train_images = sorted((root / "TrainDataset" / "images").iterdir())
    assert [p.name for p in train_images] == ["0000.png", "0001.jpg", "0002.png", "0003.jpg", "0004.png", "0005.jpg"]
    with Image.open(train_images[0]) as im, Image.open(root / "TrainDataset" / "masks" / "0000.png") as mk:
        img, mask = np.asarray(im), np.asarray(mk)
    assert img.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert set(np.unique(mask)) == {0, 255}
    # the lesion colour clearly differs from the background -> learnable
    fg, bg = img[mask > 0].mean(0), img[mask == 0].mean(0)
    assert np.abs(fg - bg).sum() > 100
    with Image.open(root / "TestDataset" / "Kvasir" / "images" / "0000.png") as kvasir:
        assert kvasir.size == (45, 35)  # (W, H) from test_sizes=(H, W)


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    a = POLYP.make_sample(tmp_path / "a", n_train=2, test_sets={}, size=(16, 16), seed=3)
    b = POLYP.make_sample(tmp_path / "b", n_train=2, test_sets={}, size=(16, 16), seed=3)
    for name in ("images/0000.png", "images/0001.jpg", "masks/0001.png"):
        assert (Path(a) / "TrainDataset" / name).read_bytes() == (Path(b) / "TrainDataset" / name).read_bytes()


# --------------------------------------------------------------------------- PraNet


def test_build_pranet_train_datalist(pranet_root: str) -> None:
    dl = POLYP.datalist(pranet_root, "train")
    assert len(dl) == 6
    assert [d["name"] for d in dl] == sorted(d["name"] for d in dl)
    for d in dl:
        assert set(d) == {"image", "label", "name"}
        assert Path(d["image"]).stem == Path(d["label"]).stem == d["name"]
        assert os.path.isabs(d["image"]) and isinstance(d["label"], str)
        assert Path(d["image"]).parent.name == "images" and Path(d["label"]).parent.name == "masks"
    assert dl == POLYP.datalist(pranet_root, "train")  # deterministic


def test_build_pranet_test_subset(pranet_root: str) -> None:
    dl = POLYP.subset_datalist(pranet_root, "TestDataset/Kvasir")
    assert [d["name"] for d in dl] == ["0000", "0001", "0002"]


def test_build_pranet_test_datalists_skips_missing_sets(pranet_root: str) -> None:
    with pytest.warns(UserWarning) as record:
        dls = POLYP.test_datalists(pranet_root)
    assert list(dls) == ["Kvasir", "CVC-ClinicDB"]
    assert [len(v) for v in dls.values()] == [3, 2]
    messages = [str(w.message) for w in record]
    missing = ["CVC-ColonDB", "CVC-300", "ETIS-LaribPolypDB"]
    assert len(messages) == len(missing)
    for name, msg in zip(missing, messages):
        assert name in msg and os.path.join("TestDataset", name) in msg


def test_build_pranet_test_datalists_explicit_and_discovered(pranet_root: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(POLYP.test_datalists(pranet_root, sets=("CVC-ClinicDB",))) == ["CVC-ClinicDB"]
        assert list(POLYP.test_datalists(pranet_root, sets=None)) == ["CVC-ClinicDB", "Kvasir"]
    with pytest.raises(FileNotFoundError), pytest.warns(UserWarning, match="Nope"):
        POLYP.test_datalists(pranet_root, sets=["Nope"])


# --------------------------------------------------------------------------- ISIC 2017


@pytest.mark.parametrize("official", [True, False])
def test_build_isic2017_both_layouts(tmp_path: Path, official: bool) -> None:
    root = ISIC.make_sample(
        tmp_path, n_train=3, n_val=2, n_test=1, size=(24, 20), official_layout=official
    )
    if official:  # the extra files of the official archives are present but ignored
        assert (tmp_path / "ISIC-2017_Training_Data" / "ISIC_0000000_superpixels.png").is_file()
        assert (tmp_path / "ISIC-2017_Training_Data" / "ISIC-2017_Training_Data_metadata.csv").is_file()
    counts = {split: ISIC.datalist(root, split) for split in ("train", "val", "test")}
    assert [len(v) for v in counts.values()] == [3, 2, 1]
    train = counts["train"]
    assert [d["name"] for d in train] == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert counts["test"][0]["name"] == "ISIC_0000005"
    expected_mask = "ISIC_0000000_segmentation.png" if official else "ISIC_0000000.png"
    assert Path(train[0]["label"]).name == expected_mask
    assert Path(train[0]["image"]).name == "ISIC_0000000.jpg"


def test_isic2017_plain_layout_with_segmentation_suffix(tmp_path: Path) -> None:
    root = ISIC.make_sample(tmp_path, n_train=2, n_val=1, n_test=1, size=(16, 16), official_layout=False)
    masks = tmp_path / "train" / "masks"
    for p in list(masks.iterdir()):
        p.rename(masks / f"{p.stem}_segmentation.png")
    dl = ISIC.datalist(root, "train")
    assert [Path(d["label"]).name for d in dl] == ["ISIC_0000000_segmentation.png", "ISIC_0000001_segmentation.png"]


def test_isic2017_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown isic2017 split .training.; expected one of"):
        ISIC.datalist(tmp_path, "training")
    with pytest.raises(FileNotFoundError, match="ISIC-2017_Validation_Data"):
        ISIC.datalist(tmp_path, "val")


# --------------------------------------------------------------------------- validation errors


def test_missing_mask_and_orphan_mask(tmp_path: Path) -> None:
    images, masks = _make_pair_dir(tmp_path)
    (masks / "a1.png").rename(masks / "zz.png")
    with pytest.raises(ValueError) as exc:
        build_image_mask_datalist(images, masks)
    msg = str(exc.value)
    assert "missing mask for image 'a1.png'" in msg
    assert "mask without image: 'zz.png'" in msg
    assert "2 problem(s)" in msg


def test_corrupt_file_reported(tmp_path: Path) -> None:
    images, masks = _make_pair_dir(tmp_path)
    (images / "a2.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"corrupt image file 'a2.png'"):
        build_image_mask_datalist(images, masks)
    # a PNG truncated after its header is caught as well
    data = (masks / "a0.png").read_bytes()
    (masks / "a0.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as exc:
        build_image_mask_datalist(images, masks)
    assert "'a2.png'" in str(exc.value) and "corrupt mask file 'a0.png'" in str(exc.value)
    # validation can be switched off
    assert len(build_image_mask_datalist(images, masks, validate=False)) == 3


def test_size_mismatch_reported(tmp_path: Path) -> None:
    images, masks = _make_pair_dir(tmp_path)
    Image.new("L", (10, 16), 0).save(masks / "a1.png")
    with pytest.raises(ValueError, match=r"size mismatch for 'a1.png': image is 16x16 \(WxH\) but mask 'a1.png' is 10x16"):
        build_image_mask_datalist(images, masks)
    assert len(build_image_mask_datalist(images, masks, check_sizes=False)) == 3


def test_all_problems_in_one_error(tmp_path: Path) -> None:
    images, masks = _make_pair_dir(tmp_path, n=4)
    (masks / "a0.png").unlink()
    (images / "a1.png").write_bytes(b"garbage")
    Image.new("L", (5, 5), 0).save(masks / "a2.png")
    with pytest.raises(ValueError) as exc:
        build_image_mask_datalist(images, masks)
    msg = str(exc.value)
    assert "3 problem(s)" in msg
    assert "'a0.png'" in msg and "'a1.png'" in msg and "'a2.png'" in msg and "'a3.png'" not in msg


def test_validate_datalist_direct(tmp_path: Path) -> None:
    images, masks = _make_pair_dir(tmp_path, n=2)
    dl = [{"image": str(images / "a0.png"), "label": str(masks / "a0.png")}]
    assert validate_datalist(dl) == dl
    bad = dl + [{"image": str(images / "a1.png")}, {"image": str(images / "gone.png"), "label": str(masks / "a1.png")}]
    with pytest.raises(ValueError) as exc:
        validate_datalist(bad)
    assert "missing mask for image 'a1.png'" in str(exc.value)
    assert "image file not found: 'gone.png'" in str(exc.value)
    with pytest.raises(ValueError, match="empty"):
        validate_datalist([])


def test_ignores_non_image_and_hidden_files_and_mixed_case(tmp_path: Path) -> None:
    images, masks = _make_pair_dir(tmp_path, n=2)
    (images / "notes.txt").write_text("x")
    (images / "._a0.png").write_bytes(b"\x00")
    (images / "sub").mkdir()
    (images / "a1.png").rename(images / "b1.PNG")
    (masks / "a1.png").rename(masks / "b1.Png")
    dl = build_image_mask_datalist(images, masks)
    assert [d["name"] for d in dl] == ["a0", "b1"]


def test_ambiguous_stems_reported(tmp_path: Path) -> None:
    images, masks = _make_pair_dir(tmp_path, n=2)
    Image.new("RGB", (16, 16)).save(images / "a0.jpg")
    with pytest.raises(ValueError, match="ambiguous image stem 'a0': a0.jpg, a0.png"):
        build_image_mask_datalist(images, masks)


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "TrainDataset" / "images").mkdir(parents=True)
    (tmp_path / "TrainDataset" / "masks").mkdir(parents=True)
    (tmp_path / "TrainDataset" / "images" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"No images found in '.*TrainDataset[/\\]images'"):
        POLYP.datalist(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="TestDataset"):
        POLYP.subset_datalist(tmp_path, "TestDataset/Kvasir")


# --------------------------------------------------------------------------- split


def test_split_datalist_deterministic() -> None:
    items = [{"name": f"{i:02d}"} for i in range(20)]
    train, val = split_datalist(items, val_fraction=0.2, seed=0)
    assert len(train) == 16 and len(val) == 4
    assert (train, val) == split_datalist(items, val_fraction=0.2, seed=0)
    assert {d["name"] for d in train} | {d["name"] for d in val} == {d["name"] for d in items}
    assert not {d["name"] for d in train} & {d["name"] for d in val}
    assert split_datalist(items, 0.2, seed=1)[1] != val
    train[0]["name"] = "changed"  # shallow copies: the input is untouched
    assert items[0]["name"] == "00"


def test_split_datalist_edge_cases() -> None:
    assert [len(p) for p in split_datalist([{"n": 1}, {"n": 2}, {"n": 3}], val_fraction=0.01)] == [2, 1]
    assert [len(p) for p in split_datalist([{"n": 1}, {"n": 2}], val_fraction=0.9)] == [1, 1]
    assert [len(p) for p in split_datalist([{"n": 1}], val_fraction=0.5)] == [1, 0]
    assert [len(p) for p in split_datalist([{"n": 1}, {"n": 2}], val_fraction=0.0)] == [2, 0]
    with pytest.raises(ValueError):
        split_datalist([{"n": 1}], val_fraction=1.0)

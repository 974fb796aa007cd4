"""Tests for transfuse_monai.transforms.intensity and transfuse_monai.data.writers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai.data import MetaTensor
from monai.transforms import SaveImage

from transfuse_monai.data import AtomicPILWriter
from transfuse_monai.transforms import ClassIndexd, EnsureNumChannelsd, SelectHeadd

# ---------------------------------------------------------------------------------------------------------------------
# EnsureNumChannelsd
# ---------------------------------------------------------------------------------------------------------------------


def test_ensure_num_channels_rgba_to_rgb():
    img = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(4, 5, 6)
    out = EnsureNumChannelsd("image", num_channels=3)({"image": img, "other": 1})
    assert out["image"].shape == (3, 5, 6)
    torch.testing.assert_close(out["image"], img[:3])
    assert out["other"] == 1


def test_ensure_num_channels_gray_to_rgb_repeats():
    img = torch.rand(1, 5, 6)
    out = EnsureNumChannelsd("image", num_channels=3)({"image": img})["image"]
    assert out.shape == (3, 5, 6)
    for c in range(3):
        torch.testing.assert_close(out[c], img[0])


def test_ensure_num_channels_unchanged_and_metatensor():
    img = MetaTensor(torch.rand(3, 4, 4), meta={"filename_or_obj": "a.png"})
    out = EnsureNumChannelsd("image", num_channels=3)({"image": img})["image"]
    assert out is img
    gray = MetaTensor(torch.rand(1, 4, 4), meta={"filename_or_obj": "g.png"})
    out = EnsureNumChannelsd("image", num_channels=3)({"image": gray})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (3, 4, 4)


def test_ensure_num_channels_errors():
    with pytest.raises(ValueError, match="2 channels"):
        EnsureNumChannelsd("image", num_channels=3)({"image": torch.rand(2, 4, 4)})
    with pytest.raises(ValueError):
        EnsureNumChannelsd("image", num_channels=0)
    with pytest.raises(KeyError):
        EnsureNumChannelsd("image", num_channels=3)({"label": torch.rand(1, 4, 4)})
    assert "image" not in EnsureNumChannelsd("image", 3, allow_missing_keys=True)({"label": torch.rand(1, 2, 2)})


# ---------------------------------------------------------------------------------------------------------------------
# ClassIndexd
# ---------------------------------------------------------------------------------------------------------------------


def test_binary_mask_rgb_0_255():
    g = torch.Generator().manual_seed(0)
    fg = torch.rand(5, 7, generator=g) > 0.5
    mask = (fg.to(torch.uint8) * 255).unsqueeze(0).repeat(3, 1, 1)  # RGB-saved 0/255 mask
    out = ClassIndexd("label", num_classes=2)({"label": mask})["label"]
    assert out.shape == (1, 5, 7)
    assert out.dtype == torch.float32
    assert set(torch.unique(out).tolist()) == {0.0, 1.0}
    torch.testing.assert_close(out[0], fg.float())


def test_binary_mask_0_1_kept_and_threshold():
    mask = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    out = ClassIndexd("label", num_classes=2)({"label": mask})["label"]
    torch.testing.assert_close(out, mask)  # max 1: not divided by 255
    soft = torch.tensor([[[0.2, 0.6], [0.8, 1.0]]])
    torch.testing.assert_close(ClassIndexd("label", num_classes=2)({"label": soft})["label"], torch.tensor([[[0.0, 1.0], [1.0, 1.0]]]))
    torch.testing.assert_close(
        ClassIndexd("label", num_classes=2, threshold=0.7)({"label": soft})["label"], torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    )
    # antialiased 0..255 edges: 100/255 < 0.5 < 200/255
    grey = torch.tensor([[[0, 100], [200, 255]]], dtype=torch.uint8)
    torch.testing.assert_close(ClassIndexd("label", num_classes=2)({"label": grey})["label"], torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]))


def test_binary_mask_all_zero():
    out = ClassIndexd("label", num_classes=2)({"label": torch.zeros(3, 4, 4, dtype=torch.uint8)})["label"]
    assert out.shape == (1, 4, 4) and float(out.sum()) == 0.0


def test_class_index_multi_class_values_kept_and_checked():
    from monai.data import MetaTensor

    mask = torch.tensor([[[0, 1], [2, 3]]], dtype=torch.uint8).repeat(3, 1, 1)  # RGB-saved index map
    out = ClassIndexd("label", num_classes=4)({"label": mask})["label"]
    assert out.shape == (1, 2, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]))
    bad = MetaTensor(torch.tensor([[[0, 1], [5, 255]]]), meta={"filename_or_obj": "/data/hip_007.png"})
    with pytest.raises(ValueError, match=r"'label' in '/data/hip_007.png' holds value\(s\) 5, 255 that are not among"):
        ClassIndexd("label", num_classes=4)({"label": bad})


def test_class_index_maps_stored_values():
    mask = torch.tensor([[[0, 85], [170, 255]]], dtype=torch.uint8)
    out = ClassIndexd("label", num_classes=4, values=(0, 85, 170, 255))({"label": mask})["label"]
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]))
    with pytest.raises(ValueError, match="one stored value per class"):
        ClassIndexd("label", num_classes=4, values=(0, 255))
    with pytest.raises(ValueError, match="at least 2"):
        ClassIndexd("label", num_classes=1)


# ---------------------------------------------------------------------------------------------------------------------
# SelectHeadd
# ---------------------------------------------------------------------------------------------------------------------


def test_select_head_stacked():
    pred = torch.rand(3, 1, 4, 4)  # (heads, C, H, W)
    torch.testing.assert_close(SelectHeadd("pred")({"pred": pred})["pred"], pred[0])
    torch.testing.assert_close(SelectHeadd("pred", index=2)({"pred": pred})["pred"], pred[2])


def test_select_head_unstacked_passthrough():
    pred = torch.rand(1, 4, 4)
    assert SelectHeadd("pred")({"pred": pred})["pred"] is pred
    vol = torch.rand(2, 1, 4, 4, 4)  # 3D stacked
    torch.testing.assert_close(SelectHeadd("pred", spatial_dims=3)({"pred": vol})["pred"], vol[0])
    assert SelectHeadd("pred", spatial_dims=3)({"pred": vol[0]})["pred"].shape == (1, 4, 4, 4)


# ---------------------------------------------------------------------------------------------------------------------
# AtomicPILWriter through SaveImage
# ---------------------------------------------------------------------------------------------------------------------


def _saver(out_dir) -> SaveImage:
    return SaveImage(
        output_dir=str(out_dir),
        output_postfix="",
        output_ext=".png",
        output_dtype=np.uint8,
        scale=255,
        resample=False,
        separate_folder=False,
        writer=AtomicPILWriter,
        print_log=False,
    )


def test_atomic_pil_writer_keeps_height_width(tmp_path):
    h, w = 20, 33
    values = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w) / (h * w - 1)
    img = MetaTensor(values, meta={"filename_or_obj": "/data/case_7.png"})
    _saver(tmp_path)(img)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_7.png"]
    with Image.open(tmp_path / "case_7.png") as pil:
        assert pil.size == (w, h)  # PIL reports (width, height)
        arr = np.asarray(pil)
    assert arr.shape == (h, w)
    expected = (np.clip(values[0].numpy(), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(arr, expected)  # same orientation, not transposed


def test_atomic_pil_writer_rgb(tmp_path):
    g = torch.Generator().manual_seed(0)
    values = torch.rand(3, 9, 14, generator=g)
    _saver(tmp_path)(MetaTensor(values, meta={"filename_or_obj": "rgb.jpg"}))
    with Image.open(tmp_path / "rgb.png") as pil:
        assert pil.mode == "RGB" and pil.size == (14, 9)
        arr = np.asarray(pil)
    np.testing.assert_array_equal(arr, (values.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def test_atomic_pil_writer_failure_leaves_nothing(tmp_path, monkeypatch):
    attempts = []
    original_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        attempts.append(str(fp))
        with open(fp, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    img = MetaTensor(torch.rand(1, 6, 10), meta={"filename_or_obj": "broken.png"})
    with pytest.raises(Exception, match="disk full|broken"):
        _saver(tmp_path)(img)

    assert attempts, "PIL save was not called"
    # the writer wrote to a hidden temporary file, never the final name
    assert all("broken.png" != p.split("/")[-1] for p in attempts)
    assert all(p.split("/")[-1].startswith(".") for p in attempts)
    assert list(tmp_path.iterdir()) == []  # neither the final file nor the temporary one remains

    # and a later successful write (real save) produces only the final file
    monkeypatch.setattr(Image.Image, "save", original_save)
    _saver(tmp_path)(img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png"]


def test_atomic_pil_writer_direct_overwrite(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    writer = AtomicPILWriter(output_dtype=np.uint8)
    writer.set_data_array(np.ones((1, 4, 5), dtype=np.float32), channel_dim=0)
    writer.set_metadata(None, resample=False)
    writer.write(target)
    with Image.open(target) as pil:
        assert pil.size == (5, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]

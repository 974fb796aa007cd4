"""Tests of the helpers the bundle configs call: run options (transfuse_monai.bundle), the tasks' demo fallback and
registry (transfuse_monai.tasks), and the generic datalist helpers for evaluation and inference (transfuse_monai.data)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import torch

import transfuse_monai
import transfuse_monai.bundle.paths
from transfuse_monai.bundle import FastPaths, as_bool, default_num_workers, find_bundle_root
from transfuse_monai.data import grouped_datalist, image_datalist
from transfuse_monai.inferers import AutocastInferer
from transfuse_monai.tasks import DEMO_MARKER, ISIC2017Task, PolypTask, SegmentationTask, get_task, is_demo_dataset

REPO_ROOT = Path(transfuse_monai.__file__).resolve().parents[1]
REPO_BUNDLE = REPO_ROOT / "bundles" / "polyp"

# ---------------------------------------------------------------------------------------------------------------------
# as_bool
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("false", False), ("False", False), (" FALSE ", False), ("no", False), ("off", False), ("0", False),
        ("", False), ("none", False), ("True", True), ("true", True), ("yes", True), ("ON", True), ("1", True),
        (0, False), (1, True), (0.0, False), (True, True), (False, False), (None, False),
    ],
)
def test_as_bool(value, expected):
    assert as_bool(value) is expected


@pytest.mark.parametrize("value", ["maybe", "2", "tru"])
def test_as_bool_rejects(value):
    with pytest.raises(ValueError, match=value):
        as_bool(value)


# ---------------------------------------------------------------------------------------------------------------------
# find_bundle_root
# ---------------------------------------------------------------------------------------------------------------------


def _fake_bundle(path: Path) -> Path:
    (path / "configs").mkdir(parents=True)
    (path / "configs" / "metadata.json").write_text("{}")
    return path


@pytest.mark.skipif(not (REPO_BUNDLE / "configs" / "metadata.json").is_file(), reason="no repository bundle copy")
def test_find_bundle_root_from_repo_root_and_bundle_dir(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert find_bundle_root("polyp") == str(REPO_BUNDLE)
    monkeypatch.chdir(REPO_BUNDLE)
    assert find_bundle_root("polyp") == str(REPO_BUNDLE)


def test_find_bundle_root_prefers_cwd_copies(tmp_path, monkeypatch):
    # ./bundles/<name> under the working directory
    _fake_bundle(tmp_path / "proj" / "bundles" / "polyp")
    monkeypatch.chdir(tmp_path / "proj")
    assert find_bundle_root("polyp") == str((tmp_path / "proj" / "bundles" / "polyp").resolve())
    # the working directory is the bundle itself
    own = _fake_bundle(tmp_path / "zoo" / "polyp")
    monkeypatch.chdir(own)
    assert find_bundle_root("polyp") == str(own.resolve())


def test_find_bundle_root_wrong_name_not_taken(tmp_path, monkeypatch):
    """A working directory holding some *other* bundle is not mistaken for the wanted one."""
    other = _fake_bundle(tmp_path / "skin")
    monkeypatch.chdir(other)
    if (REPO_BUNDLE / "configs" / "metadata.json").is_file():
        assert find_bundle_root("polyp") == str(REPO_BUNDLE)
    assert find_bundle_root("no_such_bundle") == str(Path.cwd())


@pytest.mark.skipif(not (REPO_BUNDLE / "configs" / "metadata.json").is_file(), reason="no repository bundle copy")
def test_find_bundle_root_falls_back_to_package_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_bundle_root("polyp") == str(REPO_BUNDLE)


def test_find_bundle_root_nothing_found_returns_cwd(tmp_path, monkeypatch):
    monkeypatch.setattr(transfuse_monai.bundle.paths, "_REPO_ROOT", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    assert find_bundle_root("polyp") == str(Path.cwd())


# ---------------------------------------------------------------------------------------------------------------------
# resolve_dataset / is_demo_dataset
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def count_generation(monkeypatch):
    calls = []
    real = PolypTask.make_sample

    def counting(self, root, **kwargs):
        calls.append(str(root))
        return real(self, root, **kwargs)

    monkeypatch.setattr(PolypTask, "make_sample", counting)
    return calls


def resolve_dataset(dataset_dir, name, demo_dir):
    return get_task(name).resolve_dataset(dataset_dir, demo_dir)


def test_resolve_existing_pranet_dataset_unchanged(tmp_path, capsys, count_generation):
    data = tmp_path / "PraNet"
    (data / "TrainDataset" / "images").mkdir(parents=True)
    demo = tmp_path / "demo"
    assert resolve_dataset(data, "polyp", demo) == str(data)
    assert not demo.exists() and count_generation == []
    assert "WARNING" not in capsys.readouterr().out
    assert not is_demo_dataset(data)
    # a PraNet test-only folder counts too
    test_only = tmp_path / "TestOnly"
    (test_only / "TestDataset").mkdir(parents=True)
    assert resolve_dataset(test_only, "polyp", demo) == str(test_only)


def test_resolve_missing_dataset_generates_demo_once(tmp_path, capsys, count_generation):
    missing = tmp_path / "not_there"
    demo = tmp_path / "demo"
    out = resolve_dataset(missing, "polyp", demo)
    assert out == str(demo)
    assert (demo / DEMO_MARKER).is_file()
    assert is_demo_dataset(demo) and not is_demo_dataset(missing)
    assert any((demo / "TrainDataset" / "images").iterdir())
    assert sorted(p.name for p in (demo / "TestDataset").iterdir()) == ["CVC-ClinicDB", "Kvasir"]
    printed = capsys.readouterr().out
    warning_lines = [line for line in printed.splitlines() if line.startswith("WARNING")]
    assert len(warning_lines) == 1 and "DEMO" in warning_lines[0] and str(missing) in warning_lines[0]
    assert count_generation == [str(demo)]

    # second call: reuses the sample, still warns
    assert resolve_dataset(missing, "polyp", demo) == str(demo)
    assert count_generation == [str(demo)]
    assert "WARNING" in capsys.readouterr().out


def test_resolve_isic2017_demo(tmp_path, capsys, monkeypatch):
    made = []
    monkeypatch.setattr(
        ISIC2017Task, "make_sample", lambda self, root, **kw: made.append(kw) or Path(root).mkdir()
    )
    out = resolve_dataset(tmp_path / "none", "isic2017", tmp_path / "demo")
    assert out == str(tmp_path / "demo") and len(made) == 1 and is_demo_dataset(out)
    real = tmp_path / "isic"
    (real / "train").mkdir(parents=True)
    assert resolve_dataset(real, "isic2017", tmp_path / "demo2") == str(real)


def test_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="Unknown task 'kvasir-seg'; registered tasks: .*'isic2017', 'polyp'"):
        resolve_dataset(tmp_path, "kvasir-seg", tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


# ---------------------------------------------------------------------------------------------------------------------
# grouped_datalist
# ---------------------------------------------------------------------------------------------------------------------


def test_grouped_datalist_tags_items():
    kvasir = [{"image": "k1.png", "label": "k1m.png"}, {"image": "k2.png"}]
    cvc = [{"image": "c1.png"}]
    out = grouped_datalist({"Kvasir": kvasir, "CVC": cvc})
    assert out == [
        {"image": "k1.png", "label": "k1m.png", "set": "Kvasir"},
        {"image": "k2.png", "set": "Kvasir"},
        {"image": "c1.png", "set": "CVC"},
    ]
    assert "set" not in kvasir[0]  # inputs not mutated
    assert grouped_datalist({"A": cvc}, key="group") == [{"image": "c1.png", "group": "A"}]
    assert grouped_datalist({}) == []


# ---------------------------------------------------------------------------------------------------------------------
# image_datalist
# ---------------------------------------------------------------------------------------------------------------------


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_image_datalist_folder(tmp_path):
    for name in ("b.jpg", "a.png", "c.PNG", ".hidden.png", "notes.txt"):
        _touch(tmp_path / name)
    (tmp_path / "sub.png").mkdir()  # a folder, not an image
    out = image_datalist(tmp_path)
    assert out == [{"image": str(tmp_path / n)} for n in ("a.png", "b.jpg", "c.PNG")]


def test_image_datalist_single_image(tmp_path):
    image = _touch(tmp_path / "frame.JPG")
    assert image_datalist(image) == [{"image": str(image)}]  # one image, not read as a JSON datalist
    _touch(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="notes.txt is neither an image .* nor a JSON datalist"):
        image_datalist(tmp_path / "notes.txt")


def test_image_datalist_json_list_relative_paths(tmp_path):
    _touch(tmp_path / "imgs" / "1.png")
    _touch(tmp_path / "imgs" / "2.png")
    absolute = _touch(tmp_path / "elsewhere" / "3.png")
    listfile = tmp_path / "list.json"
    listfile.write_text(json.dumps(["imgs/1.png", {"image": "imgs/2.png", "id": 2}, str(absolute)]))
    out = image_datalist(str(listfile))
    assert out == [
        {"image": str(tmp_path / "imgs" / "1.png")},
        {"image": str(tmp_path / "imgs" / "2.png"), "id": 2},
        {"image": str(absolute)},
    ]


def test_image_datalist_json_dict_testing(tmp_path):
    _touch(tmp_path / "t" / "x.png")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "nope.png"}], "testing": [{"image": "t/x.png"}]}))
    assert image_datalist(datalist) == [{"image": str(tmp_path / "t" / "x.png")}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="testing"):
        image_datalist(bad)


def test_image_datalist_sequence(tmp_path):
    a = _touch(tmp_path / "a.png")
    assert image_datalist([str(a), {"image": str(a), "k": 1}]) == [{"image": str(a)}, {"image": str(a), "k": 1}]


def test_image_datalist_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        image_datalist(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    _touch(empty / "readme.txt")
    with pytest.raises(ValueError, match="No images"):
        image_datalist(empty)
    with pytest.raises(ValueError):
        image_datalist([])
    listfile = tmp_path / "list.json"
    listfile.write_text(json.dumps(["gone.png"]))
    with pytest.raises(FileNotFoundError, match="gone.png"):
        image_datalist(listfile)


def test_image_datalist_accepts_pathlike(tmp_path):
    _touch(tmp_path / "a.png")
    assert image_datalist(os.fspath(tmp_path)) == image_datalist(tmp_path) == [{"image": str(tmp_path / "a.png")}]


# ---------------------------------------------------------------------------------------------------------------------
# FastPaths / default_num_workers
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, amp, channels_last, expected",
    [
        # (engine_amp, inferer_amp, channels_last)
        ("cpu", "false", "auto", (False, False, False)),
        ("cpu", "true", "auto", (False, True, True)),
        ("cpu", "true", "false", (False, True, False)),
        ("cpu", False, "true", (False, False, True)),
        ("cuda", "true", "auto", (True, False, False)),
        ("cuda", True, None, (True, False, False)),
        ("meta", "yes", "auto", (False, True, False)),
    ],
)
def test_fast_paths_parse_once_and_derive(device, amp, channels_last, expected):
    fp = FastPaths(device, amp=amp, channels_last=channels_last, compile="false")
    assert (fp.engine_amp, fp.inferer_amp, fp.channels_last) == expected
    assert fp.compile is False and FastPaths(device, compile="on").compile is True
    inferer = fp.inferer()
    assert isinstance(inferer, AutocastInferer)
    assert (inferer.enabled, inferer.channels_last) == (fp.inferer_amp, fp.channels_last)


def test_fast_paths_reject_bad_strings():
    with pytest.raises(ValueError, match="amp must be true, false or auto, got 'sometimes'"):
        FastPaths("cpu", amp="sometimes")
    with pytest.raises(ValueError, match="'perhaps' as a boolean"):
        FastPaths("cpu", channels_last="perhaps")


def test_fast_paths_place_channels_last():
    net = torch.nn.Conv2d(3, 4, 3)
    placed = FastPaths("cpu", amp=True).place(net)
    assert placed.weight.is_contiguous(memory_format=torch.channels_last)
    plain = FastPaths("cpu", amp=False).place(torch.nn.Conv2d(3, 4, 3))
    assert plain.weight.is_contiguous() and not plain.weight.is_contiguous(memory_format=torch.channels_last)


def test_default_num_workers(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert default_num_workers("cpu", training=True) == 0
    assert default_num_workers("cuda", training=True) == 4
    assert default_num_workers("cpu", training=False) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert default_num_workers("cuda", training=True) == 1


# ---------------------------------------------------------------------------------------------------------------------
# task registry and class definitions
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, channel_def, labels, out_channels",
    [
        ("polyp", {"0": "background", "1": "polyp"}, {"polyp": 1}, 1),
        ("isic2017", {"0": "background", "1": "lesion"}, {"lesion": 1}, 1),
    ],
)
def test_task_classes(name, channel_def, labels, out_channels):
    task = get_task(name)
    assert task.channel_def() == channel_def and task.labels() == labels
    assert task.out_channels == out_channels and task.in_channels == 3 and task.activation == "sigmoid"


def test_softmax_task_counts_background_channel():
    class ThreeClass(SegmentationTask):
        name = "three"
        class_names = ("background", "pz", "tz")
        activation = "softmax"
        channel_names = ("T2", "ADC")

    task = ThreeClass()
    assert task.out_channels == 3 and task.in_channels == 2 and task.labels() == {"pz": 1, "tz": 2}
    assert task.channel_def() == {"0": "background", "1": "pz", "2": "tz"}


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"activation": "relu"}, "activation must be one of"),
        ({"class_names": ("polyp",)}, "must start with 'background'"),
        ({"class_names": ("background", "a", "a")}, "duplicates"),
    ],
)
def test_task_definition_errors(attrs, message):
    with pytest.raises(TypeError, match=message):
        type("Bad", (SegmentationTask,), {"name": "bad", **attrs})


def test_register_task_refuses_a_taken_name():
    from transfuse_monai.tasks import register_task

    with pytest.raises(ValueError, match="already registered by PolypTask"):
        register_task(type("Other", (SegmentationTask,), {"name": "polyp"}))

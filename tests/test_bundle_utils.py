"""Tests for transfuse_monai.bundle.utils (helpers called from the bundle configs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import transfuse_monai
import transfuse_monai.bundle.utils as bundle_utils
from transfuse_monai.bundle import (
    DEMO_MARKER,
    as_bool,
    find_bundle_root,
    grouped_datalist,
    image_datalist,
    is_demo_dataset,
    resolve_dataset,
)

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
    monkeypatch.setattr(bundle_utils, "_REPO_ROOT", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    assert find_bundle_root("polyp") == str(Path.cwd())


# ---------------------------------------------------------------------------------------------------------------------
# resolve_dataset / is_demo_dataset
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def count_generation(monkeypatch):
    calls = []
    real = bundle_utils.make_synthetic_pranet_dataset

    def counting(root, **kwargs):
        calls.append(str(root))
        return real(root, **kwargs)

    monkeypatch.setattr(bundle_utils, "make_synthetic_pranet_dataset", counting)
    return calls


def test_resolve_existing_pranet_dataset_unchanged(tmp_path, capsys, count_generation):
    data = tmp_path / "PraNet"
    (data / "TrainDataset" / "images").mkdir(parents=True)
    demo = tmp_path / "demo"
    assert resolve_dataset(data, "pranet", demo) == str(data)
    assert not demo.exists() and count_generation == []
    assert "WARNING" not in capsys.readouterr().out
    assert not is_demo_dataset(data)
    # a PraNet test-only folder counts too
    test_only = tmp_path / "TestOnly"
    (test_only / "TestDataset").mkdir(parents=True)
    assert resolve_dataset(test_only, "pranet", demo) == str(test_only)


def test_resolve_missing_dataset_generates_demo_once(tmp_path, capsys, count_generation):
    missing = tmp_path / "not_there"
    demo = tmp_path / "demo"
    out = resolve_dataset(missing, "pranet", demo)
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
    assert resolve_dataset(missing, "pranet", demo) == str(demo)
    assert count_generation == [str(demo)]
    assert "WARNING" in capsys.readouterr().out


def test_resolve_isic2017_demo(tmp_path, capsys, monkeypatch):
    made = []
    monkeypatch.setattr(
        bundle_utils, "make_synthetic_isic2017_dataset", lambda root, **kw: made.append(kw) or Path(root).mkdir()
    )
    out = resolve_dataset(tmp_path / "none", "isic2017", tmp_path / "demo")
    assert out == str(tmp_path / "demo") and len(made) == 1 and is_demo_dataset(out)
    real = tmp_path / "isic"
    (real / "train").mkdir(parents=True)
    assert resolve_dataset(real, "isic2017", tmp_path / "demo2") == str(real)


def test_resolve_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="layout"):
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

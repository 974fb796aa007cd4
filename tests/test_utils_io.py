"""The one atomic-write helper of the package: a file is either complete under its final name or absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from transfuse_monai.utils import atomic_path, atomic_write_json, atomic_write_text, partial_name


def test_partial_name_is_hidden_and_keeps_the_extension():
    pid = os.getpid()
    assert partial_name("/a/b/mask.png") == Path(f"/a/b/.mask.partial-{pid}.png")
    assert partial_name("/a/case_01.nii.gz") == Path(f"/a/.case_01.partial-{pid}.nii.gz")
    assert partial_name("/a/model.v2.onnx") == Path(f"/a/.model.v2.partial-{pid}.onnx")
    assert partial_name("/a/README") == Path(f"/a/.README.partial-{pid}")


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "report.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".report.partial-")
        tmp.write_text("{}")
        assert not target.exists()  # nothing under the final name while writing
    assert target.read_text() == "{}"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_atomic_path_failure_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"dice": 0.9})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"dice": 0.')  # half written
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"dice": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_atomic_path_refuses_a_body_that_wrote_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "x.txt"):
            pass
    assert not any(tmp_path.iterdir())


def test_atomic_write_text(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "t.md", "| a |\n")
    assert path.read_text() == "| a |\n"

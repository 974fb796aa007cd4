# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Atomic file writing: the one place where temporary names and ``os.replace`` live.

Every writer of this package (masks, reports, exports, checkpoints, datalists) goes through :func:`atomic_path`, so
an interrupted or failed write leaves either the complete file under its final name or nothing there (a hidden
``.<stem>.partial-<pid><suffix>`` file at worst, which is removed on any Python-level failure).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["absolute_path", "partial_name", "atomic_path", "atomic_write_text", "atomic_write_json"]

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute (symbolic links kept, unlike ``Path.resolve``)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def partial_name(path: str | os.PathLike) -> Path:
    """The temporary name used for ``path`` while it is written: hidden, in the same folder (so the final rename
    stays on one file system), with the process id, and with the same extension, compound ones such as
    ``.nii.gz`` included (writers that choose the format from the extension, such as PIL, nibabel or ``torch.onnx``,
    keep working)."""
    path = Path(path)
    suffixes = path.suffixes
    # keep compound extensions whole (".nii.gz"): nibabel and others choose the format from them
    n = 2 if len(suffixes) >= 2 and suffixes[-1].lower() in _COMPRESSED else min(len(suffixes), 1)
    suffix = "".join(suffixes[-n:]) if n else ""
    stem = path.name[: len(path.name) - len(suffix)]
    return path.with_name(f".{stem}.partial-{os.getpid()}{suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike, make_parents: bool = True) -> Iterator[Path]:
    """Context manager yielding a temporary path to write ``path`` through.

    On a normal exit the temporary file is renamed to ``path`` (``os.replace``, atomic on POSIX and Windows); on an
    exception it is deleted and the exception propagates, so ``path`` keeps its previous content, if any.

    Example::

        with atomic_path("out/mask.png") as tmp:
            Image.fromarray(mask).save(tmp)

    Args:
        path: the final file.
        make_parents: create the parent folder first.

    Raises:
        FileNotFoundError: the body wrote nothing to the temporary path.
    """
    final = Path(path)
    if make_parents:
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written for '{final}' (expected the temporary file '{tmp}')")
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically; returns ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")

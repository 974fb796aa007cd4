# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Image writers that never leave a half-written file behind."""

from __future__ import annotations

import os
from pathlib import Path

from monai.data import PILWriter

__all__ = ["AtomicPILWriter"]


class AtomicPILWriter(PILWriter):
    """MONAI :class:`~monai.data.PILWriter` that writes to a hidden temporary file and renames it into place.

    ``os.replace`` is atomic on POSIX and Windows, so an interrupted run leaves either the complete file or none (a
    stale ``.*.partial-*`` file at worst, never a truncated image under the final name). Arrays are written without
    reversing the spatial axes by default, matching images loaded with ``PILReader(reverse_indexing=False)``.

    Use it with :class:`~monai.transforms.SaveImaged` as ``writer="transfuse_monai.data.AtomicPILWriter"``.
    """

    reverse_indexing: bool = False

    def write(self, filename, verbose: bool = False, **kwargs):
        path = Path(filename)
        tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
        kwargs.setdefault("reverse_indexing", self.reverse_indexing)
        try:
            super().write(tmp, verbose=verbose, **kwargs)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Image writers that never leave a half-written file behind."""

from __future__ import annotations

from monai.data import NibabelWriter, PILWriter

from transfuse_monai.utils import atomic_path

__all__ = ["AtomicNibabelWriter", "AtomicPILWriter"]


class AtomicPILWriter(PILWriter):
    """MONAI :class:`~monai.data.PILWriter` that writes to a hidden temporary file and renames it into place.

    The temporary name and the rename come from :func:`transfuse_monai.utils.atomic_path`: an interrupted run leaves
    either the complete file or none (a stale ``.*.partial-*`` file at worst, never a truncated image under the final
    name). Arrays are written without reversing the spatial axes by default, matching images loaded with
    ``PILReader(reverse_indexing=False)``.

    Use it with :class:`~monai.transforms.SaveImaged` as ``writer="transfuse_monai.data.AtomicPILWriter"``.
    """

    reverse_indexing: bool = False

    def write(self, filename, verbose: bool = False, **kwargs):
        kwargs.setdefault("reverse_indexing", self.reverse_indexing)
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **kwargs)


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's :class:`~monai.data.NibabelWriter` writing through :func:`transfuse_monai.utils.atomic_path` (a hidden
    temporary file with the whole ``.nii.gz`` extension, renamed into place), so an interrupted run leaves the
    complete NIfTI file or none. Use it with
    ``SaveImaged(writer="transfuse_monai.data.AtomicNibabelWriter")``.
    """

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        with atomic_path(filename) as tmp:
            super().write(str(tmp), verbose=verbose, **obj_kwargs)

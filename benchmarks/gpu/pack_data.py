# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Pack the polyp data that the GPU run kit trains and evaluates on, small enough to travel with the code.

Reads the PraNet layout (``../shared/data/polyp`` by default; see ``../shared/data/README.md``) and writes the same
layout, which the polyp bundle's datalist code reads as is, to ``benchmarks/gpu/data/polyp`` (git-ignored):

* ``TrainDataset/{images,masks}``: the 1,450 training pairs, images at ``--train-size`` (352x352, the paper's training
  size) as JPEG of ``--quality`` (90), masks as 8-bit 0/255 PNG of the same size (nearest-neighbour, thresholded);
* ``TestDataset/{Kvasir,CVC-ClinicDB}/{images,masks}``: the test pairs at their original size (the bundle's
  evaluation scores at each mask's own size), images as JPEG of ``--quality``, masks as 0/255 PNG.

Files keep their stems (an image and its mask share one). ``MANIFEST.json`` (counts, bytes, settings) is written
last: ``run.sh`` refuses a folder without it, so an interrupted pack is never used. An existing output folder is
replaced. Prints the packed size.

    python -m benchmarks gpu-pack-data                      # ../shared/data/polyp -> benchmarks/gpu/data/polyp
    python -m benchmarks gpu-pack-data --src /data/polyp --quality 85
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from benchmarks.common import UsageError, shared_data

HERE = Path(__file__).resolve().parent
TEST_SETS = ("Kvasir", "CVC-ClinicDB")
MANIFEST = "MANIFEST.json"


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a PraNet ``images``/``masks`` folder, matched by stem (the datalist code's rule)."""
    from transfuse_monai.data.datalists import build_image_mask_datalist

    return [(Path(d["image"]), Path(d["label"]))
            for d in build_image_mask_datalist(folder / "images", folder / "masks", validate=False)]


def _save_pair(image: Path, mask: Path, dest: Path, size: tuple[int, int] | None, quality: int) -> int:
    """Write one pair under ``dest/{images,masks}`` (resized to ``size`` (H, W) when given); return the bytes."""
    import numpy as np
    from PIL import Image

    img = Image.open(image).convert("RGB")
    msk = Image.open(mask).convert("L")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    if msk.size != img.size:
        msk = msk.resize(img.size, Image.NEAREST)
    msk = Image.fromarray(np.where(np.asarray(msk) > 127, 255, 0).astype(np.uint8))
    out_img, out_msk = dest / "images" / f"{image.stem}.jpg", dest / "masks" / f"{mask.stem}.png"
    img.save(out_img, "JPEG", quality=quality, optimize=True)
    msk.save(out_msk, "PNG", optimize=True)
    return out_img.stat().st_size + out_msk.stat().st_size


def pack(src: Path, out: Path, train_size: tuple[int, int], quality: int, limit: int = 0) -> dict:
    """Pack ``src`` (PraNet layout) into ``out``; return the manifest (also written to ``out/MANIFEST.json``).

    Args:
        src: the PraNet root holding ``TrainDataset/`` and ``TestDataset/<set>/``.
        out: the output root (replaced if it exists).
        train_size: (H, W) of the training pairs.
        quality: JPEG quality of every image.
        limit: keep only the first N pairs of each subset (0: all); for quick checks.
    """
    from transfuse_monai.utils.io import atomic_write_json

    subsets = {"TrainDataset": train_size, **{f"TestDataset/{s}": None for s in TEST_SETS}}
    missing = [f"'{src / sub / kind}'" for sub in subsets for kind in ("images", "masks")
               if not (src / sub / kind).is_dir()]
    if missing:
        raise SystemExit(f"pack_data: {', '.join(missing)} missing: pass --src <PraNet root> (TrainDataset/ and "
                         f"TestDataset/{{{','.join(TEST_SETS)}}}/, each with images/ and masks/)")
    if out.exists():
        shutil.rmtree(out)
    manifest = {"source": str(src), "train_size": list(train_size), "jpeg_quality": quality, "subsets": {},
                "packed": time.strftime("%Y-%m-%d %H:%M:%S")}
    total = 0
    for sub, size in subsets.items():
        pairs = _pairs(src / sub)
        if limit:
            pairs = pairs[:limit]
        for kind in ("images", "masks"):
            (out / sub / kind).mkdir(parents=True)
        nbytes = sum(_save_pair(i, m, out / sub, size, quality) for i, m in pairs)
        manifest["subsets"][sub] = {"pairs": len(pairs), "bytes": nbytes}
        total += nbytes
        print(f"  {sub:<26} {len(pairs):5d} pairs  {nbytes / 2**20:6.1f} MiB", flush=True)
    manifest["bytes"] = total
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", type=Path, default=shared_data("polyp"), help="PraNet root (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "data" / "polyp",
                        help="output root (default: %(default)s; git-ignored)")
    parser.add_argument("--train-size", type=int, nargs=2, default=[352, 352], metavar=("H", "W"))
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="first N pairs per subset only (0: all)")


def run(args: argparse.Namespace) -> None:
    """Pack the data and print its size."""
    if not 1 <= args.quality <= 100:
        raise UsageError("--quality must be in 1..100")
    start = time.perf_counter()
    manifest = pack(args.src.resolve(), args.out.resolve(), tuple(args.train_size), args.quality, args.limit)
    print(f"packed {sum(s['pairs'] for s in manifest['subsets'].values())} pairs into {args.out}: "
          f"{manifest['bytes'] / 2**20:.1f} MiB ({time.perf_counter() - start:.0f} s)")

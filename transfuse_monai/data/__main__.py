# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Dataset commands: ``python -m transfuse_monai.data <command>``.

``split``: a random train / validation / test split of image / label pairs (paired by file name without extension)
as a datalist JSON in MONAI's decathlon convention, the layout the hip bundle reads::

    python -m transfuse_monai.data split --images DIR --labels DIR --output DIR/datalist.json \\
        [--seed 0] [--ratios 7 1 2] [--spacing 0.143]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from transfuse_monai.data.datalists import write_split_datalist
from transfuse_monai.data.formats import KNOWN_EXTENSIONS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfuse_monai.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="random train/validation/test split (the paper's 7:1:2) as datalist JSON")
    split.add_argument("--images", required=True, help="folder of images")
    split.add_argument("--labels", required=True, help="folder of label maps, named like their image")
    split.add_argument("--output", required=True, help="datalist JSON to write (paths relative to its folder)")
    split.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    split.add_argument("--ratios", type=float, nargs=3, default=[7, 1, 2], metavar=("TRAIN", "VAL", "TEST"))
    split.add_argument("--spacing", type=float, nargs="+", default=None,
                       help="default pixel spacing (mm, one or two values) of images that carry none")
    args = parser.parse_args(argv)
    extra = {}
    if args.spacing is not None:
        from transfuse_monai.transforms.spacing import as_spacing

        extra["spacing"] = list(as_spacing(args.spacing, "--spacing"))
    try:
        content = write_split_datalist(args.images, args.labels, args.output, args.seed, args.ratios,
                                       KNOWN_EXTENSIONS, extra)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    counts = ", ".join(f"{k} {len(content[k])}" for k in ("training", "validation", "test"))
    print(f"wrote {args.output}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

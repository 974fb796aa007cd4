# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Print parameter counts (and optionally CPU latency) of the TransFuse variants as a Markdown table.

    python -m benchmarks summary                             # S, L, L* at 352x352
    python -m benchmarks summary --size 192 256 --latency
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.common import md_row, md_table, time_calls


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from transfuse_monai.networks.nets import TRANSFUSE_PRESETS

    parser.add_argument("--size", type=int, nargs=2, default=(352, 352), metavar=("H", "W"))
    parser.add_argument("--variants", nargs="+", default=list(TRANSFUSE_PRESETS), choices=list(TRANSFUSE_PRESETS))
    parser.add_argument("--latency", action="store_true", help="also time batch-1 eval forward passes")
    parser.add_argument("--repeats", type=int, default=5)


def run(args: argparse.Namespace) -> None:
    import torch

    from transfuse_monai.networks.nets import TransFuse

    header = ["variant", "CNN", "transformer (blocks)", f"parameters at {args.size[0]}x{args.size[1]}"]
    for line in md_table(header + (["batch-1 CPU latency (median)"] if args.latency else [])):
        print(line)
    for variant in args.variants:
        model = TransFuse(img_size=args.size, variant=variant).eval()
        n = sum(p.numel() for p in model.parameters())
        row = [f"TransFuse-{variant}", model.cnn_name, f"{model.vit_name} ({len(model.transformer.blocks)})", f"{n:,}"]
        if args.latency:
            x = torch.randn(1, 3, *args.size)
            with torch.inference_mode():
                model(x)  # warm-up
                times = time_calls(lambda: model(x), args.repeats)
            row.append(f"{statistics.median(times) * 1000:.0f} ms")
        print(md_row(row), flush=True)

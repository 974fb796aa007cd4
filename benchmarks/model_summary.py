"""Print parameter counts (and optionally CPU latency) of the TransFuse variants.

    python benchmarks/model_summary.py                   # S, L, L* at 352x352
    python benchmarks/model_summary.py --size 192 256 --latency
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from transfuse_monai.networks.nets import TRANSFUSE_PRESETS, TransFuse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(352, 352), metavar=("H", "W"))
    parser.add_argument("--variants", nargs="+", default=list(TRANSFUSE_PRESETS), choices=list(TRANSFUSE_PRESETS))
    parser.add_argument("--latency", action="store_true", help="also time batch-1 eval forward passes")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(f"| variant | CNN | transformer (blocks) | parameters at {args.size[0]}x{args.size[1]} |"
          + (" batch-1 CPU latency (median) |" if args.latency else ""))
    print("|---|---|---|---|" + ("---|" if args.latency else ""))
    for variant in args.variants:
        model = TransFuse(img_size=args.size, variant=variant).eval()
        n = sum(p.numel() for p in model.parameters())
        row = f"| TransFuse-{variant} | {model.cnn_name} | {model.vit_name} ({len(model.transformer.blocks)}) | {n:,} |"
        if args.latency:
            x = torch.randn(1, 3, *args.size)
            with torch.inference_mode():
                model(x)  # warm-up
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model(x)
                    times.append(time.perf_counter() - start)
            row += f" {statistics.median(times) * 1000:.0f} ms |"
        print(row, flush=True)


if __name__ == "__main__":
    main()

# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The paper's Table 5 (branch and composition ablations of TransFuse-S) re-run through the polyp bundle: every row
trained from scratch for the same number of iterations (the paper trains every row for the same epochs; or the same
wall-clock budget, ``--iterations 0``) on the real data, then evaluated on Kvasir and CVC-ClinicDB.

The rows are :data:`transfuse_monai.networks.nets.TABLE5_ABLATIONS` (the bundles' ``--ablation E.x``):

* E.1 ResNet-34 alone; E.2 DeiT-S alone;
* E.3 ResNet-34 then DeiT-S (sequential: the transformer on the CNN's stride-16 map, TransUNet-like);
* E.4 ResNet-34 + VGG-16 in parallel, fused by BiFusion;
* E.5 ResNet-34 + DeiT-S in parallel, fused by concatenation + a residual block;
* E.6 ResNet-34 + DeiT-S in parallel, fused by BiFusion: TransFuse-S.

Training and evaluation are those of ``python -m benchmarks budget`` (the bundle's ``train.json`` and ``evaluate.json``
with a budget stop, validation every ``--val-every`` iterations, the best checkpoint evaluated at each mask's original
size); this command adds the rows' ``--ablation``, a complexity table (parameters and GMACs at 352 x 352, counted by
PyTorch's FLOP counter) and the Table 5 layout with the paper's figures beside ours.

The paper reports Kvasir (seen) and CVC-ColonDB (unseen); CVC-ColonDB is not in ``../shared/data/polyp``, so the
unseen column here is CVC-ClinicDB (both are seen-distribution test sets of the PraNet split, CVC-ClinicDB the larger
one). The paper trains on a GPU from ImageNet weights; here every row starts from scratch (no weights can be
downloaded), at a reduced size, for minutes: the table says which of the paper's orderings hold at this budget.

    python -m benchmarks table5 --iterations 300 --size 128          # about 40 minutes on 2 CPU cores
    python -m benchmarks table5 --complexity-only                    # parameters and GMACs only (seconds)
    python -m benchmarks table5 --iterations 8 --val-every 4 --limit-train 32 --limit-test 4 --out /tmp/t5  # smoke

Results: ``<out>/table5.md`` and ``<out>/table5.json`` (default ``benchmarks/output/table5``, git-ignored), beside the
budget run's own ``results.md`` / ``results.json`` and logs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import budget
from benchmarks.common import OUTPUT, UsageError, fmt, md_table, write_results

#: the paper's Table 5 (mean Dice). E.6 is TransFuse-S, whose figures are also the paper's Table 1 (polyp bundle
#: docs); the other rows are filled in when their figures are at hand (None: not available to this project).
PAPER_TABLE5: dict[str, dict[str, float | None]] = {
    "E.1": {"Kvasir": None, "CVC-ColonDB": None},
    "E.2": {"Kvasir": None, "CVC-ColonDB": None},
    "E.3": {"Kvasir": None, "CVC-ColonDB": None},
    "E.4": {"Kvasir": None, "CVC-ColonDB": None},
    "E.5": {"Kvasir": None, "CVC-ColonDB": None},
    "E.6": {"Kvasir": 0.918, "CVC-ColonDB": 0.773},
}
#: the orderings the paper's text draws from Table 5: (what it shows, better row, worse row)
PAPER_CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("combining the branches helps", "E.3", "E.1"),
    ("combining the branches helps", "E.3", "E.2"),
    ("parallel beats sequential", "E.5", "E.3"),
    ("parallel beats sequential", "E.6", "E.3"),
    ("the CNN and transformer complement each other (vs two CNNs)", "E.6", "E.4"),
    ("BiFusion beats concatenation + residual", "E.6", "E.5"),
)
TEST_SETS = budget.POLYP_TEST_SETS  # Kvasir, CVC-ClinicDB
COMPLEXITY_SIZE = 352  # the paper's polyp input size


def complexity(size: int = COMPLEXITY_SIZE) -> dict[str, dict]:
    """Parameters and GMACs (one image, ``size`` x ``size``, PyTorch's FLOP counter) of every Table 5 row."""
    import torch

    from benchmarks.models.zoo import count_gmacs
    from transfuse_monai.networks.nets import TABLE5_ABLATIONS, TransFuse

    rows = {}
    for key in TABLE5_ABLATIONS:
        net = TransFuse(img_size=(size, size), ablation=key).eval()
        rows[key] = {"parameters": sum(p.numel() for p in net.parameters()),
                     "gmacs": count_gmacs(net, torch.zeros(1, 3, size, size))}
    return rows


def complexity_table(rows: dict[str, dict], size: int) -> list[str]:
    from transfuse_monai.networks.nets import TABLE5_DESCRIPTIONS

    base = rows["E.6"]
    return md_table(
        ["row", "model", "parameters", f"GMACs at {size}x{size}", "parameters / E.6", "GMACs / E.6"],
        [[key, TABLE5_DESCRIPTIONS[key], f"{r['parameters'] / 1e6:.2f} M", fmt(r["gmacs"], ".2f"),
          fmt(r["parameters"] / base["parameters"], ".2f"),
          fmt(r["gmacs"] / base["gmacs"] if r["gmacs"] and base["gmacs"] else None, ".2f")]
         for key, r in rows.items()], align="llrrrr")


def claims_table(scores: dict[str, dict[str, float | None]]) -> list[str]:
    """Whether each of the paper's orderings holds in ``scores`` (row -> test set -> mean Dice)."""
    def holds(better: str, worse: str, test_set: str) -> str:
        a, b = (scores.get(better) or {}).get(test_set), (scores.get(worse) or {}).get(test_set)
        if a is None or b is None:
            return "n/a"
        return f"{'yes' if a > b else 'no'} ({a:.3f} vs {b:.3f})"

    return md_table(["the paper's reading", "ordering", *(f"holds on {s}" for s in TEST_SETS)],
                    [[text, f"{better} > {worse}", *(holds(better, worse, s) for s in TEST_SETS)]
                     for text, better, worse in PAPER_CLAIMS])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="PraNet root (default: ../shared/data/polyp)")
    parser.add_argument("--size", type=int, nargs="+", default=[128], metavar="S",
                        help="training and evaluation size, multiples of 32 (default 128; the paper's: 352)")
    parser.add_argument("--iterations", type=int, default=300,
                        help="training iterations per row, the same for every row as in the paper (equal epochs); "
                        "0: the time budget alone decides")
    parser.add_argument("--budget-min", type=float, default=30.0,
                        help="training time limit per row (minutes): a cap with --iterations, else the budget")
    parser.add_argument("--budget-clock", default="wall", choices=["wall", "cpu"],
                        help="as in 'benchmarks budget': wall clock, or CPU time of the training process")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--val-every", type=int, default=50,
                        help="training iterations between validations (best-checkpoint selection); with --iterations, "
                        "a divisor of it, so that every row stops at the same count")
    parser.add_argument("--rows", nargs="+", default=None, choices=list(PAPER_TABLE5), help="default: all six")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int, default=0, help="smoke runs: first N training pairs only")
    parser.add_argument("--limit-test", type=int, default=None, help="smoke runs: first N images per test set")
    parser.add_argument("--complexity-size", type=int, default=COMPLEXITY_SIZE,
                        help="input size of the parameter and GMAC count (default 352, the paper's)")
    parser.add_argument("--complexity-only", action="store_true", help="print the complexity table and stop")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the rows' existing model.pt files")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/output/table5")


def run(args: argparse.Namespace) -> None:
    from transfuse_monai.networks.nets import TABLE5_DESCRIPTIONS

    if args.complexity_size <= 0 or args.complexity_size % 32:
        raise UsageError(f"--complexity-size must be a positive multiple of 32, got {args.complexity_size}")
    if args.iterations < 0 or (args.iterations and (args.val_every <= 0 or args.iterations % args.val_every)):
        raise UsageError(f"--iterations {args.iterations} must be a multiple of --val-every {args.val_every} (the "
                         "budget stops at a validation), or 0")
    out = (args.out or OUTPUT / "table5").resolve()
    print(f"counting parameters and GMACs at {args.complexity_size}x{args.complexity_size} ...", flush=True)
    sizes = complexity(args.complexity_size)
    lines = complexity_table(sizes, args.complexity_size)
    print("\n".join(lines), flush=True)
    if args.complexity_only:
        return

    rows = args.rows or list(PAPER_TABLE5)
    budget_parser = argparse.ArgumentParser(prog="python -m benchmarks budget")
    budget.add_arguments(budget_parser)
    budget_argv = [
        "--bundle", "polyp", "--models", *(f"ablation_{r}" for r in rows), "--size", *map(str, args.size),
        "--budget-min", str(args.budget_min), "--budget-clock", args.budget_clock, "--max-iterations",
        str(args.iterations), "--budget-stop", "validation", "--batch-size",
        str(args.batch_size), "--lr", str(args.lr), "--val-every", str(args.val_every), "--seed", str(args.seed),
        "--out", str(out),
        *(["--limit-train", str(args.limit_train)] if args.limit_train else []),
        *(["--limit-test", str(args.limit_test)] if args.limit_test else []),
        *(["--data", str(args.data)] if args.data else []), *(["--eval-only"] if args.eval_only else []),
    ]
    budget_args = budget_parser.parse_args(budget_argv)
    budget_args.command_line = args.command_line
    budget.run(budget_args)

    results = {r["key"].removeprefix("ablation_"): r for r in json.loads((out / "results.json").read_text())["results"]}
    scores = {k: {s: (r["test"].get(s) or {}).get("dice") for s in TEST_SETS} for k, r in results.items()}
    size = f"{budget_args.size[0]}x{budget_args.size[1]}"
    table = md_table(
        ["row", "model", f"parameters ({args.complexity_size}x{args.complexity_size})", "iterations in budget",
         f"Kvasir mDice ({size})", f"CVC-ClinicDB mDice ({size})", "paper: Kvasir", "paper: CVC-ColonDB"],
        [[k, TABLE5_DESCRIPTIONS[k], f"{sizes[k]['parameters'] / 1e6:.2f} M", fmt(r.get("iterations"), "d"),
          fmt(scores[k]["Kvasir"], ".3f"), fmt(scores[k]["CVC-ClinicDB"], ".3f"),
          fmt(PAPER_TABLE5[k]["Kvasir"], ".3f"), fmt(PAPER_TABLE5[k]["CVC-ColonDB"], ".3f")]
         for k, r in results.items()], align="llrrrrrr")
    report = "\n".join([
        f"Table 5 through the polyp bundle: {size}, "
        + (f"{args.iterations} training iterations per row (capped at {args.budget_min:g} min)" if args.iterations
           else f"{args.budget_min:g} min ({args.budget_clock} clock) of training per row")
        + f" from scratch on CPU, batch {args.batch_size}, Adam {args.lr}, the checkpoint with the best validation "
        f"Dice (every {args.val_every} iterations); evaluated at each mask's original "
        "size (evaluate.json). CVC-ColonDB is not in the shared data: CVC-ClinicDB stands in for the second column; "
        "the paper's figures: ImageNet-pretrained backbones, 352x352, GPU; n/a: not at hand.", "",
        *table, "", "The paper's orderings at this budget:", "", *claims_table(scores), "",
        f"Complexity (one image, {args.complexity_size}x{args.complexity_size}):", "", *lines, ""])
    print("\n" + report)
    write_results(out, report, {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                "complexity": sizes, "scores": scores, "paper": PAPER_TABLE5,
                                "claims": PAPER_CLAIMS}, stem="table5")

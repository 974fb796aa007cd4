# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The bundles' fast-path flags on real data: accuracy and evaluation time of a trained checkpoint per flag setting.

Runs a bundle's ``evaluate.json`` (the real pipeline: loading, preprocessing, inference, inversion, metrics) once per
setting of the inference flags the bundles expose, on the same checkpoint and images, and reports each setting's
metrics, the per-image metric change against plain fp32, and the evaluator's loop time (Ignite's ``COMPLETED`` time:
data loading, inference, post-processing and metrics, without process start-up):

* ``fp32``: ``--amp false --channels_last false`` (plain fp32, NCHW);
* ``channels_last``: ``--amp false`` (the bundles' default on CPU: NHWC weights and inputs);
* ``amp``: ``--amp true`` (on CPU: bfloat16 autocast through ``transfuse_monai.inferers.AutocastInferer``, plus the
  default channels-last; on CUDA: MONAI's float16 AMP);
* ``compile`` (only with ``--with-compile``): ``--compile true`` (``torch.compile`` in MONAI's evaluator, fp32; the
  loop time then includes compilation).

    python -m benchmarks fast-paths --bundle isic2017 \\
        --ckpt benchmarks/output/isic_budget/transfuse_s/models/model.pt --image-size 96 128
    python -m benchmarks fast-paths --bundle polyp \\
        --ckpt benchmarks/output/polyp_budget/transfuse_s/models/model.pt --image-size 128 128

The checkpoints above are the ones the budget runs (``python -m benchmarks budget --bundle isic2017|polyp``) leave
behind; any ``model.pt`` of the bundle works (``--image-size`` must be the size it was trained at). Data: ``--data``
(default ``../shared/data/<bundle>``); ISIC 2017 is scored on the 150 official validation images (``--eval_split
val``), polyps on ``--polyp-sets`` (default Kvasir and CVC-ClinicDB). Results: a Markdown table on stdout and in
``<out>/results.md``, everything in ``<out>/results.json``, logs in ``<out>/logs/`` (default
``benchmarks/output/bundle_fast_paths/<bundle>``, git-ignored).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
from pathlib import Path

from benchmarks.common import (
    OUTPUT,
    REPO,
    bundle_command,
    cpu_name,
    fmt_seconds,
    loadavg,
    md_row,
    md_table,
    rel,
    run_checked,
    shared_data,
    shown,
    write_results,
)

SETTINGS = {
    "fp32": ["--amp", "false", "--channels_last", "false"],
    "channels_last": ["--amp", "false", "--channels_last", "true"],
    "amp": ["--amp", "true", "--channels_last", "true"],
    "compile": ["--amp", "false", "--channels_last", "false", "--compile", "true"],
}
BUNDLES = {
    # per-image CSV and summary written by the evaluation, and the metrics reported from them
    "polyp": {"prefix": "polyp_", "metrics": ("dice", "iou", "mae"), "first": "dice"},
    "isic2017": {"prefix": "isic2017_original_res_", "metrics": ("jaccard_orig", "dice_orig", "accuracy_orig"),
                 "first": "jaccard_orig"},
}


def timing_override(path: Path, out_json: Path) -> Path:
    """An override config that writes the evaluator's Ignite times after ``run``."""
    path.write_text(json.dumps({
        "timing_imports": ["$import json", "$import pathlib"],
        "run": [
            "$@validate#evaluator.run()",
            f"$pathlib.Path({str(out_json)!r}).write_text(json.dumps({{'times': {{k: v for k, v in "
            "@validate#evaluator.state.times.items() if v is not None}, 'iterations': "
            "@validate#evaluator.state.iteration, 'torch_threads': torch.get_num_threads()}))",
        ],
    }, indent=2) + "\n")
    return path


def read_per_image(csv_path: Path, metric: str) -> dict[str, float]:
    with open(csv_path, newline="") as f:
        return {f"{row['set']}/{row['name']}": float(row[metric]) for row in csv.DictReader(f)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", choices=sorted(BUNDLES), required=True)
    parser.add_argument("--ckpt", type=Path, required=True, help="a model.pt of the bundle")
    parser.add_argument("--image-size", type=int, nargs=2, required=True, help="H W the checkpoint was trained at")
    parser.add_argument("--data", type=Path, default=None, help="default ../shared/data/<bundle>")
    parser.add_argument("--polyp-sets", nargs="+", default=["Kvasir", "CVC-ClinicDB"])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["fp32", "channels_last", "amp"])
    parser.add_argument("--with-compile", action="store_true", help="also run the compile setting (slow on CPU)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/output/bundle_fast_paths/<bundle>")


def run(args: argparse.Namespace) -> None:
    """Evaluate the checkpoint once per setting; the report."""
    spec = BUNDLES[args.bundle]
    data = (args.data or shared_data(args.bundle)).resolve()
    if not data.is_dir():
        raise SystemExit(f"no data at {data}: this benchmark needs the real {args.bundle} data (--data)")
    if not args.ckpt.is_file():
        raise SystemExit(f"checkpoint {args.ckpt} not found; the budget runs write one (see this command's help)")
    settings = list(dict.fromkeys(args.settings + (["compile"] if args.with_compile else [])))
    out = (args.out or OUTPUT / "bundle_fast_paths" / args.bundle).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "configs").mkdir(exist_ok=True)

    configs = REPO / "bundles" / args.bundle / "configs"
    extra = (["--eval_split", "val"] if args.bundle == "isic2017"
             else ["--test_sets", json.dumps(args.polyp_sets, separators=(",", ":"))])
    rows = []
    for name in settings:
        eval_dir = out / name
        timing_json = out / "configs" / f"timing_{name}.json"
        override = timing_override(out / "configs" / f"timing_override_{name}.json", timing_json)
        cmd = bundle_command(
            "evaluating", [configs / "train.json", configs / "evaluate.json", override],
            "--dataset_dir", rel(data), "--image_size", json.dumps(args.image_size, separators=(",", ":")),
            "--pretrained", "false", "--num_workers", str(args.num_workers), "--ckpt_dir", rel(args.ckpt.parent),
            "--ckpt_path", rel(args.ckpt), "--output_dir", rel(eval_dir), *extra, *SETTINGS[name],
        )
        wall = run_checked(cmd, out / "logs" / f"{name}.log")
        timing = json.loads(timing_json.read_text())
        summary = json.loads((eval_dir / f"{spec['prefix']}summary.json").read_text())
        per_image = read_per_image(eval_dir / f"{spec['prefix']}per_image.csv", spec["first"])
        rows.append({"setting": name, "flags": SETTINGS[name], "command": shown(cmd), "process_s": wall,
                     "loop_s": timing["times"].get("COMPLETED"), "images": len(per_image), "timing": timing,
                     "summary": summary, "per_image": per_image})

    ref = next((r for r in rows if r["setting"] == "fp32"), rows[0])
    for r in rows:
        diffs = [abs(r["per_image"][k] - v) for k, v in ref["per_image"].items() if k in r["per_image"]]
        r["per_image_abs_change"] = {"mean": statistics.fmean(diffs), "max": max(diffs)} if diffs else None
        r["speedup_vs_ref"] = ref["loop_s"] / r["loop_s"] if r["loop_s"] and ref["loop_s"] else None

    import torch

    groups = list(ref["summary"])
    lines = [
        f"# Bundle fast paths: {args.bundle}, {args.image_size[0]}x{args.image_size[1]}, checkpoint `{rel(args.ckpt)}`",
        "",
        f"torch {torch.__version__}; {cpu_name()}, {os.cpu_count()} CPUs, torch threads "
        f"{ref['timing'].get('torch_threads')}; CUDA {'available' if torch.cuda.is_available() else 'not available'}; "
        f"load average at the end {loadavg()}.",
        f"Loop: the evaluator's Ignite COMPLETED time (loading, preprocessing, inference, inversion, metrics; "
        f"{args.num_workers} workers). Change: per-image |{spec['first']} - {spec['first']} of `{ref['setting']}`|.",
        "",
    ]
    lines += md_table(["setting", "flags", "images", "loop (s)", "ms / image", "speed-up",
                       *(f"{g} {m}" for g in groups for m in spec["metrics"]),
                       f"per-image {spec['first']} change mean / max"])
    for r in rows:
        ch = r["per_image_abs_change"]
        lines.append(md_row([
            r["setting"], f"`{' '.join(r['flags'])}`", r["images"], f"{r['loop_s']:.1f}",
            f"{1000 * r['loop_s'] / max(1, r['images']):.0f}", f"{r['speedup_vs_ref']:.2f}x",
            *(f"{r['summary'].get(g, {}).get(m, float('nan')):.4f}" for g in groups for m in spec["metrics"]),
            f"{ch['mean']:.2e} / {ch['max']:.2e}" if ch else "n/a",
        ]))
    lines += ["", "Commands (from the repository root):", ""] + [f"    {r['command']}" for r in rows] + [""]
    report = "\n".join(lines)
    print("\n" + report)
    for r in rows:
        r.pop("per_image")
    write_results(out, report, {"bundle": args.bundle, "image_size": args.image_size, "ckpt": rel(args.ckpt),
                                "rows": rows}, note=f"took {fmt_seconds(sum(r['process_s'] for r in rows))}")

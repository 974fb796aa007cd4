# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Training throughput of the polyp bundle's real pipeline, and how long the trainer waits for data.

Each configuration runs one epoch of ``python -m monai.bundle run training --config_file
bundles/polyp/configs/train.json ...`` (the bundle as shipped: PIL loading, intensity normalisation, resizing,
CacheDataset, multi-scale iterations, deep-supervision structure loss, gradient clipping, metrics and handlers) on a
subset of the training images, for every combination of ``--num-workers`` (default 0 and 2) and ``--cache-rates``
(default 1: ``CacheDataset`` holds every preprocessed pair; 0: the same dataset class caches nothing, so every pair
is loaded and preprocessed on each access, as a plain ``Dataset`` would).

    python -m benchmarks training                             # ../shared/data/polyp, 128x128, 64 pairs
    python -m benchmarks training --data path/to/polyp --size 128 --limit 64 --num-workers 0 2
    python -m benchmarks training --smoke                     # generated data, 32x32, seconds

What this benchmark adds to the bundle, through an override config file written to ``<out>/timing_<run>.json`` (the
bundle's files are untouched): it imports :func:`attach_timers` from this module (``benchmarks.training``, with the
repository root on the bundle process's ``PYTHONPATH``) and attaches it to the trainer. The timers use Ignite's
events: the data wait of an iteration is the time between ``GET_BATCH_STARTED`` and ``GET_BATCH_COMPLETED``
(``next()`` on the data loader: loading and preprocessing with 0 workers, waiting for a worker's batch otherwise); the
compute time is ``ITERATION_STARTED`` to ``ITERATION_COMPLETED`` (our handler runs after the bundle's own, so it
includes post-processing and metrics); the loop time runs from ``EPOCH_STARTED`` to the last ``ITERATION_COMPLETED``
(validation, which the bundle would run at ``EPOCH_COMPLETED``, is switched off with ``--val_interval`` larger than
the epoch count). The subset is a datalist override (``@task.datalist(@data_root, 'train')[:limit]``); the data is
read in place, never copied.

Throughput is dataset images per second of loop time (with the bundle's multi-scale ``cycle`` mode each image is
trained at three scales per epoch); "steady" leaves out the first iteration (worker start-up, first-call
initialisation). Start-up is the rest of the process time: imports, datalist checks, caching and model building.
Results: a Markdown table on stdout and in ``<out>/results.md``, everything in ``<out>/results.json`` (default
``benchmarks/output/training``, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    OUTPUT,
    REPO,
    UsageError,
    bundle_command,
    fmt,
    loadavg,
    md_row,
    md_table,
    rel,
    run_logged,
    shared_data,
    shown,
    write_results,
)

CONFIGS = REPO / "bundles" / "polyp" / "configs"
#: the bundle's fast-path flags, by name (``--flags``); "default" is the bundle as shipped (on CPU: fp32, channels-last)
FLAG_SETTINGS = {
    "default": [],
    "fp32": ["--amp", "false", "--channels_last", "false"],
    "channels_last": ["--amp", "false", "--channels_last", "true"],
    "amp": ["--amp", "true"],
}


# ------------------------------------------------------------------ used inside the bundle process (override config)
def attach_timers(trainer, out_path: str) -> None:
    """Attach per-iteration data-wait and compute timers to an Ignite trainer; write them to ``out_path`` (JSON)
    when the run completes."""
    import torch
    from ignite.engine import Events

    rec = {"data_wait_s": [], "iteration_s": [], "epoch_loop_s": [], "torch_threads": torch.get_num_threads()}
    clock = {}

    def on(event, fn):
        trainer.add_event_handler(event, fn)

    on(Events.EPOCH_STARTED, lambda e: clock.__setitem__("epoch", time.perf_counter()))
    on(Events.GET_BATCH_STARTED, lambda e: clock.__setitem__("batch", time.perf_counter()))
    on(Events.GET_BATCH_COMPLETED, lambda e: rec["data_wait_s"].append(time.perf_counter() - clock["batch"]))
    on(Events.ITERATION_STARTED, lambda e: clock.__setitem__("iter", time.perf_counter()))

    def iteration_completed(engine):
        now = time.perf_counter()
        rec["iteration_s"].append(now - clock["iter"])
        clock["last"] = now

    on(Events.ITERATION_COMPLETED, iteration_completed)
    on(Events.EPOCH_COMPLETED, lambda e: rec["epoch_loop_s"].append(clock["last"] - clock["epoch"]))

    def completed(engine):
        loader = engine.data_loader
        rec.update(
            iterations=engine.state.iteration,
            n_train=len(loader.dataset),
            batch_size=loader.batch_size,
            num_workers=loader.num_workers,
            ignite_times={k: v for k, v in engine.state.times.items() if v is not None},
        )
        Path(out_path).write_text(json.dumps(rec, indent=2) + "\n")

    on(Events.COMPLETED, completed)


# ------------------------------------------------------------------------------------------------------ the driver
def timing_override(out_json: Path) -> dict:
    """The override config that attaches :func:`attach_timers` to the bundle's trainer, writing to ``out_json``."""
    return {
        "timing_imports": ["$from benchmarks.training import attach_timers"],
        "+initialize": [f"$attach_timers(@train#trainer, {str(out_json)!r})"],
    }


def summarise(rec: dict, process_s: float) -> dict:
    """The figures of one run from the timers' record and the process's wall time."""
    loop = sum(rec["epoch_loop_s"])
    wait, iters = rec["data_wait_s"], rec["iteration_s"]
    n = rec["n_train"]
    steady_loop = loop - wait[0] - iters[0] if len(iters) > 1 else None
    steady_images = n - rec["batch_size"] if len(iters) > 1 else None
    return {
        "n_train": n, "iterations": rec["iterations"], "batch_size": rec["batch_size"],
        "num_workers": rec["num_workers"], "torch_threads": rec["torch_threads"],
        "loop_s": loop, "data_wait_s": sum(wait), "compute_s": sum(iters),
        "data_wait_fraction": sum(wait) / loop if loop else None,
        "first_batch_wait_s": wait[0] if wait else None,
        "images_per_s": n / loop if loop else None,
        "steady_images_per_s": (steady_images / steady_loop) if steady_loop else None,
        "steady_data_wait_fraction": (sum(wait[1:]) / steady_loop) if steady_loop else None,
        "process_s": process_s, "startup_s": process_s - loop,
        "per_iteration": {"data_wait_s": wait, "iteration_s": iters},
    }


def markdown(results: list[dict], settings: dict) -> str:
    """The report: settings, one table row per run, the commands."""
    lines = [
        "# Polyp bundle training throughput (one epoch)",
        "",
        f"Data: {settings['data']} ({settings['n_train']} training pairs of the first {settings['limit']}), "
        f"{settings['size']}x{settings['size']}, batch {settings['batch_size']}, multi-scale {settings['multi_scale']} "
        f"({settings['multi_scale_mode']}), TransFuse-S from scratch, device {settings['device']}, torch threads "
        f"{settings['torch_threads']}. Load average (1, 5, 15 min) at start {settings['loadavg_start']}, at end "
        f"{settings['loadavg_end']}.",
        "",
        "Flags: `default` is the bundle as shipped (fp32); `fp32` is `--amp false --channels_last false`; "
        "`channels_last` is `--amp false --channels_last true`; `amp` is `--amp true` (on CPU bfloat16 autocast with "
        "channels-last weights and inputs, on CUDA MONAI's float16 AMP).",
        "",
    ]
    lines += md_table(["flags", "num_workers", "cache_rate", "images/s (epoch)", "images/s (steady)",
                       "data wait / loop", "data wait / loop (steady)", "first batch wait (s)", "loop (s)",
                       "data wait (s)", "compute (s)", "start-up (s)"])
    for r in results:
        head = [r["flags"], r["num_workers"], r["cache_rate"]]
        if "error" in r:
            lines.append(md_row(head + [f"error: {r['error']}"] + [""] * 8))
            continue
        steady_wait = r["steady_data_wait_fraction"]
        lines.append(md_row(head + [
            fmt(r["images_per_s"]), fmt(r["steady_images_per_s"]), f"{fmt(100 * r['data_wait_fraction'], '.1f')}%",
            "n/a" if steady_wait is None else f"{fmt(100 * steady_wait, '.1f')}%", fmt(r["first_batch_wait_s"]),
            fmt(r["loop_s"], ".1f"), fmt(r["data_wait_s"], ".1f"), fmt(r["compute_s"], ".1f"),
            fmt(r["startup_s"], ".1f"),
        ]))
    lines += ["", "Commands:", ""] + [f"    {c}" for c in settings["commands"]] + [""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=shared_data("polyp"),
                        help="PraNet data root (default ../shared/data/polyp); generated data when it is absent")
    parser.add_argument("--size", type=int, default=128, help="square training size, multiple of 32")
    parser.add_argument("--limit", type=int, default=64, help="first N training pairs (the bundle splits off "
                        "--val-fraction of them for validation, which is not run)")
    parser.add_argument("--batch-size", type=int, default=16, help="bundle default 16")
    parser.add_argument("--multi-scale-mode", default="cycle", choices=["cycle", "random"], help="bundle default cycle")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--cache-rates", type=float, nargs="+", default=[1.0, 0.0])
    parser.add_argument("--flags", nargs="+", choices=list(FLAG_SETTINGS), default=["default"],
                        help="fast-path flag settings to run (each with every --num-workers x --cache-rates)")
    parser.add_argument("--out", type=Path, default=OUTPUT / "training")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the training processes (default: torch's choice, all cores)")
    parser.add_argument("--smoke", action="store_true", help="generated data, 32x32, 10 pairs, batch 4")


def run(args: argparse.Namespace) -> None:
    """One epoch per flags x workers x cache-rate combination; the report."""
    if args.smoke:
        args.size, args.limit, args.batch_size = 32, 10, 4
    if args.size % 32:
        raise UsageError("--size must be a multiple of 32")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tf_train_bench_"))

    data = args.data.resolve()
    generated = args.smoke or not (data / "TrainDataset" / "images").is_dir()
    if generated:
        from transfuse_monai.tasks import get_task

        data = tmp / "data"
        side = 64 if args.smoke else 352
        get_task("polyp").make_sample(data, n_train=args.limit, size=(side, side), test_sets={})
        print(f"note: training on generated data in {data} ({args.limit} pairs of {side}x{side})", flush=True)

    import torch

    settings = {
        "data": str(data) + (" (generated)" if generated else ""), "size": args.size, "limit": args.limit,
        "batch_size": args.batch_size, "multi_scale": [0.75, 1.0, 1.25], "multi_scale_mode": args.multi_scale_mode,
        "val_fraction": args.val_fraction, "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "loadavg_start": loadavg(), "commands": [],
    }
    # the bundle process imports attach_timers from this package: the repository root on its path
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        settings["torch_threads"] = args.threads
    results = []
    runs = [(f, w, c) for f in args.flags for w in args.num_workers for c in args.cache_rates]
    for flags, workers, cache in runs:
        tag = f"{flags}_w{workers}_cache{cache:g}"
        run_dir = tmp / tag
        run_dir.mkdir()
        timing_json = run_dir / "timing.json"
        override = out / f"timing_{tag}.json"
        override.write_text(json.dumps(timing_override(timing_json), indent=2) + "\n")
        cmd = bundle_command(
            "training", [CONFIGS / "train.json", override],
            "--dataset_dir", rel(data),
            "--datalist", f"$@task.datalist(@data_root, 'train')[:{args.limit}]",
            "--image_size", f"[{args.size},{args.size}]",
            "--epochs", "1", "--val_interval", "1000000", "--val_fraction", str(args.val_fraction),
            "--batch_size", str(args.batch_size), "--multi_scale_mode", args.multi_scale_mode,
            "--num_workers", str(workers), "--cache_rate", str(cache),
            "--pretrained", "false", "--save_checkpoints", "false",
            "--ckpt_dir", str(run_dir / "models"), "--output_dir", str(run_dir / "eval"), *FLAG_SETTINGS[flags],
        )
        settings["commands"].append(shown(cmd))
        print(f"\n=== flags {flags}, num_workers {workers}, cache_rate {cache:g} ===\n$ {shown(cmd)}", flush=True)
        proc = run_logged(cmd, out / f"{tag}.log", env)
        row = {"flags": flags, "num_workers": workers, "cache_rate": cache, "log": str(proc.log),
               "loadavg_after": loadavg()}
        if not proc.ok or not timing_json.is_file():
            print("\n".join(proc.tail(30)), file=sys.stderr)
            row["error"] = f"exit code {proc.returncode}, see {proc.log}"
        else:
            row.update(summarise(json.loads(timing_json.read_text()), proc.seconds))
            print(f"  {row['images_per_s']:.2f} images/s, data wait {100 * row['data_wait_fraction']:.1f}% of "
                  f"{row['loop_s']:.1f} s loop, process {proc.seconds:.1f} s", flush=True)
        results.append(row)
    settings["loadavg_end"] = loadavg()
    settings["n_train"] = next((r["n_train"] for r in results if "n_train" in r), None)
    report = markdown(results, settings)
    print("\n" + report)
    write_results(out, report, {"settings": settings, "results": results})
    shutil.rmtree(tmp, ignore_errors=True)

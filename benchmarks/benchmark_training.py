"""Training throughput of the polyp bundle's real pipeline, and how long the trainer waits for data.

Each configuration runs one epoch of ``python -m monai.bundle run training --config_file
bundles/polyp/configs/train.json ...`` (the bundle as shipped: PIL loading, intensity normalisation, resizing,
CacheDataset, multi-scale iterations, deep-supervision structure loss, gradient clipping, metrics and handlers) on a
subset of the training images, for every combination of ``--num-workers`` (default 0 and 2) and ``--cache-rates``
(default 1: ``CacheDataset`` holds every preprocessed pair; 0: the same dataset class caches nothing, so every pair
is loaded and preprocessed on each access, as a plain ``Dataset`` would).

    python benchmarks/benchmark_training.py                           # ../shared/data/polyp, 128x128, 64 pairs
    python benchmarks/benchmark_training.py --data path/to/polyp --size 128 --limit 64 --num-workers 0 2
    python benchmarks/benchmark_training.py --smoke                   # generated data, 32x32, seconds

What this script adds to the bundle, through an override config file written to ``<out>/timing.json`` (the bundle's
files are untouched): it imports this file as a module (``PYTHONPATH=benchmarks``) and attaches
:func:`attach_timers` to the trainer. The timers use Ignite's events: the data wait of an iteration is the time
between ``GET_BATCH_STARTED`` and ``GET_BATCH_COMPLETED`` (``next()`` on the data loader: loading and preprocessing
with 0 workers, waiting for a worker's batch otherwise); the compute time is ``ITERATION_STARTED`` to
``ITERATION_COMPLETED`` (our handler runs after the bundle's own, so it includes post-processing and metrics); the
loop time runs from ``EPOCH_STARTED`` to the last ``ITERATION_COMPLETED`` (validation, which the bundle would run at
``EPOCH_COMPLETED``, is switched off with ``--val_interval`` larger than the epoch count). The subset is a datalist
override (``@task.datalist(@data_root, 'train')[:limit]``); the data is read in place, never copied.

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
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
    return {
        "timing_imports": ["$import benchmark_training"],
        "+initialize": [f"$benchmark_training.attach_timers(@train#trainer, {str(out_json)!r})"],
    }


def rel(path: Path) -> str:
    """``path`` as typed from the repository root: relative when near it (``../shared/...``), else absolute."""
    r = os.path.relpath(path, REPO)
    return str(path) if r.startswith(os.pardir + os.sep + os.pardir) else r


def shown(cmd: list[str]) -> str:
    return shlex.join(["python", *cmd[1:]] if cmd[0] == sys.executable else cmd)


def summarise(rec: dict, process_s: float) -> dict:
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
        "| flags | num_workers | cache_rate | images/s (epoch) | images/s (steady) | data wait / loop | data wait / loop "
        "(steady) | first batch wait (s) | loop (s) | data wait (s) | compute (s) | start-up (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['flags']} | {r['num_workers']} | {r['cache_rate']} | error: {r['error']} |" + " |" * 8)
            continue

        def f(v, fmt=".2f"):
            return "n/a" if v is None else format(v, fmt)

        lines.append(
            f"| {r['flags']} | {r['num_workers']} | {r['cache_rate']} | {f(r['images_per_s'])} | {f(r['steady_images_per_s'])} | "
            f"{f(100 * r['data_wait_fraction'], '.1f')}% | "
            f"{'n/a' if r['steady_data_wait_fraction'] is None else f(100 * r['steady_data_wait_fraction'], '.1f') + '%'}"
            f" | {f(r['first_batch_wait_s'])} | {f(r['loop_s'], '.1f')} | {f(r['data_wait_s'], '.1f')} | "
            f"{f(r['compute_s'], '.1f')} | {f(r['startup_s'], '.1f')} |"
        )
    lines += ["", "Commands:", ""] + [f"    {c}" for c in settings["commands"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "polyp",
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
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "output" / "training")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the training processes (default: torch's choice, all cores)")
    parser.add_argument("--smoke", action="store_true", help="generated data, 32x32, 8 pairs, batch 4")
    args = parser.parse_args(argv)

    if args.smoke:
        args.size, args.limit, args.batch_size = 32, 10, 4
    if args.size % 32:
        parser.error("--size must be a multiple of 32")
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
        "loadavg_start": [round(v, 2) for v in os.getloadavg()], "commands": [],
    }
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "benchmarks"), os.environ.get("PYTHONPATH")])))
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
        cmd = [
            sys.executable, "-m", "monai.bundle", "run", "training",
            "--config_file", json.dumps([rel(CONFIGS / "train.json"), rel(override)], separators=(",", ":")),
            "--dataset_dir", rel(data),
            "--datalist", f"$@task.datalist(@data_root, 'train')[:{args.limit}]",
            "--image_size", f"[{args.size},{args.size}]",
            "--epochs", "1", "--val_interval", "1000000", "--val_fraction", str(args.val_fraction),
            "--batch_size", str(args.batch_size), "--multi_scale_mode", args.multi_scale_mode,
            "--num_workers", str(workers), "--cache_rate", str(cache),
            "--pretrained", "false", "--save_checkpoints", "false",
            "--ckpt_dir", str(run_dir / "models"), "--output_dir", str(run_dir / "eval"), *FLAG_SETTINGS[flags],
        ]
        settings["commands"].append(shown(cmd))
        print(f"\n=== flags {flags}, num_workers {workers}, cache_rate {cache:g} ===\n$ {shown(cmd)}", flush=True)
        log = out / f"{tag}.log"
        start = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        process_s = time.perf_counter() - start
        row = {"flags": flags, "num_workers": workers, "cache_rate": cache, "log": str(log),
               "loadavg_after": [round(v, 2) for v in os.getloadavg()]}
        if proc.returncode != 0 or not timing_json.is_file():
            print("\n".join(log.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
            row["error"] = f"exit code {proc.returncode}, see {log}"
        else:
            row.update(summarise(json.loads(timing_json.read_text()), process_s))
            print(f"  {row['images_per_s']:.2f} images/s, data wait {100 * row['data_wait_fraction']:.1f}% of "
                  f"{row['loop_s']:.1f} s loop, process {process_s:.1f} s", flush=True)
        results.append(row)
    settings["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    settings["n_train"] = next((r["n_train"] for r in results if "n_train" in r), None)
    report = markdown(results, settings)
    print("\n" + report)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    print(f"written: {out / 'results.md'}, {out / 'results.json'}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Command line of ``benchmarks/benchmark_models.py``: parse the options, run every model x size x device x path,
and write the report."""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from .models import CHECKOUT_OPTION, MODELS
from .paths import DEFAULT_PATHS, MAX_FLIP_PCT_HALF, MODIFIERS, TOL_FP32, parse_path
from .report import parse_peaks, rejudge, write_report
from .timing import bench_model, interleaved_latency, loadavg

REPO = Path(__file__).resolve().parents[2]


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must look like 352x352, got '{text}'")
    return int(m.group(1)), int(m.group(2))


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The options of ``benchmark_models.py`` (``description``: the help text above them)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, choices=list(MODELS),
                        help="default: all (authors_s, pranet, hardnet_mseg only with their --*-repo checkout)")
    parser.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS),
                        help=f"'+'-joined modifiers from {MODIFIERS}; 'eager' is always run first "
                        "(default: %(default)s)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(352, 352), (192, 256)])
    parser.add_argument("--devices", nargs="+", default=None, choices=["cpu", "cuda"],
                        help="default: cpu, plus cuda when available")
    parser.add_argument("--authors-repo", default=None, help="checkout of the authors' TransFuse (holding lib/)")
    parser.add_argument("--pranet-repo", default=None, help="checkout of PraNet (holding lib/; model 'pranet')")
    parser.add_argument("--hardnet-repo", default=None,
                        help="checkout of HarDNet-MSEG (holding lib/; model 'hardnet_mseg')")
    parser.add_argument("--warmup", type=int, default=0,
                        help="extra untimed batch-1 calls before timing (the memory/parity calls, one at batch 1 and "
                        "one at batch B, always run first and warm up)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batch-1 calls")
    parser.add_argument("--throughput-iters", type=int, default=1, help="timed calls at batch B")
    parser.add_argument("--batch", type=int, default=16, help="throughput batch on CUDA")
    parser.add_argument("--cpu-batch", type=int, default=4, help="throughput batch on CPU")
    parser.add_argument("--compile-models", nargs="+", default=["transfuse_s"],
                        help="models that run the compile path ('all' for every model); compiling takes minutes "
                        "per model and size on 2 cores")
    parser.add_argument("--no-calibrate-bn", dest="calibrate_bn", action="store_false",
                        help="keep the default BatchNorm statistics of the random-weight models (by default they are "
                        "set from a train-mode pass on 2 random images, so logits have a realistic scale for the "
                        "parity checks; timing does not depend on it)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "output" / "models")
    parser.add_argument("--smoke", action="store_true",
                        help="quick check that everything runs: 64x64, 0 warm-up, 1 repeat, batch 2, 1 iteration")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failing paths")
    parser.add_argument("--interleave-rounds", type=int, default=0,
                        help="after the main pass, time batch-1 latency of every model and path round-robin for this "
                        "many rounds (robust ratios on a shared machine; 0: off)")
    parser.add_argument("--interleave-paths", nargs="+", default=None,
                        help="paths of the interleaved pass (default: all of --paths except compile)")
    parser.add_argument("--peak-tflops", nargs="+", default=[], metavar="DEVICE.PRECISION=TFLOPS",
                        help="peak of the hardware, e.g. cuda.fp32=67 cuda.half=989 (H100 SXM dense) or "
                        "cpu.fp32=0.166: adds the fraction of peak reached to the TFLOP/s column ('half' applies to "
                        "bf16/fp16/TensorRT fp16 paths)")
    parser.add_argument("--time-limit", type=float, default=0.0, metavar="SECONDS",
                        help="start no new model x path measurement after this many seconds (the rest is reported "
                        "as skipped; the report is written either way); 0: no limit")
    parser.add_argument("--rejudge", type=Path, default=None, metavar="RESULTS_JSON",
                        help="time nothing: rebuild the report of a previous run (its results.json) with the current "
                        "parity criteria, written to --out")
    return parser


def write_partial(rows: list[dict], settings: dict, out: Path) -> None:
    """The rows measured so far as ``<out>/results.json`` (``"partial": true``; no ratios or report yet), so that a
    run stopped from outside (the GPU kit's stage deadline) keeps its finished models. The final report replaces it."""
    from transfuse_monai.utils.io import atomic_write_json

    atomic_write_json(out / "results.json", {"settings": settings, "results": rows, "partial": True})


def main(argv: list[str] | None = None, description: str | None = None, script: str | None = None) -> None:
    """Run the benchmark (or ``--rejudge``) with the command line ``argv`` (default ``sys.argv[1:]``).

    Args:
        argv: the options; default the process's.
        description: the ``--help`` text (the entry script's docstring).
        script: the entry script's path, for the command line recorded in the report (default ``sys.argv[0]``).
    """
    parser = build_parser(description)
    args = parser.parse_args(argv)
    try:
        peaks = parse_peaks(args.peak_tflops)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.rejudge is not None:
        rejudge(args.rejudge, args.out, peaks)
        return

    if args.smoke:
        args.sizes, args.warmup, args.repeats, args.throughput_iters = [(64, 64)], 0, 1, 1
        args.batch = args.cpu_batch = 2
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.models is None:
        args.models = [k for k in MODELS if k not in CHECKOUT_OPTION or getattr(args, CHECKOUT_OPTION[k])]
    for k in args.models:
        if k in CHECKOUT_OPTION and not getattr(args, CHECKOUT_OPTION[k]):
            parser.error(f"{k} needs --{CHECKOUT_OPTION[k].replace('_', '-')}")
    for s in args.sizes:
        if s[0] % 32 or s[1] % 32:
            parser.error(f"sizes must be multiples of 32 (FlexibleUNet, SwinUNETR), got {s}")
    paths = ["eager"] + [p for p in dict.fromkeys(args.paths) if p != "eager"]
    for p in paths:
        try:
            parse_path(p)
        except ValueError as e:
            parser.error(str(e))
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device")

    import monai
    import timm

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1).strip()
    except (OSError, AttributeError):
        pass
    settings = {
        "command": " ".join(["python", os.path.relpath(script or sys.argv[0], Path.cwd()),
                               *(argv if argv is not None else sys.argv[1:])]),
        "torch": torch.__version__, "monai": monai.__version__, "timm": timm.__version__, "onnxruntime": ort_version,
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "models": args.models, "paths": paths, "sizes": [list(s) for s in args.sizes], "devices": args.devices,
        "warmup": args.warmup, "repeats": args.repeats, "throughput_iters": args.throughput_iters,
        "batch_cpu": args.cpu_batch, "batch_cuda": args.batch, "compile_models": args.compile_models,
        "authors_repo": args.authors_repo, "pranet_repo": args.pranet_repo, "hardnet_repo": args.hardnet_repo,
        "parity_criteria": {"fp32_max_diff_rel": TOL_FP32, "half_max_mask_flip_pct": MAX_FLIP_PCT_HALF},
        "calibrate_bn": args.calibrate_bn, "peak_tflops": peaks,
        "loadavg_start": loadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if "trt" in " ".join(paths) and "cuda" not in args.devices:
        print("note: trt path skipped: no GPU (TensorRT needs CUDA)", flush=True)
    print(f"torch threads {threads}, load average {settings['loadavg_start']}", flush=True)

    rows: list[dict] = []
    t0 = time.perf_counter()
    args.deadline = t0 + args.time_limit if args.time_limit > 0 else None
    with tempfile.TemporaryDirectory(prefix="tf_bench_") as tmp:
        for size in args.sizes:
            for dev in args.devices:
                device = torch.device("cuda:0" if dev == "cuda" else "cpu")
                batch = args.batch if dev == "cuda" else args.cpu_batch
                print(f"\n== {size[0]}x{size[1]} on {dev} (throughput batch {batch}) ==", flush=True)
                for key in args.models:
                    rows += bench_model(key, size, device, paths, args, Path(tmp), batch, threads)
                    write_partial(rows, settings, args.out)
        settings["interleave_rounds"] = args.interleave_rounds
        settings["interleaved"] = []
        if args.interleave_rounds > 0:
            ipaths = args.interleave_paths or [p for p in paths if "compile" not in parse_path(p)]
            for size in args.sizes:
                for dev in args.devices:
                    device = torch.device("cuda:0" if dev == "cuda" else "cpu")
                    batch = args.batch if dev == "cuda" else args.cpu_batch
                    print(f"\n== interleaved batch-1 latency, {size[0]}x{size[1]} on {dev}, "
                          f"{args.interleave_rounds} rounds ==", flush=True)
                    settings["interleaved"] += interleaved_latency(args.models, ipaths, size, device, args,
                                                                   Path(tmp), batch, threads)
    settings["loadavg_end"] = loadavg()
    settings["total_s"] = time.perf_counter() - t0
    write_report(rows, settings, args.out)
    print(f"written: {args.out / 'results.md'}, {args.out / 'results.json'} (total {settings['total_s'] / 60:.1f} min)")

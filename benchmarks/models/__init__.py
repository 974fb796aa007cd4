# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Inference benchmark: TransFuse-S/L/L* against MONAI peers (and optionally the authors' TransFuse_S), with fast paths.

One command measures, for every model x input size x device x path: parameters, GMACs, output parity with fp32 eager,
set-up time (ONNX export / torch.compile), batch-1 latency (median, IQR, min-max), batch-B throughput (images/s) and
peak memory, and writes a Markdown report and JSON with ratios to TransFuse-S (fp32 eager) per size and device.

    python -m benchmarks models                                     # default: CPU (+ CUDA if present)
    python -m benchmarks models --authors-repo /tmp/authors         # + the authors' TransFuse_S
    python -m benchmarks models --models transfuse_s unet --paths eager bf16 onnx --sizes 352x352 \\
        --warmup 1 --repeats 3                                      # a selection
    python -m benchmarks models --models transfuse_s authors_s --authors-repo /tmp/authors \\
        --paths eager channels_last+bf16 onnx --interleave-rounds 20    # + round-robin latency
    python -m benchmarks models --rejudge benchmarks/output/models/results.json   # re-apply parity rules
    python -m benchmarks models --smoke                             # seconds-scale check that it all runs

Models (``--models``): ``transfuse_s``, ``transfuse_l``, ``transfuse_lstar`` (``transfuse_monai`` TransFuse, eval
mode, random weights: timing does not depend on them), MONAI ``unet``, ``attention_unet``, ``flexible_unet``
(ResNet-34), ``swin_unetr`` (needs ``einops``), and ``authors_s``: the authors' ``TransFuse_S`` imported at run time
from ``--authors-repo`` (never part of this repository). The authors' forward hard-codes a 12x16 token grid and their
DeiT a 12x16 position embedding; at other sizes this benchmark resamples the position embedding (bilinear,
align_corners=True, as their own code does from 14x14) and returns the transformer output as a tensor subclass whose
``view(B, -1, 12, 16)`` uses the real grid -- their code is run unmodified. The final map (``map_2``) is timed.

Paths (``--paths``; a path is a ``+``-joined set of modifiers, e.g. ``channels_last+bf16``):

* ``eager``: fp32 eager PyTorch, the reference of every parity check and of the ratios.
* ``channels_last``: NHWC weights and input.
* ``bf16`` / ``fp16``: ``torch.autocast`` (bf16 on CPU and CUDA; fp16 on CUDA only).
* ``sdpa`` / ``no_sdpa``: force fused scaled-dot-product attention on / off in the transformer blocks (``fused_attn``
  of TransFuse's ``DeviceAwareAttention``, which even when on uses explicit products under bf16/fp16 on a CPU, where
  the fused CPU kernel is slower; MONAI ``WindowAttention.use_flash_attention`` in SwinUNETR). A model's
  library default is one of the two (timm: fused; SwinUNETR: unfused) and is then not measured again but reported as
  "= eager"; models without such attention report n/a.
* ``compile``: ``torch.compile`` (inductor, ``dynamic=False``); compile time (first call at batch 1 and at batch B)
  is reported separately as set-up time. Not in the default paths (it takes minutes per model and input shape on 2
  cores): add it with ``--paths ... compile``; ``--compile-models`` (default ``transfuse_s``) limits it further.
* ``onnx``: ``torch.onnx.export(dynamo=True)`` (dynamic batch) run by ONNX Runtime's CPU provider with as many
  intra-op threads as torch uses; export + session creation is the set-up time. CPU only.
* ``onnx+int8``: the ``onnx`` graph statically quantised to int8 by ``transfuse_monai.export.quantize_onnx_int8`` (the
  library's ``onnx-int8`` export: QDQ, per-channel int8 weights of Conv/MatMul/Gemm, uint8 activations, the
  segmentation head in float32), calibrated on 4 random images (the weights are random too); judged like the
  reduced-precision paths (mask flips, which a random-weight network's near-zero logits make meaningless for int8).
  ``python -m benchmarks parity`` measures a trained checkpoint on real images. CPU only.
* ``onnx+ovep`` (and ``onnx+int8+ovep``): the same graphs run by ONNX Runtime's OpenVINO execution provider (CPU
  device, its default precision) instead of its CPU provider; needs the ``onnxruntime-openvino`` build of ONNX
  Runtime in place of ``onnxruntime`` (reported as unavailable otherwise). CPU only.
* ``auto``: what the bundles' ``--amp auto`` runs on the device (``transfuse_monai.bundle.choose_precision``: bf16
  with channels-last on CPUs with native bf16, eager fp32 on the others, autocast on CUDA); the row records the
  concrete path (``resolved``) and the reason.
* ``openvino``: the library's OpenVINO IR export run by ``transfuse_monai.inferers.OpenVINONetwork`` in the CPU
  plugin's default precision (bf16 on CPUs with AMX or AVX512-BF16); ``openvino+fp32`` forces float32;
  ``openvino+int8`` runs the IR quantised by ``transfuse_monai.export.quantize_openvino_int8`` (the library's
  ``openvino-int8`` export: NNCF, the segmentation head in floating point), calibrated on 4 random images. CPU only.
* ``trt``: TensorRT through MONAI's ``convert_to_trt`` (the converter behind ``monai.bundle trt_export``), fp16 or fp32
  (``trt+fp32``). CUDA only; on a machine without GPU it is reported as skipped.

Measurements:

* parameters; GMACs of one batch-1 forward from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2; it counts
  convolutions, matrix products and attention, not element-wise operations).
* parity with fp32 eager on the same batch-1 input: max |path - eager| and the share of pixels whose thresholded
  prediction (logit > 0, i.e. probability > 0.5) flips. fp32 paths (channels-last, attention kernels, compile, ONNX,
  TensorRT fp32) pass when max |diff| <= 1e-4 * max(1, max|eager|): they compute the same function up to float
  rounding. Reduced-precision paths (bf16, fp16, TensorRT fp16) pass when at most 0.5% of the mask pixels flip: with
  8 (bf16) or 11 (fp16) mantissa bits, logits of an untrained network drift by several percent of their range, which
  says little about a trained one; the mask is what a segmentation user keeps (``python -m benchmarks fast-paths``
  measures the metric change of a trained checkpoint on real data). The weights are random, but BatchNorm statistics
  are first set from a train-mode pass on two random images (``--no-calibrate-bn`` skips this), so that eval-mode
  logits have a realistic scale instead of growing to |100| and more through the residual stages. ``--rejudge
  results.json`` rebuilds the report from a previous run's figures with the current criteria, without timing anything.
* batch-1 latency over ``--repeats`` calls (default 3, to keep the default run of every model, size and path within
  about 15 minutes on 2 CPU cores) after ``--warmup`` extra untimed calls: median, interquartile range, min and max.
  The first call at batch 1 (memory, parity) and at batch B (memory) always comes first and warms up.
* throughput: images/s = B / median time of ``--throughput-iters`` calls (default 1) at batch B (``--batch``; default
  16 on CUDA and ``--cpu-batch`` 4 on CPU, recorded in the report).
* peak memory, batch 1 and batch B, on the first call at each batch size after the path is set up (after compilation
  for ``compile``). CPU: the growth of the process's peak RSS over its RSS just before the call; glibc's free memory
  is first returned to the OS (``malloc_trim``) and the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``
  "5"), so the figure is the extra resident memory the call needed (activations, workspaces, ONNX Runtime's arena
  growth), not the weights. CUDA: ``torch.cuda.max_memory_allocated`` growth over the allocation before the call.

Output: the Markdown report on stdout and in ``<out>/results.md``, everything in ``<out>/results.json`` (default
``benchmarks/output/models``, git-ignored). The load average is recorded: compare figures taken on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import OUTPUT, UsageError, cpu_name, loadavg, versions
from benchmarks.models.paths import DEFAULT_PATHS, MAX_FLIP_PCT_HALF, MODIFIERS, TOL_FP32, parse_path
from benchmarks.models.report import parse_peaks, rejudge, write_report
from benchmarks.models.timing import bench_model, interleaved_latency
from benchmarks.models.zoo import CHECKOUT_OPTION, MODELS


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must look like 352x352, got '{text}'")
    return int(m.group(1)), int(m.group(2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--out", type=Path, default=OUTPUT / "models")
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


def write_partial(rows: list[dict], settings: dict, out: Path) -> None:
    """The rows measured so far as ``<out>/results.json`` (``"partial": true``; no ratios or report yet), so that a
    run stopped from outside (the GPU kit's stage deadline) keeps its finished models. The final report replaces it."""
    from transfuse_monai.utils.io import atomic_write_json

    atomic_write_json(out / "results.json", {"settings": settings, "results": rows, "partial": True})


def check_args(args: argparse.Namespace) -> list[str]:
    """Apply ``--smoke`` and the defaults that depend on the machine and checkouts; return the paths to run (eager
    first). Raises :class:`UsageError` for options that do not go together."""
    if args.smoke:
        args.sizes, args.warmup, args.repeats, args.throughput_iters = [(64, 64)], 0, 1, 1
        args.batch = args.cpu_batch = 2
    if args.models is None:
        args.models = [k for k in MODELS if k not in CHECKOUT_OPTION or getattr(args, CHECKOUT_OPTION[k])]
    for k in args.models:
        if k in CHECKOUT_OPTION and not getattr(args, CHECKOUT_OPTION[k]):
            raise UsageError(f"{k} needs --{CHECKOUT_OPTION[k].replace('_', '-')}")
    for s in args.sizes:
        if s[0] % 32 or s[1] % 32:
            raise UsageError(f"sizes must be multiples of 32 (FlexibleUNet, SwinUNETR), got {s}")
    paths = ["eager"] + [p for p in dict.fromkeys(args.paths) if p != "eager"]
    for p in paths:
        try:
            parse_path(p)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in args.devices and not torch.cuda.is_available():
        raise UsageError("--devices cuda: no CUDA device")
    return paths


def run(args: argparse.Namespace) -> None:
    """Run the benchmark (or ``--rejudge``) and write the report."""
    peaks = parse_peaks(args.peak_tflops)
    if args.rejudge is not None:
        rejudge(args.rejudge, args.out, peaks)
        return
    paths = check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    settings = {
        "command": args.command_line, "torch": torch.__version__,
        **versions("monai", "timm", "onnxruntime"),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": threads,
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
    write_report(rows, settings, args.out, note=f"total {settings['total_s'] / 60:.1f} min")

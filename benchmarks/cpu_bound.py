# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The fastest this CPU can run TransFuse-S, per precision: a lower bound on its latency from measured peaks.

The network's multiply-accumulates (MACs, PyTorch's FLOP counter at batch 1) are split into convolutions and matrix
products (the transformer's linear layers and attention). OpenVINO's CPU plugin, the fastest runtime measured here,
runs two blocks shaped like the network's in each precision the CPU offers (a pair of 3x3 convolutions of 256
channels at 88x88, ResNet-34's third stage at 352x352; the transformer's MLP on 484 tokens of 384 channels): their
MACs per second are what OpenVINO's kernels reach on this CPU. The bound is the network's MACs at those rates,
every other operation (normalisation, activations, resampling, layout changes) free, so no runtime can beat it; its
ratio to fp32 eager PyTorch, measured in the same run, is the lowest ratio the hardware allows for a path in that
precision. In int8 the attention products stay in floating point (NNCF keeps them), counted at the float rate.

``--ir`` measures OpenVINO IRs of the network (``model.xml``, ``model_int8.xml`` from ``python -m
transfuse_monai.export``) in the same run and gives the share of the bound each reaches.

    python -m benchmarks cpu-bound --threads 2 --ir bundles/polyp/models/model.xml bundles/polyp/models/model_int8.xml

Results: a Markdown table on stdout and in ``<out>/results.md`` (default ``benchmarks/output/cpu_bound``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import OUTPUT, cpu_isa, hardware, loadavg, md_table, stats_ms, time_calls, write_results

#: the blocks whose throughput stands for the network's operations: (operation class, what the block is)
BLOCKS = (("conv", "two 3x3 convolutions, 256 channels, 88x88"), ("matmul", "MLP 384-1536-384, 484 tokens"))


def network_macs(size: int) -> dict[str, float]:
    """MACs of TransFuse-S at ``size`` x ``size``, batch 1: ``{"conv": ..., "matmul": ..., "attention": ...}``.

    Counted under bfloat16 autocast, where the attention runs as explicit matrix products that the counter sees (the
    fused float32 kernel is not counted); the MACs are the same in every precision.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from transfuse_monai.networks.nets import TransFuse

    net = TransFuse(img_size=(size, size)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 3, size, size))
    flops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    conv = sum(n for op, n in flops.items() if "convolution" in op)
    linear = sum(n for op, n in flops.items() if op.endswith(("addmm", ".mm")))
    attention = sum(n for op, n in flops.items() if op.endswith(("bmm", "matmul")) or "attention" in op)
    return {"conv": conv / 2, "matmul": linear / 2, "attention": attention / 2}


def block_model(kind: str, smoke: bool = False):
    """The block of ``kind`` (:data:`BLOCKS`) as a PyTorch module, an example input and its MACs."""
    import torch
    from torch import nn

    if kind == "conv":
        c, hw = (32, 16) if smoke else (256, 88)
        model = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        return model.eval(), torch.rand(1, c, hw, hw), 2 * c * c * 9 * hw * hw
    tokens, c = (16, 32) if smoke else (484, 384)
    model = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
    return model.eval(), torch.rand(1, tokens, c), 2 * tokens * c * 4 * c


def precisions() -> list[str]:
    """The precisions to measure on this CPU: float32, bfloat16 where it is native, int8 where it has int8 dot
    products (VNNI / AMX)."""
    info = hardware()
    return ["f32", *(["bf16"] if info["cpu_bf16"] else []), *(["int8"] if info["cpu_int8"] else [])]


def _compile(core, model, precision: str, threads: int):
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if precision in ("f32", "bf16"):
        config["INFERENCE_PRECISION_HINT"] = precision
    return core.compile_model(model, "CPU", config)


def _latency_ms(compiled, x, repeats: int) -> float:
    request = compiled.create_infer_request()
    for _ in range(2):
        request.infer({0: x})
    return stats_ms(time_calls(lambda: request.infer({0: x}), repeats))["median"]


def measure_peaks(threads: int, repeats: int, smoke: bool = False, rounds: int = 3) -> dict[str, dict[str, float]]:
    """GMAC/s of each block (:data:`BLOCKS`) in each precision (:func:`precisions`): ``{precision: {kind: GMAC/s}}``.
    int8 is NNCF's post-training quantisation of the block (``PERFORMANCE`` preset), in the CPU's default float
    precision around it. Every compiled block is timed in ``rounds`` interleaved rounds and its fastest round
    counts (a peak: a round slowed by another process's threads says nothing about the hardware)."""
    import nncf
    import numpy as np
    import openvino as ov
    import torch

    core = ov.Core()
    runs = []  # (precision, kind, compiled block, input, MACs)
    for kind, _ in BLOCKS:
        model, x, macs = block_model(kind, smoke)
        with torch.no_grad():
            float_model = ov.convert_model(model, example_input=x)
        array = np.ascontiguousarray(x.numpy())
        for precision in precisions():
            if precision == "int8":
                quantized = nncf.quantize(float_model, nncf.Dataset([array]), subset_size=1,
                                          preset=nncf.QuantizationPreset.PERFORMANCE)
                compiled = _compile(core, quantized, "default", threads)
            else:
                compiled = _compile(core, float_model, precision, threads)
            runs.append((precision, kind, compiled, array, macs))
    best: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        for precision, kind, compiled, array, macs in runs:
            ms = _latency_ms(compiled, array, repeats)
            best[precision, kind] = min(ms, best.get((precision, kind), ms))
    peaks: dict[str, dict[str, float]] = {p: {} for p in precisions()}
    for precision, kind, _, _, macs in runs:
        peaks[precision][kind] = macs / best[precision, kind] / 1e6
    return peaks


def bounds(macs: dict[str, float], peaks: dict[str, dict[str, float]]) -> dict[str, float]:
    """The latency bound (ms) per precision: every MAC at the measured peak of its class; in int8 the attention
    products at the best float rate measured."""
    float_matmul = max(peaks[p]["matmul"] for p in peaks if p != "int8")
    out = {}
    for precision, peak in peaks.items():
        attention_rate = float_matmul if precision == "int8" else peak["matmul"]
        seconds = macs["conv"] / peak["conv"] + macs["matmul"] / peak["matmul"] + macs["attention"] / attention_rate
        out[precision] = seconds / 1e6  # MACs / (GMAC/s) = ns; / 1e6 = ms
    return out


def check_ir_sizes(paths, size: int) -> None:
    """Refuse, before anything is measured, an IR whose input is not ``(N, 3, size, size)``."""
    if not paths:
        return
    import openvino as ov

    for path in paths:
        shape = ov.Core().read_model(str(path)).inputs[0].get_partial_shape()
        spatial = [d.get_length() if d.is_static else None for d in list(shape)[2:]]
        if spatial != [size, size]:
            raise SystemExit(f"--ir: {path} takes inputs of {shape}, not {size}x{size}: give --size to match "
                             "(the size the bundle was exported at)")


def ir_latencies(paths, size: int, threads: int, repeats: int) -> dict[str, tuple[str, float]]:
    """Median latency (ms, batch 1) of each IR at its default precision: ``{file: (precision compiled, ms)}``;
    an IR holding FakeQuantize operations counts as int8."""
    import numpy as np
    import openvino as ov

    from transfuse_monai.inferers.openvino import precision_name

    core = ov.Core()
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    out = {}
    for path in paths:
        model = core.read_model(str(path))
        compiled = _compile(core, model, "default", threads)
        int8 = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        out[str(path)] = ("int8" if int8 else precision_name(compiled), _latency_ms(compiled, x, repeats))
    return out


def eager_ms(size: int, repeats: int) -> float:
    """fp32 eager PyTorch latency of TransFuse-S (random weights, calibrated BatchNorm statistics), batch 1."""
    import torch

    from benchmarks.models.zoo import calibrate_batchnorm
    from transfuse_monai.networks.nets import TransFuse

    torch.manual_seed(0)
    net = TransFuse(img_size=(size, size))
    calibrate_batchnorm(net, (size, size))
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        for _ in range(2):
            net(x)
        return stats_ms(time_calls(lambda: net(x), repeats))["median"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=352, help="input size of the network (default 352, the paper's)")
    parser.add_argument("--threads", type=int, default=None, help="threads of PyTorch and OpenVINO (default: torch's)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median)")
    parser.add_argument("--ir", type=Path, nargs="*", default=[], help="OpenVINO IRs of the network to measure")
    parser.add_argument("--out", type=Path, default=OUTPUT / "cpu_bound")
    parser.add_argument("--smoke", action="store_true", help="small blocks, 64x64 network, 2 repeats (seconds)")


def run(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    size, repeats = (64, 2) if args.smoke else (args.size, args.repeats)
    missing = [str(p) for p in args.ir if not p.is_file()]
    if missing:
        raise SystemExit(f"--ir: {', '.join(missing)} not found (export with python -m transfuse_monai.export "
                         "<bundle> --formats openvino openvino-int8)")
    check_ir_sizes(args.ir, size)
    macs = network_macs(size)
    peaks = measure_peaks(threads, repeats, args.smoke, rounds=1 if args.smoke else 3)
    bound = bounds(macs, peaks)
    eager = eager_ms(size, repeats)
    irs = ir_latencies(args.ir, size, threads, repeats)
    total = sum(macs.values())
    rows = [["fp32 eager PyTorch", "", "", f"{eager:.1f}", "1.00", ""]]
    for precision, ms in bound.items():
        rows.append([f"bound, {precision}", f"{peaks[precision]['conv']:.0f}", f"{peaks[precision]['matmul']:.0f}",
                     f"{ms:.1f}", f"{ms / eager:.2f}", ""])
    for path, (precision, ms) in irs.items():
        share = f"{100 * bound[precision] / ms:.0f}%" if precision in bound else "n/a"
        rows.append([f"{Path(path).name} ({precision})", "", "", f"{ms:.1f}", f"{ms / eager:.2f}", share])
    report = "\n".join([
        f"TransFuse-S at {size}x{size}, batch 1: {total / 1e9:.2f} GMACs (convolutions {macs['conv'] / 1e9:.2f}, "
        f"linear layers {macs['matmul'] / 1e9:.2f}, attention {macs['attention'] / 1e9:.2f}); host {cpu_isa()}, "
        f"{threads} threads, load {loadavg()}; OpenVINO's peak on: "
        + "; ".join(f"{kind}: {text}" for kind, text in BLOCKS) + ".", "",
        *md_table(["", "conv GMAC/s", "matmul GMAC/s", "ms", "/ fp32 eager", "bound / measured"], rows,
                  align="lrrrrr"), ""])
    print(report)
    write_results(args.out, report, {"macs": macs, "peaks_gmac_per_s": peaks, "bound_ms": bound, "eager_ms": eager,
                                     "irs": irs, "threads": threads, "size": size, "load": loadavg()})

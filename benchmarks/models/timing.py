# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Measurement of the inference benchmark: latency, throughput and peak memory of every model x path, and the
interleaved (round-robin) latency pass."""

from __future__ import annotations

import ctypes
import gc
import re
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import fmt, loadavg, stats_ms, time_calls
from benchmarks.models import paths as _paths
from benchmarks.models.paths import (
    DEVICE_NA,
    REFERENCE_PATH,
    PathUnavailable,
    Runner,
    attention_default,
    first_output,
    parity,
    parse_path,
    resolve_auto,
    prepare,
    sync,
)
from benchmarks.models.report import row_error
from benchmarks.models.zoo import MODELS, REFERENCE_MODEL, calibrate_batchnorm, count_gmacs

_LIBC = None


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+)", f.read(), re.M)
    return int(m.group(1)) if m else -1


def _reset_peak_rss() -> int | None:
    """Return freed heap memory to the OS and reset the kernel's peak-RSS mark; return the RSS (KiB) or None."""
    global _LIBC
    gc.collect()
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def measure_memory_mib(call: Callable[[], object], device: torch.device) -> tuple[float | None, object]:
    """Peak extra memory (MiB) of one call (CPU peak-RSS growth, CUDA max_memory_allocated growth) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = call()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20, result
    before = _reset_peak_rss()
    result = call()
    if before is None:
        return None, result
    return max(0, _status_kib("VmHWM") - before) / 1024, result


def time_runner(runner: Runner, x: torch.Tensor, n: int, device: torch.device) -> list[float]:
    """Seconds of each of ``n`` calls of the runner on ``x`` (input prepared once, device synchronised)."""
    x = runner.prep(x)
    return time_calls(lambda: runner.fn(x), n, sync=lambda: sync(device))


_GMACS: dict[tuple, float | None] = {}
TIME_LIMIT_NOTE = "--time-limit reached"


def past_deadline(args) -> bool:
    """Whether the run's ``--time-limit`` (``args.deadline``, a ``perf_counter`` time; absent or None: no limit)
    has passed."""
    deadline = getattr(args, "deadline", None)
    return deadline is not None and time.perf_counter() > deadline


def bench_model(key: str, size, device: torch.device, paths: list[str], args, tmpdir: Path, batch: int,
                threads: int) -> list[dict]:
    """Build one model at ``size`` and measure every path on ``device``: one result row per path (``ok``, ``n/a``,
    ``skipped`` or ``error``)."""
    label, builder = MODELS[key]
    rows: list[dict] = []
    common = {"model": key, "label": label, "size": list(size), "device": device.type}
    if past_deadline(args):
        return [{**common, "path": p, "status": "skipped", "note": TIME_LIMIT_NOTE} for p in paths]
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        base = builder(tuple(size), args).eval()
        if args.calibrate_bn:
            calibrate_batchnorm(base, tuple(size))
    except Exception as e:
        print(f"  {label}: could not be built: {e}", flush=True)
        return [{**common, "path": p, "status": "error", "error": f"build: {type(e).__name__}: {e}"} for p in paths]
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in base.parameters())
    g = torch.Generator().manual_seed(1234)
    x1_cpu = torch.randn(1, 3, *size, generator=g)
    xb_cpu = torch.randn(batch, 3, *size, generator=g)
    gmacs_key = (key, tuple(size))
    if gmacs_key not in _GMACS:  # device-independent: counted once, on the CPU
        _GMACS[gmacs_key] = count_gmacs(base, x1_cpu)
    gmacs = _GMACS[gmacs_key]
    with torch.inference_mode():
        ref = first_output(base.to(device)(x1_cpu.to(device))).cpu()
    base = base.cpu()
    attn_default = attention_default(base)
    common.update(params=params, gmacs=gmacs, build_s=build_s,
                  attention_default=None if attn_default is None else ("sdpa" if attn_default else "no_sdpa"))
    print(f"  {label}: {params / 1e6:.2f} M parameters, "
          f"{'n/a' if gmacs is None else f'{gmacs:.2f}'} GMACs (built in {build_s:.1f} s)", flush=True)
    x1, xb = x1_cpu.to(device), xb_cpu.to(device)
    for path in paths:
        mods, why = resolve_auto(parse_path(path), device)
        row = {**common, "path": path, "loadavg_before": loadavg()}
        if why:
            row["resolved"] = "+".join(sorted(mods)) or "eager"
            print(f"    {path}: {row['resolved']} ({why})", flush=True)
        if past_deadline(args):
            rows.append({**row, "status": "skipped", "note": TIME_LIMIT_NOTE})
            continue
        if "compile" in mods and args.compile_models != ["all"] and key not in args.compile_models:
            rows.append({**row, "status": "skipped", "note": "not in --compile-models"})
            continue
        try:
            runner = prepare(base, mods, device, tuple(size), batch, tmpdir, threads)
        except PathUnavailable as e:
            rows.append({**row, "status": "n/a", "note": str(e), "device_na": str(e).startswith(DEVICE_NA)})
            print(f"    {path:<22} n/a: {e}", flush=True)
            continue
        except Exception as e:
            rows.append({**row, "status": "error", "error": f"{type(e).__name__}: {e}".splitlines()[0][:400]})
            print(f"    {path:<22} ERROR in set-up: {row_error(rows[-1])}", flush=True)
            if args.verbose:
                traceback.print_exc()
            continue
        try:
            # the first call at each batch size: peak memory (and, at batch 1, the parity check); they also warm up
            mem1, out = measure_memory_mib(lambda: runner(x1).cpu(), device)
            par = parity(out, ref, mods)
            del out
            memb, _ = measure_memory_mib(lambda: runner(xb).sum().item(), device)
            lat = stats_ms(time_runner(runner, x1, args.warmup + args.repeats, device)[args.warmup:])
            tput_times = time_runner(runner, xb, args.throughput_iters, device)
            tput = batch / statistics.median(tput_times)
            rows.append({
                **row, "status": "ok", "setup_s": runner.setup_s, "parity": par,
                "note": runner.note or (f"= {row['resolved']}: {why}" if why else ""),
                "latency_ms": lat, "batch": batch, "throughput_img_s": tput,
                "throughput_iter_ms": stats_ms(tput_times), "peak_mem_mib_b1": mem1, "peak_mem_mib_bB": memb,
                "loadavg_after": loadavg(),
            })
            print(f"    {path:<22} {lat['median']:8.1f} ms (IQR {lat['q1']:.1f}-{lat['q3']:.1f}), "
                  f"{tput:7.2f} img/s @ b{batch}, mem {fmt(mem1, '.0f')}/{fmt(memb, '.0f')} MiB, "
                  f"max|d| {par['max_abs_diff']:.2e} {'ok' if par['passed'] else 'FAIL'}"
                  + (f", set-up {runner.setup_s:.1f} s" if runner.setup_s else ""), flush=True)
        except Exception as e:
            rows.append({**row, "status": "error", "error": f"{type(e).__name__}: {e}".splitlines()[0][:400]})
            print(f"    {path:<22} ERROR: {row_error(rows[-1])}", flush=True)
            if args.verbose:
                traceback.print_exc()
        finally:
            runner = None  # release the path's model copy / session before the next one
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if "compile" in mods:
                torch._dynamo.reset()
    return rows


def interleaved_latency(keys: list[str], paths: list[str], size, device: torch.device, args, tmpdir: Path,
                        batch: int, threads: int) -> list[dict]:
    """Batch-1 latency of every (model, path) timed round-robin: each round calls every runner once, in a rotated
    order, so slow drifts of a shared machine (frequency, neighbours) hit all of them alike. For ratios between
    models that differ by a few percent, the per-model figures of the main pass are not enough."""
    _paths.ORT_SPINNING = False
    runners: list[tuple[str, str, str, Runner]] = []
    g = torch.Generator().manual_seed(1234)
    x1 = torch.randn(1, 3, *size, generator=g).to(device)
    for key in keys:
        label, builder = MODELS[key]
        torch.manual_seed(0)
        try:
            base = builder(tuple(size), args).eval()
        except Exception as e:
            print(f"  interleaved: {label} could not be built: {e}", flush=True)
            continue
        for path in paths:
            mods, _ = resolve_auto(parse_path(path), device)
            if "compile" in mods and args.compile_models != ["all"] and key not in args.compile_models:
                continue
            try:
                runner = prepare(base, mods, device, tuple(size), batch, tmpdir, threads)
                for _ in range(1 + args.warmup):
                    time_runner(runner, x1, 1, device)
            except Exception as e:  # n/a paths and failures are reported by the main pass
                if not isinstance(e, PathUnavailable):
                    print(f"  interleaved: {label} {path} skipped: {type(e).__name__}: {e}"[:200], flush=True)
                continue
            runners.append((key, label, path, runner))
    times: dict[int, list[float]] = {i: [] for i in range(len(runners))}
    for r in range(args.interleave_rounds):
        order = list(range(len(runners)))
        order = order[r % len(order):] + order[: r % len(order)] if order else order
        for i in order:
            times[i] += time_runner(runners[i][3], x1, 1, device)
    rows = [{"model": key, "label": label, "size": list(size), "device": device.type, "path": path,
             "latency_ms": stats_ms(times[i])} for i, (key, label, path, _) in enumerate(runners)]
    ref = next((r for r in rows if r["model"] == REFERENCE_MODEL and r["path"] == REFERENCE_PATH), None)
    for r in rows:
        r["ratio_to_transfuse_s_eager"] = r["latency_ms"]["median"] / ref["latency_ms"]["median"] if ref else None
        print(f"  interleaved {r['label']:<24} {r['path']:<28} {r['latency_ms']['median']:8.1f} ms "
              f"(IQR {r['latency_ms']['q1']:.1f}-{r['latency_ms']['q3']:.1f})", flush=True)
    return rows

# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Report of the inference benchmark: ratios to TransFuse-S eager, achieved TFLOP/s, best path per model, the
Markdown tables and ``results.json`` (also rebuilt from an earlier run with :func:`rejudge`)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from benchmarks.common import UsageError, fmt, md_row, md_table, write_results
from benchmarks.models.paths import MAX_FLIP_PCT_HALF, REFERENCE_PATH, TOL_FP32, is_reduced_precision, judge, parse_path
from benchmarks.models.zoo import REFERENCE_MODEL


def row_error(r: dict) -> str:
    return r.get("error", "")[:160]


def add_flops(rows: list[dict], peaks: dict[str, float]) -> None:
    """Achieved TFLOP/s (2 x MACs counted by FlopCounterMode; element-wise work not counted) at batch 1 and at the
    throughput batch, and their fraction of a peak given with ``--peak-tflops`` for the row's device and precision."""
    for r in rows:
        if r.get("status") != "ok" or not r.get("gmacs"):
            continue
        flop = 2e9 * r["gmacs"]
        b1 = flop / (r["latency_ms"]["median"] / 1000) / 1e12
        bb = flop * r["throughput_img_s"] / 1e12
        precision = "half" if is_reduced_precision(parse_path(r.get("resolved") or r["path"])) else "fp32"
        peak = peaks.get(f"{r['device']}.{precision}")
        r["tflops"] = {"b1": b1, "bB": bb, "peak": peak, "precision": precision,
                       "fraction_b1": b1 / peak if peak else None, "fraction_bB": bb / peak if peak else None}


def parse_peaks(items: list[str]) -> dict[str, float]:
    peaks = {}
    for item in items:
        m = re.fullmatch(r"(cpu|cuda)\.(fp32|half)=([0-9.]+)", item)
        if not m:
            raise UsageError(f"--peak-tflops entries look like cuda.half=989, got '{item}'")
        peaks[f"{m.group(1)}.{m.group(2)}"] = float(m.group(3))
    return peaks


def add_ratios(rows: list[dict]) -> None:
    refs = {}
    for r in rows:
        if r["model"] == REFERENCE_MODEL and r["path"] == REFERENCE_PATH and r.get("status") == "ok":
            refs[(tuple(r["size"]), r["device"])] = r
    for r in rows:
        ref = refs.get((tuple(r["size"]), r["device"]))
        if ref is None or r.get("status") != "ok":
            continue
        r["ratio_to_transfuse_s_eager"] = {
            "latency": r["latency_ms"]["median"] / ref["latency_ms"]["median"],
            "throughput": r["throughput_img_s"] / ref["throughput_img_s"] if r["batch"] == ref["batch"] else None,
            "params": r["params"] / ref["params"],
            "gmacs": (r["gmacs"] / ref["gmacs"]) if r.get("gmacs") and ref.get("gmacs") else None,
        }


def best_paths(rows: list[dict]) -> list[dict]:
    """Per size, device and model: the fastest batch-1 path and the highest-throughput path that passed parity."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((tuple(r["size"]), r["device"], r["model"]), []).append(r)
    best = []
    for (size, device, model), rs in groups.items():
        ok = [r for r in rs if r.get("status") == "ok" and r["parity"]["passed"]]
        eager = next((r for r in rs if r["path"] == "eager" and r.get("status") == "ok"), None)
        if not ok or eager is None:
            continue
        ran = [r for r in rs if r.get("status") == "ok"]
        fastest = min(ran, key=lambda r: r["latency_ms"]["median"])
        lat = min(ok, key=lambda r: r["latency_ms"]["median"])
        thr = max(ok, key=lambda r: r["throughput_img_s"])
        best.append({
            "size": list(size), "device": device, "model": model, "label": rs[0]["label"],
            "eager_latency_ms": eager["latency_ms"]["median"], "eager_throughput_img_s": eager["throughput_img_s"],
            "best_latency_path": lat["path"], "best_latency_ms": lat["latency_ms"]["median"],
            "latency_speedup": eager["latency_ms"]["median"] / lat["latency_ms"]["median"],
            "best_throughput_path": thr["path"], "best_throughput_img_s": thr["throughput_img_s"],
            "throughput_speedup": thr["throughput_img_s"] / eager["throughput_img_s"],
            "fastest_any_path": fastest["path"], "fastest_any_latency_ms": fastest["latency_ms"]["median"],
            "fastest_any_parity": fastest["parity"],
        })
    return best


def _tflops(t: dict | None) -> str:
    if not t:
        return "n/a"
    text = f"{t['b1']:.3g} / {t['bB']:.3g}"
    if t.get("peak"):
        text += f" ({100 * t['fraction_b1']:.0f}% / {100 * t['fraction_bB']:.0f}% of {t['peak']:g} {t['precision']})"
    return text


def markdown(rows: list[dict], best: list[dict], settings: dict) -> str:
    out = [
        "# Model inference benchmark",
        "",
        f"torch {settings['torch']}, monai {settings['monai']}, timm {settings['timm']}, onnxruntime "
        f"{settings['onnxruntime']}; CPU: {settings['cpu']} ({settings['cpu_count']} cores, torch threads "
        f"{settings['torch_threads']}); CUDA: {settings['cuda'] or 'not available'}.",
        f"Batch-1 latency: {settings['repeats']} timed calls after the first (memory/parity) call and "
        f"{settings['warmup']} more warm-up calls (median, IQR, min-max); "
        f"throughput: {settings['throughput_iters']} calls at batch {settings['batch_cpu']} on CPU"
        + (f", {settings['batch_cuda']} on CUDA" if settings["cuda"] else "")
        + f". Load average (1, 5, 15 min) at start {settings['loadavg_start']}, at end {settings['loadavg_end']}.",
        f"Parity vs fp32 eager on one batch-1 input: fp32 paths pass if max|diff| <= {TOL_FP32:g} * "
        "max(1, max|eager|), "
        f"reduced-precision paths (bf16/fp16) if at most {MAX_FLIP_PCT_HALF:g}% of the mask pixels (logit > 0) flip; "
        "random weights, BatchNorm statistics "
        + ("set from a train-mode pass on 2 random images" if settings["calibrate_bn"] else "left at their defaults")
        + ". Ratios: to TransFuse-S fp32 eager at the same size and device "
        "(latency ratio < 1 and throughput ratio > 1 are faster). Mask pixels flipped: share of pixels whose "
        "thresholded prediction (logit > 0) differs from fp32 eager's. Peak memory: extra peak RSS (CPU) or CUDA "
        "allocation of the first call at batch 1 / batch B. GMACs: FlopCounterMode, batch 1.",
        "",
    ]
    for size in settings["sizes"]:
        for device in settings["devices"]:
            sel = [r for r in rows if tuple(r["size"]) == tuple(size) and r["device"] == device]
            if not sel:
                continue
            batch = settings["batch_cpu"] if device == "cpu" else settings["batch_cuda"]
            out += [f"## {size[0]}x{size[1]}, {device}", ""]
            out += md_table([
                "model", "path", "params (M)", "GMACs", "max abs diff / max abs eager (pass)",
                "mask pixels flipped (%)", "set-up (s)", "batch-1 latency median (ms)", "IQR (ms)", "min-max (ms)",
                "latency / S-eager", f"throughput b{batch} (img/s)", "throughput / S-eager",
                f"peak mem b1 / b{batch} (MiB)", f"TFLOP/s b1 / b{batch} (of peak)"])
            skipped = {}
            for r in sel:
                if r.get("device_na"):
                    skipped.setdefault(r["path"], r["note"])
                    continue
                head = [r["label"], r["path"], fmt(r.get("params") and r["params"] / 1e6), fmt(r.get("gmacs"))]
                if r.get("status") != "ok":
                    out.append(md_row(head + [f"{r['status']}: {r.get('note') or row_error(r)}"] + [""] * 10))
                    continue
                p, lat, ratio = r["parity"], r["latency_ms"], r.get("ratio_to_transfuse_s_eager", {})
                out.append(md_row(head + [
                    f"{p['max_abs_diff']:.1e} / {p['max_abs_ref']:.3g} ({'pass' if p['passed'] else 'FAIL'})",
                    f"{p['mask_flip_pct']:.3f}", fmt(r["setup_s"], ".1f") if r["setup_s"] else "-",
                    f"{lat['median']:.1f}", f"{lat['q1']:.1f}-{lat['q3']:.1f}", f"{lat['min']:.1f}-{lat['max']:.1f}",
                    fmt(ratio.get("latency")), f"{r['throughput_img_s']:.2f}", fmt(ratio.get("throughput")),
                    f"{fmt(r['peak_mem_mib_b1'], '.0f')} / {fmt(r['peak_mem_mib_bB'], '.0f')}",
                    _tflops(r.get("tflops")),
                ]))
            out.append("")
            notes = [f"{r['label']} `{r['path']}`: {r['note']}" for r in sel
                     if r.get("status") == "ok" and any(w in (r.get("note") or "") for w in ("failed", "rewritten"))]
            if notes:
                out += ["Notes: " + "; ".join(notes) + ".", ""]
            if skipped:
                out += ["Not run on this device: " + "; ".join(f"`{p}` ({n})" for p, n in skipped.items()) + ".", ""]
    if best:
        out += ["## Best path per model (among paths that passed parity)", ""]
        table = []
        for b in best:
            fp = b["fastest_any_parity"]
            table.append([
                f"{b['size'][0]}x{b['size'][1]}", b["device"], b["label"], f"{b['eager_latency_ms']:.1f}",
                b["best_latency_path"], f"{b['best_latency_ms']:.1f}", f"{b['latency_speedup']:.2f}x",
                b["best_throughput_path"], f"{b['best_throughput_img_s']:.2f}", f"{b['throughput_speedup']:.2f}x",
                f"{b['fastest_any_path']} ({b['fastest_any_latency_ms']:.1f}, {fp['max_abs_diff']:.1e}"
                f"{'' if fp['passed'] else ' FAIL'}, {fp['mask_flip_pct']:.3f})",
            ])
        out += md_table([
            "size", "device", "model", "eager latency (ms)", "fastest batch-1 path", "its latency (ms)", "speed-up",
            "best throughput path", "its throughput (img/s)", "speed-up",
            "fastest path regardless of parity (latency ms, max abs diff, mask flips %)",
        ], table)
        out.append("")
    inter = settings.get("interleaved") or []
    if inter:
        out += [
            f"## Interleaved batch-1 latency ({settings['interleave_rounds']} rounds)",
            "",
            "Every (model, path) below called once per round, round-robin in a rotated order, so that drifts of the "
            "machine affect all alike (ONNX Runtime with thread spinning off, so that it leaves the cores free for "
            "the next call); median and IQR over the rounds; ratio to TransFuse-S fp32 eager of the same rounds. "
            "All runners stay in memory together, so caches are colder than in the per-model figures above.",
            "",
        ]
        out += md_table(["size", "device", "model", "path", "median (ms)", "IQR (ms)", "latency / S-eager"], [[
            f"{r['size'][0]}x{r['size'][1]}", r["device"], r["label"], r["path"], f"{r['latency_ms']['median']:.1f}",
            f"{r['latency_ms']['q1']:.1f}-{r['latency_ms']['q3']:.1f}", fmt(r.get("ratio_to_transfuse_s_eager")),
        ] for r in inter])
        out.append("")
    out += ["Command:", "", f"    {settings['command']}", ""]
    if settings.get("rejudged"):
        out += [f"Parity {settings['rejudged'].removeprefix('parity ')} (timings unchanged).", ""]
    return "\n".join(out)


def write_report(rows: list[dict], settings: dict, out: Path, note: str = "") -> None:
    """Add ratios, TFLOP/s and the best paths to a run's rows; print the report and write ``<out>/results.md`` and
    ``<out>/results.json`` (``note``: added to the "written" line)."""
    add_ratios(rows)
    add_flops(rows, settings.get("peak_tflops") or {})
    best = best_paths(rows)
    report = markdown(rows, best, settings)
    print("\n" + report)
    write_results(out, report, {"settings": settings, "results": rows, "best": best}, note=note)


def rejudge(results_json: Path, out: Path, peaks: dict[str, float] | None = None) -> None:
    """Re-apply the current parity criteria to a previous run's figures and rewrite its report."""
    data = json.loads(results_json.read_text())
    rows, settings = data["results"], data["settings"]
    for r in rows:
        if r.get("status") == "ok" and "parity" in r:
            r["parity"] = judge(r["parity"], parse_path(r.get("resolved") or r["path"]))
    settings["parity_criteria"] = {"fp32_max_diff_rel": TOL_FP32, "half_max_mask_flip_pct": MAX_FLIP_PCT_HALF}
    settings["rejudged"] = f"parity re-judged from {results_json} on {time.strftime('%Y-%m-%d %H:%M:%S')}"
    if peaks:
        settings["peak_tflops"] = peaks
    write_report(rows, settings, out)

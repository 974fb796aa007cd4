# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The GPU run kit's report: ``results.json`` (everything), ``results.md`` (the tables) and the training curves
(``training_loss.png``, ``val_dice.png``), rewritten after every stage."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import fmt, md_row, md_table
from benchmarks.gpu.curves import line_chart

TEST_SETS = ("Kvasir", "CVC-ClinicDB")
TRAIN_LABELS = {"train_transfuse_s": "TransFuse-S", "train_flexunet_resnet34": "FlexibleUNet (ResNet-34)"}


def inference_table(results: dict) -> list[str]:
    rows = [r for name in ("models", "compile") for r in results["stages"].get(name, {}).get("rows", [])]
    if not rows:
        return ["No inference results (see the stage table)."]
    batch = next((r["batch"] for r in rows if r.get("status") == "ok"), "B")
    out = md_table(["model", "path", "params (M)", "GFLOPs (batch 1)", "batch-1 latency (ms, median)", "FPS (batch 1)",
                    f"throughput (img/s, batch {batch})", f"TFLOP/s (batch {batch})", "of peak",
                    "parity: max abs diff (pass)", "mask pixels flipped (%)", "set-up (s)", "peak mem b1 / bB (MiB)"])
    na = {}
    for r in rows:
        if r.get("status") == "ok":
            lat, par, tf = r["latency_ms"]["median"], r["parity"], r.get("tflops") or {}
            frac = tf.get("fraction_bB")
            out.append(md_row([
                r["label"], r["path"], fmt(r["params"] / 1e6), fmt(r.get("gmacs") and 2 * r["gmacs"]), f"{lat:.2f}",
                f"{1000 / lat:.1f}", f"{r['throughput_img_s']:.1f}", fmt(tf.get("bB"), ".3g"),
                "n/a" if frac is None else f"{100 * frac:.1f}% of {tf['peak']:g} {tf['precision']}",
                f"{par['max_abs_diff']:.1e} ({'pass' if par['passed'] else 'FAIL'})", f"{par['mask_flip_pct']:.3f}",
                fmt(r.get("setup_s"), ".1f"),
                f"{fmt(r.get('peak_mem_mib_b1'), '.0f')} / {fmt(r.get('peak_mem_mib_bB'), '.0f')}",
            ]))
        elif r.get("device_na"):
            na.setdefault(r["path"], r.get("note"))
        else:
            why = (r.get("note") or r.get("error") or "")[:160]
            out.append(md_row([r["label"], r["path"], f"{r['status']}: {why}"] + [""] * 10))
    if na:
        out += ["", "Not available on this device: " + "; ".join(f"`{p}` ({n})" for p, n in na.items()) + "."]
    return out


def training_tables(results: dict) -> list[str]:
    stages = [(name, results["stages"].get(name)) for name in TRAIN_LABELS]
    stages = [(n, s) for n, s in stages if s and s.get("metrics")]
    if not stages:
        return ["No training results (see the stage table)."]
    out = md_table(["model", "loop budget (s)", "epochs (iterations)", "images/s (x scales/s)",
                    "data wait / training loop", "validation (s)", "peak GPU memory (MiB)", "best val Dice",
                    *(f"{t} {m}" for t in TEST_SETS for m in ("Dice", "IoU"))])
    for name, s in stages:
        m = s["metrics"]
        test = m.get("test") or {}
        share = m.get("data_wait_share")
        out.append(md_row([
            TRAIN_LABELS[name], fmt(s.get("loop_budget_s"), ".0f"),
            f"{fmt(m.get('epochs_completed'))} ({m.get('iterations')})",
            f"{fmt(m.get('images_per_s'), '.1f')} ({fmt(m.get('image_scales_per_s'), '.1f')})",
            "n/a" if share is None else f"{100 * share:.1f}%", fmt(m.get("validation_s"), ".1f"),
            fmt(m.get("cuda_peak_mem_mib"), ".0f"), fmt(m.get("best_val_dice"), ".4f"),
            *(fmt((test.get(t) or {}).get(k), ".4f") for t in TEST_SETS for k in ("dice", "iou")),
        ]))
    scales = ("--smoke: one random scale per batch" if results["settings"].get("smoke")
              else "the recipe trains each batch at 3 scales")
    out += ["", "images/s: training images per second of training-loop time without validation (data wait + "
            f"iterations); in brackets image-scales per second ({scales}). Data wait: "
            "time in `next()` on the data loader. Test metrics: the bundle's evaluate.json at each mask's original "
            "size (n/a: the evaluation did not finish)."]
    return out


def curves(results: dict, out: Path) -> list[str]:
    """Draw the loss and validation-Dice curves of the training stages; return the Markdown image links."""
    loss, dice = {}, {}
    for name, label in TRAIN_LABELS.items():
        m = (results["stages"].get(name) or {}).get("metrics")
        if m:
            loss[label] = [tuple(p) for p in m.get("loss_curve", [])]
            dice[label] = [tuple(p) for p in m.get("val_dice_curve", [])]
    if not loss:
        return []
    line_chart(loss, out / "training_loss.png", "Training loss (structure loss, deep supervision)", "iteration",
               "loss")
    line_chart(dice, out / "val_dice.png", "Validation mean Dice", "validation round", "Dice")
    return ["![training loss](training_loss.png)", "", "![validation Dice](val_dice.png)"]


def markdown(results: dict, images: list[str]) -> str:
    env, st = results["env"], results["settings"]
    device = (f"{env['gpu']} ({env['gpu_memory_gib']} GiB), CUDA {env['cuda']}, cuDNN {env['cudnn']} (TF32 "
              f"convolutions {'on' if env.get('cudnn_allow_tf32') else 'off'}, TF32 matmul "
              f"{'on' if env.get('matmul_allow_tf32') else 'off'})") if env.get("gpu") else "no GPU (CPU)"
    peak = env.get("peak_tflops")
    out = [
        "# GPU run kit" + (" (smoke: CPU, tiny sizes, generated data)" if st.get("smoke") else ""), "",
        f"{device}; {env['cpu_count']} CPU cores; Python {env['python']}, torch {env['torch']}, MONAI {env['monai']}, "
        f"Ignite {env['ignite']}, timm {env['timm']}. Run time {results.get('elapsed_s', 0):.0f} s of a "
        f"{st['total_s']:.0f} s budget.", "",
        "## Stages", "",
    ]
    out += md_table(["stage", "status", "seconds", "note"])
    for name, s in results["stages"].items():
        note = s.get("error") or s.get("note") or (f"log: {s['log']}" if s.get("log") else "")
        note = note.replace("|", "\\|").replace("\n", " ")  # one table cell
        out.append(md_row([name, s["status"], fmt(s.get("seconds"), ".0f"), note]))
    out += ["", "## Inference", ""]
    if peak:
        out += [f"Peak dense TFLOP/s of this device ({peak['match']} datasheet): fp32 {peak['fp32']:g} (no tensor "
                f"cores), bf16/fp16 {peak['half']:g}. FLOPs counted by `FlopCounterMode` (convolutions, matrix "
                "products, attention; not element-wise work); fp32 convolutions run on TF32 tensor cores when cuDNN "
                "allows it, so the fp32 fraction can exceed what fp32 alone would reach.", ""]
    out += inference_table(results)
    reports = [s["report"] for s in results["stages"].values() if s.get("report")]
    if reports:
        out += ["", "Full tables (IQR, ratios, best path per model): " + ", ".join(reports) + "."]
    out += ["", "## Training (polyp bundle recipe from scratch, equal loop budgets)", ""]
    out += training_tables(results)
    if images:
        out += [""] + images
    if results.get("notes"):
        out += ["", "## Notes", ""] + [f"* {n}" for n in results["notes"]]
    return "\n".join(out) + "\n"


def write(results: dict, out: Path) -> None:
    """Write ``results.json``, the curves and ``results.md`` (each atomically) to ``out``."""
    from transfuse_monai.utils.io import atomic_write_json, atomic_write_text

    try:
        images = curves(results, out)
    except Exception as e:  # a drawing failure must not cost the figures
        images = [f"(curves not drawn: {type(e).__name__}: {e})"]
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", markdown(results, images))

# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Accuracy of the int8 ONNX model against fp32 eager PyTorch on real polyp test images: per-image Dice change.

For every image of the PraNet test sets found (Kvasir, CVC-ClinicDB, ...), both models segment the image
preprocessed as the bundle's ``inference.json`` does (352x352 by default); each mask is scored against the ground
truth resized to the model resolution (nearest), and the table reports, per set and overall, the mean Dice of each
model, the mean and 95th percentile of the per-image |Dice(int8) - Dice(fp32)|, and the mean Dice between the two
models' masks (every Dice: the library's :func:`transfuse_monai.metrics.dice_iou`, 1 when both masks are empty).
Goal of the int8 path: mean change <= 0.005 and p95 <= 0.02.

    python -m benchmarks int8-parity --ckpt models/model.pt --data /data/polyp              # exports, then scores
    python -m benchmarks int8-parity --ckpt models/model.pt --data /data/polyp --int8 models/model_int8.onnx

Without ``--int8`` the model is exported first with ``transfuse_monai.export.export_onnx_int8`` (calibrated on
``--calib_count`` training images of ``--data``; the segmentation head kept in float32 unless ``--float_modules``
names other submodules, or none) to ``--out`` (default a temporary folder).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import REPO, md_row, md_table
from transfuse_monai.metrics import dice_iou

BUNDLE = REPO / "bundles" / "polyp"


def profile_table(models: dict[str, Path], size, runs: int, threads: int | None) -> str:
    """Time per ONNX Runtime operator type (kernel events of its profiler, summed over ``runs`` batch-1 runs after
    one warm-up run), as a Markdown table with the share of each model's total."""
    import json
    import os
    from collections import defaultdict

    from transfuse_monai.inferers.onnx import ort_session

    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    per_op: dict[str, dict[str, float]] = {}
    for name, path in models.items():
        import onnxruntime as ort

        session = ort_session(path, intra_op_num_threads=threads)
        session.run(None, {"image": x})
        options = ort.SessionOptions()  # a second session with profiling on (the first warmed the caches)
        options.enable_profiling = True
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        profiled = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        profiled.run(None, {"image": x})
        for _ in range(runs):
            profiled.run(None, {"image": x})
        trace = profiled.end_profiling()
        totals: dict[str, float] = defaultdict(float)
        events = json.loads(Path(trace).read_text())
        os.remove(trace)
        for event in events:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                totals[event["args"]["op_name"]] += event["dur"] / 1e3 / (runs + 1)
        per_op[name] = dict(totals)
    names = list(per_op)
    ops = sorted({op for t in per_op.values() for op in t}, key=lambda op: -per_op[names[0]].get(op, 0.0))
    sums = {n: sum(per_op[n].values()) or 1.0 for n in names}
    lines = [f"\nONNX Runtime kernel time per operator type, ms per batch-1 run ({size[0]}x{size[1]}, mean of "
             f"{runs + 1} runs):", ""]
    lines += md_table(["op type", *(f"{n} {unit}" for n in names for unit in ("ms", "%"))], [
        [op, *(f"{v:.1f}" for n in names for v in (per_op[n].get(op, 0.0), 100 * per_op[n].get(op, 0.0) / sums[n]))]
        for op in ops], align="l" + "r" * 2 * len(names))
    lines.append(md_row(["total", *(v for n in names for v in (f"{sums[n]:.1f}", "100"))]))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True,
                        help="trained polyp checkpoint (trained at any size: see load_transfuse_checkpoint)")
    parser.add_argument("--data", required=True, help="PraNet polyp dataset root (TrainDataset, TestDataset)")
    parser.add_argument("--int8", default=None, help="int8 ONNX model (default: export one)")
    parser.add_argument("--out", default=None, help="where to export the int8 model (default: a temporary folder)")
    parser.add_argument("--sets", nargs="+", default=["Kvasir", "CVC-ClinicDB"])
    parser.add_argument("--image_size", type=int, nargs=2, default=[352, 352])
    parser.add_argument("--calib_count", type=int, default=16)
    parser.add_argument("--full_range", action="store_true",
                        help="8-bit weights (reduce_range=False) instead of the export's default 7-bit weights")
    parser.add_argument("--float_modules", nargs="*", default=None, metavar="MODULE",
                        help="submodules kept in float32 (default: the export's INT8_FLOAT_MODULES, the segmentation "
                        "head; none: quantise everything)")
    parser.add_argument("--activation_products", action="store_true",
                        help="quantise attention's products of two activations (q.k^T, attn.v) too")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads")
    parser.add_argument("--limit", type=int, default=None, help="images per set (default: all)")
    parser.add_argument("--profile", type=int, default=0, metavar="RUNS",
                        help="also profile this many batch-1 runs of the fp32 and int8 ONNX models with ONNX Runtime's "
                        "profiler and print the time per operator type")


def run(args: argparse.Namespace) -> None:
    """Export (unless ``--int8``), segment every test image with both models, print the table."""
    from monai.bundle import ConfigParser

    from transfuse_monai.export import INT8_FLOAT_MODULES, export_onnx_int8, export_onnx_model, load_bundle_network
    from transfuse_monai.inferers import OnnxRuntimeNetwork
    from transfuse_monai.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    size = list(args.image_size)
    float_modules = INT8_FLOAT_MODULES if args.float_modules is None else tuple(args.float_modules)
    net, _ = load_bundle_network(BUNDLE, args.ckpt, image_size=size)
    with tempfile.TemporaryDirectory(prefix="tf_int8_parity_") as tmp:
        int8_path = Path(args.int8) if args.int8 else Path(args.out or tmp) / "model_int8.onnx"
        if not args.int8:
            start = time.perf_counter()
            info = export_onnx_int8(BUNDLE, int8_path, args.ckpt, calib_dir=args.data, calib_count=args.calib_count,
                                    min_dice=0.0, reduce_range=not args.full_range, float_modules=float_modules,
                                    activation_products=args.activation_products, image_size=size)
            print(f"exported {int8_path} in {time.perf_counter() - start:.0f} s; export check on held-out training "
                  f"images: mean mask Dice {info['mean_dice']:.4f}, max |prob diff| {info['max_prob_diff']:.3f}")
        int8 = OnnxRuntimeNetwork(int8_path, intra_op_num_threads=args.threads)
        fp32_path = None
        if args.profile:
            fp32_path = int8_path.with_name("model_fp32.onnx")
            if not fp32_path.is_file():
                export_onnx_model(net, fp32_path, (3, *size))

        config = ConfigParser()
        config.read_config(str(BUNDLE / "configs" / "inference.json"))
        config.update({"bundle_root": str(BUNDLE), "image_size": size})
        preprocessing = config.get_parsed_content("preprocessing")
        task = get_task("polyp")
        rows = {}
        for name in args.sets:
            items = task.subset_datalist(args.data, f"TestDataset/{name}", validate=False)[: args.limit]
            scores = []
            for item in items:
                image = preprocessing({"image": item["image"]})["image"].as_tensor()[None].float()
                with Image.open(item["label"]) as m:
                    label = np.asarray(m.convert("L").resize(size[::-1], Image.NEAREST)) > 127
                with torch.no_grad():
                    ref = net(image)[0, 0].numpy() > 0
                    out = int8(image)[0, 0].numpy() > 0
                scores.append((dice_iou(ref, label)[0], dice_iou(out, label)[0], dice_iou(out, ref)[0]))
            rows[name] = np.asarray(scores)
        rows["all"] = np.concatenate(list(rows.values()))
        profile = profile_table({"int8": int8_path, "fp32": fp32_path}, size, args.profile, args.threads) \
            if args.profile else ""

    if args.int8:
        kept = f"model {args.int8}"
    else:
        kept = [*float_modules] + ([] if args.activation_products else ["attention's activation x activation products"])
        kept = ", ".join(kept) + " in float32" if kept else "everything quantised"
    print(f"\nint8 (ONNX Runtime, QDQ; {kept}) vs fp32 eager PyTorch, {size[0]}x{size[1]}, checkpoint {args.ckpt}")
    table = []
    for name, s in rows.items():
        change = np.abs(s[:, 1] - s[:, 0])
        table.append([name, len(s), *(f"{v:.4f}" for v in (s[:, 0].mean(), s[:, 1].mean(), change.mean(),
                                                            np.percentile(change, 95), s[:, 2].mean()))])
    print("\n".join(md_table(["set", "images", "Dice fp32", "Dice int8", "mean abs Dice change", "p95 abs Dice change",
                              "Dice(int8, fp32 masks)"], table, align="lrrrrrr")))
    if profile:
        print(profile)
    change = np.abs(rows["all"][:, 1] - rows["all"][:, 0])
    ok = change.mean() <= 0.005 and np.percentile(change, 95) <= 0.02
    print(f"\ngoal (mean <= 0.005, p95 <= 0.02): {'met' if ok else 'NOT met'}")

# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Accuracy of every fast path and export against fp32 eager PyTorch on real polyp test images: per-image Dice change.

A trained polyp checkpoint segments every image of the PraNet test sets found (Kvasir, CVC-ClinicDB: 162 images),
preprocessed as the bundle's ``inference.json`` does (352x352 by default), once in fp32 eager PyTorch (the
reference) and once through each path of ``--paths``:

    bf16+channels_last  PyTorch bfloat16 autocast with channels-last tensors (the bundles' amp=true on a CPU)
    auto                the bundles' default, amp=auto, as it resolves on this host (the report says to what)
    torchscript         the TorchScript export (model.ts: what the MONAI Deploy applications run)
    onnx                the fp32 ONNX export run by ONNX Runtime (inference_onnx.json)
    onnx-int8           the onnx-int8 export (ONNX Runtime static int8), or --int8
    openvino            the OpenVINO IR in the CPU's default precision (bfloat16 with AMX / AVX512-BF16)
    openvino+fp32       the same IR forced to float32
    openvino-int8       the openvino-int8 export (NNCF int8; accuracy-controlled with --accuracy_count), or
                        --openvino_int8
    openvino-onnx-int8  the onnx-int8 export read and run by OpenVINO itself

Each mask is scored against the ground truth resized to the model resolution (nearest). Per path the report gives,
overall and per set, the mean Dice, the mean, 95th percentile and maximum of the per-image |Dice(path) - Dice(fp32)|
and the mean Dice between the path's and fp32's masks (every Dice: :func:`transfuse_monai.metrics.dice_iou`, 1 when
both masks are empty), and whether it meets the goal (mean change <= 0.005, p95 <= 0.02). The exports are made by
the library's export functions (the int8 ones calibrated on ``--calib_count`` training images of ``--data``) into
``--exports`` (default a temporary folder). The milliseconds per image are one pass each (after a warm-up call), not interleaved: latency
comparisons are ``python -m benchmarks models``'s.

    python -m benchmarks parity --ckpt models/model.pt --data /data/polyp                  # every path
    python -m benchmarks parity --ckpt models/model.pt --data /data/polyp --paths onnx-int8 --profile 3
    python -m benchmarks parity --ckpt models/model.pt --data /data/polyp --paths onnx-int8 --int8 model_int8.onnx

``--profile N`` adds ONNX Runtime's profile (kernel time per operator type) of the int8 and fp32 ONNX models.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import OUTPUT, REPO, cpu_isa, loadavg, md_row, md_table, write_results
from transfuse_monai.metrics import dice_iou

BUNDLE = REPO / "bundles" / "polyp"
#: the paths, each with what it runs
PATHS = {
    "bf16+channels_last": "PyTorch bfloat16 autocast, channels-last",
    "auto": "amp=auto",
    "torchscript": "TorchScript export",
    "onnx": "ONNX Runtime fp32",
    "onnx-int8": "ONNX Runtime int8 (onnx-int8 export)",
    "openvino": "OpenVINO, default precision",
    "openvino+fp32": "OpenVINO f32",
    "openvino-int8": "OpenVINO int8 (openvino-int8 export, NNCF)",
    "openvino-onnx-int8": "OpenVINO running the onnx-int8 export (what ONNX Runtime's OpenVINO provider runs)",
}
GOAL_MEAN, GOAL_P95 = 0.005, 0.02


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
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS), help="default: all")
    parser.add_argument("--int8", default=None, help="onnx-int8: this int8 ONNX model (default: export one)")
    parser.add_argument("--exports", default=None, help="where the exports are written (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=OUTPUT / "parity", help="results.md and results.json")
    parser.add_argument("--sets", nargs="+", default=["Kvasir", "CVC-ClinicDB"])
    parser.add_argument("--image_size", type=int, nargs=2, default=[352, 352])
    parser.add_argument("--calib_count", type=int, default=16)
    parser.add_argument("--accuracy_count", type=int, default=0,
                        help="openvino-int8: NNCF accuracy control on this many labelled training images (e.g. 64)")
    parser.add_argument("--openvino_int8", default=None, help="openvino-int8: this IR (default: export one)")
    parser.add_argument("--full_range", action="store_true",
                        help="onnx-int8: 8-bit weights (reduce_range=False) instead of the export's 7-bit weights")
    parser.add_argument("--float_modules", nargs="*", default=None, metavar="MODULE",
                        help="int8 paths: submodules kept in floating point (default: the export's "
                        "INT8_FLOAT_MODULES, the segmentation head; none: quantise everything)")
    parser.add_argument("--activation_products", action="store_true",
                        help="onnx-int8: quantise attention's products of two activations (q.k^T, attn.v) too")
    parser.add_argument("--threads", type=int, default=None, help="torch, ONNX Runtime and OpenVINO threads")
    parser.add_argument("--limit", type=int, default=None, help="images per set (default: all)")
    parser.add_argument("--profile", type=int, default=0, metavar="RUNS",
                        help="with onnx-int8: also profile this many batch-1 runs of the fp32 and int8 ONNX models "
                        "with ONNX Runtime's profiler and print the time per operator type")


def build_path(name: str, args, net: torch.nn.Module, size: list[int], exports: Path) -> tuple[Callable, str]:
    """The path ``name`` as a function of a preprocessed ``(1, C, H, W)`` image to its logits, and a note on what
    ran (the precision ``auto`` chose, an export's own check)."""
    from transfuse_monai import export as ex
    from transfuse_monai.bundle import FastPaths
    from transfuse_monai.inferers import OnnxRuntimeNetwork, OpenVINONetwork

    float_modules = ex.INT8_FLOAT_MODULES if args.float_modules is None else tuple(args.float_modules)
    shape = (3, *size)
    if name in ("bf16+channels_last", "auto"):
        paths = FastPaths("cpu", True if name != "auto" else "auto", "auto")
        placed, inferer = paths.place(copy.deepcopy(net)), paths.inferer()
        return (lambda x: inferer(x, placed)), paths.precision.reason + (", channels-last" if paths.channels_last
                                                                           else "")
    if name == "torchscript":
        ex.export_torchscript(BUNDLE, exports / "model.ts", args.ckpt, image_size=size)
        scripted = torch.jit.load(str(exports / "model.ts")).eval()
        return scripted, "model.ts"
    if name == "onnx":
        if not (exports / "model.onnx").is_file():
            ex.export_onnx_model(net, exports / "model.onnx", shape)
        session = OnnxRuntimeNetwork(exports / "model.onnx", intra_op_num_threads=args.threads)
        return session, "model.onnx"
    if name == "onnx-int8":
        path = Path(args.int8) if args.int8 else exports / "model_int8.onnx"
        note = f"model {path}"
        if not args.int8:
            info = ex.export_onnx_int8(BUNDLE, path, args.ckpt, calib_dir=args.data, calib_count=args.calib_count,
                                       min_dice=0.0, reduce_range=not args.full_range, float_modules=float_modules,
                                       activation_products=args.activation_products, image_size=size)
            kept = [*float_modules] + ([] if args.activation_products else ["attention's activation products"])
            note = (f"{', '.join(kept) or 'nothing'} in float32; export check: mask Dice {info['mean_dice']:.4f} on "
                    "held-out training images")
        return OnnxRuntimeNetwork(path, intra_op_num_threads=args.threads), note
    if name in ("openvino", "openvino+fp32"):
        if not (exports / "model.xml").is_file():
            ex.export_openvino_model(net, exports / "model.xml", shape)
        model = OpenVINONetwork(exports / "model.xml", precision="f32" if name.endswith("fp32") else None,
                                num_threads=args.threads)
        return model, f"inference precision {model.precision}"
    if name == "openvino-onnx-int8":
        path = Path(args.int8) if args.int8 else exports / "model_int8.onnx"
        if not path.is_file():
            ex.export_onnx_int8(BUNDLE, path, args.ckpt, calib_dir=args.data, calib_count=args.calib_count,
                                min_dice=0.0, reduce_range=not args.full_range, float_modules=float_modules,
                                activation_products=args.activation_products, image_size=size)
        model = OpenVINONetwork(path, num_threads=args.threads)
        return model, f"{path.name}, the floating point part in {model.precision}"
    if name == "openvino-int8":
        if args.openvino_int8:
            path = Path(args.openvino_int8)
            note = f"model {path}"
        else:
            path = exports / "model_int8.xml"
            info = ex.export_openvino_int8(BUNDLE, path, args.ckpt, calib_dir=args.data, calib_count=args.calib_count,
                                           min_dice=0.0, float_modules=float_modules,
                                           accuracy_count=args.accuracy_count, image_size=size)
            note = (f"{', '.join(float_modules) or 'nothing'} in floating point; export check: mask Dice "
                    f"{info['mean_dice']:.4f} on held-out training images")
        bound = ex.accuracy_controlled(path)
        model = OpenVINONetwork(path, num_threads=args.threads)
        control = "plain quantisation" if bound is None else f"accuracy-controlled, max_drop {bound:g}"
        return model, f"{control}; floating point part in {model.precision}; {note}"
    raise ValueError(f"unknown path {name!r}; choose from {list(PATHS)}")


def run(args: argparse.Namespace) -> None:
    """Export what the paths need, segment every test image with each path and fp32 eager, print the table."""
    from monai.bundle import ConfigParser

    from transfuse_monai.export import export_onnx_model, load_bundle_network
    from transfuse_monai.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    size = list(args.image_size)
    net, _ = load_bundle_network(BUNDLE, args.ckpt, image_size=size)
    net.eval()
    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "inference.json"))
    config.update({"bundle_root": str(BUNDLE), "image_size": size})
    preprocessing = config.get_parsed_content("preprocessing")
    task = get_task("polyp")
    items = {name: task.subset_datalist(args.data, f"TestDataset/{name}", validate=False)[: args.limit]
             for name in args.sets}
    with tempfile.TemporaryDirectory(prefix="tf_parity_") as tmp:
        exports = Path(args.exports or tmp)
        exports.mkdir(parents=True, exist_ok=True)
        runners, notes = {}, {}
        for name in args.paths:
            start = time.perf_counter()
            runners[name], notes[name] = build_path(name, args, net, size, exports)
            print(f"{name}: ready in {time.perf_counter() - start:.0f} s ({notes[name]})", flush=True)
        scores = {name: {s: [] for s in items} for name in ["fp32 eager", *runners]}
        seconds = dict.fromkeys(scores, 0.0)
        warm_up = torch.zeros(1, 3, *size)
        for fn in [net, *runners.values()]:  # first calls allocate and compile: not timed
            with torch.no_grad():
                fn(warm_up)
        for set_name, set_items in items.items():
            for item in set_items:
                image = preprocessing({"image": item["image"]})["image"].as_tensor()[None].float()
                with Image.open(item["label"]) as m:
                    label = np.asarray(m.convert("L").resize(size[::-1], Image.NEAREST)) > 127
                masks = {}
                for name, fn in [("fp32 eager", net), *runners.items()]:
                    start = time.perf_counter()
                    with torch.no_grad():
                        masks[name] = np.asarray(fn(image)[0, 0].float()) > 0
                    seconds[name] += time.perf_counter() - start
                ref = masks["fp32 eager"]
                for name, mask in masks.items():
                    scores[name][set_name].append((dice_iou(mask, label)[0], dice_iou(mask, ref)[0]))
            print(f"{set_name}: {len(set_items)} images scored", flush=True)
        profile = ""
        if args.profile and "onnx-int8" in runners:
            int8_path = Path(args.int8) if args.int8 else exports / "model_int8.onnx"
            fp32_path = exports / "model.onnx"
            if not fp32_path.is_file():
                export_onnx_model(net, fp32_path, (3, *size))
            profile = profile_table({"int8": int8_path, "fp32": fp32_path}, size, args.profile, args.threads)

    n_images = sum(len(v) for v in items.values())
    results, rows = {}, []
    ref_all = np.concatenate([np.asarray(scores["fp32 eager"][s])[:, 0] for s in items])
    for name in scores:
        per_set = {s: np.asarray(v) for s, v in scores[name].items()}
        for set_name, arr in [("all", np.concatenate(list(per_set.values()))), *per_set.items()]:
            ref = ref_all if set_name == "all" else np.asarray(scores["fp32 eager"][set_name])[:, 0]
            change = np.abs(arr[:, 0] - ref)
            entry = {"images": len(arr), "dice": float(arr[:, 0].mean()), "mean_abs_change": float(change.mean()),
                     "p95_abs_change": float(np.percentile(change, 95)), "max_abs_change": float(change.max()),
                     "mask_dice_vs_fp32": float(arr[:, 1].mean())}
            entry["goal_met"] = entry["mean_abs_change"] <= GOAL_MEAN and entry["p95_abs_change"] <= GOAL_P95
            results.setdefault(name, {})[set_name] = entry
            if set_name == "all" or len(items) > 1:
                rows.append([name if set_name == "all" else "", set_name, len(arr), f"{entry['dice']:.4f}",
                             f"{entry['mean_abs_change']:.4f}", f"{entry['p95_abs_change']:.4f}",
                             f"{entry['max_abs_change']:.4f}", f"{entry['mask_dice_vs_fp32']:.4f}",
                             ("yes" if entry["goal_met"] else "**no**") if set_name == "all" else "",
                             f"{1000 * seconds[name] / n_images:.0f}" if set_name == "all" else ""])
    header = (f"Parity with fp32 eager PyTorch on {n_images} polyp test images ({', '.join(items)}), "
              f"{size[0]}x{size[1]}, checkpoint {args.ckpt}; host {cpu_isa()}, {torch.get_num_threads()} threads, "
              f"load {loadavg()}. Goal: mean |Dice change| <= {GOAL_MEAN}, p95 <= {GOAL_P95}.")
    lines = [header, ""]
    lines += md_table(["path", "set", "images", "Dice", "mean abs Dice change", "p95", "max", "Dice vs fp32 masks",
                       "goal met", "ms / image (one pass)"], rows, align="llrrrrrrlr")
    lines += ["", "What each path ran:", ""] + [f"* {name}: {PATHS[name]}; {notes[name]}" for name in runners]
    report = "\n".join(lines) + ("\n" + profile if profile else "") + "\n"
    print("\n" + report)
    write_results(args.out, report, {"settings": {k: str(v) for k, v in vars(args).items()}, "notes": notes,
                                     "results": results, "seconds_per_image": {k: v / n_images
                                                                               for k, v in seconds.items()}})

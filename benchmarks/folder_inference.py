# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Folder inference end to end: the polyp bundle's ``inference.json`` over the real test images, per path, in
images/s, and where the time goes.

Every path runs the bundle as a user does (``python -m monai.bundle run --config_file ...`` in a process of its
own: load, pre-process, network, invert, threshold, write the PNG masks) on one folder holding the PraNet test
images (Kvasir and CVC-ClinicDB, 162 images, linked in place, never copied):

    fp32            inference.json with --amp false --channels_last false (PyTorch float32, the reference)
    amp             inference.json with --amp true --backend pytorch (PyTorch bfloat16 autocast + channels-last)
    auto            inference.json as shipped, every export beside the checkpoint: amp and backend auto choose
                    (with AMX: OpenVINO's model.xml; with native bfloat16 but no AMX: the accuracy-controlled
                    model_int8.xml, else model.xml; elsewhere the int8 ONNX export)
    onnx            + inference_onnx.json on the fp32 ONNX export (ONNX Runtime)
    onnx-int8       + inference_onnx.json on the onnx-int8 export
    openvino        + inference_openvino.json (the CPU's default precision)
    openvino+fp32   + inference_openvino.json --openvino_precision f32
    openvino-int8   + inference_openvino.json on the openvino-int8 export (NNCF; accuracy-controlled with
                    --accuracy-count)

The exports are made first from ``--ckpt`` with ``python -m transfuse_monai.export`` (the int8 ones calibrated on
the training images of ``--data``) into ``<out>/models`` (kept, and reused by a later run with ``--reuse-exports``).
An override config attaches timers to the bundle's evaluator (Ignite and MONAI events), which give per path:

* images/s over the evaluator's loop (first image to last mask written) and over the whole process (with start-up:
  imports, building the network or compiling the export, the DataLoader workers);
* where the loop's time goes: waiting for data (decoding and pre-processing, in ``num_workers`` DataLoader
  processes that overlap the network: the wait is what they did not hide), the network (``ITERATION_STARTED`` to
  MONAI's ``FORWARD_COMPLETED``), post-processing and writing (``FORWARD_COMPLETED`` to ``ITERATION_COMPLETED``:
  sigmoid, inverting the resize to the original size, threshold, PNG encoding).

``--rounds N`` runs every path N times, round-robin in a rotated order (a drifting load then hits all paths alike),
and reports the median round. ``--num-workers`` overrides the bundle's DataLoader workers (its default on a CPU:
``min(2, CPUs)``); with 0 the data time is the whole decoding and pre-processing cost.

    python -m benchmarks folder-inference --ckpt models/model.pt --data /data/polyp
    python -m benchmarks folder-inference --ckpt models/model.pt --data /data/polyp --paths fp32 auto openvino \\
        --rounds 3 --reuse-exports
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from benchmarks.common import (
    OUTPUT,
    REPO,
    bundle_command,
    cpu_isa,
    loadavg,
    md_table,
    rel,
    run_checked,
    shown,
    write_results,
)

CONFIGS = REPO / "bundles" / "polyp" / "configs"
TEST_SETS = ("Kvasir", "CVC-ClinicDB")
#: path -> (config layers over inference.json, command-line overrides; "{models}" is the exports folder)
PATHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fp32": ((), ("--amp", "false", "--channels_last", "false", "--backend", "pytorch")),
    "amp": ((), ("--amp", "true", "--backend", "pytorch")),
    "auto": ((), ()),
    "onnx": (("inference_onnx.json",), ("--onnx_path", "{models}/model.onnx")),
    "onnx-int8": (("inference_onnx.json",), ("--onnx_path", "{models}/model_int8.onnx")),
    "openvino": (("inference_openvino.json",), ()),
    "openvino+fp32": (("inference_openvino.json",), ("--openvino_precision", "f32")),
    "openvino-int8": (("inference_openvino.json",), ("--openvino_path", "{models}/model_int8.xml")),
    "openvino-latency": (("inference_openvino.json",), ("--openvino_performance_hint", "latency")),
    "openvino-int8-latency": (("inference_openvino.json",), ("--openvino_path", "{models}/model_int8.xml",
                                                              "--openvino_performance_hint", "latency")),
}
#: the export format each path needs, and its file
EXPORTS = {"onnx": ("onnx", "model.onnx"), "onnx-int8": ("onnx-int8", "model_int8.onnx"),
           "openvino": ("openvino", "model.xml"), "openvino+fp32": ("openvino", "model.xml"),
           "openvino-int8": ("openvino-int8", "model_int8.xml"), "openvino-latency": ("openvino", "model.xml"),
           "openvino-int8-latency": ("openvino-int8", "model_int8.xml")}


# ---------------------------------------------------------------- used inside the bundle process (override config)
def attach_timers(evaluator, out_path: str) -> None:
    """Attach data-wait, network and post-processing timers to a MONAI evaluator; write their sums to ``out_path``
    (JSON) when its run completes."""
    import time

    import torch
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    sums = {"data_wait_s": 0.0, "network_s": 0.0, "post_s": 0.0, "images": 0}
    clock: dict[str, float] = {}

    def start(key):
        return lambda e: clock.__setitem__(key, time.perf_counter())

    def add(field, key):
        def handler(engine):
            sums[field] += time.perf_counter() - clock[key]
            clock["mark"] = time.perf_counter()
        return handler

    evaluator.add_event_handler(Events.STARTED, start("loop"))
    evaluator.add_event_handler(Events.GET_BATCH_STARTED, start("batch"))
    evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, add("data_wait_s", "batch"))
    evaluator.add_event_handler(Events.ITERATION_STARTED, start("iteration"))
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, add("network_s", "iteration"))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, add("post_s", "mark"))

    def count(engine):  # the batch is decollated by now: a list of images (batches of the runtime's batch_size)
        batch = engine.state.batch
        sums["images"] += len(batch) if isinstance(batch, list) else len(batch["image"])

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, count)

    def completed(engine):
        record = {**sums, "loop_s": time.perf_counter() - clock["loop"], "batches": engine.state.iteration,
                  "batch_size": engine.data_loader.batch_size, "num_workers": engine.data_loader.num_workers,
                  "torch_threads": torch.get_num_threads()}
        Path(out_path).write_text(json.dumps(record, indent=2) + "\n")

    evaluator.add_event_handler(Events.COMPLETED, completed)


# ------------------------------------------------------------------------------------------------------ the driver
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, required=True, help="trained polyp checkpoint (model.pt)")
    parser.add_argument("--data", type=Path, required=True, help="PraNet polyp dataset root (TrainDataset, TestDataset)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS), help="default: all")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every path, round-robin (median reported)")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the bundle's)")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, help="default: the bundle's (352 352)")
    parser.add_argument("--calib-count", type=int, default=16, help="int8 exports: calibration images")
    parser.add_argument("--accuracy-count", type=int, default=0,
                        help="openvino-int8: NNCF accuracy control on this many labelled training images (e.g. 64)")
    parser.add_argument("--reuse-exports", action="store_true", help="keep exports found in <out>/models")
    parser.add_argument("--out", type=Path, default=OUTPUT / "folder_inference")


def make_exports(args, models: Path) -> None:
    """Export what the paths need with ``python -m transfuse_monai.export`` (the model.pt beside them serves the
    PyTorch paths)."""
    models.mkdir(parents=True, exist_ok=True)
    if not args.reuse_exports or not (models / "model.pt").is_file():
        shutil.copyfile(args.ckpt, models / "model.pt")
    formats = sorted({EXPORTS[p][0] for p in args.paths if p in EXPORTS
                      and not (args.reuse_exports and (models / EXPORTS[p][1]).is_file())})
    if not formats:
        return
    cmd = [sys.executable, "-m", "transfuse_monai.export", str(REPO / "bundles" / "polyp"), "--formats", *formats,
           "--ckpt", str(models / "model.pt"), "--output_dir", str(models), "--calib_dir", str(args.data),
           "--calib_count", str(args.calib_count), "--accuracy_count", str(args.accuracy_count)]
    if args.image_size:
        cmd += ["--image_size", *map(str, args.image_size)]
    seconds = run_checked(cmd, args.out / "logs" / "export.log")
    print(f"exported {', '.join(formats)} in {seconds:.0f} s", flush=True)


def link_inputs(data: Path, folder: Path) -> int:
    """One folder of symbolic links to the test images of every set (``<set>_<name>``); returns their number."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    n = 0
    for name in TEST_SETS:
        images = data / "TestDataset" / name / "images"
        if not images.is_dir():
            raise SystemExit(f"'{images}' is missing: --data must be the PraNet root holding TestDataset/{name}/")
        for src in sorted(images.iterdir()):
            (folder / f"{name}_{src.name}").symlink_to(src.resolve())
            n += 1
    return n


def run(args: argparse.Namespace) -> None:
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if not args.ckpt.is_file():
        raise SystemExit(f"checkpoint '{args.ckpt}' not found")
    out = args.out.resolve()
    args.out = out
    models, inputs = out / "models", out / "inputs"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    make_exports(args, models)
    n = link_inputs(args.data, inputs)
    print(f"{n} test images linked in {rel(inputs)}", flush=True)
    timing_cfg = out / "timing.json"
    records: dict[str, list[dict]] = {p: [] for p in args.paths}
    commands = {}
    for r in range(args.rounds):
        order = args.paths[r % len(args.paths):] + args.paths[: r % len(args.paths)]
        for path in order:
            layers, overrides = PATHS[path]
            record_file = out / "logs" / f"{path}_round{r}.json"
            timing_cfg.write_text(json.dumps({
                "folder_timing_imports": ["$from benchmarks.folder_inference import attach_timers"],
                "+initialize": [f"$attach_timers(@evaluator, {str(record_file)!r})"],
            }, indent=2) + "\n")
            masks = out / "masks" / path
            if masks.exists():
                shutil.rmtree(masks)
            extra = [o.format(models=models) for o in overrides]
            if args.num_workers is not None:
                extra += ["--num_workers", str(args.num_workers)]
            if args.image_size:
                extra += ["--image_size", json.dumps(list(args.image_size))]
            cmd = bundle_command("inference", [CONFIGS / "inference.json", *(CONFIGS / f for f in layers),
                                               timing_cfg], "--input_dir", str(inputs), "--output_dir", str(masks),
                                 "--ckpt_dir", str(models), *extra)
            commands[path] = shown(cmd)
            env_log = out / "logs" / f"{path}_round{r}.log"
            wall = run_checked(cmd, env_log)
            rec = json.loads(record_file.read_text())
            written = len(list(masks.glob("*.png")))
            if written != n or rec["images"] != n:
                raise SystemExit(f"{path}: {rec['images']} images segmented and {written} masks written for {n} "
                                 f"images (log: {env_log})")
            log_lines = env_log.read_text().splitlines()

            def logged(marker: str) -> str | None:
                return next((line.split(marker, 1)[1].strip().rstrip(".") for line in log_lines if marker in line),
                            None)

            rec.update(process_s=wall, runtime=logged("Inference runtime: "), precision=logged("Precision on "),
                       openvino=logged("compiled for "))
            records[path].append(rec)
            print(f"round {r + 1}/{args.rounds} {path}: {n / rec['loop_s']:.2f} images/s in the loop, "
                  f"{n / wall:.2f} images/s with start-up", flush=True)

    summary = {}
    for path, recs in records.items():
        med = sorted(recs, key=lambda rec: rec["loop_s"])[len(recs) // 2]
        summary[path] = {**med, "loop_images_per_s": n / med["loop_s"], "process_images_per_s": n / med["process_s"],
                         "startup_s": med["process_s"] - med["loop_s"],
                         "loop_s_all_rounds": [rec["loop_s"] for rec in recs]}
    base = summary.get("fp32")
    rows = []
    for path, s in summary.items():
        loop = s["loop_s"]
        rows.append([
            path, str(s["batch_size"]), f"{s['loop_images_per_s']:.2f}",
            f"{s['loop_images_per_s'] / base['loop_images_per_s']:.2f}x" if base else "n/a",
            f"{s['process_images_per_s']:.2f}", f"{s['startup_s']:.1f}",
            f"{1000 * s['data_wait_s'] / n:.0f} ({100 * s['data_wait_s'] / loop:.0f}%)",
            f"{1000 * s['network_s'] / n:.0f} ({100 * s['network_s'] / loop:.0f}%)",
            f"{1000 * s['post_s'] / n:.0f} ({100 * s['post_s'] / loop:.0f}%)",
            "; ".join(x for x in (s["runtime"], s["openvino"] or s["precision"]) if x),
        ])
    workers = next(iter(summary.values()))["num_workers"]
    report = "\n".join([
        f"Folder inference of the polyp bundle over {n} real test images ({' + '.join(TEST_SETS)}), checkpoint "
        f"{args.ckpt}; host {cpu_isa()}, {next(iter(summary.values()))['torch_threads']} threads, {workers} "
        f"DataLoader workers, load {loadavg()} at the end; median of {args.rounds} round(s).", "",
        *md_table(["path", "batch", "images/s (loop)", "vs fp32", "images/s (process)", "start-up s",
                   "data wait ms/image", "network ms/image", "post-processing + writing ms/image",
                   "runtime; precision (as logged)"], rows, align="lrrrrrrrrl"),
        "", "Commands (from the repository root):", "", *(f"    {c}" for c in commands.values()), ""])
    print("\n" + report)
    write_results(out, report, {"settings": {k: str(v) for k, v in vars(args).items()}, "images": n,
                                "results": summary, "commands": commands})

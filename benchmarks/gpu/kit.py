# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The GPU run kit's stages and deadlines (started by ``bash benchmarks/gpu/run.sh --out DIR``, which installs the
carried wheels first; see ``benchmarks/gpu/README.md``).

Stages, each a ``python -m benchmarks`` subprocess with its own deadline, in this order:

1. ``models``: ``python -m benchmarks models`` on CUDA at 352x352: batch-1 latency (FPS) and batch-16 throughput of
   TransFuse-S/L/L*, the authors' TransFuse_S, PraNet and HarDNet-MSEG (when ``fetch_peers.sh`` fetched their code)
   and the MONAI peers, on the fp32 / auto / channels-last / bf16 / fp16 / CUDA-graph paths, each with its parity check
   against fp32 eager, FLOPs (``FlopCounterMode``) and the fraction of the GPU's peak FLOP/s (:data:`PEAK_TFLOPS`).
   Its ``--time-limit`` stops starting new measurements at the stage's deadline; the rest is reported as skipped.
2. ``compile``: the same for TransFuse-S with ``torch.compile`` (channels-last bf16), if time is left.
3. ``train_transfuse_s``: ``python -m benchmarks budget --bundle polyp``: the polyp bundle's training recipe (352x352,
   multi-scale 0.75/1/1.25 cycled, batch 16, Adam 1e-4, from scratch) with a wall-clock loop budget (Ignite
   ``TimeLimit``) sized so that the stage ends by its deadline, then the bundle's evaluation on Kvasir and
   CVC-ClinicDB: images/s, data-wait share of the training loop, peak GPU memory, best validation Dice and the test
   metrics.
4. ``train_flexunet_resnet34``: the same recipe for MONAI's FlexibleUNet (ResNet-34) at the same loop budget, if the
   time left allows it (estimated from stage 3's start-up and evaluation time).

A stage that fails or overruns is killed (its whole process group), its error recorded, and the next one runs;
``results.json`` and ``results.md`` are rewritten after every stage, so a run cut short still leaves a report.
``--smoke`` runs the same stages on the CPU with tiny sizes on generated data (seconds per stage; ``compile`` is
recorded as skipped: inductor needs minutes on a CPU; the two training stages run side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import run_logged, shown, versions
from benchmarks.gpu.report import write

HERE = Path(__file__).resolve().parent

#: dense peak TFLOP/s by device-name fragment (first match wins): ``fp32`` without tensor cores, ``half`` bf16/fp16
#: tensor cores; vendor datasheets (H100/H200 SXM, H100 NVL/PCIe, A100). cuDNN convolutions in "fp32" use TF32 tensor
#: cores by default (``torch.backends.cudnn.allow_tf32``), so fp32 fractions above 100% of the fp32 peak are possible.
PEAK_TFLOPS = (
    ("H200", {"fp32": 67.0, "half": 989.0}),
    ("H100 NVL", {"fp32": 60.0, "half": 835.0}),
    ("H100 PCIe", {"fp32": 51.0, "half": 756.0}),
    ("H100", {"fp32": 67.0, "half": 989.0}),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("A100", {"fp32": 19.5, "half": 312.0}),
)
#: models of stage 1 in the order they are measured (the paper's comparisons first: the time limit cuts the tail);
#: the checkout models run only when their code was fetched
MODELS = ("transfuse_s", "authors_s", "pranet", "hardnet_mseg", "flexible_unet", "transfuse_l", "transfuse_lstar",
          "unet", "attention_unet", "swin_unetr")
PEER_CHECKOUTS = {"authors_s": ("--authors-repo", "TransFuse"), "pranet": ("--pranet-repo", "PraNet"),
                  "hardnet_mseg": ("--hardnet-repo", "HarDNet-MSEG")}
#: ``auto``: what the bundles' default ``--amp auto`` runs on the GPU (bf16 autocast on Ampere and later)
GPU_PATHS = ("eager", "auto", "channels_last", "bf16", "fp16", "channels_last+bf16", "channels_last+fp16", "cudagraphs",
             "channels_last+bf16+cudagraphs")
COMPILE_PATHS = ("eager", "channels_last+bf16+compile")
#: --smoke on a CPU: three paths that run there and three CUDA-only ones (recorded as not available)
SMOKE_PATHS = ("eager", "auto", "channels_last+bf16", "fp16", "cudagraphs", "channels_last+bf16+cudagraphs")
TRAIN_MODELS = {"train_transfuse_s": "transfuse_s", "train_flexunet_resnet34": "flexunet_resnet34"}
LEFT_OUT = ("TensorRT and onnxruntime-gpu: too large to travel with the kit (64 MiB limit); the `trt` path of "
            "`python -m benchmarks models` needs them, the ONNX Runtime path here is CPU-only")


def peak_for(name: str | None) -> dict | None:
    """The :data:`PEAK_TFLOPS` entry of a CUDA device name, or None."""
    for fragment, peak in PEAK_TFLOPS:
        if name and fragment.lower() in name.lower():
            return {"match": fragment, **peak}
    return None


# ------------------------------------------------------------------------------------------------------- stages
class Kit:
    """State of one kit run: the deadline, the results and their report."""

    def __init__(self, args) -> None:
        self.args, self.out = args, args.out
        self.deadline = args.start + args.total_s - args.margin_s
        self.results: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "stages": {}, "notes": []}
        self._save_lock = threading.Lock()  # --smoke runs its two training stages side by side

    def left(self) -> float:
        return self.deadline - time.time()

    def run(self, name: str, cmd: list[str], timeout: float) -> dict:
        """Run ``cmd`` from the repository root as stage ``name`` (log in ``logs/<name>.log``) with a hard timeout
        (the whole process group is killed); return the stage record."""
        print(f"\n=== {name} (timeout {timeout:.0f} s) ===\n$ {shown(cmd)}", flush=True)
        proc = run_logged(cmd, self.out / "logs" / f"{name}.log", timeout=max(1.0, timeout), new_session=True)
        status, error = "ok", None
        if proc.returncode is None:
            status, error = "timeout", f"killed after {timeout:.0f} s (stage deadline)"
        elif proc.returncode != 0:
            status, error = "failed", f"exit code {proc.returncode}"
        if error:
            error += ": " + " / ".join(t.strip()[:200] for t in proc.tail(3))
        print(f"  {status} in {proc.seconds:.0f} s" + (f": {error}" if error else ""), flush=True)
        return {"status": status, "seconds": round(proc.seconds, 1), "command": shown(cmd),
                "log": os.path.relpath(proc.log, self.out), "error": error}

    def skip(self, name: str, note: str) -> None:
        print(f"\n=== {name}: skipped ({note}) ===", flush=True)
        self.results["stages"][name] = {"status": "skipped", "note": note}
        self.save()

    def save(self) -> None:
        """Rewrite the report with the stages so far."""
        with self._save_lock:
            self.results["elapsed_s"] = round(time.time() - self.args.start, 1)
            write(self.results, self.out)


def environment(args) -> dict:
    """Versions, device and its FLOP/s peak."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "cpu_count": os.cpu_count(), "host": platform.node(), **versions("monai", "ignite", "timm", "onnxruntime")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    env["peak_tflops"] = peak_for(env.get("gpu"))
    return env


def stage_models(kit: Kit, name: str, paths: tuple[str, ...], models: list[str], budget_s: float) -> None:
    args = kit.args
    timeout = min(budget_s, kit.left())
    if timeout < (5 if args.smoke else 30):
        kit.skip(name, f"no time left ({kit.left():.0f} s before the deadline)")
        return
    out = kit.out / name
    cmd = [sys.executable, "-m", "benchmarks", "models", "--models", *models, "--paths", *paths, "--out", str(out)]
    peers = [a for m in models if m in PEER_CHECKOUTS
             for a in (PEER_CHECKOUTS[m][0], str(args.peers / PEER_CHECKOUTS[m][1]))]
    cmd += peers
    if args.smoke:
        cmd += ["--smoke", "--devices", "cpu"]
    else:
        peak = kit.results["env"].get("peak_tflops")
        cmd += ["--devices", "cuda", "--sizes", "352x352", "--batch", "16", "--warmup", "3", "--repeats", "10",
                "--throughput-iters", "3", "--compile-models", "all"]
        if peak:
            cmd += ["--peak-tflops", f"cuda.fp32={peak['fp32']}", f"cuda.half={peak['half']}"]
    # stop starting measurements early enough for the one in progress (a compilation: ~50 s) and the report
    reserve = 10 if args.smoke else 50 if name == "compile" else 25
    cmd += ["--time-limit", f"{max(1.0, timeout - reserve):.0f}"]
    if out.exists():
        shutil.rmtree(out)
    rec = kit.run(name, cmd, timeout)
    res = out / "results.json"
    if res.is_file():
        data = json.loads(res.read_text())
        rec["rows"] = data["results"]
        rec["device"] = data["settings"].get("cuda") or data["settings"].get("cpu")
        if data.get("partial"):
            rec["note"] = "partial: the stage was stopped before the model benchmark wrote its report"
        else:
            rec["report"] = os.path.relpath(out / "results.md", kit.out)
    kit.results["stages"][name] = rec
    kit.save()


def smoke_data(root: Path) -> Path:
    """A tiny generated polyp set in the PraNet layout (12 training pairs at 64x64, 2 test pairs per set at 48x80)."""
    from transfuse_monai.tasks import get_task

    if not (root / "TrainDataset").is_dir():
        get_task("polyp").make_sample(root, n_train=12, test_sets={"Kvasir": 2, "CVC-ClinicDB": 2}, size=(64, 64),
                                      test_sizes=(48, 80))
    return root


def stage_train(kit: Kit, name: str, loop_s: float, timeout: float) -> None:
    args = kit.args
    key = TRAIN_MODELS[name]
    out = kit.out / "train" / key
    cmd = [sys.executable, "-m", "benchmarks", "budget", "--bundle", "polyp", "--data", str(args.data), "--models", key,
           "--lr", "1e-4", "--budget-min", f"{loop_s / 60:.4f}", "--budget-stop", "validation",
           "--out", str(out)]
    if args.smoke:
        cmd += ["--size", "64", "--batch-size", "4", "--val-every", "1", "--num-workers", "0",
                "--multi-scale-mode", "random", "--limit-test", "2"]
    else:
        cmd += ["--size", "352", "--batch-size", "16", "--val-every", str(args.val_every), "--num-workers",
                str(args.num_workers), "--multi-scale-mode", "cycle"]
    if out.exists():
        shutil.rmtree(out)
    rec = kit.run(name, cmd, timeout)
    rec["loop_budget_s"] = round(loop_s, 1)
    res, state_path = out / "results.json", out / key / "eval" / "train_state.json"
    result = json.loads(res.read_text())["results"][0] if res.is_file() else None
    state = result["train_state"] if result else (json.loads(state_path.read_text()) if state_path.is_file() else None)
    if state:
        rec["metrics"] = training_metrics(state, result, args)
    kit.results["stages"][name] = rec
    kit.save()


def training_metrics(state: dict, result: dict | None, args) -> dict:
    """The figures of one training stage from the budget run's ``train_state.json`` (and its results, when the
    evaluation finished)."""
    iters, batches, n_train = state.get("iterations"), state.get("loader_batches"), state.get("n_train")
    wait, compute, loop = state.get("data_wait_seconds"), state.get("iteration_seconds"), state.get("loop_seconds")
    epochs = iters / batches if iters and batches else None
    images = epochs * n_train if epochs and n_train else None
    train_s = (wait or 0.0) + (compute or 0.0)
    scales = 3 if not args.smoke else 1  # "cycle" trains every batch at 3 scales
    m = {
        "iterations": iters, "epochs_completed": epochs, "n_train": n_train, "n_val": state.get("n_val"),
        "images_per_s": images / train_s if images and train_s else None,
        "image_scales_per_s": images * scales / train_s if images and train_s else None,
        "data_wait_share": wait / train_s if wait is not None and train_s else None,
        "loop_s": loop, "data_wait_s": wait, "iteration_s": compute,
        "validation_s": loop - train_s if loop and train_s else None,
        "cuda_peak_mem_mib": state.get("cuda_peak_mem_mib"), "parameters": state.get("parameters"),
        "best_val_dice": state.get("best_val_metric"), "best_val_round": state.get("best_val_round"),
        "loss_curve": state.get("loss_curve") or [], "val_dice_curve": (state.get("val_history") or {}).get(
            "val_mean_dice", []),
    }
    if result:
        m["test"] = result.get("test")
        m["train_process_s"], m["eval_process_s"] = result.get("train_process_seconds"), result.get(
            "eval_process_seconds")
    return m


# --------------------------------------------------------------------------------------------------------- main
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, generated data")
    parser.add_argument("--start", type=float, default=None, help="epoch seconds the run started (run.sh; default now)")
    parser.add_argument("--total-s", type=float, default=float(os.environ.get("KIT_TOTAL_S", 470)),
                        help="whole-run budget from --start (env KIT_TOTAL_S; default %(default)s)")
    parser.add_argument("--margin-s", type=float, default=float(os.environ.get("KIT_MARGIN_S", 10)),
                        help="kept free at the end for the report (env KIT_MARGIN_S)")
    parser.add_argument("--models-s", type=float, default=float(os.environ.get("KIT_MODELS_S", 95)),
                        help="stage 1 budget (env KIT_MODELS_S)")
    parser.add_argument("--compile-s", type=float, default=float(os.environ.get("KIT_COMPILE_S", 75)),
                        help="stage 2 budget (env KIT_COMPILE_S; 0 skips it)")
    parser.add_argument("--train-overhead-s", type=float, default=float(os.environ.get("KIT_TRAIN_OVERHEAD_S", 60)),
                        help="start-up (imports, caching) + evaluation time reserved per training stage outside "
                        "its loop budget (env KIT_TRAIN_OVERHEAD_S); the second stage uses the first's measured one")
    parser.add_argument("--min-loop-s", type=float, default=30, help="skip a training stage with less loop budget")
    parser.add_argument("--val-every", type=int, default=40, help="training iterations between validations")
    parser.add_argument("--num-workers", type=int, default=min(8, max(0, (os.cpu_count() or 1) - 2)))
    parser.add_argument("--data", type=Path, default=HERE / "data" / "polyp",
                        help="packed data (python -m benchmarks gpu-pack-data)")
    parser.add_argument("--peers", type=Path, default=HERE / "peers", help="peer checkouts (fetch_peers.sh)")


def run(args: argparse.Namespace) -> None:
    """Run the stages within the deadlines; the report is rewritten after each."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the stages' clean-up
    args.start = args.start or time.time()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.total_s, args.models_s = max(args.total_s, 900), max(args.models_s, 300)  # a loaded CPU is slow
        args.data = smoke_data(args.out / "smoke_data")
    kit = Kit(args)
    kit.results["env"] = environment(args)
    kit.results["notes"].append(f"Left out: {LEFT_OUT}.")
    if not args.smoke and not kit.results["env"]["cuda_available"]:
        kit.results["notes"].append("No CUDA device: the GPU stages were not run (use --smoke on a CPU).")
        kit.save()
        raise SystemExit("run.sh: no CUDA device visible to torch; use --smoke for the CPU check")

    # 1-2. model benchmark (peers only when fetched)
    models = []
    for m in MODELS:
        if m in PEER_CHECKOUTS and not (args.peers / PEER_CHECKOUTS[m][1] / "lib").is_dir():
            kit.results["notes"].append(f"{m}: skipped, no checkout in {args.peers / PEER_CHECKOUTS[m][1]} "
                                        "(run benchmarks/gpu/fetch_peers.sh where GitHub is reachable).")
            continue
        if args.smoke and m not in ("transfuse_s", "flexible_unet"):
            continue
        models.append(m)
    stage_models(kit, "models", SMOKE_PATHS if args.smoke else GPU_PATHS, models, args.models_s)
    if args.smoke:
        kit.skip("compile", "--smoke: inductor compiles for minutes on a CPU")
    elif args.compile_s > 0:
        stage_models(kit, "compile", COMPILE_PATHS, ["transfuse_s"], args.compile_s)

    # 3-4. training at equal loop budgets
    data_ok = (args.data / "MANIFEST.json").is_file() or args.smoke
    if not data_ok:
        for name in TRAIN_MODELS:
            kit.skip(name, f"no packed data in {args.data} (run python -m benchmarks gpu-pack-data, and carry the "
                     "folder)")
    else:
        first, second = TRAIN_MODELS
        if args.smoke:
            loop_s, timeout = 3.0, 300.0  # a few iterations and one validation: the code path, not a result
        else:
            per_stage = kit.left() / 2
            loop_s, timeout = per_stage - args.train_overhead_s, min(kit.left(), per_stage + 30)
        if loop_s < (1 if args.smoke else args.min_loop_s):
            kit.skip(first, f"loop budget {loop_s:.0f} s < --min-loop-s")
            kit.skip(second, "not run (first training stage skipped)")
        elif args.smoke:
            # two tiny runs, each mostly Python and MONAI start-up on one core: side by side on the two cores
            for name in TRAIN_MODELS:
                kit.results["stages"][name] = {"status": "running"}
            with ThreadPoolExecutor(len(TRAIN_MODELS)) as pool:
                list(pool.map(lambda name: stage_train(kit, name, loop_s, timeout), TRAIN_MODELS))
        else:
            stage_train(kit, first, loop_s, timeout)
            rec = kit.results["stages"][first]
            overhead = rec["seconds"] - (rec.get("metrics", {}).get("loop_s") or loop_s)
            needed = loop_s + overhead
            if needed <= kit.left():
                stage_train(kit, second, loop_s, kit.left())
            else:
                kit.skip(second, f"an equal {loop_s:.0f} s loop budget needs ~{needed:.0f} s (start-up and "
                         f"evaluation of the first stage: {overhead:.0f} s); {kit.left():.0f} s left")
    kit.save()
    print(f"\nwritten: {args.out / 'results.md'}, {args.out / 'results.json'} "
          f"(total {time.time() - args.start:.0f} s)", flush=True)

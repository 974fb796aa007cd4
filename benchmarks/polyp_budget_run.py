"""Real-data CPU budget run of the polyp bundle: TransFuse-S against MONAI's FlexibleUNet (ResNet-34), both from scratch.

Each model is trained with ``python -m monai.bundle run training`` on ``bundles/polyp/configs/train.json`` (the real
pipeline: datalist checks, cached preprocessing, multi-scale iteration, deep-supervision structure loss, gradient
clipping, validation and best-checkpoint saving) for the same wall-clock budget, then evaluated with
``bundles/polyp/configs/evaluate.json`` on the Kvasir and CVC-ClinicDB test sets at each mask's original size. This is
a benchmark, not a test: it needs the real data (``../shared/data/polyp``) and tens of minutes.

    python benchmarks/polyp_budget_run.py --data ../shared/data/polyp --size 128 --budget-min 20 \\
        --out benchmarks/output/polyp_budget

What the script adds to the bundle, through override config files it writes to ``<out>/configs/`` (the bundle's own
files are not touched):

* ``budget.json`` (training only): an Ignite ``TimeLimit`` handler created right after the trainer and attached to
  it (appended to the bundle's ``initialize`` list with MONAI's ``+`` merge key), so the clock covers the training
  loop including validation but not start-up and data caching; ``train#trainer#epoch_length`` so that validation
  (and best-checkpoint selection) happens every ``--val-every`` iterations; a MONAI ``MetricLogger`` appended to
  ``train#handlers``; and a ``finalize`` step that writes ``train_state.json`` (iterations, epochs, loop time, the
  validation curve) to the model's output folder.
* ``flexunet.json`` (training and evaluation of the baseline): replaces ``network_def`` with
  ``monai.networks.nets.FlexibleUNet(in_channels=3, out_channels=1, backbone="resnet34", pretrained=False)``.
  The bundle's ``DeepSupervisionStructureLoss`` and ``SelectHeadd`` accept its single-head output as is.

``epochs`` is set so high that the time limit stops training; evaluation loads the best checkpoint by validation
Dice (``model.pt``). Results: a Markdown table on stdout and ``<out>/results.md``, everything in ``<out>/results.json``,
per-model logs in ``<out>/logs/``. ``benchmarks/output/`` is git-ignored; the data is read in place, never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_common import REPO, config_list, fmt_seconds, rel, run_logged, shown  # noqa: E402
from budget_common import fmt_value as _f  # noqa: E402
from budget_common import budget_override as common_budget_override, metric_history  # noqa: E402

CONFIGS = REPO / "bundles" / "polyp" / "configs"
TEST_SETS = ("Kvasir", "CVC-ClinicDB")
METRICS = ("dice", "iou", "s_measure", "mean_e_measure", "weighted_f_measure", "mae")

MODELS = {
    "transfuse_s": {
        "label": "TransFuse-S",
        "network_def": None,  # the bundle's own network (TransFuse, variant S)
    },
    "flexunet_resnet34": {
        "label": "FlexibleUNet (ResNet-34)",
        "network_def": {
            "_target_": "monai.networks.nets.FlexibleUNet",
            "in_channels": 3,
            "out_channels": 1,
            "backbone": "resnet34",
            "pretrained": False,
        },
    },
}


def budget_override(limit_sec: int, val_every: int | None, clock: str = "wall", cpu_limit_sec: int = 0) -> dict:
    """Training-only override: time limit, validation frequency, CPU accounting, metric history and a state report.

    ``clock="wall"``: Ignite's ``TimeLimit(limit_sec)`` stops training (wall clock). ``clock="cpu"``: training stops
    once the training process has used ``cpu_limit_sec`` seconds of CPU (all its threads, ``time.process_time``), which
    keeps the comparison fair when other work shares the cores. The CPU time of the loop is recorded either way.
    """
    stop = (
        "$@train#trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(limit_sec=@budget_limit_sec))"
        if clock == "wall" else
        "$@train#trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.terminate() "
        "if time.process_time() - e.state.budget_cpu_start > @budget_cpu_limit_sec else None)"
    )
    # TimeLimit has no attach() (MONAI's train_handlers need one), so it is added to the trainer directly, after
    # set_determinism and the trainer (data cached): its clock starts just before run()
    return common_budget_override(
        val_every,
        initialize=[
            "$@train#trainer.add_event_handler(Events.STARTED, "
            "lambda e: setattr(e.state, 'budget_cpu_start', time.process_time()))",
            "$@train#trainer.add_event_handler(Events.COMPLETED, "
            "lambda e: setattr(e.state, 'budget_cpu_seconds', time.process_time() - e.state.budget_cpu_start))",
            stop,
        ],
        state_fields={
            "epochs_started": "@train#trainer.state.epoch",
            "loop_cpu_seconds": "getattr(@train#trainer.state, 'budget_cpu_seconds', None)",
            "budget_clock": "@budget_clock",
            "budget_sec": "@budget_limit_sec",
            "budget_cpu_sec": "@budget_cpu_limit_sec",
            "best_val_dice": "@validate#evaluator.state.best_metric",
            "best_val_epoch": "@validate#evaluator.state.best_metric_epoch",
            "val_dice": metric_history("val_mean_dice"),
        },
        extra_imports=("$import time",),
        budget_clock=clock,
        budget_limit_sec=int(limit_sec),
        budget_cpu_limit_sec=int(cpu_limit_sec),
    )


def check_data(data: Path) -> None:
    problems = []
    if not data.is_dir():
        problems.append(f"'{data}' does not exist")
    else:
        for sub in ["TrainDataset", *(f"TestDataset/{s}" for s in TEST_SETS)]:
            for kind in ("images", "masks"):
                if not (data / sub / kind).is_dir():
                    problems.append(f"'{data / sub / kind}' is missing")
    if problems:
        raise SystemExit(
            "polyp data not found: " + "; ".join(problems) + ".\nPass --data <PraNet root> (holding TrainDataset/ and "
            "TestDataset/{Kvasir,CVC-ClinicDB}/, e.g. ../shared/data/polyp). Without it the bundle would silently "
            "train on generated demo data, which this benchmark refuses to do."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "polyp",
                        help="PraNet data root (default: ../shared/data/polyp next to the repository)")
    parser.add_argument("--size", type=int, default=128, help="square training/evaluation input size, multiple of 32")
    parser.add_argument("--budget-min", type=float, default=20.0, help="training budget per model (minutes)")
    parser.add_argument("--budget-clock", default="wall", choices=["wall", "cpu"],
                        help="wall: wall-clock limit (Ignite TimeLimit); cpu: CPU time of the training process, "
                        "budget-min x torch threads CPU-minutes (fair when other work shares the cores)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "output" / "polyp_budget")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=8, help="bundle default is 16; 8 gives twice the steps")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (bundle default 1e-4)")
    parser.add_argument("--multi-scale", type=float, nargs="+", default=[0.75, 1.0, 1.25])
    parser.add_argument("--multi-scale-mode", default="random", choices=["cycle", "random"],
                        help="random: one scale per batch (single-scale cost); cycle: every scale (3x the cost)")
    parser.add_argument("--val-every", type=int, default=40,
                        help="training iterations between validations (sets the trainer's epoch_length); "
                        "0: once per pass over the training data")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--save-checkpoints", action="store_true",
                        help="also write the resumable full-state checkpoints every epoch (off: pure budget I/O)")
    parser.add_argument("--eval-only", action="store_true", help="skip training; evaluate the existing model.pt files")
    parser.add_argument("--limit-train", type=int, default=0, help="smoke runs: use only the first N training pairs")
    parser.add_argument("--limit-test", type=int, default=0, help="smoke runs: use only the first N images per test set")
    args = parser.parse_args()

    if args.size % 32:
        parser.error("--size must be a multiple of 32 (TransFuse's strides, FlexibleUNet's 5 downsamplings)")
    data = args.data.resolve()
    check_data(data)
    out = args.out.resolve()
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    limit_sec = max(1, int(round(args.budget_min * 60)))

    budget_cfg = out / "configs" / "budget.json"
    threads = _torch_threads() or 1
    cpu_limit_sec = limit_sec * threads
    budget_cfg.write_text(json.dumps(
        budget_override(limit_sec, args.val_every, args.budget_clock, cpu_limit_sec), indent=2) + "\n")

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    common = [
        "--dataset_dir", rel(data),
        "--image_size", f"[{args.size},{args.size}]",
        "--pretrained", "false",
        "--num_workers", str(args.num_workers),
    ]
    extra_train, extra_test = [], []
    if args.limit_train:
        extra_train = ["--datalist",
                       f'$transfuse_monai.data.build_pranet_datalist(@data_root, "TrainDataset")[:{args.limit_train}]']
    if args.limit_test:
        extra_test = ["--test_datalist",
                      "$transfuse_monai.bundle.grouped_datalist({k: v[:%d] for k, v in "
                      "transfuse_monai.data.build_pranet_test_datalists(@data_root, @test_sets).items()})"
                      % args.limit_test]

    results, commands = [], []
    for key in args.models:
        spec = MODELS[key]
        model_dir = out / key
        ckpt_dir, eval_dir = model_dir / "models", model_dir / "eval"
        net_cfgs = []
        if spec["network_def"] is not None:
            net_cfg = out / "configs" / f"{key}.json"
            net_cfg.write_text(json.dumps({"network_def": spec["network_def"]}, indent=2) + "\n")
            net_cfgs = [net_cfg]
        dirs = ["--ckpt_dir", rel(ckpt_dir), "--output_dir", rel(eval_dir)]
        print(f"\n=== {spec['label']} ===", flush=True)

        if not args.eval_only:
            # a stale model.pt from an earlier run would be evaluated if this run never validated: start clean
            for d in (ckpt_dir, eval_dir):
                if d.exists():
                    shutil.rmtree(d)
            ckpt_dir.mkdir(parents=True)
            load_before = os.getloadavg()
            train_cmd = [
                sys.executable, "-m", "monai.bundle", "run", "training",
                "--config_file", config_list([CONFIGS / "train.json", *net_cfgs, budget_cfg]),
                *common, *dirs,
                "--epochs", "100000",
                "--batch_size", str(args.batch_size),
                "--learning_rate", str(args.lr),
                "--multi_scale", "[" + ",".join(str(s) for s in args.multi_scale) + "]",
                "--multi_scale_mode", args.multi_scale_mode,
                "--val_fraction", str(args.val_fraction),
                "--val_interval", "1",
                "--save_checkpoints", "true" if args.save_checkpoints else "false",
                *extra_train,
            ]
            commands.append(shown(train_cmd))
            train_wall = run_logged(train_cmd, out / "logs" / f"{key}_train.log", env)
            load = {"before": load_before, "after": os.getloadavg()}
        else:
            train_wall, load = None, None
        if not (ckpt_dir / "model.pt").is_file():
            raise SystemExit(f"{ckpt_dir / 'model.pt'} was not written: no validation round completed within the "
                             "budget; raise --budget-min or lower --val-every.")

        eval_cmd = [
            sys.executable, "-m", "monai.bundle", "run", "evaluating",
            "--config_file", config_list([CONFIGS / "train.json", CONFIGS / "evaluate.json", *net_cfgs]),
            *common, *dirs,
            "--test_sets", "[" + ",".join(json.dumps(s) for s in TEST_SETS) + "]",
            *extra_test,
        ]
        commands.append(shown(eval_cmd))
        eval_wall = run_logged(eval_cmd, out / "logs" / f"{key}_evaluate.log", env)

        state_path = eval_dir / "train_state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        summary = json.loads((eval_dir / "polyp_summary.json").read_text())
        iters, batches = state.get("iterations"), state.get("loader_batches")
        results.append({
            "key": key,
            "model": spec["label"],
            "parameters": state.get("parameters"),
            "image_size": [args.size, args.size],
            "iterations": iters,
            "epochs_completed": (iters / batches) if iters and batches else None,
            "validation_rounds": len(state.get("val_dice", [])),
            "best_val_dice": state.get("best_val_dice"),
            "best_val_round": state.get("best_val_epoch"),
            "train_loop_seconds": state.get("loop_seconds"),
            "train_loop_cpu_seconds": state.get("loop_cpu_seconds"),
            "train_process_seconds": train_wall,
            "eval_process_seconds": eval_wall,
            "load_average_1_5_15min": load,  # other work on the machine slows training: compare with care
            "train_state": state,
            "test": {s: summary.get(s) for s in TEST_SETS},
        })

    settings = {
        "data": str(data), "size": args.size, "budget_clock": args.budget_clock, "budget_sec": limit_sec,
        "budget_cpu_sec": cpu_limit_sec if args.budget_clock == "cpu" else None, "batch_size": args.batch_size,
        "learning_rate": args.lr, "multi_scale": args.multi_scale, "multi_scale_mode": args.multi_scale_mode,
        "val_every_iterations": args.val_every, "val_fraction": args.val_fraction, "num_workers": args.num_workers,
        "limit_train": args.limit_train, "limit_test": args.limit_test, "torch_threads": _torch_threads(),
        "cpu_count": os.cpu_count(),
    }
    table = results_table(results)
    details = metrics_table(results)
    report = (
        f"Polyp budget run: {args.size}x{args.size}, "
        + (f"{fmt_seconds(limit_sec)} (m:ss) wall clock" if args.budget_clock == "wall"
           else f"{fmt_seconds(cpu_limit_sec)} (m:ss) CPU time ({threads} threads)")
        + " of training per model, from "
        f"scratch, batch {args.batch_size}, multi-scale {args.multi_scale} ({args.multi_scale_mode}), validation "
        f"every {args.val_every or 'pass'} iterations.\n\n{table}\n\nAll polyp metrics (evaluate.json, original mask "
        f"size):\n\n{details}\n"
    )
    print("\n" + report)
    print("Commands:\n" + "\n".join(commands))
    (out / "results.md").write_text(report + "\nCommands:\n\n" + "\n".join(f"    {c}" for c in commands) + "\n")
    (out / "results.json").write_text(json.dumps(
        {"settings": settings, "commands": commands, "results": results}, indent=2) + "\n")
    print(f"\nwritten: {out / 'results.md'}, {out / 'results.json'}")


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:  # pragma: no cover
        return None


def results_table(results: list[dict]) -> str:
    lines = [
        "| model | parameters | image size | epochs completed (iterations) | training wall time (loop / process) "
        "| training CPU time (loop) | best val Dice | Kvasir mDice | Kvasir mIoU | CVC-ClinicDB mDice "
        "| CVC-ClinicDB mIoU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        kv, cvc = r["test"]["Kvasir"] or {}, r["test"]["CVC-ClinicDB"] or {}
        epochs = "n/a" if r["epochs_completed"] is None else f"{r['epochs_completed']:.2f} ({r['iterations']})"
        params = "n/a" if r["parameters"] is None else f"{r['parameters']:,}"
        lines.append(
            f"| {r['model']} | {params} | {r['image_size'][0]}x{r['image_size'][1]} | {epochs} | "
            f"{fmt_seconds(r['train_loop_seconds'])} / {fmt_seconds(r['train_process_seconds'])} | "
            f"{fmt_seconds(r.get('train_loop_cpu_seconds'))} | "
            f"{_f(r['best_val_dice'])} | {_f(kv.get('dice'))} | {_f(kv.get('iou'))} | "
            f"{_f(cvc.get('dice'))} | {_f(cvc.get('iou'))} |"
        )
    return "\n".join(lines)


def metrics_table(results: list[dict]) -> str:
    lines = ["| model | test set | n | " + " | ".join(METRICS) + " |", "|---|---|---|" + "---|" * len(METRICS)]
    for r in results:
        for s in TEST_SETS:
            v = r["test"][s] or {}
            lines.append(f"| {r['model']} | {s} | {int(v.get('n', 0))} | "
                         + " | ".join(_f(v.get(m)) for m in METRICS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

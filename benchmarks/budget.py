# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Real-data CPU budget run of a bundle: TransFuse-S against MONAI's FlexibleUNet (ResNet-34), both from scratch, for
the same training budget each, then evaluated on held-out images.

Each model is trained with ``python -m monai.bundle run training`` on the bundle's ``train.json`` (the real pipeline:
datalist checks, cached preprocessing, augmentation, deep-supervision structure loss, gradient clipping, validation
and best-checkpoint saving) and evaluated with its ``evaluate.json``:

* ``--bundle polyp``: on the Kvasir and CVC-ClinicDB test sets at each mask's original size (Dice, IoU, S-measure,
  E-measure, weighted F, MAE). Data: ``../shared/data/polyp`` (PraNet layout).
* ``--bundle isic2017``: on the 150 official validation images (Jaccard, Dice, pixel accuracy at the input size and at
  the original mask size), next to the paper's figures. The official test masks are not available here, so to keep
  the validation images unseen the best checkpoint is selected on a held-out part of the training split
  (``--holdout``, 10% by default; ``--holdout 0`` selects on the validation split itself). Data:
  ``../shared/data/isic2017`` (the official layout or ``{train,val}/{images,masks}``).

This is a benchmark, not a test: it needs the real data and tens of minutes.

    python -m benchmarks budget --bundle polyp --size 128 --budget-min 20
    python -m benchmarks budget --bundle isic2017 --budget-min 20                     # 96x128, both models
    python -m benchmarks budget --bundle isic2017 --budget-min 1 --models transfuse_s --limit-train 32 \\
        --limit-val 8 --val-every 2 --out /tmp/isic_budget_smoke                      # smoke run (minutes)
    python -m benchmarks budget --bundle polyp --dry-run        # write the override configs, print the commands

What the benchmark adds to the bundle, through override config files written to ``<out>/configs/`` (the bundle's own
files are not touched):

* ``budget.json`` (training only): a budget check attached to the trainer in the bundle's ``initialize`` list (MONAI's
  ``+`` merge key), so that the clock covers the training loop including validation but not start-up and data
  caching: Ignite's ``TimeLimit`` (``--budget-clock wall``), or a stop once the training process has used the budget
  times its torch threads of CPU time (``--budget-clock cpu``, fair when other work shares the cores); the trainer's
  ``epoch_length`` so that validation (and best-checkpoint selection) happens every ``--val-every`` iterations; a
  MONAI ``MetricLogger`` appended to the trainer's handlers; and a ``finalize`` step writing ``train_state.json``
  (iterations, loop wall and CPU time, the validation curve) to the model's output folder.
* ``flexunet_resnet34.json`` (training and evaluation of the baseline): replaces ``network_def`` with MONAI's
  ``FlexibleUNet(backbone="resnet34", pretrained=False)``; the bundles' deep-supervision loss accepts its single head.

``epochs`` is set so high that the budget stops training; evaluation loads the best checkpoint (``model.pt``). Results:
a Markdown table on stdout and in ``<out>/results.md``, everything in ``<out>/results.json``, logs in ``<out>/logs/``
(default ``benchmarks/output/<polyp|isic>_budget``, git-ignored). The data is read in place, never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from transfuse_monai.networks.nets import TABLE5_DESCRIPTIONS

from benchmarks.common import (
    OUTPUT,
    REPO,
    UsageError,
    bundle_command,
    fmt,
    fmt_seconds,
    loadavg,
    md_row,
    md_table,
    rel,
    run_checked,
    shared_data,
    shown,
    write_results,
)

# ---------------------------------------------------------------------------------------------------------------------
# Every bundle config id this benchmark reads or overrides, in one place: update here when the bundle configs change.
# ---------------------------------------------------------------------------------------------------------------------
ID = {
    # components referenced from the override configs (train.json)
    "trainer": "train#trainer", "evaluator": "validate#evaluator", "train_dataset": "train#dataset",
    "val_dataset": "validate#dataset", "train_loader": "train#dataloader", "train_handlers": "train#handlers",
    "network": "network", "network_def": "network_def", "task": "task", "initialize": "initialize",
    "finalize": "finalize", "data_root": "data_root", "fast_paths": "fast_paths",
    # overridden on the command line (train.json, evaluate.json)
    "dataset_dir": "dataset_dir", "output_dir": "output_dir", "ckpt_dir": "ckpt_dir", "epochs": "epochs",
    "image_size": "image_size", "pretrained": "pretrained", "num_workers": "num_workers", "seed": "seed",
    "batch_size": "batch_size", "learning_rate": "learning_rate", "val_interval": "val_interval",
    "save_checkpoints": "save_checkpoints", "amp": "amp", "ablation": "ablation",
    # polyp only: training subset before the validation split, multi-scale training, test sets
    "datalist": "datalist", "val_fraction": "val_fraction", "multi_scale": "multi_scale",
    "multi_scale_mode": "multi_scale_mode", "test_sets": "test_sets", "test_datalist": "test_datalist",
    # isic2017 only: explicit training / selection datalists, evaluated split (test_datalist above too)
    "train_datalist": "train_datalist", "val_datalist": "val_datalist", "eval_split": "eval_split",
}


def ref(key: str) -> str:
    """A config reference (``@train#trainer``) to the id of ``key``."""
    return "@" + ID[key]


def flag(key: str, value) -> list[str]:
    """A ``monai.bundle`` command-line override of the id of ``key``."""
    return ["--" + ID[key], str(value)]


#: the models a budget run can train: a label, a ``network_def`` replacing the bundle's (None: the bundle's own
#: TransFuse) and command-line overrides of the bundle (``flags``: config id -> value)
PEERS = {
    "transfuse_s": {"label": "TransFuse-S", "network_def": None},  # the bundle's own network (TransFuse, variant S)
    "flexunet_resnet34": {
        "label": "FlexibleUNet (ResNet-34)",
        "network_def": {"_target_": "monai.networks.nets.FlexibleUNet", "in_channels": f"$@{ID['task']}.in_channels",
                        "out_channels": f"$@{ID['task']}.out_channels", "backbone": "resnet34", "pretrained": False},
    },
    # the paper's Table 5 ablations of TransFuse-S (python -m benchmarks table5)
    **{f"ablation_{key}": {"label": f"{key}: {text}", "network_def": None, "flags": {"ablation": key}}
       for key, text in TABLE5_DESCRIPTIONS.items()},
}
#: TransFuse-S in the paper (ISIC 2017 test set, 192x256, ImageNet-pretrained backbones, 25 epochs on a GPU).
ISIC_PAPER = {"jaccard": 0.795, "dice": 0.872, "accuracy": 0.944}
POLYP_TEST_SETS = ("Kvasir", "CVC-ClinicDB")
POLYP_METRICS = ("dice", "iou", "s_measure", "mean_e_measure", "weighted_f_measure", "mae")
ISIC_METRICS = ("jaccard", "dice", "accuracy")


# --------------------------------------------------------------------------------------------------- per bundle
def check_polyp_data(data: Path) -> list[str]:
    if not data.is_dir():
        return [f"'{data}' does not exist"]
    subsets = ["TrainDataset", *(f"TestDataset/{s}" for s in POLYP_TEST_SETS)]
    return [f"'{data / sub / kind}' is missing" for sub in subsets for kind in ("images", "masks")
            if not (data / sub / kind).is_dir()]


def check_isic_data(data: Path) -> list[str]:
    from transfuse_monai.tasks import get_task

    problems = []
    for split in ("train", "val"):
        try:
            get_task("isic2017").datalist(data, split, validate=False)
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"no usable '{split}' split ({e})")
    return problems


def polyp_data_args(args) -> tuple[list[str], list[str]]:
    """Training and evaluation overrides of the polyp bundle (subset, multi-scale, validation split, test sets)."""
    train = [*flag("multi_scale", "[" + ",".join(str(s) for s in args.multi_scale) + "]"),
             *flag("multi_scale_mode", args.multi_scale_mode), *flag("val_fraction", args.val_fraction)]
    if args.limit_train:
        train += flag("datalist", f"${ref('task')}.datalist({ref('data_root')}, \"train\")[:{args.limit_train}]")
    test = flag("test_sets", "[" + ",".join(json.dumps(s) for s in POLYP_TEST_SETS) + "]")
    if args.limit_test:
        test += flag("test_datalist", f"$transfuse_monai.data.grouped_datalist({{k: v[:{args.limit_test}] for k, v in "
                     f"{ref('task')}.test_datalists({ref('data_root')}, {ref('test_sets')}).items()}})")
    return train, test


def isic_data_args(args) -> tuple[list[str], list[str]]:
    """Training and evaluation overrides of the ISIC 2017 bundle (selection hold-out, subsets, evaluated split)."""
    cut = f"[:{args.limit_train}]" if args.limit_train else ""
    cut_val = f"[:{args.limit_val}]" if args.limit_val else ""
    datalist = f"{ref('task')}.datalist({ref('data_root')}, \"{{}}\")"
    train = []
    if args.holdout:
        split = f"transfuse_monai.data.split_datalist({datalist.format('train')}, {args.holdout}, {ref('seed')})"
        train = [*flag("train_datalist", f"${split}[0]{cut}"), *flag("val_datalist", f"${split}[1]{cut_val}")]
    else:
        train += flag("train_datalist", f"${datalist.format('train')}{cut}") if cut else []
        train += flag("val_datalist", f"${datalist.format('val')}{cut_val}") if cut_val else []
    test = flag("eval_split", "val")
    if args.limit_val:
        test += flag("test_datalist", f"$transfuse_monai.data.grouped_datalist({{{ref('eval_split')}: "
                     f"{ref('task')}.datalist({ref('data_root')}, {ref('eval_split')})[:{args.limit_val}]}})")
    return train, test


def polyp_scores(eval_dir: Path) -> dict:
    summary = json.loads((eval_dir / "polyp_summary.json").read_text())
    return {"test": {s: summary.get(s) for s in POLYP_TEST_SETS}}


def isic_scores(eval_dir: Path) -> dict:
    read = lambda name: json.loads((eval_dir / f"isic2017_{name}_summary.json").read_text()).get("val")  # noqa: E731
    return {"val_model_res": read("model_res"), "val_original_res": read("original_res")}


def _row_head(r: dict) -> list[str]:
    """The model, parameter, epoch and training-time cells of a results row."""
    epochs = "n/a" if r["epochs_completed"] is None else f"{r['epochs_completed']:.2f} ({r['iterations']})"
    params = "n/a" if r["parameters"] is None else f"{r['parameters']:,}"
    return [r["model"], params, epochs,
            f"{fmt_seconds(r['train_loop_seconds'])} / {fmt_seconds(r['train_process_seconds'])}",
            fmt_seconds(r["train_loop_cpu_seconds"]), fmt(r["best_val_metric"], ".4f")]


def polyp_tables(results: list[dict], args) -> str:
    lines = md_table(
        ["model", "parameters", "epochs completed (iterations)", "training wall time (loop / process)",
         "training CPU time (loop)", "best val Dice", "Kvasir mDice", "Kvasir mIoU", "CVC-ClinicDB mDice",
         "CVC-ClinicDB mIoU"],
        [_row_head(r) + [fmt((r["test"][s] or {}).get(m), ".4f") for s in POLYP_TEST_SETS for m in ("dice", "iou")]
         for r in results])
    lines += ["", "All polyp metrics (evaluate.json, original mask size):", ""]
    lines += md_table(["model", "test set", "n", *POLYP_METRICS], [
        [r["model"], s, int((r["test"][s] or {}).get("n", 0))]
        + [fmt((r["test"][s] or {}).get(m), ".4f") for m in POLYP_METRICS]
        for r in results for s in POLYP_TEST_SETS])
    return "\n".join(lines)


def isic_tables(results: list[dict], args) -> str:
    res = f"{args.size[0]}x{args.size[1]}"
    lines = md_table(
        ["model", "parameters", "epochs (iterations)", "training time (loop / process)", "training CPU time (loop)",
         "best selection Jaccard", f"val Jaccard @{res}", f"val Dice @{res}", f"val accuracy @{res}",
         "val Jaccard @orig", "val Dice @orig", "val accuracy @orig"],
        [_row_head(r) + [fmt((r["val_model_res"] or {}).get(k), ".4f") for k in ISIC_METRICS]
         + [fmt((r["val_original_res"] or {}).get(k + "_orig"), ".4f") for k in ISIC_METRICS] for r in results])
    lines.append(md_row(["TransFuse-S, paper (test set, 192x256, ImageNet init, 25 epochs, GPU)", "26.2M", "25", "",
                         "", "", *(fmt(ISIC_PAPER[k], ".3f") for k in ISIC_METRICS), "", "", ""]))
    return "\n".join(lines)


def isic_setup_text(args) -> str:
    selection = (f"{args.holdout:.0%} of the training split held out" if args.holdout
                 else "the validation split itself (optimistic)")
    n = f"first {args.limit_val}" if args.limit_val else "150"
    return (f"checkpoint selected on {selection}; scored on the {n} official validation images (per-image means, "
            "prediction > 0.5)")


BUNDLES = {
    "polyp": {
        "title": "Polyp", "size": [128, 128], "val_every": 40, "out": "polyp_budget", "peers": list(PEERS),
        "check_data": check_polyp_data, "data_hint": "the PraNet root holding TrainDataset/ and "
        "TestDataset/{Kvasir,CVC-ClinicDB}/", "only": ("val_fraction", "multi_scale", "multi_scale_mode", "limit_test"),
        "val_metrics": ("val_mean_dice",), "data_args": polyp_data_args, "scores": polyp_scores,
        "tables": polyp_tables, "setup_text": lambda args: f"multi-scale {args.multi_scale} ({args.multi_scale_mode})",
    },
    "isic2017": {
        "title": "ISIC 2017", "size": [96, 128], "val_every": 50, "out": "isic_budget", "peers": list(PEERS),
        "check_data": check_isic_data, "data_hint": "the official layout or <root>/{train,val}/{images,masks}",
        "only": ("holdout", "limit_val"), "val_metrics": ("val_mean_jaccard", "val_mean_dice"),
        "data_args": isic_data_args, "scores": isic_scores, "tables": isic_tables, "setup_text": isic_setup_text,
    },
}


# ------------------------------------------------------------------------------------------------------ overrides
#: ``--budget-stop``: the trainer event at which the budget is checked. ``iteration``: stop as soon as it is spent
#: (the iterations since the last validation are then never validated); ``validation``: stop at the first validation
#: after it is spent (every trained iteration counts; overshoots by up to one validation period, --val-every)
STOP_EVENTS = {"iteration": "ITERATION_COMPLETED", "validation": "EPOCH_COMPLETED"}


def budget_override(limit_sec: int, val_every: int, clock: str, cpu_limit_sec: int, val_metrics,
                    stop_at: str = "iteration", max_iterations: int = 0) -> dict:
    """Training-only override: budget stop (and, with ``max_iterations``, a stop at the first validation at or after
    that many iterations), validation frequency, CPU accounting, metric history, state report."""
    on = f"{ref('trainer')}.add_event_handler"
    event = STOP_EVENTS[stop_at]
    stop = (f"${on}(Events.{event}, TimeLimit(limit_sec=@budget_limit_sec))" if clock == "wall" else
            f"${on}(Events.{event}, lambda e: e.terminate() "
            "if time.process_time() - e.state.budget_cpu_start > @budget_cpu_limit_sec else None)")
    history = "{%s}" % ", ".join(f"{m!r}: [[int(i), float(v)] for i, v in @budget_metric_logger.metrics.get({m!r}, [])]"
                                 for m in val_metrics)
    state = ref("trainer") + ".state"
    fields = {
        "iterations": f"{state}.iteration", "epoch_length": f"{state}.epoch_length", "epochs_started": f"{state}.epoch",
        "loader_batches": f"len({ref('train_loader')})", "n_train": f"len({ref('train_dataset')})",
        "n_val": f"len({ref('val_dataset')})", "loop_seconds": f"{state}.times.get('COMPLETED')",
        "loop_cpu_seconds": f"getattr({state}, 'budget_cpu_seconds', None)", "torch_threads": "torch.get_num_threads()",
        "parameters": f"sum(p.numel() for p in {ref('network')}.parameters())", "budget_clock": "@budget_clock",
        "precision": f"{ref('fast_paths')}.precision.reason", "amp": f"{ref('fast_paths')}.amp",
        "budget_sec": "@budget_limit_sec", "budget_cpu_sec": "@budget_cpu_limit_sec",
        "best_val_metric": f"{ref('evaluator')}.state.best_metric",
        "best_val_round": f"{ref('evaluator')}.state.best_metric_epoch", "val_history": history,
        "loss_first": "[float(l) for _, l in @budget_metric_logger.loss[:10]]",
        "loss_last": "[float(l) for _, l in @budget_metric_logger.loss[-10:]]",
        # training-loop accounting (GPU run kit): data wait (next() on the loader) and iteration compute time, the
        # loss curve (at most ~200 points) and the peak GPU memory of the process
        "data_wait_seconds": f"getattr({state}, 'budget_data_wait', None)",
        "iteration_seconds": f"getattr({state}, 'budget_iteration_seconds', None)",
        "loss_curve": "[[int(i), float(l)] for i, l in @budget_metric_logger.loss"
                      "[::max(1, len(@budget_metric_logger.loss) // 200)]]",
        "cuda_peak_mem_mib": "torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None",
    }
    record = "{" + ", ".join(f"{k!r}: {v}" for k, v in fields.items()) + "}"
    override = {
        # import statements anywhere in a config are evaluated before any expression (they bind the names below)
        "budget_imports": ["$import json", "$import pathlib", "$import time", "$from ignite.engine import Events",
                           "$from ignite.handlers import TimeLimit"],
        "budget_clock": clock, "budget_limit_sec": int(limit_sec), "budget_cpu_limit_sec": int(cpu_limit_sec),
        "budget_metric_logger": {"_target_": "MetricLogger", "evaluator": ref("evaluator")},
        "+" + ID["train_handlers"]: ["@budget_metric_logger"],
        # TimeLimit has no attach() (MONAI's train_handlers need one): added to the trainer directly, once the trainer
        # (and its cached data) exist, so its clock starts just before run()
        "+" + ID["initialize"]: [
            f"${on}(Events.STARTED, lambda e: setattr(e.state, 'budget_cpu_start', time.process_time()))",
            f"${on}(Events.COMPLETED, "
            "lambda e: setattr(e.state, 'budget_cpu_seconds', time.process_time() - e.state.budget_cpu_start))",
            stop,
            *([f"${on}(Events.EPOCH_COMPLETED, lambda e: e.terminate() "
               f"if e.state.iteration >= {int(max_iterations)} else None)"] if max_iterations else []),
            *loop_timers(on),
        ],
        "+" + ID["finalize"]: [
            f"$pathlib.Path({ref('output_dir')}).mkdir(parents=True, exist_ok=True)",
            f"$pathlib.Path({ref('output_dir')}, 'train_state.json').write_text(json.dumps({record}, indent=2))",
        ],
    }
    if val_every:
        override[ID["trainer"] + "#epoch_length"] = int(val_every)
    return override


def loop_timers(on: str) -> list[str]:
    """Config expressions attaching training-loop timers to the trainer (``on``: its ``add_event_handler``): the data
    wait (``GET_BATCH_STARTED`` to ``GET_BATCH_COMPLETED``, as ``python -m benchmarks training`` measures it) and the
    iteration time (``ITERATION_STARTED`` to ``ITERATION_COMPLETED``), summed over the run in the trainer's state."""
    def add(field: str, start: str) -> str:
        return (f"lambda e: setattr(e.state, {field!r}, getattr(e.state, {field!r}, 0.0) + time.perf_counter() "
                f"- e.state.{start})")

    return [
        f"${on}(Events.GET_BATCH_STARTED, lambda e: setattr(e.state, 'budget_batch_t0', time.perf_counter()))",
        f"${on}(Events.GET_BATCH_COMPLETED, {add('budget_data_wait', 'budget_batch_t0')})",
        f"${on}(Events.ITERATION_STARTED, lambda e: setattr(e.state, 'budget_iter_t0', time.perf_counter()))",
        f"${on}(Events.ITERATION_COMPLETED, {add('budget_iteration_seconds', 'budget_iter_t0')})",
    ]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------------------------ main
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, choices=list(BUNDLES))
    parser.add_argument("--data", type=Path, default=None, help="data root (default: ../shared/data/<bundle>)")
    parser.add_argument("--size", type=int, nargs="+", default=None, metavar="S",
                        help="input size H W (or one value for a square), multiples of 32 (default: polyp 128, "
                        "isic2017 96 128; the paper: 352 and 192 256)")
    parser.add_argument("--budget-min", type=float, default=20.0, help="training budget per model (minutes)")
    parser.add_argument("--budget-stop", default="iteration", choices=list(STOP_EVENTS),
                        help="iteration: stop as soon as the budget is spent; validation: at the first validation "
                        "after that (no trained iteration goes unvalidated; overshoots by up to --val-every "
                        "iterations)")
    parser.add_argument("--budget-clock", default="wall", choices=["wall", "cpu"],
                        help="wall: wall-clock limit (Ignite TimeLimit); cpu: CPU time of the training process, "
                        "budget-min x torch threads CPU-minutes (fair when other work shares the cores)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/output/<polyp|isic>_budget")
    parser.add_argument("--models", nargs="+", default=None, choices=list(PEERS), help="default: all")
    parser.add_argument("--batch-size", type=int, default=8, help="bundle default is 16; 8 gives twice the steps")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (bundle defaults 1e-4 polyp, 7e-5 "
                        "ISIC for fine-tuning ImageNet backbones; from scratch a little higher)")
    parser.add_argument("--val-every", type=int, default=None, help="training iterations between validations (the "
                        "trainer's epoch_length; default: polyp 40, isic2017 50); 0: once per pass over the data")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--amp", default="false", choices=["false", "true", "auto"],
                        help="training precision (the bundle's --amp): false = float32 (the bundle default), true = "
                        "mixed precision (bfloat16 autocast + channels-last on a CPU), auto = what the hardware runs "
                        "natively; evaluation always runs in float32, so models trained differently compare alike")
    parser.add_argument("--max-iterations", type=int, default=0,
                        help="also stop at the first validation at or after this many training iterations (equal-"
                        "iteration comparisons, e.g. bfloat16 against a float32 run's count); 0: budget only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-checkpoints", action="store_true",
                        help="also write the resumable full-state checkpoints every epoch (off: pure budget I/O)")
    parser.add_argument("--eval-only", action="store_true", help="skip training; evaluate the existing model.pt files")
    parser.add_argument("--dry-run", action="store_true",
                        help="write the override configs and print the commands, without running them")
    parser.add_argument("--limit-train", type=int, default=0, help="smoke runs: use only the first N training pairs")
    polyp = parser.add_argument_group("polyp only")
    polyp.add_argument("--val-fraction", type=float, default=None, help="validation share of the training set (0.1)")
    polyp.add_argument("--multi-scale", type=float, nargs="+", default=None, help="default 0.75 1.0 1.25")
    polyp.add_argument("--multi-scale-mode", default=None, choices=["cycle", "random"],
                       help="random (default): one scale per batch (single-scale cost); cycle: every scale (3x)")
    polyp.add_argument("--limit-test", type=int, default=None, help="smoke runs: first N images per test set only")
    isic = parser.add_argument_group("isic2017 only")
    isic.add_argument("--holdout", type=float, default=None,
                      help="fraction of the training split held out for checkpoint selection (default 0.1; 0: select "
                      "on val)")
    isic.add_argument("--limit-val", type=int, default=None,
                      help="smoke runs: first N validation images only (and N held-out selection images)")


def check_args(args: argparse.Namespace) -> None:
    """Check the options and fill the bundle's defaults; raises :class:`UsageError`."""
    spec = BUNDLES[args.bundle]
    bundle_only = {"val_fraction": "polyp", "multi_scale": "polyp", "multi_scale_mode": "polyp", "limit_test": "polyp",
                   "holdout": "isic2017", "limit_val": "isic2017"}
    for name, owner in bundle_only.items():
        if name not in spec["only"] and getattr(args, name) is not None:
            raise UsageError(f"--{name.replace('_', '-')} applies to --bundle {owner} only")
    defaults = {"val_fraction": 0.1, "multi_scale": [0.75, 1.0, 1.25], "multi_scale_mode": "random", "holdout": 0.1}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.size = list(spec["size"]) if args.size is None else args.size * 2 if len(args.size) == 1 else args.size
    if len(args.size) != 2 or any(s <= 0 or s % 32 for s in args.size):
        raise UsageError(f"--size takes 1 or 2 positive multiples of 32 (TransFuse's strides, FlexibleUNet's 5 "
                         f"downsamplings), got {args.size}")
    if not 0.0 <= args.holdout < 1.0:
        raise UsageError("--holdout must be in [0, 1)")
    args.val_every = spec["val_every"] if args.val_every is None else args.val_every
    args.models = args.models or spec["peers"]
    args.data = (args.data or shared_data(args.bundle)).resolve()
    args.out = (args.out or OUTPUT / spec["out"]).resolve()


def run(args: argparse.Namespace) -> None:
    """Train and evaluate each model for the budget (or, ``--dry-run``, only write and print what would run)."""
    check_args(args)
    spec, data, out = BUNDLES[args.bundle], args.data, args.out
    problems = spec["check_data"](data)
    if problems:
        raise SystemExit(f"{spec['title']} data not found in '{data}': " + "; ".join(problems) + f".\nPass --data "
                         f"<root> ({spec['data_hint']}). Without it the bundle would silently train on generated demo "
                         "data, which this benchmark refuses to do.")
    configs = REPO / "bundles" / args.bundle / "configs"
    for sub in ("configs", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    limit_sec = max(1, int(round(args.budget_min * 60)))
    threads = _torch_threads()
    cpu_limit_sec = limit_sec * threads
    budget_cfg = out / "configs" / "budget.json"
    budget_cfg.write_text(json.dumps(budget_override(limit_sec, args.val_every, args.budget_clock, cpu_limit_sec,
                                                     spec["val_metrics"], args.budget_stop, args.max_iterations),
                                     indent=2) + "\n")
    common = [*flag("dataset_dir", rel(data)), *flag("image_size", "[" + ",".join(map(str, args.size)) + "]"),
              *flag("pretrained", "false"), *flag("num_workers", args.num_workers), *flag("seed", args.seed)]
    train_data, eval_data = spec["data_args"](args)

    results, commands = [], []
    for key in args.models:
        peer = PEERS[key]
        ckpt_dir, eval_dir = out / key / "models", out / key / "eval"
        net_cfgs = []
        if peer["network_def"] is not None:
            net_cfgs = [out / "configs" / f"{key}.json"]
            net_cfgs[0].write_text(json.dumps({ID["network_def"]: peer["network_def"]}, indent=2) + "\n")
        dirs = [*flag("ckpt_dir", rel(ckpt_dir)), *flag("output_dir", rel(eval_dir))]
        dirs += [arg for key_, value in peer.get("flags", {}).items() for arg in flag(key_, value)]
        print(f"\n=== {peer['label']} ===", flush=True)
        train_cmd = bundle_command(
            "training", [configs / "train.json", *net_cfgs, budget_cfg], *common, *dirs,
            *flag("epochs", 100000), *flag("batch_size", args.batch_size), *flag("learning_rate", args.lr),
            *flag("val_interval", 1), *flag("save_checkpoints", str(args.save_checkpoints).lower()),
            *flag("amp", args.amp), *train_data,
        )
        eval_cmd = bundle_command("evaluating", [configs / "train.json", configs / "evaluate.json", *net_cfgs],
                                  *common, *dirs, *flag("amp", "false"), *eval_data)
        if args.dry_run:
            print("\n".join(f"$ {shown(c)}" for c in ([] if args.eval_only else [train_cmd]) + [eval_cmd]))
            continue
        train_wall, load = None, None
        if not args.eval_only:
            for d in (ckpt_dir, eval_dir):  # a stale model.pt would be evaluated if this run never validated
                if d.exists():
                    shutil.rmtree(d)
            ckpt_dir.mkdir(parents=True)
            load_before = loadavg()
            commands.append(shown(train_cmd))
            train_wall = run_checked(train_cmd, out / "logs" / f"{key}_train.log")
            load = {"before": load_before, "after": loadavg()}
        if not (ckpt_dir / "model.pt").is_file():
            raise SystemExit(f"{ckpt_dir / 'model.pt'} was not written: no validation round completed within the "
                             "budget; raise --budget-min or lower --val-every.")
        commands.append(shown(eval_cmd))
        eval_wall = run_checked(eval_cmd, out / "logs" / f"{key}_evaluate.log")

        state_path = eval_dir / "train_state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        iters, batches = state.get("iterations"), state.get("loader_batches")
        results.append({
            "key": key, "model": peer["label"], "parameters": state.get("parameters"), "image_size": args.size,
            "iterations": iters, "epochs_completed": (iters / batches) if iters and batches else None,
            "validation_rounds": len(state.get("val_history", {}).get(spec["val_metrics"][0], [])),
            "best_val_metric": state.get("best_val_metric"), "best_val_metric_name": spec["val_metrics"][0],
            "best_val_round": state.get("best_val_round"), "train_loop_seconds": state.get("loop_seconds"),
            "train_loop_cpu_seconds": state.get("loop_cpu_seconds"), "train_process_seconds": train_wall,
            "training_precision": state.get("precision"),
            "eval_process_seconds": eval_wall,
            "load_average_1_5_15min": load,  # other work on the machine slows training: compare with care
            "train_state": state, **spec["scores"](eval_dir),
        })
    if args.dry_run:
        for cfg in sorted((out / "configs").glob("*.json")):
            print(f"\n{rel(cfg)}:\n{cfg.read_text().rstrip()}")
        print(f"\noverride configs written to {out / 'configs'}; nothing was run (--dry-run)")
        return

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(budget_sec=limit_sec, budget_cpu_sec=cpu_limit_sec if args.budget_clock == "cpu" else None,
                    torch_threads=threads, cpu_count=os.cpu_count(), config_ids=ID)
    budget = (f"{fmt_seconds(limit_sec)} (m:ss) wall clock" if args.budget_clock == "wall"
              else f"{fmt_seconds(cpu_limit_sec)} (m:ss) CPU time ({threads} threads)")
    report = (
        f"{spec['title']} budget run: {args.size[0]}x{args.size[1]}, {budget} of training per model"
        f"{f' (or {args.max_iterations} iterations)' if args.max_iterations else ''}, from scratch on "
        f"CPU, batch {args.batch_size}, Adam {args.lr}, training precision amp={args.amp}"
        f"{' (' + results[0]['training_precision'] + ')' if results and results[0].get('training_precision') else ''}"
        f", validation every {args.val_every or 'pass'} iterations; "
        f"{spec['setup_text'](args)}.\n\n{spec['tables'](results, args)}\n"
    )
    print("\n" + report)
    print("Commands (from the repository root):\n" + "\n".join(commands) + "\n")
    write_results(out, report + "\nCommands (from the repository root):\n\n" + "\n".join(f"    {c}" for c in commands)
                  + "\n", {"settings": settings, "commands": commands, "results": results})

"""Real-data CPU budget run of the ISIC 2017 bundle: TransFuse-S (and optionally MONAI's FlexibleUNet with a ResNet-34
encoder as a baseline), from scratch, for a fixed wall-clock training budget each.

Each model is trained with ``python -m monai.bundle run training`` on ``bundles/isic2017/configs/train.json`` (the real
pipeline: datalist checks, cached preprocessing, rotation/shift/scale, flips and colour jitter, deep-supervision
structure loss, gradient clipping, validation and best-checkpoint saving by Jaccard) and evaluated with
``bundles/isic2017/configs/evaluate.json --eval_split val`` on the 150 official validation images: Jaccard, Dice and
pixel accuracy at the model's input size and at each mask's original size. This is a benchmark, not a test: it needs
the real data (``../shared/data/isic2017``, ``{train,val}/{images,masks}``) and tens of minutes.

    python benchmarks/isic_budget_run.py --budget-min 20                      # both models, 20 min each
    python benchmarks/isic_budget_run.py --budget-min 30 --models transfuse_s  # TransFuse-S only
    python benchmarks/isic_budget_run.py --budget-min 1 --models transfuse_s --limit-train 32 --limit-val 8 \\
        --val-every 2 --out /tmp/isic_budget_smoke                            # smoke run (minutes)

The official ISIC 2017 test masks are not available here, so the 150 validation images are the evaluation set. To
keep them unseen, the best checkpoint is selected on a held-out part of the training split (``--holdout``, 10% by
default, fixed seed) instead of on the validation split as the bundle does by default (``--holdout 0`` restores that,
at the price of selecting and scoring on the same images).

What the script adds to the bundle, through override files written to ``<out>/configs/`` (the bundle's own files are
not touched): ``budget.json`` attaches Ignite's ``TimeLimit`` to the trainer (its clock starts after start-up and data
caching, and covers validation), sets ``train#trainer#epoch_length`` so that validation and best-checkpoint selection
happen every ``--val-every`` iterations, appends MONAI's ``MetricLogger`` and writes ``train_state.json`` (iterations,
loop time, validation curve) when training ends; ``flexunet.json`` swaps ``network_def`` for the baseline. Results: a
Markdown table on stdout and in ``<out>/results.md``, everything in ``<out>/results.json``, logs in ``<out>/logs/``.
``benchmarks/output/`` is git-ignored; the data is read in place, never copied.
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

CONFIGS = REPO / "bundles" / "isic2017" / "configs"
METRICS = ("jaccard", "dice", "accuracy")
#: TransFuse-S in the paper (ISIC 2017 test set, 192x256, ImageNet-pretrained backbones, 25 epochs on a GPU).
PAPER = {"jaccard": 0.795, "dice": 0.872, "accuracy": 0.944}

MODELS = {
    "transfuse_s": {"label": "TransFuse-S", "network_def": None},  # the bundle's own network
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


def budget_override(limit_sec: int, val_every: int) -> dict:
    """Training-only override: time limit, validation frequency, metric history and a state report."""
    # TimeLimit has no attach() (MONAI's train_handlers need one), so it is added to the trainer directly, after the
    # trainer (and its cached data) exist: its clock starts just before run()
    return common_budget_override(
        val_every,
        initialize=["$@train#trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(limit_sec=@budget_limit_sec))"],
        state_fields={
            "best_val_jaccard": "@validate#evaluator.state.best_metric",
            "best_val_round": "@validate#evaluator.state.best_metric_epoch",
            "val_jaccard": metric_history("val_mean_jaccard"),
            "val_dice": metric_history("val_mean_dice"),
        },
        budget_limit_sec=int(limit_sec),
    )


def check_data(data: Path) -> None:
    """Refuse to run without the real data: the bundle would otherwise train on a generated demo sample."""
    from transfuse_monai.data import ISIC2017_SPLITS

    problems = []
    for split in ("train", "val"):
        official = data / ISIC2017_SPLITS[split][0]
        plain = [data / split / kind for kind in ("images", "masks")]
        if not official.is_dir() and not all(p.is_dir() for p in plain):
            problems.append(f"no '{split}' split ('{official.name}/' or '{split}/{{images,masks}}/')")
    if problems:
        raise SystemExit(
            f"ISIC 2017 data not found in '{data}': " + "; ".join(problems) + ". Pass --data <root> (the official "
            "layout or <root>/{train,val}/{images,masks}, e.g. ../shared/data/isic2017)."
        )


def results_table(results: list[dict], size: tuple[int, int]) -> str:
    res = f"{size[0]}x{size[1]}"
    lines = [
        "| model | parameters | epochs (iterations) | training time (loop / process) | best selection Jaccard "
        f"| val Jaccard @{res} | val Dice @{res} | val accuracy @{res} "
        "| val Jaccard @orig | val Dice @orig | val accuracy @orig |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m, o = r["val_model_res"] or {}, r["val_original_res"] or {}
        epochs = "n/a" if r["epochs_completed"] is None else f"{r['epochs_completed']:.2f} ({r['iterations']})"
        params = "n/a" if r["parameters"] is None else f"{r['parameters']:,}"
        lines.append(
            f"| {r['model']} | {params} | {epochs} | {fmt_seconds(r['train_loop_seconds'])} / "
            f"{fmt_seconds(r['train_process_seconds'])} | {_f(r['best_selection_jaccard'])} | "
            + " | ".join(_f(m.get(k)) for k in METRICS) + " | "
            + " | ".join(_f(o.get(k + "_orig")) for k in METRICS) + " |"
        )
    lines.append(
        "| TransFuse-S, paper (test set, 192x256, ImageNet init, 25 epochs, GPU) | 26.2M | 25 | | | "
        + " | ".join(_f(PAPER[k], 3) for k in METRICS) + " | | | |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "isic2017",
                        help="ISIC 2017 root (default: ../shared/data/isic2017 next to the repository)")
    parser.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"),
                        help="training/evaluation input size, multiples of 32 (paper: 192 256)")
    parser.add_argument("--budget-min", type=float, default=20.0, help="training wall-clock budget per model (minutes)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "output" / "isic_budget")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=8, help="bundle default 16; 8 gives twice the steps")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (bundle default 7e-5, fine-tuning "
                        "ImageNet backbones; from scratch a little higher)")
    parser.add_argument("--val-every", type=int, default=50,
                        help="training iterations between validations (the trainer's epoch_length); 0: once per pass")
    parser.add_argument("--holdout", type=float, default=0.1,
                        help="fraction of the training split held out for checkpoint selection (0: select on val)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-only", action="store_true", help="skip training; evaluate the existing model.pt files")
    parser.add_argument("--limit-train", type=int, default=0, help="smoke runs: first N training pairs only")
    parser.add_argument("--limit-val", type=int, default=0,
                        help="smoke runs: first N validation images only (and N held-out selection images)")
    args = parser.parse_args()

    if any(s % 32 for s in args.size):
        parser.error("--size must be multiples of 32 (TransFuse needs 16, FlexibleUNet's 5 downsamplings 32)")
    if not 0.0 <= args.holdout < 1.0:
        parser.error("--holdout must be in [0, 1)")
    data = args.data.resolve()
    check_data(data)
    out = args.out.resolve()
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    limit_sec = max(1, int(round(args.budget_min * 60)))
    budget_cfg = out / "configs" / "budget.json"
    budget_cfg.write_text(json.dumps(budget_override(limit_sec, args.val_every), indent=2) + "\n")

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    size = "[" + ",".join(str(s) for s in args.size) + "]"
    common = ["--dataset_dir", rel(data), "--image_size", size, "--pretrained", "false",
              "--num_workers", str(args.num_workers), "--seed", str(args.seed)]
    cut = f"[:{args.limit_train}]" if args.limit_train else ""
    cut_val = f"[:{args.limit_val}]" if args.limit_val else ""
    extra_train = []
    if args.holdout:
        split = (f"transfuse_monai.data.split_datalist(transfuse_monai.data.build_isic2017_datalist(@data_root, "
                 f"'train'), {args.holdout}, @seed)")
        extra_train = ["--train_datalist", f"${split}[0]{cut}", "--val_datalist", f"${split}[1]{cut_val}"]
    else:
        build = "$transfuse_monai.data.build_isic2017_datalist(@data_root, '{}')"
        if cut:
            extra_train += ["--train_datalist", build.format("train") + cut]
        if cut_val:
            extra_train += ["--val_datalist", build.format("val") + cut_val]
    extra_eval = []
    if args.limit_val:
        extra_eval = ["--eval_datalist", "$transfuse_monai.bundle.grouped_datalist({@eval_split: "
                      f"transfuse_monai.data.build_isic2017_datalist(@data_root, @eval_split)[:{args.limit_val}]}})"]

    results, commands = [], []
    for key in args.models:
        spec = MODELS[key]
        ckpt_dir, eval_dir = out / key / "models", out / key / "eval"
        net_cfgs = []
        if spec["network_def"] is not None:
            net_cfg = out / "configs" / f"{key}.json"
            net_cfg.write_text(json.dumps({"network_def": spec["network_def"]}, indent=2) + "\n")
            net_cfgs = [net_cfg]
        dirs = ["--ckpt_dir", rel(ckpt_dir), "--output_dir", rel(eval_dir)]
        print(f"\n=== {spec['label']} ===", flush=True)

        train_wall = None
        if not args.eval_only:
            for d in (ckpt_dir, eval_dir):  # a stale model.pt would be evaluated if this run never validated
                if d.exists():
                    shutil.rmtree(d)
            ckpt_dir.mkdir(parents=True)
            train_cmd = [
                sys.executable, "-m", "monai.bundle", "run", "training",
                "--config_file", config_list([CONFIGS / "train.json", *net_cfgs, budget_cfg]),
                *common, *dirs, "--epochs", "100000", "--batch_size", str(args.batch_size),
                "--learning_rate", str(args.lr), "--val_interval", "1", "--save_checkpoints", "false", *extra_train,
            ]
            commands.append(shown(train_cmd))
            train_wall = run_logged(train_cmd, out / "logs" / f"{key}_train.log", env)
        if not (ckpt_dir / "model.pt").is_file():
            raise SystemExit(f"{ckpt_dir / 'model.pt'} was not written: no validation round completed within the "
                             "budget; raise --budget-min or lower --val-every.")

        eval_cmd = [
            sys.executable, "-m", "monai.bundle", "run", "evaluating",
            "--config_file", config_list([CONFIGS / "train.json", CONFIGS / "evaluate.json", *net_cfgs]),
            *common, *dirs, "--eval_split", "val", *extra_eval,
        ]
        commands.append(shown(eval_cmd))
        eval_wall = run_logged(eval_cmd, out / "logs" / f"{key}_evaluate.log", env)

        state_path = eval_dir / "train_state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        model_res = json.loads((eval_dir / "isic2017_model_res_summary.json").read_text()).get("val")
        original_res = json.loads((eval_dir / "isic2017_original_res_summary.json").read_text()).get("val")
        iters, batches = state.get("iterations"), state.get("loader_batches")
        results.append({
            "key": key,
            "model": spec["label"],
            "parameters": state.get("parameters"),
            "image_size": args.size,
            "iterations": iters,
            "epochs_completed": (iters / batches) if iters and batches else None,
            "validation_rounds": len(state.get("val_jaccard", [])),
            "best_selection_jaccard": state.get("best_val_jaccard"),
            "train_loop_seconds": state.get("loop_seconds"),
            "train_process_seconds": train_wall,
            "eval_process_seconds": eval_wall,
            "load_average_1_5_15min": os.getloadavg(),  # other work on the machine slows training
            "train_state": state,
            "val_model_res": model_res,
            "val_original_res": original_res,
        })

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(budget_sec=limit_sec, cpu_count=os.cpu_count(), data=str(data))
    selection = (f"{args.holdout:.0%} of the training split held out" if args.holdout
                 else "the validation split itself (optimistic)")
    report = (
        f"ISIC 2017 budget run: {args.size[0]}x{args.size[1]}, {fmt_seconds(limit_sec)} (m:ss) wall clock of training "
        f"per model, from scratch on CPU, batch {args.batch_size}, Adam {args.lr}, validation every "
        f"{args.val_every or 'pass'} iterations; checkpoint selected on {selection}; scored on the "
        f"{'first %d' % args.limit_val if args.limit_val else '150'} official validation images (per-image means, "
        f"prediction > 0.5).\n\n{results_table(results, tuple(args.size))}\n"
    )
    print("\n" + report)
    print("Commands (from the repository root):\n" + "\n".join(commands))
    (out / "results.md").write_text(report + "\nCommands (from the repository root):\n\n"
                                    + "\n".join(f"    {c}" for c in commands) + "\n")
    (out / "results.json").write_text(json.dumps(
        {"settings": settings, "commands": commands, "results": results}, indent=2) + "\n")
    print(f"\nwritten: {out / 'results.md'}, {out / 'results.json'}")


if __name__ == "__main__":
    main()

# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""TransFuse-S against nnU-Net's default 2D U-Net, both trained and evaluated by nnU-Net v2 itself.

The same dataset, plans, pre-processing, fold (0 of nnU-Net's 5), augmentation, loss (Dice + cross-entropy), batch
size and wall-clock budget for both; only the trainer differs:

* ``nnUNetTrainer_budget``: nnU-Net's ``nnUNetTrainer`` and the U-Net it plans (SGD, momentum 0.99, lr 1e-2, its
  multi-scale deep supervision);
* ``nnUNetTrainerTransFuse_budget``: :class:`~transfuse_monai.nnunet.trainer.nnUNetTrainerTransFuse` (TransFuse-S,
  Adam at 1e-4, its three heads supervised), from scratch (no ImageNet weights: the U-Net has none either).

Both train for ``--budget`` seconds on this machine (``benchmarks/nnunet_trainers``: the polynomial learning-rate
decay follows the elapsed time, so each gets a whole schedule), then nnU-Net validates fold 0; the test images are
predicted with ``nnUNetv2_predict`` (nnU-Net's sliding window and mirroring) and scored with
``nnUNetv2_evaluate_folder``. Reported per network: Dice per class on fold 0's validation cases and on the test
images, seconds per case of ``nnUNetv2_predict`` (start-up included, ``--cases`` cases), parameters, and the
epochs and iterations the budget allowed.

Datasets (``--dataset``):

* ``prostate-sample``: generated MSD Task05-like volumes (T2 + ADC, PZ and TZ) in the MSD layout, converted by
  nnU-Net's own ``nnUNetv2_convert_MSD_dataset``; its test volumes are generated too, with labels.
* ``polyp``: the PraNet polyp data (``--data-root``, default ``../shared/data/polyp``) converted by
  ``python -m transfuse_monai.nnunet convert`` (resized to ``--size``); the test images are those of
  ``--test-sets`` (default Kvasir and CVC-ClinicDB, 162 images).

    python -m benchmarks nnunet --dataset prostate-sample --budget 300
    python -m benchmarks nnunet --dataset polyp --budget 1200 --size 256 256 --batch-size 4

Results: a Markdown table on stdout and in ``<out>/nnunet_<dataset>.md``, everything in ``<out>/nnunet_<dataset>.json``
(default ``benchmarks/output/nnunet``, git-ignored); nnU-Net's folders stay under ``<out>/<dataset>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from benchmarks.common import REPO, UsageError, fmt, md_table, rel, run_checked, shared_data, write_results

TRAINERS = {"nnU-Net 2D U-Net": "nnUNetTrainer_budget", "TransFuse-S": "nnUNetTrainerTransFuse_budget"}
CONFIGURATION = "2d_bench"
DATASET_IDS = {"prostate-sample": 905, "polyp": 906}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=sorted(DATASET_IDS), default="prostate-sample")
    parser.add_argument("--data-root", type=Path, help="polyp: the PraNet data (default ../shared/data/polyp)")
    parser.add_argument("--budget", type=float, default=300, help="training seconds per network (default 300)")
    parser.add_argument("--iterations", type=int, default=50, help="iterations per epoch (default 50)")
    parser.add_argument("--batch-size", type=int, default=4, help="batch size of both networks (default 4)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                        help="polyp: images resized to H x W by the conversion (default 256 256)")
    parser.add_argument("--test-sets", nargs="+", default=["Kvasir", "CVC-ClinicDB"], help="polyp: test sets")
    parser.add_argument("--cases", type=int, default=12, help="prostate-sample: generated training volumes")
    parser.add_argument("--processes", type=int, default=2, help="nnU-Net's pre-processing processes")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "output" / "nnunet")
    parser.add_argument("--fresh", action="store_true", help="delete this dataset's nnU-Net folders first")


def _nnunet_env(work: Path, budget: float, iterations: int) -> dict[str, str]:
    from transfuse_monai.nnunet import ext_trainer_value

    trainers = ext_trainer_value(str(REPO / "benchmarks" / "nnunet_trainers"))
    return {
        "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
        "nnUNet_results": str(work / "results"), "nnUNet_extTrainer": trainers,
        "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1",
        "NNUNET_BUDGET_SECONDS": str(budget), "NNUNET_BUDGET_ITERATIONS": str(iterations),
    }


def _bin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if found is None:
        raise UsageError(f"{name} not found: install nnU-Net (pip install -e .[nnunet]).")
    return found


def _prepare_prostate(work: Path, env: dict, args) -> tuple[str, Path, Path]:
    """MSD layout -> nnUNetv2_convert_MSD_dataset; test volumes with labels for scoring."""
    from transfuse_monai.tasks import get_task

    task = get_task("prostate")
    msd = work / "msd" / "Task05_Prostate"
    if not msd.is_dir():
        task.make_sample(msd, seed=0, n_train=args.cases, n_test=1, size=(96, 96, 12))
    test = work / "msd_test"
    if not test.is_dir():
        task.make_sample(test, seed=1, n_train=6, n_test=0, size=(96, 96, 12))
    dataset_id = DATASET_IDS["prostate-sample"]
    raw = work / "raw" / f"Dataset{dataset_id:03d}_Prostate"
    if not raw.is_dir():
        run_checked([_bin("nnUNetv2_convert_MSD_dataset"), "-i", str(msd), "-overwrite_id", str(dataset_id)],
                    work / "logs" / "convert.log", env)
    images, labels = work / "test" / "images", work / "test" / "labels"
    if not labels.is_dir():  # the generated test volumes in nnU-Net's layout: one file per channel
        import nibabel as nib
        import numpy as np

        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for item in task.training_cases(test):
            case = Path(item["image"]).name.split(".")[0].replace("prostate", "test")
            nii = nib.load(item["image"])
            data = np.asanyarray(nii.dataobj)
            for c in range(data.shape[-1]):
                nib.save(nib.Nifti1Image(data[..., c], nii.affine), images / f"{case}_{c:04d}.nii.gz")
            shutil.copy(item["label"], labels / f"{case}.nii.gz")
    return f"Dataset{dataset_id:03d}_Prostate", images, labels


def _prepare_polyp(work: Path, env: dict, args) -> tuple[str, Path, Path]:
    from transfuse_monai.nnunet.convert import convert_task

    root = args.data_root or shared_data("polyp")
    if not (root / "TrainDataset").is_dir():
        raise UsageError(f"no PraNet polyp data at {root}: pass --data-root")
    dataset_id = DATASET_IDS["polyp"]
    name = f"Dataset{dataset_id:03d}_Polyp"
    raw = work / "raw" / name
    if not raw.is_dir():
        print(f"converting {rel(root)} (resized to {args.size[0]}x{args.size[1]}) ...", flush=True)
        convert_task("polyp", root, dataset_id, raw_root=work / "raw", size=args.size, progress=False)
    images, labels = work / "test" / "images", work / "test" / "labels"
    if not images.is_dir():
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for image in sorted((raw / "imagesTs").iterdir()):
            case = image.name[: -len("_0000.png")]
            if any(case.startswith(f"{s}_") for s in args.test_sets):
                shutil.copy(image, images / image.name)
                shutil.copy(raw / "labelsTs" / f"{case}.png", labels / f"{case}.png")
    return name, images, labels


def _add_configuration(work: Path, name: str, batch_size: int) -> None:
    """One configuration for both networks: nnU-Net's 2d plan with ``batch_size``; the U-Net ignores the
    ``transfuse`` entry (TransFuse from scratch)."""
    from transfuse_monai.nnunet.plans import add_transfuse_configuration

    add_transfuse_configuration(name, CONFIGURATION, {"pretrained": False}, batch_size=batch_size, replace=True,
                                preprocessed_root=work / "preprocessed")


def _parameters(work: Path, name: str) -> dict[str, int]:
    """Parameters of each trainer's network, built from the plans as nnU-Net builds it."""
    sys.path.insert(0, str(REPO / "benchmarks" / "nnunet_trainers"))
    from nnUNetTrainerBudget import nnUNetTrainer_budget, nnUNetTrainerTransFuse_budget
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = work / "preprocessed" / name
    plans = PlansManager(json.loads((folder / "nnUNetPlans.json").read_text()))
    dataset = json.loads((folder / "dataset.json").read_text())
    configuration = plans.get_configuration(CONFIGURATION)
    channels = determine_num_input_channels(plans, configuration, dataset)
    heads = plans.get_label_manager(dataset).num_segmentation_heads
    counts = {}
    for label, trainer in zip(TRAINERS, (nnUNetTrainer_budget, nnUNetTrainerTransFuse_budget)):
        network = trainer.build_network_architecture(plans, configuration, channels, heads, False)
        counts[label] = sum(p.numel() for p in network.parameters())
    return counts


def _dice(summary: Path, labels: dict[str, int]) -> dict[str, float]:
    data = json.loads(summary.read_text())
    out = {name: float(data["mean"][str(value)]["Dice"]) for name, value in labels.items()
           if value > 0 and str(value) in data["mean"]}
    out["mean"] = float(data["foreground_mean"]["Dice"])
    return out


def run(args: argparse.Namespace) -> None:
    work = args.out / args.dataset
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    env = _nnunet_env(work, args.budget, args.iterations)
    logs = work / "logs"
    prepare = _prepare_prostate if args.dataset == "prostate-sample" else _prepare_polyp
    name, test_images, test_labels = prepare(work, env, args)
    dataset_id = DATASET_IDS[args.dataset]
    if not (work / "preprocessed" / name / "nnUNetPlans_2d").is_dir():
        run_checked([_bin("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "2d", "-np",
                     str(args.processes)], logs / "plan_and_preprocess.log", env)
    _add_configuration(work, name, args.batch_size)
    dataset_json = json.loads((work / "raw" / name / "dataset.json").read_text())
    labels = {k: int(v) for k, v in dataset_json["labels"].items()}
    ending = dataset_json["file_ending"]
    cases = len([p for p in test_labels.iterdir() if p.name.endswith(ending)])
    parameters = _parameters(work, name)
    classes = [k for k in labels if labels[k] > 0]

    rows, data = [], {"dataset": args.dataset, "budget_seconds": args.budget, "batch_size": args.batch_size,
                      "iterations_per_epoch": args.iterations, "test_cases": cases, "networks": {}}
    for label, trainer in TRAINERS.items():
        model = work / "results" / name / f"{trainer}__nnUNetPlans__{CONFIGURATION}"
        fold = model / "fold_0"
        if not (fold / "checkpoint_final.pth").is_file():
            run_checked([_bin("nnUNetv2_train"), str(dataset_id), CONFIGURATION, "0", "-tr", trainer, "-device", "cpu"],
                        logs / f"train_{trainer}.log", env)
        predictions = work / "predictions" / trainer
        shutil.rmtree(predictions, ignore_errors=True)
        seconds = run_checked([_bin("nnUNetv2_predict"), "-i", str(test_images), "-o", str(predictions), "-d",
                               str(dataset_id), "-c", CONFIGURATION, "-tr", trainer, "-f", "0", "-device", "cpu",
                               "-npp", "1", "-nps", "1", "--disable_progress_bar"], logs / f"predict_{trainer}.log", env)
        run_checked([_bin("nnUNetv2_evaluate_folder"), str(test_labels), str(predictions), "-djfile",
                     str(model / "dataset.json"), "-pfile", str(model / "plans.json")],
                    logs / f"evaluate_{trainer}.log", env)
        training_log = sorted(fold.glob("training_log_*.txt"))[-1].read_text()
        spent = [ln for ln in training_log.splitlines() if "budget spent:" in ln]
        validation = _dice(fold / "validation" / "summary.json", labels)
        test = _dice(predictions / "summary.json", labels)
        data["networks"][label] = {"trainer": trainer, "parameters": parameters[label], "validation_dice": validation,
                                   "test_dice": test, "seconds_per_case": seconds / cases,
                                   "budget": spent[-1].split("budget spent: ")[-1].strip() if spent else None}
        rows.append([label, f"{parameters[label] / 1e6:.1f} M",
                     *(fmt(validation.get(c), ".3f") for c in classes), fmt(validation["mean"], ".3f"),
                     *(fmt(test.get(c), ".3f") for c in classes), fmt(test["mean"], ".3f"),
                     f"{seconds / cases:.2f}", data["networks"][label]["budget"] or "n/a"])
    header = ["network", "parameters", *(f"val Dice {c}" for c in classes), "val mean",
              *(f"test Dice {c}" for c in classes), "test mean", "s/case", "training in the budget"]
    lines = [f"# nnU-Net v2: TransFuse-S vs nnU-Net's 2D U-Net ({args.dataset})", "",
             f"Same plans, fold 0, batch size {args.batch_size}, {args.budget:.0f} s of training each on this CPU; "
             f"test: {cases} cases (`nnUNetv2_predict`, mirroring on; s/case includes start-up).", "",
             *md_table(header, rows, "llrrrrrrrrrl"), "", f"    {args.command_line}", ""]
    report = "\n".join(lines)
    print("\n" + report)
    write_results(args.out, report, data, stem=f"nnunet_{args.dataset}")

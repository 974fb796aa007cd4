# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""``python -m transfuse_monai.nnunet``: TransFuse inside nnU-Net v2.

    eval "$(python -m transfuse_monai.nnunet env)"          # nnU-Net finds nnUNetTrainerTransFuse
    python -m transfuse_monai.nnunet convert polyp ../data/polyp 501 --size 352 352
    nnUNetv2_plan_and_preprocess -d 501 -c 2d
    python -m transfuse_monai.nnunet configure 501 --name 2d_transfuse_L --variant L --cnn-weights r2n50.pth ...
    nnUNetv2_train 501 2d 0 -tr nnUNetTrainerTransFuse -device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from transfuse_monai.nnunet import ext_trainer_value


def _env(args: argparse.Namespace) -> int:
    value = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
    print(f"export nnUNet_extTrainer={shlex.quote(value)}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from transfuse_monai.nnunet.convert import convert_task

    folder = convert_task(args.task, args.data_root, args.dataset_id, name=args.name, raw_root=args.raw,
                          size=args.size, progress=not args.no_progress)
    dataset = json.loads((folder / "dataset.json").read_text())
    test = dataset["transfuse_monai"]["test_cases"]
    print(f"wrote {folder}: {dataset['numTraining']} training and {test} test cases ({dataset['file_ending']})")
    print(f"next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c 2d")
    return 0


def _configure(args: argparse.Namespace) -> int:
    from transfuse_monai.nnunet.plans import add_transfuse_configuration

    options = {k: v for k, v in {
        "variant": args.variant, "dropout": args.dropout, "drop_path_rate": args.drop_path_rate,
        "cnn_weights": args.cnn_weights, "vit_weights": args.vit_weights,
        "pretrained": False if args.no_pretrained else None,
    }.items() if v is not None}
    path = add_transfuse_configuration(
        args.dataset, args.name, options, parent=args.parent, plans_identifier=args.plans,
        batch_size=args.batch_size, replace=args.replace, preprocessed_root=args.preprocessed,
    )
    print(f"added configuration '{args.name}' to {path}: {json.dumps(options)}")
    print(f"train it: nnUNetv2_train {args.dataset} {args.name} <fold> -tr nnUNetTrainerTransFuse -p {args.plans}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfuse_monai.nnunet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    env = commands.add_parser("env", help="print the nnUNet_extTrainer line that makes nnU-Net find the trainers")
    env.set_defaults(run=_env)

    convert = commands.add_parser("convert", help="a 2D task's dataset in nnU-Net's raw format")
    convert.add_argument("task", help="polyp, isic2017 or hip")
    convert.add_argument("data_root", help="the dataset in the task's layout")
    convert.add_argument("dataset_id", type=int, help="nnU-Net dataset ID (1..999), not yet used")
    convert.add_argument("--name", help="dataset name (Dataset<ID>_<name>); default: the task's")
    convert.add_argument("--raw", help="nnU-Net's raw folder (default: $nnUNet_raw)")
    convert.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize every image (labels nearest)")
    convert.add_argument("--no-progress", action="store_true", help="no progress bar")
    convert.set_defaults(run=_convert)

    configure = commands.add_parser(
        "configure", help="add a configuration holding TransFuse's options to a preprocessed dataset's plans"
    )
    configure.add_argument("dataset", help="dataset ID or name (DatasetXXX_Name)")
    configure.add_argument("--name", default="2d_transfuse", help="the new configuration (default: 2d_transfuse)")
    configure.add_argument("--parent", default="2d", help="the configuration it inherits from (default: 2d)")
    configure.add_argument("--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    configure.add_argument("--preprocessed", help="nnU-Net's preprocessed folder (default: $nnUNet_preprocessed)")
    configure.add_argument("--variant", choices=("S", "L", "L*"))
    configure.add_argument("--dropout", type=float)
    configure.add_argument("--drop-path-rate", type=float)
    configure.add_argument("--cnn-weights", help="local ImageNet checkpoint of the CNN branch")
    configure.add_argument("--vit-weights", help="local ImageNet checkpoint of the ViT branch")
    configure.add_argument("--no-pretrained", action="store_true", help="train both branches from scratch")
    configure.add_argument("--batch-size", type=int, help="batch size of the configuration (default: the parent's)")
    configure.add_argument("--replace", action="store_true", help="replace a configuration of the same name")
    configure.set_defaults(run=_configure)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""``python -m benchmarks <command> [options]``: the one command line of the benchmarks.

Every command is a module that declares its options (``add_arguments(parser)``) and runs them (``run(args)``); its
docstring is the command's ``--help`` text. A command's module is imported only when that command is named, so
listing the commands stays quick (most of them import torch and MONAI).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence

from benchmarks.common import UsageError

#: command -> (module, one-line summary for ``python -m benchmarks --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "summary": ("benchmarks.summary", "parameters (and CPU latency) of TransFuse-S/L/L*"),
    "models": ("benchmarks.models", "inference vs MONAI peers and the authors' code, fast paths"),
    "training": ("benchmarks.training", "polyp bundle training throughput and data wait"),
    "fast-paths": ("benchmarks.fast_paths", "a trained checkpoint per bundle fast-path flag"),
    "budget": ("benchmarks.budget", "accuracy after equal training budgets, vs FlexibleUNet"),
    "prostate-speed": ("benchmarks.prostate_speed", "seconds per MR volume vs nnU-Net-like DynUNets"),
    "deploy-timing": ("benchmarks.deploy_timing", "seconds per item through the MONAI Deploy apps"),
    "folder-inference": ("benchmarks.folder_inference", "polyp bundle folder inference per path: images/s, profile"),
    "cpu-bound": ("benchmarks.cpu_bound", "this CPU's peak per precision and TransFuse-S's latency bound"),
    "parity": ("benchmarks.parity", "Dice change of every fast path and export on polyp images"),
    "nnunet": ("benchmarks.nnunet", "TransFuse-S vs nnU-Net's 2D U-Net, trained by nnU-Net for equal time"),
    "table5": ("benchmarks.table5", "the paper's Table 5 ablations trained through the polyp bundle, complexity"),
    "gpu-kit": ("benchmarks.gpu.kit", "the GPU run kit's stages (run by benchmarks/gpu/run.sh)"),
    "gpu-pack-data": ("benchmarks.gpu.pack_data", "pack the polyp data that travels with the GPU kit"),
}


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line and its sub-command parsers; ``command``'s module is imported and declares its options
    (the other sub-commands are known by name only)."""
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", usage="%(prog)s [-h] <command> [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Speed, memory and accuracy benchmarks of transfuse-monai.\n\ncommands:\n{listing}",
        epilog="'python -m benchmarks <command> --help' describes a command. Usage and typical times:\n"
        "benchmarks/README.md; measured figures: benchmarks/RESULTS.md.")
    # the commands are listed in the description above, one line each (argparse's own listing wraps long names)
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True, help=argparse.SUPPRESS)
    parsers = {}
    for name, (module_name, summary) in COMMANDS.items():
        if name == command:
            module = importlib.import_module(module_name)
            parsers[name] = sub.add_parser(name, prog=f"{parser.prog} {name}", description=module.__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(parsers[name])
        else:
            parsers[name] = sub.add_parser(name, prog=f"{parser.prog} {name}", description=summary)
    return parser, parsers


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default: the process's), run the command; a :class:`UsageError` it raises is reported as a
    usage error of that command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    named = next((a for a in argv if not a.startswith("-")), None)  # the top level has no option with a value
    parser, parsers = build_parser(named if named in COMMANDS else None)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "benchmarks", *argv])
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        module.run(args)
    except UsageError as e:
        parsers[args.command].error(str(e))


if __name__ == "__main__":
    main()

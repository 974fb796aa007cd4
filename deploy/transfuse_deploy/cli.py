"""The command line every application shares, and the checks that run before the SDK starts a graph.

``python <app folder> -i INPUT -o OUTPUT -m MODEL [--overwrite] [-l LEVEL]`` (or ``python -m apps.<app>`` from
``deploy/``; the SDK's ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH`` when an option is
left out, as in a packaged application). :func:`run_app` resolves the model (a ``.ts`` file, a folder holding one, or
the MAP layout ``models/<name>/model.ts``), lets the application find and check every input and choose its outputs
(:class:`Invocation` -> a plan), refuses outputs over or inside the input, skips inputs whose outputs exist unless
``--overwrite``, and only then builds the SDK application with the resolved model file. A problem found there ends the
run with one line naming the file and the problem, exit status 1, and nothing written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transfuse_deploy.bundle import BundleIO, resolve_model

__all__ = ["Invocation", "run_app"]

logger = logging.getLogger(__name__)

#: The SDK's defaults and environment variables of a packaged application (monai.deploy.core.app_context).
_ENV = {"input": ("HOLOSCAN_INPUT_PATH", "input"), "output": ("HOLOSCAN_OUTPUT_PATH", "output"),
        "model": ("HOLOSCAN_MODEL_PATH", "models")}


@dataclass
class Invocation:
    """One run of an application: its paths, the exported bundle and the options.

    Attributes:
        input_path: ``-i`` (file or folder), absolute.
        output_folder: ``-o``, absolute (not created yet).
        model_path: the exported ``model.ts`` (resolved from ``-m``).
        bundle: what the application reads from the export (:class:`~transfuse_deploy.bundle.BundleIO`).
        overwrite: compute inputs whose outputs already exist.
        sdk_argv: the arguments the SDK parses (our options removed, ``-m`` the resolved file).
    """

    input_path: Path
    output_folder: Path
    model_path: Path
    bundle: BundleIO
    overwrite: bool
    sdk_argv: list[str]


def _parse(argv: Sequence[str], prog: str) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog=prog, add_help=True, description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", help="input file or folder (default $HOLOSCAN_INPUT_PATH or 'input')")
    parser.add_argument("-o", "--output", help="output folder (default $HOLOSCAN_OUTPUT_PATH or 'output')")
    parser.add_argument("-m", "--model", help="exported model.ts, a folder holding it, or the MAP model folder "
                        "(default $HOLOSCAN_MODEL_PATH or 'models')")
    parser.add_argument("--overwrite", action="store_true", help="compute inputs whose outputs already exist")
    args, rest = parser.parse_known_args(list(argv[1:]))
    for key, (env, default) in _ENV.items():
        if getattr(args, key) is None:
            setattr(args, key, os.environ.get(env) or default)
    return args, rest


def run_app(app_cls: type, prepare: Callable[[Invocation], Any], argv: Sequence[str] | None = None) -> int:
    """Check everything, then run ``app_cls`` (a MONAI Deploy ``Application`` whose ``compose`` reads
    ``self.invocation`` and ``self.plan``).

    Args:
        app_cls: the application class.
        prepare: finds and checks the inputs of an :class:`Invocation` and returns the plan the application composes
            its graph from, or None when there is nothing left to do (every output exists); raises ``ValueError``
            / ``FileNotFoundError`` naming the file and the problem.
        argv: the command line, ``sys.argv`` style (``argv[0]`` the program).

    Returns:
        The exit status: 0, or 1 after a problem found before the graph ran (logged as one error line).
    """
    argv = list(sys.argv if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, rest = _parse(argv, Path(argv[0]).name)
    try:
        input_path, output_folder = Path(args.input).absolute(), Path(args.output).absolute()
        if not input_path.exists():
            raise FileNotFoundError(f"input path {input_path} does not exist")
        model_path = resolve_model(args.model)
        bundle = BundleIO(model_path)
        bundle.check_network()
        invocation = Invocation(
            input_path=input_path, output_folder=output_folder, model_path=model_path.absolute(),
            bundle=bundle, overwrite=args.overwrite,
            sdk_argv=[argv[0], "-i", str(input_path), "-o", str(output_folder), "-m",
                      str(model_path.absolute()), *rest],
        )
        plan = prepare(invocation)
    except (FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 1
    if plan is None:
        logger.info("nothing to do: every output exists in %s (--overwrite to compute them again)",
                    invocation.output_folder)
        return 0
    app = app_cls([sys.executable, *invocation.sdk_argv])  # holoscan's Application takes the interpreter first
    app.invocation, app.plan = invocation, plan
    logger.info("inputs checked; starting the application graph")
    app.run()
    return 0

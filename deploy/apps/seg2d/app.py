"""MONAI Deploy application: 2D pictures (PNG/JPEG/BMP/TIFF) -> TransFuse bundle -> mask PNGs.

    python deploy/apps/seg2d -i image.png|folder -o out_dir -m model.ts [--overwrite]

For every bundle that takes one 2D picture: RGB frames (polyp, isic2017) and grey radiographs (hip). Each mask is
``<output>/<input stem>.png`` at the picture's size, as the bundle's own inference writes it: uint8 0/255 for a
binary bundle, the class indices 0..K-1 for a multi-class one (hip: 0 background, 1 pelvis, 2 left femur, 3 right
femur). Graph: ``ImageFileLoaderOperator`` -> ``MonaiBundleInferenceOperator`` -> ``MaskWriterOperator``. The output
folder may not be, hold or lie inside the input; two pictures that would give the same mask name are refused; masks
that exist are skipped unless ``--overwrite``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Application

from transfuse_deploy.bundle import list_files
from transfuse_deploy.cli import Invocation, run_app
from transfuse_deploy.inputs import check_output_folder, pending
from transfuse_deploy.operators import MaskWriterOperator, compose_file_pipeline
from transfuse_monai.data.checks import check_picture
from transfuse_monai.data.formats import IMAGE_EXTENSIONS, file_stem

# run as a script this module is "app" or "__main__", so it is named after its application
logger = logging.getLogger("transfuse_deploy.seg2d")


def prepare(run: Invocation) -> dict[Path, Path] | None:
    """Every picture with its mask file (source -> mask PNG); None when all exist."""
    spatial = run.bundle.input_spec.get("spatial_shape")
    if spatial and len(spatial) != 2:
        raise ValueError(f"{run.model_path}: not a 2D-picture bundle (input {run.bundle.input_spec})")
    files = [f.absolute() for f in list_files(run.input_path, IMAGE_EXTENSIONS)]
    for path in files:  # decoded once, in the network's channels: the bundles' own start-up check
        problems = check_picture(path, "image", channels=run.bundle.in_channels).problems
        if problems:
            raise ValueError("; ".join(problems))
    out = check_output_folder(run.output_folder, run.input_path, files)
    targets: dict[Path, Path] = {}
    for path in files:
        target = out / f"{file_stem(path)}.png"
        clash = next((src for src, t in targets.items() if t == target), None)
        if clash is not None:
            raise ValueError(f"{clash} and {path} would both write {target}: rename one or run them separately")
        targets[path] = target
    todo = pending({f: [t] for f, t in targets.items()}, run.overwrite)
    logger.info("model %s, %d image(s), %d to segment, output %s", run.model_path, len(files), len(todo), out)
    return {f: targets[f] for f in todo} or None


class TransFuseSeg2DApp(Application):
    """Picture file(s) -> TransFuse bundle (TorchScript with embedded configs) -> mask PNG(s)."""

    def compose(self):
        run: Invocation = self.invocation
        app_context = Application.init_app_context(self.argv)
        writer_op = MaskWriterOperator(
            self, targets=self.plan, loader=run.bundle.loader, input_name=run.bundle.output_name,
            num_classes=run.bundle.num_classes, name="mask_writer",
        )
        compose_file_pipeline(self, app_context, run.model_path, run.bundle, list(self.plan), writer_op)


def main(argv: list[str] | None = None) -> int:
    return run_app(TransFuseSeg2DApp, prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())

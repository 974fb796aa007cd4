"""MONAI Deploy application: 2D pictures (PNG/JPEG/BMP/TIFF) -> TransFuse bundle -> mask PNGs.

    python deploy/apps/seg2d -i image.png|folder -o out_dir -m model.ts

For every bundle that takes one 2D picture: RGB frames (polyp, isic2017) and grey radiographs (hip). Each mask is
``<output>/<input stem>.png`` at the picture's size, as the bundle's own inference writes it: uint8 0/255 for a
binary bundle, the class indices 0..K-1 for a multi-class one (hip: 0 background, 1 pelvis, 2 left femur, 3 right
femur). Graph: ``ImageFileLoaderOperator`` -> ``MonaiBundleInferenceOperator`` -> ``MaskWriterOperator``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import AppContext, Application

from transfuse_deploy.bundle import BundleIO, list_files, resolve_model
from transfuse_deploy.operators import MaskWriterOperator, compose_file_pipeline

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

logger = logging.getLogger("transfuse_deploy.seg2d")


class TransFuseSeg2DApp(Application):
    """Picture file(s) -> TransFuse bundle (TorchScript with embedded configs) -> mask PNG(s)."""

    def compose(self):
        app_context: AppContext = Application.init_app_context(self.argv)
        model_path = resolve_model(app_context.model_path)
        files = list_files(app_context.input_path, IMAGE_SUFFIXES)
        output_folder = Path(app_context.output_path)
        bundle = BundleIO(model_path)
        if bundle.input_spec.get("spatial_shape") and len(bundle.input_spec["spatial_shape"]) != 2:
            raise ValueError(f"{model_path}: not a 2D-picture bundle (input {bundle.input_spec})")
        logger.info("model %s, %d image(s), output %s", model_path, len(files), output_folder)

        writer_op = MaskWriterOperator(
            self, output_folder=output_folder, loader=bundle.loader, input_name=bundle.output_name,
            num_classes=bundle.num_classes, name="mask_writer",
        )
        compose_file_pipeline(self, app_context, model_path, bundle, files, writer_op)

def main(argv: list[str] | None = None) -> None:
    app = TransFuseSeg2DApp(argv) if argv else TransFuseSeg2DApp()
    app.run()


if __name__ == "__main__":
    main()

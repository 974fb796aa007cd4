"""MONAI Deploy application: TransFuse segmentation of 2D images with an exported bundle (``models/model.ts``).

    python deploy/transfuse_seg_app.py --model bundles/polyp/models/model.ts --input image.png --output out_dir

``--model/-m``, ``--input/-i`` and ``--output/-o`` are the MONAI Deploy App SDK's standard arguments; unset, they
fall back to the SDK's environment variables ``HOLOSCAN_MODEL_PATH``, ``HOLOSCAN_INPUT_PATH`` and
``HOLOSCAN_OUTPUT_PATH``. The input is one image file or a folder of images (PNG/JPEG/BMP/TIFF); each mask is saved
as ``<output>/<input stem>.png`` at the input image's size, like the bundle's own inference: uint8 0/255 for a
binary bundle, the class indices 0..K-1 for a multi-class one (the classes come from the output ``channel_def`` of
the embedded ``metadata.json``).

Graph: ``ImageFileLoaderOperator`` -> ``MonaiBundleInferenceOperator`` -> ``MaskWriterOperator``.

The bundle operator reads ``metadata.json`` and ``inference.json`` from the TorchScript file (``ckpt_export`` embeds
them), runs the bundle's ``preprocessing``, ``inferer`` and ``postprocessing`` and drops their ``LoadImage*`` and
``SaveImage*`` transforms (it works on in-memory data). This application gives them back: the loader applies the
bundle's own ``LoadImage(d)`` transform to each file, so the operator sees exactly the array and metadata that
``monai.bundle run`` sees, and the writer saves the binary mask.

Runs in the isolated environment made by ``deploy/setup_env.sh`` (see ``deploy/README.md``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Fragment, Image, IOType, Operator, OperatorSpec
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
    get_bundle_config,
)

from transfuse_monai.utils import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

logger = logging.getLogger("transfuse_seg_app")


def list_images(path: str | os.PathLike) -> list[Path]:
    """The image file ``path``, or the image files directly in folder ``path`` (sorted; hidden files skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            return files
        raise ValueError(f"no image ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    raise FileNotFoundError(f"input path {path} does not exist")


class BundleIO:
    """What the application needs from the bundle inside the TorchScript file: the network's input and output names
    (``network_data_format`` of ``metadata.json``) and the image loader of ``inference.json``'s preprocessing."""

    def __init__(self, model_path: str | os.PathLike, config_names: BundleConfigNames) -> None:
        parser = get_bundle_config(str(model_path), config_names.config_names)
        fmt = parser["_meta_"].get("network_data_format", {})
        inputs, outputs = list(fmt.get("inputs", {})), list(fmt.get("outputs", {}))
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{model_path}: expected one network input and one output in metadata.json's network_data_format, "
                f"found inputs {inputs} and outputs {outputs}"
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        # mask value -> class name, background included (the bundles' metadata convention)
        self.channel_def = dict(fmt["outputs"][self.output_name].get("channel_def", {"0": "background", "1": "fg"}))
        self.num_classes = max(2, len(self.channel_def))
        self.loader = self._bundle_loader(parser, config_names.preproc_name)

    @staticmethod
    def _bundle_loader(parser: Any, preproc_name: str):
        """The bundle's ``LoadImage``/``LoadImaged`` transform (instantiated alone), or MONAI's PIL loader."""
        from monai.transforms import LoadImage

        transforms = (parser.get(preproc_name) or {}).get("transforms", [])
        for i, item in enumerate(transforms):
            target = str(item.get("_target_", "")) if isinstance(item, dict) else ""
            if "LoadImage" in target.rsplit(".", 1)[-1]:
                return parser.get_parsed_content(f"{preproc_name}#transforms#{i}")
        logger.warning("no LoadImage transform in the bundle's %r: loading with PILReader", preproc_name)
        return LoadImage(reader="PILReader", image_only=True)


def load_with(loader: Any, path: Path):
    """Run a MONAI ``LoadImage`` (array) or ``LoadImaged`` (dictionary) transform on one file: a ``MetaTensor``."""
    keys = getattr(loader, "keys", None)
    if keys:  # dictionary transform
        return loader({keys[0]: str(path)})[keys[0]]
    return loader(str(path))


def reverses_indexing(loader: Any) -> bool:
    """Whether ``loader``'s readers reverse the spatial axes (MONAI's PILReader default): the mask is then stored
    ``(W, H)`` and the writer must transpose it back."""
    load_image = getattr(loader, "_loader", loader)  # LoadImaged wraps a LoadImage
    readers = getattr(load_image, "readers", [])
    return any(getattr(r, "reverse_indexing", False) for r in readers)


class ImageFileLoaderOperator(Operator):
    """Loads one 2D image file per call with a MONAI ``LoadImage(d)`` transform and emits it as a
    :class:`monai.deploy.core.Image` (channel-last array, MONAI metadata incl. ``filename_or_obj``).

    Named output:
        image (configurable): the loaded image.
    """

    def __init__(self, fragment: Fragment, *args, files: list[Path], loader: Any, output_name: str = "image", **kwargs):
        self.files = list(files)
        self.loader = loader
        self.output_name = output_name
        self._next = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output(self.output_name)

    def compute(self, op_input, op_output, context):
        path = self.files[self._next]
        self._next += 1
        img = load_with(self.loader, path)
        meta = dict(getattr(img, "meta", {}))
        meta.setdefault("filename_or_obj", str(path))
        data = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
        logger.info("loaded %s: array %s", path, tuple(data.shape))
        op_output.emit(Image(data, metadata=meta), self.output_name)


class MaskWriterOperator(Operator):
    """Saves a segmentation :class:`monai.deploy.core.Image` (2D class-index map) as ``<output>/<input stem>.png``,
    checked to be at the input image's size and to hold only the bundle's classes: uint8 0/255 for a binary bundle
    (``num_classes=2``, as the bundle's own inference writes it), the class indices for a multi-class one.

    Named input:
        pred (configurable): the segmentation from ``MonaiBundleInferenceOperator``.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, input_name: str = "pred",
                 transpose: bool = False, num_classes: int = 2, **kwargs):
        self.output_folder = Path(output_folder)
        self.num_classes = int(num_classes)
        self.input_name = input_name
        self.transpose = transpose
        self.written: list[Path] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input(self.input_name)

    def compute(self, op_input, op_output, context):
        seg = op_input.receive(self.input_name)
        mask = np.asarray(seg.asnumpy() if isinstance(seg, Image) else seg)
        meta = seg.metadata() if isinstance(seg, Image) else {}
        mask = np.squeeze(mask)
        if mask.ndim != 2:
            raise ValueError(f"expected a 2D segmentation, got shape {mask.shape}")
        if self.transpose:
            mask = mask.T
        source = Path(str(meta.get("filename_or_obj", "mask")))
        if source.is_file():
            with PILImage.open(source) as im:
                width, height = im.size
            if mask.shape != (height, width):
                raise ValueError(f"mask shape {mask.shape} does not match {source} ({height}x{width} pixels)")
        found = np.unique(mask)
        if not set(found.tolist()) <= set(range(self.num_classes)):
            raise ValueError(f"{source}: segmentation values {found.tolist()} are not class indices "
                             f"0..{self.num_classes - 1}")
        out = (mask.astype(np.uint8) * (255 if self.num_classes == 2 else 1)).astype(np.uint8)
        self.output_folder.mkdir(parents=True, exist_ok=True)
        target = self.output_folder / f"{source.stem}.png"
        if source.exists() and target.resolve() == source.resolve():
            raise ValueError(f"refusing to overwrite the input image {source}: choose another output folder")
        with atomic_path(target) as tmp:
            PILImage.fromarray(out, mode="L").save(tmp)
        self.written.append(target)
        logger.info("saved %s", target)


class TransFuseSegApp(Application):
    """Image file(s) -> TransFuse bundle (TorchScript with embedded configs) -> mask PNG(s)."""

    config_names = BundleConfigNames(config_names=["inference"])

    def compose(self):
        app_context: AppContext = Application.init_app_context(self.argv)
        model_path = Path(app_context.model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"model {model_path} is not a file: give the exported model.ts (--model or "
                                    "HOLOSCAN_MODEL_PATH)")
        files = list_images(app_context.input_path)
        output_folder = Path(app_context.output_path)
        logger.info("model %s, %d image(s), output %s", model_path, len(files), output_folder)

        bundle = BundleIO(model_path, self.config_names)
        loader_op = ImageFileLoaderOperator(
            self, CountCondition(self, len(files)), files=files, loader=bundle.loader,
            output_name=bundle.input_name, name="image_loader",
        )
        bundle_op = MonaiBundleInferenceOperator(
            self,
            app_context=app_context,
            bundle_path=model_path,
            bundle_config_names=self.config_names,
            input_mapping=[IOMapping(bundle.input_name, Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping(bundle.output_name, Image, IOType.IN_MEMORY)],
            name="bundle_inference",
        )
        writer_op = MaskWriterOperator(
            self, output_folder=output_folder, input_name=bundle.output_name,
            transpose=reverses_indexing(bundle.loader), num_classes=bundle.num_classes, name="mask_writer",
        )
        self.add_flow(loader_op, bundle_op, {(bundle.input_name, bundle.input_name)})
        self.add_flow(bundle_op, writer_op, {(bundle.output_name, bundle.output_name)})


def main(argv: list[str] | None = None) -> None:
    app = TransFuseSegApp(argv) if argv else TransFuseSegApp()
    app.run()


if __name__ == "__main__":
    main()

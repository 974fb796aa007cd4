"""What the Deploy applications read from an exported bundle: the TorchScript file with ``metadata.json`` and
``inference.json`` embedded (``python -m transfuse_monai.export`` or ``monai.bundle ckpt_export``)."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from monai.deploy.operators.monai_bundle_inference_operator import BundleConfigNames, get_bundle_config

__all__ = ["CONFIG_NAMES", "BundleIO", "resolve_model", "list_files", "load_with", "reverses_indexing"]

logger = logging.getLogger(__name__)

#: The bundle configs the applications use (``inference.json``'s ``preprocessing``, ``inferer``, ``postprocessing``).
CONFIG_NAMES = BundleConfigNames(config_names=["inference"])


def resolve_model(path: str | os.PathLike) -> Path:
    """The TorchScript file ``path``, or the one ``*.ts`` file under folder ``path`` (a packaged application's model
    folder, ``/opt/holoscan/models``), checked to carry the bundle configs where MONAI Deploy looks for them.

    Raises:
        FileNotFoundError: no such file, or no / several ``.ts`` files under the folder.
        ValueError: not a TorchScript archive with ``<stem>/extra/metadata.json`` and ``inference.json``.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*.ts") if p.is_file())
        if len(found) != 1:
            raise FileNotFoundError(f"expected one exported model (*.ts) under {path}, found {[str(p) for p in found]}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"model {path} is not a file: give the exported model.ts (-m/--model or "
                                "HOLOSCAN_MODEL_PATH)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile as err:
        raise ValueError(f"model {path} is not a TorchScript file (not a zip archive)") from err
    missing = [n for n in ("metadata", "inference") if f"{path.stem}/extra/{n}.json" not in names]
    if missing:
        roots = sorted({n.split("/", 1)[0] for n in names})
        raise ValueError(
            f"model {path}: no {', '.join(m + '.json' for m in missing)} under '{path.stem}/extra/' in the archive "
            f"(its folder is {roots}); MONAI Deploy reads the configs from the folder named like the file: export "
            "with `python -m transfuse_monai.export <bundle> --formats torchscript` (configs embedded) and keep the "
            "exported file name"
        )
    return path


def list_files(path: str | os.PathLike, suffixes: tuple[str, ...], what: str = "image") -> list[Path]:
    """The file ``path``, or the files with ``suffixes`` directly in folder ``path`` (sorted; hidden skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes)
        )
        if files:
            return files
        raise ValueError(f"no {what} ({', '.join(suffixes)}) in {path}")
    raise FileNotFoundError(f"input path {path} does not exist")


class BundleIO:
    """What an application needs from the bundle inside the TorchScript file: the network's input and output names
    and channels (``network_data_format`` of ``metadata.json``), the class names (mask value -> name, background
    included) and the image loader of ``inference.json``'s preprocessing.

    Args:
        model_path: the exported ``model.ts``.
        config_names: the bundle configs to read.

    Raises:
        ValueError: not exactly one network input and one output.
    """

    def __init__(self, model_path: str | os.PathLike, config_names: BundleConfigNames = CONFIG_NAMES) -> None:
        self.model_path = Path(model_path)
        self.config_names = config_names
        parser = get_bundle_config(str(model_path), config_names.config_names)
        self.parser = parser
        fmt = parser["_meta_"].get("network_data_format", {})
        inputs, outputs = list(fmt.get("inputs", {})), list(fmt.get("outputs", {}))
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{model_path}: expected one network input and one output in metadata.json's network_data_format, "
                f"found inputs {inputs} and outputs {outputs}"
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_spec = dict(fmt["inputs"][self.input_name])
        channel_def = dict(fmt["outputs"][self.output_name].get("channel_def", {"0": "background", "1": "fg"}))
        self.class_names = [channel_def[k] for k in sorted(channel_def, key=int)]
        self.num_classes = max(2, len(self.class_names))
        self.loader = self._bundle_loader(parser, config_names.preproc_name)

    def check_network(self) -> None:
        """Check that the exported network takes the channels the embedded ``inference.json`` feeds it: an export by
        ``monai.bundle ckpt_export`` embeds the config *file*, so a network built with an override (``--modalities
        "[0]"``: one channel) would be fed the file's channels and fail inside the graph.

        Raises:
            ValueError: the two disagree, naming both and the export command that embeds the override.
        """
        import torch

        network = torch.jit.load(str(self.model_path), map_location="cpu")
        built = getattr(network, "in_channels", None)
        if built is None or int(built) == self.in_channels:
            return
        overrides = {k: self.parser.get(k) for k in ("modalities", "in_channels") if self.parser.get(k) is not None}
        raise ValueError(
            f"{self.model_path}: the network takes {int(built)} input channel(s) but its embedded inference.json "
            f"feeds {self.in_channels} ({overrides}); export again with `python -m transfuse_monai.export <bundle> "
            "--formats torchscript` and the same overrides as the network (e.g. --modalities \"[0]\"), which embeds "
            "them"
        )

    @property
    def in_channels(self) -> int:
        """The network's input channels: the embedded ``inference.json``'s ``network_def`` (e.g. 1 for a T2-only
        prostate model), else ``num_channels`` of ``metadata.json``."""
        try:
            return int(self.parser.get_parsed_content("network_def#in_channels"))
        except Exception:  # noqa: BLE001 - a config without that entry
            return int(self.input_spec.get("num_channels", 1))

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


def reverses_indexing(loader: Any, path: str | os.PathLike) -> bool:
    """Whether the reader that ``loader`` uses for ``path`` reverses the spatial axes (MONAI's PILReader default):
    the mask then comes back ``(W, H)`` and must be transposed for the picture file. The reader is chosen as
    ``LoadImage`` does: the last registered reader (the bundle's own comes last) whose ``verify_suffix`` accepts the
    file."""
    load_image = getattr(loader, "_loader", loader)  # LoadImaged wraps a LoadImage
    for reader in reversed(getattr(load_image, "readers", [])):
        if reader.verify_suffix(str(path)):
            return bool(getattr(reader, "reverse_indexing", False))
    return False

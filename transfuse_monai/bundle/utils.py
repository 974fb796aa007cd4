# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Bundle helpers: locating the bundle, the dataset (or a generated demo sample), building datalists, placing the
network."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from transfuse_monai.data.datalists import IMAGE_EXTENSIONS, ISIC2017_SPLITS
from transfuse_monai.data.synthetic import make_synthetic_isic2017_dataset, make_synthetic_pranet_dataset

__all__ = ["DEMO_MARKER", "as_bool", "find_bundle_root", "resolve_dataset", "is_demo_dataset", "is_demo_datalist", "grouped_datalist", "image_datalist", "place_network"]

logger = logging.getLogger("transfuse_monai.bundle")

#: File written at the root of a generated demo dataset.
DEMO_MARKER = "GENERATED_DEMO_DATA.txt"

_REPO_ROOT = Path(__file__).resolve().parents[2]


def as_bool(value) -> bool:
    """Interpret a command-line override as a boolean: ``--amp false`` arrives as the string ``"false"``, which
    Python would consider true. Accepts booleans, numbers and ``true/false, yes/no, on/off, 1/0`` (any case)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0", "none", "null", ""):
            return False
        raise ValueError(f"Cannot interpret '{value}' as a boolean; use true or false.")
    return bool(value)


def place_network(network, device, channels_last=False):
    """Move ``network`` to ``device``; with ``channels_last`` (a boolean or its command-line string) also store its 4D
    weights channels-last (NHWC), which oneDNN (CPU) and cuDNN run with their NHWC kernels. Returns the network.

    Pair it with an inferer that makes the inputs channels-last too
    (:class:`~transfuse_monai.inferers.AutocastInferer` with ``channels_last=True``)."""
    import torch

    fmt = torch.channels_last if as_bool(channels_last) else torch.preserve_format
    return network.to(device, memory_format=fmt)


def find_bundle_root(name: str) -> str:
    """Absolute path of bundle ``name``: the working directory when it is that bundle (model-zoo usage, ``cd`` into
    the bundle), else ``./bundles/<name>`` (usage from the repository root), else the copy next to this package.

    Bundles copied elsewhere (MONAI Label, MONAI Deploy) set ``bundle_root`` themselves, which overrides this.
    """
    cwd = Path.cwd()
    for candidate in (cwd, cwd / "bundles" / name, _REPO_ROOT / "bundles" / name):
        meta = candidate / "configs" / "metadata.json"
        if meta.is_file() and candidate.name == name:
            return str(candidate.resolve())
    return str(cwd)


_LAYOUTS: dict[str, tuple[Callable[[Path], bool], Callable[..., str]]] = {
    "pranet": (
        lambda root: (root / "TrainDataset" / "images").is_dir() or (root / "TestDataset").is_dir(),
        lambda root: make_synthetic_pranet_dataset(
            root, n_train=12, test_sets={"Kvasir": 4, "CVC-ClinicDB": 4}, size=(96, 96),
            test_sizes=[(90, 120), (96, 96)], seed=0,
        ),
    ),
    "isic2017": (
        lambda root: any(
            (root / d).is_dir() for d in (*(names[0] for names in ISIC2017_SPLITS.values()), "train", "val", "test")
        ),
        lambda root: make_synthetic_isic2017_dataset(root, n_train=12, n_val=4, n_test=4, size=(96, 128)),
    ),
}


def is_demo_dataset(dataset_dir: str | os.PathLike) -> bool:
    """Whether ``dataset_dir`` is a generated demo sample (it holds :data:`DEMO_MARKER`)."""
    return (Path(dataset_dir) / DEMO_MARKER).is_file()


def is_demo_datalist(datalist: Sequence[Mapping], key: str = "image", levels: int = 4) -> bool:
    """Whether a datalist's items come from a generated demo sample (:data:`DEMO_MARKER` in a parent folder).

    Bundles base their demo settings on the data actually used, so a datalist given from outside (MONAI Label's
    ``train#dataset#data`` override, say) never switches a run into demo mode.
    """
    if not datalist:
        return False
    parent = Path(str(datalist[0][key])).resolve().parent
    for folder in [parent, *parent.parents][:levels]:
        if (folder / DEMO_MARKER).is_file():
            return True
    return False


def resolve_dataset(dataset_dir: str | os.PathLike, layout: str, demo_dir: str | os.PathLike) -> str:
    """Return ``dataset_dir`` if it holds a dataset of ``layout``; otherwise generate a small synthetic sample in
    ``demo_dir`` (once) and return that, warning loudly that the run is a demo on generated data.

    Args:
        dataset_dir: where the user's dataset should be.
        layout: ``"pranet"`` or ``"isic2017"``.
        demo_dir: where to generate (or find) the demo sample.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"Unknown dataset layout '{layout}'; choose from {sorted(_LAYOUTS)}.")
    exists, generate = _LAYOUTS[layout]
    root = Path(dataset_dir)
    if exists(root):
        return str(root)
    demo = Path(demo_dir)
    if not (demo / DEMO_MARKER).is_file():
        generate(demo)
        (demo / DEMO_MARKER).write_text(
            f"Synthetic {layout} sample generated by transfuse_monai because '{root}' held no dataset.\n"
        )
    message = (
        f"dataset_dir '{root}' holds no {layout} dataset: running a DEMO on a small generated sample in '{demo}'. "
        "Results are meaningless; pass --dataset_dir to train on real data."
    )
    logger.warning(message)
    print(f"WARNING: {message}", flush=True)
    return str(demo)


def grouped_datalist(groups: Mapping[str, Sequence[dict]], key: str = "set") -> list[dict]:
    """Concatenate named datalists into one, tagging each item with its group name under ``key``."""
    out = []
    for name, items in groups.items():
        out.extend({**item, key: name} for item in items)
    return out


def image_datalist(source: str | os.PathLike | Sequence, exclude_suffixes: Sequence[str] = ()) -> list[dict]:
    """Datalist ``[{"image": path}, ...]`` for inference from a folder of images, a JSON datalist file (a list, or a
    dict with a ``"testing"``/``"test"``/``"data"`` list, of paths or ``{"image": path}`` items), or a list.

    ``exclude_suffixes`` skips the files of a folder whose stem ends with one of them (e.g. ``("_superpixels",)``
    for the ISIC 2017 data folders, which also hold superpixel maps).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: no image was found.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(p.stem.endswith(sfx) for sfx in exclude_suffixes)
            )
            items: list = [str(p) for p in files]
        elif path.is_file():
            content = json.loads(path.read_text())
            if isinstance(content, dict):
                content = next((content[k] for k in ("testing", "test", "data") if k in content), None)
                if content is None:
                    raise ValueError(f"Datalist file {path} has none of the keys 'testing', 'test', 'data'.")
            items = [c if isinstance(c, (str, dict)) else str(c) for c in content]
            items = [
                {**c, "image": str((path.parent / c["image"]) if not os.path.isabs(c["image"]) else c["image"])}
                if isinstance(c, dict) else str(path.parent / c) if not os.path.isabs(c) else c
                for c in items
            ]
        else:
            raise FileNotFoundError(f"Inference input not found: {path}")
    else:
        items = list(source)
    datalist = [item if isinstance(item, dict) else {"image": str(item)} for item in items]
    if not datalist:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {source}.")
    missing = [d["image"] for d in datalist if not Path(d["image"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} input image(s) do not exist: {', '.join(missing[:5])}")
    return datalist

"""Every bundle loads in MONAI Label's bundle machinery with its dimension (3 for the prostate volumes) and labels; for
the 2D bundles, inference returns a label file MONAI Label can store, and a short training run through
``BundleTrainTask`` on a datastore of generated images updates the bundle's model.

MONAI Label is installed without its dependencies (see README); these tests fail if it is missing under CI.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())

if os.environ.get("CI"):
    import monailabel  # noqa: F401  (CI must have it: a missing consumer is a failure, not a skip)
else:
    pytest.importorskip("monailabel", reason="MONAI Label not installed (see README: install command)")


def _is_2d_rgb(bundle: str) -> bool:
    meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    image = next(iter(meta["network_data_format"]["inputs"].values()))
    return len(image["spatial_shape"]) == 2 and image["num_channels"] == 3


def _label_ready_copy(bundle: str, dest: Path, size: int = 64) -> Path:
    """Copy a bundle as a MONAI Label app would hold it, at a small size and without hub downloads (offline)."""
    path = dest / bundle
    shutil.copytree(REPO / "bundles" / bundle, path, ignore=shutil.ignore_patterns("models", "eval", "output"))
    for name, updates in {
        "train.json": {"image_size": [size, size], "pretrained": False, "num_workers": 0, "batch_size": 2},
        "inference.json": {"image_size": [size, size], "num_workers": 0},
    }.items():
        cfg_path = path / "configs" / name
        cfg = json.loads(cfg_path.read_text())
        cfg.update({k: v for k, v in updates.items() if k in cfg})
        cfg_path.write_text(json.dumps(cfg, indent=2))
    (path / "models").mkdir()
    from transfuse_monai.networks.nets import TransFuse

    task = get_task(bundle)
    torch.manual_seed(0)
    net = TransFuse(in_channels=task.in_channels, out_channels=task.out_channels, img_size=(size, size))
    torch.save(net.state_dict(), path / "models" / "model.pt")
    return path


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_infer_task_reads_dimension_and_labels(bundle, tmp_path):
    """MONAI Label takes a bundle's dimension from ``len(spatial_shape)`` of its input in metadata.json and its labels
    from ``channel_def``: a volume bundle that read as 2D would be offered to 2D viewers and answered with a picture."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    task = BundleInferTask(str(_label_ready_copy(bundle, tmp_path)), {})
    assert task.is_valid(), "MONAI Label did not accept the bundle"
    assert task.info()["dimension"] == get_task(bundle).spatial_dims
    # each class at its mask value (polyp = 1); MONAI Label lower-cases the names and leaves the background out
    assert task.labels == {k.lower(): v for k, v in get_task(bundle).labels().items()}
    assert all(v >= 1 for v in task.labels.values())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_infer_task_returns_storable_2d_label(bundle, tmp_path):
    if not _is_2d_rgb(bundle):
        pytest.skip(f"{bundle} is not a 2D RGB bundle")
    from monailabel.tasks.infer.bundle import BundleInferTask

    path = _label_ready_copy(bundle, tmp_path)
    data = Path(get_task("polyp").make_sample(tmp_path / "data", n_train=1, test_sets={}, size=(70, 90)))
    image = next((data / "TrainDataset" / "images").iterdir())

    task = BundleInferTask(str(path), {})
    assert task.is_valid(), "MONAI Label did not accept the bundle"
    label_file, result = task({"image": str(image), "device": "cpu", "result_extension": ".png"})
    assert label_file and Path(label_file).is_file()
    with Image.open(label_file) as label, Image.open(image) as src:
        assert label.size == src.size, "label must be stored at the image's size"
        array = np.asarray(label)
    assert array.ndim == 2 and array.dtype == np.uint8
    assert set(np.unique(array).tolist()) <= {int(k) for k in get_task(bundle).channel_def()}
    assert isinstance(result, dict)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_train_task_trains_from_a_datastore(bundle, tmp_path):
    if not _is_2d_rgb(bundle):
        pytest.skip(f"{bundle} is not a 2D RGB bundle")
    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.train.bundle import BundleTrainTask

    path = _label_ready_copy(bundle, tmp_path)
    before = torch.load(path / "models" / "model.pt", map_location="cpu", weights_only=True)

    # a MONAI Label datastore: images at the root, final labels (0/1 PNGs) under labels/final
    gen = Path(get_task("polyp").make_sample(tmp_path / "gen", n_train=4, test_sets={}, size=(64, 64)))
    store = tmp_path / "datastore"
    (store / "labels" / "final").mkdir(parents=True)
    for img in sorted((gen / "TrainDataset" / "images").iterdir()):
        shutil.copy(img, store / img.name)
        mask = np.asarray(Image.open(gen / "TrainDataset" / "masks" / f"{img.stem}.png")) > 127
        Image.fromarray(mask.astype(np.uint8)).save(store / "labels" / "final" / f"{img.stem}.png")
    datastore = LocalDatastore(str(store), extensions=("*.png", "*.jpg"), auto_reload=False)
    assert len(datastore.datalist()) == 4

    task = BundleTrainTask(str(path), {})
    assert task.is_valid()
    task(
        {"model": bundle, "max_epochs": 1, "val_split": 0.25, "device": "cpu", "multi_gpu": False,
         "pretrained": True},
        datastore,
    )
    after = torch.load(path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "training through MONAI Label did not update models/model.pt"
    assert (path / "models" / "checkpoint_last.pt").is_file()

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


def _app_module(name: str):
    """A module of the MONAI Label app folder (``lib.epistemic``, ``check_server``, ...), imported as the server does,
    with ``monailabel_app`` on the path."""
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "monailabel_app"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "monailabel_app"))


def _labelled_datastore(bundle: str, dest: Path, labelled: int):
    """A MONAI Label datastore of the bundle's generated images (as ``check_server.py --loop`` builds it), the first
    ``labelled`` of them with final labels (class values)."""
    from monailabel.datastore.local import LocalDatastore

    check_server = _app_module("check_server")
    labels = check_server.loop_images(dest / "store", dest / "truth", bundle)
    (dest / "store" / "labels" / "final").mkdir(parents=True)
    for ident in sorted(labels)[:labelled]:
        shutil.copy(labels[ident], dest / "store" / "labels" / "final" / labels[ident].name)
    return LocalDatastore(str(dest / "store"), extensions=("*.png", "*.jpg", "*.nii.gz"), auto_reload=False)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_app_train_task_fine_tunes_every_bundle_offline(bundle, tmp_path, monkeypatch):
    """The app's train task trains each bundle (RGB frames, hip radiographs, prostate volumes) from a datastore's
    final labels, continuing from the served weights. train.json keeps ``pretrained`` (ImageNet) on and no ImageNet
    file can be found: fine-tuning skips that initialisation, which the served weights replace anyway."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch"))
    path = _label_ready_copy(bundle, tmp_path)
    cfg_path = path / "configs" / "train.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "pretrained": True}, indent=2))
    before = torch.load(path / "models" / "model.pt", map_location="cpu", weights_only=True)
    datastore = _labelled_datastore(bundle, tmp_path / "data", labelled=3)
    assert len(datastore.datalist()) == 3

    task = _app_module("lib.train").FineTuneBundleTrainTask(str(path), {})
    assert task.is_valid()
    task({"model": bundle, "max_epochs": 1, "val_split": 0.34, "device": "cpu", "multi_gpu": False,
          "pretrained": True}, datastore)
    after = torch.load(path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "training did not update models/model.pt"
    assert (path / "models" / "checkpoint_last.pt").is_file()


def test_app_train_task_trains_from_the_bundles_initialisation(tmp_path):
    """``pretrained: false`` in the train request (start afresh, MONAI Label's own task fails on it): the served
    weights are not loaded, the bundle's initialisation is used (here ``pretrained`` false in train.json: random),
    and the trained model replaces the served one."""
    from monai.handlers import CheckpointLoader

    path = _label_ready_copy("polyp", tmp_path)
    served = torch.load(path / "models" / "model.pt", map_location="cpu", weights_only=True)
    datastore = _labelled_datastore("polyp", tmp_path / "data", labelled=3)
    task = _app_module("lib.train").FineTuneBundleTrainTask(str(path), {})
    handlers: list = []
    task._load_checkpoint(str(path / "models" / "model.pt"), False, handlers)
    assert not handlers, "a fresh training must not load the served weights"
    task._load_checkpoint(str(path / "models" / "model.pt"), True, handlers)
    assert [h["_target_"] for h in handlers] == [CheckpointLoader.__name__]

    task({"model": "polyp", "max_epochs": 1, "val_split": 0.34, "device": "cpu", "multi_gpu": False,
          "pretrained": False}, datastore)
    trained = torch.load(path / "models" / "model.pt", map_location="cpu", weights_only=True)
    # BatchNorm running statistics of one epoch from a fresh start, not nudged from the served ones
    assert all(not torch.equal(served[k], trained[k]) for k in served if k.endswith("running_mean"))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_mc_dropout_task_returns_stochastic_probabilities(bundle, tmp_path):
    """One Monte Carlo dropout pass of every bundle gives what MONAI Label's ``EpistemicScoring`` reduces: float
    probabilities in [0, 1], channel first (one channel per output of a multi-class model), on the grid of the
    bundle's labels; two passes differ."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    path = _label_ready_copy(bundle, tmp_path)
    datastore = _labelled_datastore(bundle, tmp_path / "data", labelled=0)
    image = datastore.get_image_uri(datastore.list_images()[0])
    task = _app_module("lib.epistemic").MCDropoutBundleInferTask(str(path), {}, dropout=0.2)
    preds = [torch.as_tensor(np.asarray(task({"image": image, "device": "cpu"})[1]["pred"])) for _ in range(2)]
    _, data = BundleInferTask(str(path), {})({"image": image, "device": "cpu", "skip_writer": True})
    label = np.asarray(data["pred"])
    assert tuple(preds[0].shape) == (get_task(bundle).out_channels, *label.shape), (preds[0].shape, label.shape)
    assert preds[0].is_floating_point() and 0.0 <= float(preds[0].min()) and float(preds[0].max()) <= 1.0
    assert not torch.equal(preds[0], preds[1]), "dropout did not sample"


def _train_briefly(path: Path, images: list[Path], masks: list[Path], size: int = 64, iterations: int = 80) -> None:
    """Fit the bundle copy's network to a few generated frames (plain PyTorch, seconds) and save it as model.pt."""
    from transfuse_monai.networks.nets import TransFuse

    to_tensor = lambda p, rgb: torch.as_tensor(np.asarray(Image.open(p).convert("RGB" if rgb else "L").resize(  # noqa: E731
        (size, size)), dtype=np.float32))
    x = torch.stack([to_tensor(p, True).permute(2, 0, 1) / 255.0 for p in images])
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    y = torch.stack([(to_tensor(p, False) > 127).float()[None] for p in masks])
    torch.manual_seed(0)
    net = TransFuse(in_channels=3, out_channels=1, img_size=(size, size), dropout=0.2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for step in range(iterations):
        batch = torch.arange(4) + (4 * step) % len(x)
        out = net(x[batch % len(x)])
        loss = sum(w * torch.nn.functional.binary_cross_entropy_with_logits(out[:, i], y[batch % len(x)])
                   for i, w in enumerate((0.5, 0.3, 0.2)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(net.state_dict(), path / "models" / "model.pt")


def test_epistemic_scores_rank_unfamiliar_images_first(tmp_path, two_threads):
    """A polyp model trained briefly on generated endoscopy frames scores unseen frames of that kind lower than
    skin-lesion pictures it never saw; the ``epistemic`` strategy then serves a skin-lesion picture first."""
    import sys

    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.activelearning.epistemic import Epistemic
    from monailabel.tasks.scoring.epistemic_v2 import EpistemicScoring

    MCDropoutBundleInferTask = _app_module("lib.epistemic").MCDropoutBundleInferTask

    path = _label_ready_copy("polyp", tmp_path)
    seen = Path(get_task("polyp").make_sample(tmp_path / "seen", n_train=16, test_sets={}, size=(64, 64)))
    images = sorted((seen / "TrainDataset" / "images").iterdir())
    _train_briefly(path, images, [seen / "TrainDataset" / "masks" / f"{p.stem}.png" for p in images])

    familiar = Path(get_task("polyp").make_sample(tmp_path / "familiar", seed=7, n_train=4, test_sets={}, size=(64, 64)))
    unfamiliar = Path(get_task("isic2017").make_sample(tmp_path / "other", seed=7, n_train=4, n_val=0, n_test=0,
                                                       size=(64, 64)))
    store = tmp_path / "datastore"
    store.mkdir()
    kinds = {}
    for kind, files in (("familiar", sorted((familiar / "TrainDataset" / "images").iterdir())),
                        ("unfamiliar", [Path(d["image"]) for d in get_task("isic2017").datalist(unfamiliar, "train")])):
        for i, image in enumerate(files[:3]):
            target = store / f"{kind}_{i}.png"
            Image.open(image).convert("RGB").save(target)
            kinds[target.stem] = kind
    datastore = LocalDatastore(str(store), extensions=("*.png",), auto_reload=False)

    scoring = EpistemicScoring(MCDropoutBundleInferTask(str(path), {}, dropout=0.2), simulation_size=8)
    summary = scoring({"device": "cpu", "max_workers": 1}, datastore)
    assert summary["executed"] == 6
    scores = {image: datastore.get_image_info(image)["epistemic_entropy"] for image in kinds}
    familiar_scores = [v for k, v in scores.items() if kinds[k] == "familiar"]
    unfamiliar_scores = [v for k, v in scores.items() if kinds[k] == "unfamiliar"]
    assert min(unfamiliar_scores) > max(familiar_scores), scores
    chosen = Epistemic()({"strategy": "epistemic"}, datastore)
    assert kinds[chosen["id"]] == "unfamiliar"
    # a second scoring of the same model skips what it has scored (MONAI Label keys scores by the model's time stamp)
    assert scoring({"device": "cpu", "max_workers": 1}, datastore)["skipped"] == 6

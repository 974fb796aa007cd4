"""The bundles follow one config idiom: ids that every bundle defines are defined identically (so copying between
bundles is checked), booleans are parsed once, transforms are split into deterministic and random parts, and each
bundle's metadata agrees with its task module (classes, channels, MONAI Label's labels)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
CONFIGS = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "multi_gpu_evaluate.json")

#: Ids whose definition is the task's own business, with the reason. Every other id that all bundles define must be
#: written identically in each of them.
PER_TASK_IDS = {
    "imports": "a task may need more modules (torchvision for ISIC's colour jitter)",
    "task": "names the task",
    "dataset_dir": "default location of the task's data",
    "image_size": "the paper's input size per task",
    "epochs": "the paper's schedule per task",
    "learning_rate": "the paper's schedule per task",
    "loss_name": "the paper's structure loss (polyp, ISIC) or DiceCE (multi-class tasks)",
    "grad_clip_norm": "the paper's schedule per task",
    "optimizer": "ISIC 2017 uses the authors' Adam betas",
    "train_datalist": "a held-out fraction (polyp) or the official split (ISIC)",
    "val_datalist": "a held-out fraction (polyp) or the official split (ISIC)",
    "datalist": "inference: ISIC folders also hold superpixel maps to skip",
    "train#deterministic_transforms": "the task's loading and resizing",
    "train#random_transforms": "the task's augmentation",
    "train#final_transforms": "normalisation before or after augmentation",
    "train#iteration": "multi-scale training (polyp) or plain batches",
    "train#key_metric": "the task's benchmark metric (Dice or Jaccard)",
    "validate#key_metric": "the task's benchmark metric (Dice or Jaccard)",
    "validate#additional_metrics": "the task's secondary metrics",
    "validate#preprocessing": "evaluation: the task's resolution handling (original or model resolution)",
    "validate#postprocessing": "evaluation: the task's resolution handling",
    "validate#handlers": "evaluation: the task's benchmark tables",
    "test_datalist": "the task's test sets (the five PraNet sets, or one official ISIC split)",
    "batch_size": "images per step, or volumes per step for volume tasks (each giving several slices)",
    "val_interval": "validating whole volumes after every short epoch would dominate a volume task's training",
    "train#postprocessing": "the task's activation: sigmoid + threshold or softmax + argmax",
    "validate#dataloader": "volume tasks validate one volume per batch (slice counts differ)",
    "validate#inferer": "slice-by-slice inference over volumes",
    "inferer": "inference: slice-by-slice over volumes, or the whole image",
    "preprocessing": "inference: the task's file format and intensity normalisation",
    "postprocessing": "inference: the task's activation and output format (PNG masks, NIfTI volumes)",
    "post_transforms": "MONAI Label's post-processing: the task's activation and output",
    "eval_pred_key": "which prediction (model or original resolution) the generic report reads",
    "eval_label_key": "which label (model or original resolution) the generic report reads",
}


def flat_ids(config: dict, prefix: str = "") -> dict[str, object]:
    """Top-level ids, plus the ``a#b`` ids of the sections (``train``, ``validate``) and ``x#y`` overrides."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if key in ("train", "validate") and isinstance(value, dict):
            out.update(flat_ids(value, prefix=f"{key}#"))
        else:
            out[prefix + key] = value
    return out


def load(bundle: str, name: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / name).read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_shared_ids_are_identical_across_bundles(name):
    configs = {b: flat_ids(load(b, name)) for b in BUNDLES}
    shared = set.intersection(*(set(c) for c in configs.values())) - set(PER_TASK_IDS)
    assert len(shared) > 10 or name.startswith("multi_gpu_")
    differing = {
        key: {b: configs[b][key] for b in BUNDLES}
        for key in sorted(shared)
        if len({json.dumps(configs[b][key], sort_keys=True) for b in BUNDLES}) > 1
    }
    assert not differing, f"{name}: ids defined differently across bundles (align them or list them in " \
                          f"PER_TASK_IDS with a reason): {sorted(differing)}\n{json.dumps(differing, indent=1)[:3000]}"


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("name", CONFIGS)
def test_booleans_are_parsed_once(bundle, name):
    text = (REPO / "bundles" / bundle / "configs" / name).read_text()
    parsed = re.findall(r"as_bool\(@([\w#]+)\)", text)
    repeated = sorted({i for i in parsed if parsed.count(i) > 1})
    assert not repeated, f"{bundle}/{name}: as_bool applied more than once to {repeated}"
    assert not re.search(r"\"(engine_amp|inferer_amp)\"", text), "fast-path switches come from FastPaths"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_transforms_split_deterministic_random(bundle):
    train = load(bundle, "train.json")
    assert isinstance(train["train"]["deterministic_transforms"], list)
    assert isinstance(train["train"]["random_transforms"], list)
    assert not any("Rand" in t["_target_"] for t in train["train"]["deterministic_transforms"])
    assert all("Rand" in t["_target_"] for t in train["train"]["random_transforms"])
    validate = train["validate"]["preprocessing"]["transforms"]
    assert "@train#deterministic_transforms" in validate and "random" not in validate


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_agrees_with_the_task(bundle):
    """``channel_def`` lists the background and maps every class to its mask value: MONAI Label reads it as
    ``labels = {name: int(value)}`` minus the background (monailabel.tasks.infer.bundle), so polyp must be 1."""
    task = get_task(bundle)
    meta = load(bundle, "metadata.json")
    (image,) = meta["network_data_format"]["inputs"].values()
    (pred,) = meta["network_data_format"]["outputs"].values()
    assert image["num_channels"] == task.in_channels
    assert pred["num_channels"] == task.out_channels
    assert pred["channel_def"] == task.channel_def()
    assert pred["channel_def"]["0"] == "background"
    monailabel_labels = {v: int(k) for k, v in pred["channel_def"].items() if v != "background"}
    assert monailabel_labels == task.labels() and min(monailabel_labels.values()) == 1
    assert meta["version"] in meta["changelog"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_network_follows_the_task(bundle):
    from monai.bundle import ConfigParser

    task = get_task(bundle)
    for name in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / name))
        parser.update({"pretrained": False, "demo": False, "image_size": [32, 32]})
        net = parser.get_parsed_content("network_def")
        assert (net.in_channels, net.out_channels) == (task.in_channels, task.out_channels)
        assert parser.get_parsed_content("task").name == bundle

"""The bundles follow one config idiom, checked here because it cannot be shared by structure.

A bundle folder is self-contained (the model zoo, MONAI Label and MONAI Deploy take it alone) and MONAI's only way to
include one config in another, the ``%file#id`` macro, opens the file relative to the working directory, not to the
config; ``train.json`` is run alone and ``inference.json`` is loaded alone. So the four bundles cannot share a config
file, and what they have in common is kept in line here: every id that several bundles define is defined identically,
except the task's own settings (:data:`PER_TASK_IDS`, each with its reason). Within a bundle, the input size is
stated once (``metadata.json``), the normalisation comes from the backbone, the demo decision follows the data a
workflow runs on, and the pre-processing of training, evaluation and inference agree transform by transform. Also:
booleans are parsed once, transforms are split into deterministic and random parts, and each bundle's metadata agrees
with its task module (classes, channels, MONAI Label's labels)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
CONFIGS = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "multi_gpu_evaluate.json")

_SCHEDULE = "the paper's schedule per task"
_AUGMENTATION = "the strength of the task's augmentation"
_CHAIN = "the task's file format, intensities and augmentation (test_preprocessing_chains_agree checks the chains)"
_ACTIVATION = "the task's activation (sigmoid + threshold or softmax + argmax) and output format"
_SPLIT = "a held-out fraction (polyp), the official split (ISIC, hip) or a fold (prostate)"
#: Ids whose definition is the task's own business, with the reason (an id and everything under it). Every other id
#: that several bundles define must be written identically in each of them, and each id listed here must differ.
PER_TASK_IDS = {
    "imports": "a task may need more modules (torchvision for ISIC's colour jitter, the hip module)",
    "task": "names the task and its options (hip's datalist file, prostate's modalities)",
    "dataset_dir": "default location of the task's data",
    "epochs": _SCHEDULE,
    "learning_rate": _SCHEDULE,
    "grad_clip_norm": _SCHEDULE,
    "batch_size": "images per step, or volumes per step for volume tasks (each giving several slices)",
    "loss_name": "the paper's structure loss (polyp, ISIC) or DiceCE (multi-class tasks)",
    "rotate_degrees": _AUGMENTATION,
    "scale_fraction": _AUGMENTATION,
    "val_interval": "validating whole volumes after every short epoch would dominate a volume task's training",
    "datalist": "training: the task's training data; inference: ISIC folders also hold superpixel maps to skip, hip "
                "also reads a datalist JSON",
    "train_datalist": _SPLIT,
    "val_datalist": _SPLIT,
    "test_datalist": "the task's test sets (the five PraNet sets, one official split, a fold)",
    "train#deterministic_transforms": _CHAIN,
    "train#random_transforms": _CHAIN,
    "train#final_transforms": _CHAIN,
    "validate#preprocessing#transforms": _CHAIN,
    "preprocessing#transforms": _CHAIN,
    "train#postprocessing#transforms": _ACTIVATION,
    "validate#postprocessing#transforms": _ACTIVATION,
    "postprocessing#transforms": _ACTIVATION,
    "post_transforms#transforms": "MONAI Label's post-processing: " + _ACTIVATION,
    "train#key_metric#train_mean_dice#include_background": "a sigmoid network's one channel is the foreground; "
                                                           "softmax networks leave their background channel out",
    "validate#key_metric#val_mean_dice#include_background": "as train_mean_dice's",
    "validate#dataloader#batch_size": "volume tasks validate one volume per batch (slice counts differ)",
    "dataloader#batch_size": "inference: one volume per batch for volume tasks (its slices are the network's batch), "
                             "the runtime's parallel requests for images (InferenceRuntime.batch_size)",
    "validate#inferer": "slice-by-slice inference over volumes",
    "inferer": "inference: slice-by-slice over volumes, or the whole image",
    "validate#handlers": "evaluation: the task's benchmark tables",
    "eval_pred_key": "which prediction (model or original resolution) the generic report reads",
    "eval_label_key": "which label (model or original resolution) the generic report reads",
}


def flat_ids(config: dict, prefix: str = "") -> dict[str, object]:
    """Every id of a config down to its leaves (``a#b#c``; lists and empty dicts are leaves)."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_ids(value, prefix=f"{prefix}{key}#"))
        else:
            out[prefix + key] = value
    return out


def load(bundle: str, name: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / name).read_text())


def differing_ids(name: str) -> dict[str, dict[str, object]]:
    """The ids of config ``name`` that several bundles define differently: id -> bundle -> definition."""
    configs = {b: flat_ids(load(b, name)) for b in BUNDLES}
    out = {}
    for key in sorted(set().union(*configs.values())):
        defined = {b: configs[b][key] for b in BUNDLES if key in configs[b]}
        if len(defined) > 1 and len({json.dumps(v, sort_keys=True) for v in defined.values()}) > 1:
            out[key] = defined
    return out


def per_task(key: str) -> bool:
    return any(key == k or key.startswith(k + "#") for k in PER_TASK_IDS)


@pytest.mark.parametrize("name", CONFIGS)
def test_ids_of_several_bundles_are_identical(name):
    differing = {key: defs for key, defs in differing_ids(name).items() if not per_task(key)}
    assert not differing, f"{name}: ids defined differently across bundles (align them or list them in " \
                          f"PER_TASK_IDS with a reason): {sorted(differing)}\n{json.dumps(differing, indent=1)[:3000]}"


@pytest.mark.parametrize("name", ("multi_gpu_train.json", "multi_gpu_evaluate.json", "inference_onnx.json",
                                  "inference_openvino.json"))
def test_configs_without_task_settings_are_one_file(name):
    """A layer that holds no task setting is the same file in every bundle (a copy: each bundle folder stands alone)."""
    texts = {b: (REPO / "bundles" / b / "configs" / name).read_text() for b in BUNDLES}
    assert len(set(texts.values())) == 1, f"{name} differs between bundles: copy one over the others"


def test_every_per_task_id_differs():
    """No stale entry: each id of :data:`PER_TASK_IDS` is defined differently by some bundles in some config."""
    differing = [key for name in CONFIGS for key in differing_ids(name)]
    stale = [k for k in PER_TASK_IDS if not any(key == k or key.startswith(k + "#") for key in differing)]
    assert not stale, f"PER_TASK_IDS entries that every bundle now defines alike: {stale}"


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


# ----------------------------------------------------------------------------------- one statement of each value


def parser_of(bundle: str, *names: str, meta: bool = True, **updates):
    """The configs ``names`` of ``bundle`` layered as ``monai.bundle run`` layers them (with ``metadata.json`` as
    ``_meta_`` unless ``meta`` is false, as MONAI Label's ``BundleInferTask`` parses ``inference.json``)."""
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in names])
    if meta:
        parser.read_meta(str(configs / "metadata.json"))
    parser.update({"bundle_root": str(REPO / "bundles" / bundle), **updates})
    return parser


def input_spec(bundle: str) -> dict:
    return next(iter(load(bundle, "metadata.json")["network_data_format"]["inputs"].values()))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_image_size_is_stated_once_in_the_metadata(bundle):
    """``metadata.json``'s input ``spatial_shape`` is the one statement of the network's input size: training (outside
    demo runs), evaluation and inference read it, whether or not the metadata is loaded as ``_meta_`` (MONAI Label
    parses ``inference.json`` without it); the output's shape is the input's."""
    fmt = load(bundle, "metadata.json")["network_data_format"]
    size = input_spec(bundle)["spatial_shape"][:2]
    assert all(spec["spatial_shape"] == input_spec(bundle)["spatial_shape"] for spec in fmt["outputs"].values())
    for names in (("train.json",), ("train.json", "evaluate.json"), ("inference.json",)):
        for meta in (True, False):
            assert parser_of(bundle, *names, meta=meta, demo=False).get_parsed_content("image_size") == size
    demo = parser_of(bundle, "train.json", demo=True).get_parsed_content("image_size")
    assert demo == list(get_task(bundle).demo_image_size)
    for name in CONFIGS:
        for key, value in flat_ids(load(bundle, name)).items():
            if key.endswith("image_size"):
                assert "network_input_size(@_meta_, @bundle_root)" in value, f"{name}: {key} states a size: {value}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_demo_follows_the_data_each_workflow_runs_on(bundle, tmp_path):
    """``demo`` (the demo size, epochs and no pretrained weights) is whether the data a workflow runs on is the
    generated sample: training's ``train#dataset#data``, so a datalist given from outside (MONAI Label overrides that
    id) never switches a run into demo mode, nor even resolves the bundle's dataset (no sample is generated); the
    evaluation's own data (``evaluate.json``), without ever building the training datalist."""
    from transfuse_monai.tasks import DEMO_MARKER

    sample, store = tmp_path / "demo_data", tmp_path / "datastore"
    (sample / "images").mkdir(parents=True)
    (sample / DEMO_MARKER).write_text("generated\n")
    generated = [{"image": str(sample / "images" / "1.png"), "label": str(sample / "images" / "1_mask.png")}]
    given = [{"image": str(store / "1.png"), "label": str(store / "labels" / "1.png")}]
    dirs = {"dataset_dir": str(tmp_path / "no_dataset"), "output_dir": str(tmp_path / "out")}
    for data, demo in ((generated, True), (given, False)):
        train = parser_of(bundle, "train.json", **dirs, **{"train#dataset#data": data})
        assert train.get_parsed_content("demo") is demo
        evaluation = parser_of(bundle, "train.json", "evaluate.json", **dirs, test_datalist=data,
                               train_datalist="$1 // 0")  # fails if the evaluation built the training datalist
        assert evaluation.get_parsed_content("demo") is demo
    assert not (tmp_path / "out").exists(), "the bundle's dataset was resolved (a demo sample generated)"


#: The input normalisation each bundle applied when its configs typed the constants (ImageNet's RGB statistics, their
#: averages for grey radiographs); prostate z-scores each volume and has none.
FORMER_NORMALIZATION = {
    "polyp": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "isic2017": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "hip": ([0.449], [0.226]),
}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_normalization_comes_from_the_backbone(bundle):
    """Every ``NormalizeIntensityd`` with constants takes them from ``normalization`` (timm's ``pretrained_cfg`` of the
    backbone, :func:`transfuse_monai.networks.pretrained_normalization`), never from literals; the values are the
    former literals exactly, so the normalised tensors are the same bit for bit."""
    import torch
    from monai.transforms import NormalizeIntensityd

    chains = {"train.json": ("train#deterministic_transforms", "train#final_transforms"),
              "evaluate.json": ("validate#preprocessing#transforms",), "inference.json": ("preprocessing#transforms",)}
    for name, ids in chains.items():
        parser = parser_of(bundle, *(("train.json", name) if name == "evaluate.json" else (name,)), demo=False)
        for chain in ids:
            for i, t in enumerate(parser.get(chain)):
                if t["_target_"] != "NormalizeIntensityd" or t.get("nonzero"):
                    continue
                assert (t["subtrahend"], t["divisor"]) == ("$@normalization['mean']", "$@normalization['std']")
                mean, std = FORMER_NORMALIZATION[bundle]
                assert parser.get_parsed_content("normalization") == {"mean": mean, "std": std}
                image = torch.rand(len(mean), 9, 7) * 3 - 1
                new = parser.get_parsed_content(f"{chain}#{i}")({"image": image.clone()})["image"]
                old = NormalizeIntensityd("image", subtrahend=mean, divisor=std, channel_wise=True)({"image": image})
                assert torch.equal(torch.as_tensor(new), torch.as_tensor(old["image"]))
    if bundle in FORMER_NORMALIZATION:
        assert load(bundle, "train.json")["normalization"] == load(bundle, "inference.json")["normalization"]


# ------------------------------------------------------------------------------- the pre-processing chains agree

#: The deterministic pre-processing of each runnable config: training's (validation during training applies it, the
#: augmentations go between its two parts), the evaluation's (``train.json`` + ``evaluate.json``) and inference's.
#: ``inference.json`` must load alone (MONAI Label, MONAI Deploy) and MONAI's ``%file#id`` macros resolve file paths
#: against the working directory, so each runnable file states its chain and this test proves that they agree.
CHAINS = {
    "train": (("train.json",), ("train#deterministic_transforms", "train#final_transforms")),
    "evaluate": (("train.json", "evaluate.json"), ("validate#preprocessing#transforms",)),
    "inference": (("inference.json",), ("preprocessing#transforms",)),
}
#: Arguments of dictionary transforms that may give one value per key.
PER_KEY_ARGS = ("mode", "anti_aliasing", "padding_mode", "align_corners")
#: The intended differences, the only ones allowed:
#: - training caches its tensors without MONAI metadata (``EnsureTyped`` ``track_meta`` false); evaluation and
#:   inference keep it (the default), which ``Invertd`` needs;
TRACK_META = {"train": False, "evaluate": True, "inference": True}
#: - hip: evaluation requires every radiograph's pixel spacing (its distances are in mm); training and inference
#:   accept radiographs without one;
SPACING_REQUIRED = {"train": False, "evaluate": True, "inference": False}
#: - ISIC 2017: training normalises after its augmentations (the colour jitter works on [0, 1] intensities), so after
#:   the resize; evaluation and inference normalise before resizing (the order the bundle has always had);
MOVED_IN_TRAINING = {"isic2017": "NormalizeIntensityd"}
#: - evaluation scores the labels at their original resolution: polyp and prostate leave out training's label
#:   transforms that change the grid or the values (polyp resizes the masks bilinearly and thresholds them), ISIC and
#:   hip score both resolutions and keep a copy of the original label (``CopyItemsd`` to ``label_original``).
LEFT_OUT_OF_EVALUATION_LABELS = {"polyp": ("Resized", "AsDiscreted"), "prostate": ("Orientationd", "Resized")}
COPIES_ORIGINAL_LABEL = ("isic2017", "hip")


def chain(bundle: str, kind: str) -> tuple:
    names, ids = CHAINS[kind]
    parser = parser_of(bundle, *names, demo=False)
    return parser, [(f"{i}#{n}", t) for i in ids for n, t in enumerate(parser.get(i))]


def projection(parser, transforms, key: str) -> list[tuple[str, dict]]:
    """The transforms of a chain that act on ``key``, each as ``(target, arguments for key)``, references resolved;
    ``track_meta`` and the spacing's ``required`` (the declared differences) are checked apart."""
    out = []
    for tid, t in transforms:
        keys = [t["keys"]] if isinstance(t["keys"], str) else list(t["keys"])
        if key not in keys:
            continue
        args = {}
        for arg, raw in t.items():
            if arg in ("_target_", "keys", "track_meta") or (arg == "required" and "Spacing" in t["_target_"]):
                continue
            if arg in PER_KEY_ARGS and isinstance(raw, list) and len(keys) > 1:
                raw = raw[keys.index(key)]
            args[arg] = parser.get_parsed_content(f"{tid}#{arg}") if isinstance(raw, str) and "@" in raw else raw
        out.append((t["_target_"], args))
    return out


def without(steps: list, *targets: str) -> list:
    return [s for s in steps if s[0].rsplit(".", 1)[-1] not in targets]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_preprocessing_chains_agree(bundle):
    """Training, evaluation and inference pre-process an image with the same transforms, in the same order, with the
    same resolved arguments (the size from the metadata, the normalisation from the backbone, the task's intensity
    settings), except for the intended differences declared above; the evaluation's labels are training's, less
    what changes their grid."""
    chains = {kind: chain(bundle, kind) for kind in CHAINS}
    image = {kind: projection(parser, steps, "image") for kind, (parser, steps) in chains.items()}
    label = {kind: projection(*chains[kind], "label") for kind in ("train", "evaluate")}

    assert image["evaluate"] == image["inference"]
    train, evaluate = image["train"], image["evaluate"]
    moved = MOVED_IN_TRAINING.get(bundle)
    if moved:
        assert [s for s in train if s[0] == moved] == [s for s in evaluate if s[0] == moved]
        assert train != evaluate, f"{bundle}: {moved} is declared to sit elsewhere in training"
        train, evaluate = without(train, moved), without(evaluate, moved)
    assert train == evaluate
    left_out = LEFT_OUT_OF_EVALUATION_LABELS.get(bundle, ())
    assert without(label["evaluate"], "CopyItemsd") == without(label["train"], *left_out)

    for kind, (_, steps) in chains.items():
        targets = [t["_target_"].rsplit(".", 1)[-1] for _, t in steps]
        assert ("CopyItemsd" in targets) == (kind == "evaluate" and bundle in COPIES_ORIGINAL_LABEL), kind
        for _, t in steps:
            if t["_target_"] == "EnsureTyped":
                assert t.get("track_meta", True) is TRACK_META[kind], kind
            if t["_target_"].endswith("RadiographSpacingd"):
                assert t["required"] is SPACING_REQUIRED[kind], kind

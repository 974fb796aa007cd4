"""End-to-end test of the ISIC 2017 bundle on a tiny generated dataset in the official ISIC folder layout, and of
:func:`transfuse_monai.networks.nets.load_transfuse_checkpoint`.

Runs the bundle as a user does (``python -m monai.bundle ...`` from the repository root): train 2 epochs at a
non-square 32x64 (H x W) size, evaluate at both resolutions (tables + files), infer (mask sizes equal the inputs', and
their Jaccard against the masks equals what evaluation reports at the original resolution), export ``model.ts`` and
reload it; metadata, network I/O and workflow-property checks; and the authors' checkpoint format evaluated through
the single ``init_ckpt`` override.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_reference import AuthorsTransFuseS  # noqa: E402

from transfuse_monai.tasks import ISIC2017_SPLITS, get_task  # noqa: E402
from transfuse_monai.metrics import binary_segmentation_metrics  # noqa: E402
from transfuse_monai.networks.nets import (  # noqa: E402
    TransFuse,
    convert_authors_state_dict,
    is_authors_state_dict,
    load_transfuse_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "isic2017"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
SIZE = (32, 64)  # H x W: non-square, so a swapped axis anywhere in the pipeline shows
SMALL = ["--image_size", json.dumps(list(SIZE)), "--num_workers", "0", "--pretrained", "false"]
EVALUATE = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']"
TEST_SIZES = [(40, 70), (56, 48), (36, 90)]  # original sizes of the test images (H, W)


def bundle(*args: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("isic2017")
    data = Path(
        get_task("isic2017").make_sample(
            root / "data", n_train=4, n_val=2, n_test=3, size=TEST_SIZES, official_layout=True, seed=5
        )
    )
    return {"data": data, "ckpt": root / "models", "out": root / "eval", "pred": root / "pred", "root": root}


@pytest.fixture(scope="module")
def trained(work) -> dict[str, Path]:
    proc = bundle(
        "run", "training", "--config_file", "bundles/isic2017/configs/train.json", "--dataset_dir", str(work["data"]),
        "--epochs", "2", "--batch_size", "4", *SMALL, "--ckpt_dir", str(work["ckpt"]), "--output_dir", str(work["out"]),
    )
    work["train_log"] = proc.stdout + proc.stderr
    return work


def test_training_writes_checkpoints(trained):
    ckpt = trained["ckpt"]
    assert (ckpt / "model.pt").is_file(), "best checkpoint (by validation Jaccard) missing"
    last = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert set(last) >= {"model", "optimizer", "trainer"}
    assert last["trainer"]["epoch_length"] == 1 and last["trainer"]["iteration"] == 2  # 4 images, batch 4, 2 epochs
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(7e-5)
    assert tuple(last["optimizer"]["param_groups"][0]["betas"]) == (0.5, 0.999)
    log = trained["train_log"]
    assert "val_mean_jaccard" in log and "val_mean_dice" in log
    assert "DEMO" not in log, "a given dataset must not switch to the demo"
    state = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    assert state["transformer.pos_embed"].shape[1] == (SIZE[0] // 16) * (SIZE[1] // 16)


def test_evaluate_reports_both_resolutions(trained):
    proc = bundle(
        "run", "--config_file", EVALUATE, "--dataset_dir", str(trained["data"]), *SMALL,
        "--ckpt_dir", str(trained["ckpt"]), "--output_dir", str(trained["out"]),
    )
    out = proc.stdout
    assert "ISIC 2017 test: at the model input resolution 32x64 (masks resized)" in out
    assert "ISIC 2017 test: at the original mask resolution (predictions resized back)" in out
    assert "| set | n | jaccard | dice | accuracy |" in out
    assert "| set | n | jaccard_orig | dice_orig | accuracy_orig |" in out
    assert out.count("| test | 3 |") == 3  # model resolution, original resolution, the per-class report
    per_class = json.loads((trained["out"] / "segmentation_summary.json").read_text())["test"]
    assert {"dice_lesion", "iou_lesion", "hd_px_lesion", "hd95_px_lesion", "asd_px_lesion"} <= set(per_class)
    # the per-class report reads the original-resolution prediction: its Dice is the ISIC original-resolution Dice
    assert per_class["dice_lesion"] == pytest.approx(
        json.loads((trained["out"] / "isic2017_original_res_summary.json").read_text())["test"]["dice_orig"], abs=1e-6
    )
    assert len(list((trained["out"] / "overlays").glob("*.png"))) == 3
    names = [f"ISIC_{i:07d}" for i in range(6, 9)]  # ids continue across splits: 4 train, 2 val, then test
    for prefix, suffix in (("isic2017_model_res_", ""), ("isic2017_original_res_", "_orig")):
        rows = read_csv(trained["out"] / f"{prefix}per_image.csv")
        assert [r["name"] for r in rows] == names and {r["set"] for r in rows} == {"test"}
        assert list(rows[0]) == ["set", "name", f"jaccard{suffix}", f"dice{suffix}", f"accuracy{suffix}"]
        summary = json.loads((trained["out"] / f"{prefix}summary.json").read_text())
        assert list(summary) == ["test"] and summary["test"]["n"] == 3
        for key in ("jaccard", "dice", "accuracy"):
            values = [float(r[key + suffix]) for r in rows]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert summary["test"][key + suffix] == pytest.approx(np.mean(values))
        # Dice >= Jaccard per image, equal only at 0 or 1
        assert all(float(r[f"dice{suffix}"]) >= float(r[f"jaccard{suffix}"]) - 1e-7 for r in rows)
    assert not list(trained["out"].glob(".*tmp*")), "no temporary report files may remain"


def test_inference_masks_match_inputs_and_evaluation(trained):
    images = trained["data"] / "ISIC-2017_Test_v2_Data"  # also holds *_superpixels.png and a metadata CSV
    bundle(
        "run", "--config_file", "bundles/isic2017/configs/inference.json", "--input_dir", str(images),
        "--image_size", json.dumps(list(SIZE)), "--num_workers", "0", "--ckpt_dir", str(trained["ckpt"]),
        "--output_dir", str(trained["pred"]),
    )
    inputs = sorted(images.glob("ISIC_???????.jpg"))
    outputs = sorted(p for p in trained["pred"].iterdir() if p.name != "inference_report.json")
    assert [p.name for p in outputs] == [f"{p.stem}.png" for p in inputs], "superpixel maps must not be segmented"
    rows = {r["name"]: r for r in read_csv(trained["out"] / "isic2017_original_res_per_image.csv")}
    for src, mask_path, (h, w) in zip(inputs, outputs, TEST_SIZES):
        with Image.open(src) as a, Image.open(mask_path) as b:
            assert a.size == b.size == (w, h)
            mask = np.asarray(b)
        assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
        gt_path = trained["data"] / "ISIC-2017_Test_v2_Part1_GroundTruth" / f"{src.stem}_segmentation.png"
        gt = np.asarray(Image.open(gt_path)) > 127
        # the same model and resizing: the saved masks score what evaluation reports at the original resolution
        values = binary_segmentation_metrics((mask > 0).astype(np.float32), gt)
        assert values["jaccard"] == pytest.approx(float(rows[src.stem]["jaccard_orig"]), abs=1e-5)
        assert values["accuracy"] == pytest.approx(float(rows[src.stem]["accuracy_orig"]), abs=1e-5)


def test_export_and_reload_torchscript(trained):
    from monai.bundle import ckpt_export

    ts = trained["root"] / "model.ts"
    ckpt_export(
        "network_def", filepath=str(ts), ckpt_file=str(trained["ckpt"] / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.json"), image_size=list(SIZE),
    )
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"]
    assert "network_def" in json.loads(extra["inference.json"])
    eager = TransFuse(img_size=SIZE).eval()
    eager.load_state_dict(torch.load(trained["ckpt"] / "model.pt", map_location="cpu", weights_only=True))
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=0)


def test_metadata_and_network_io():
    from monai.bundle import verify_metadata, verify_net_in_out

    if SCHEMA.is_file():  # raises on any schema violation
        verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [192, 256]
    assert "eval_metrics" not in meta  # no weights ship with the bundle; the paper's figures are in docs/README.md
    # a forward pass at the metadata's 192x256
    verify_net_in_out(
        "network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.json")
    )


def test_workflow_properties(work):
    from monai.bundle import ConfigWorkflow

    train = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="train", dataset_dir=str(work["data"]),
        pretrained=False, image_size=list(SIZE), num_workers=0,
    )
    train.initialize()
    assert train.check_properties() == []
    infer = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer",
        input_dir=str(work["data"] / "ISIC-2017_Test_v2_Data"),
    )
    infer.initialize()
    assert infer.check_properties() == []


def test_plain_layout_and_bad_dataset(tmp_path):
    """The plain {train,val,test}/{images,masks} layout is read; a missing mask stops training before anything is
    written, naming the image."""
    from monai.bundle import ConfigWorkflow

    data = Path(get_task("isic2017").make_sample(tmp_path / "plain", n_train=3, n_val=1, n_test=1, size=(32, 32),
                                                official_layout=False))
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", dataset_dir=str(data),
                        pretrained=False, image_size=[32, 32], num_workers=0)
    wf.initialize()
    assert [Path(d["image"]).parent for d in wf.parser.get_parsed_content("train_datalist")] == [
        data / "train" / "images"] * 3
    assert len(wf.parser.get_parsed_content("val_datalist")) == 1

    victim = sorted((data / "train" / "masks").iterdir())[1]
    victim.unlink()
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", dataset_dir=str(data),
                        pretrained=False, image_size=[32, 32], num_workers=0, epochs=1,
                        ckpt_dir=str(tmp_path / "m"), output_dir=str(tmp_path / "o"))
    wf.initialize()
    with pytest.raises(Exception) as info:
        wf.run()
    messages, err = [], info.value
    while err is not None:
        messages.append(str(err))
        err = err.__cause__
    assert any(f"missing mask for image '{victim.stem}.jpg'" in m for m in messages), messages
    assert not (tmp_path / "m").exists(), "nothing may be written when the dataset is invalid"


# ---------------------------------------------------------------------------------------------------------------------
# the authors' checkpoint format
# ---------------------------------------------------------------------------------------------------------------------


def _authors_model(seed: int = 0) -> AuthorsTransFuseS:
    """The authors' TransFuse_S layout at their ISIC grid (12x16 tokens, 192x256) with trained-looking batch-norm
    statistics and conv biases (which the converter folds), in eval mode, as their released checkpoint was trained."""
    torch.manual_seed(seed)
    model = AuthorsTransFuseS(num_classes=1, align_corners=False, grid=(12, 16))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.2, 0.2, generator=gen)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.8, 1.2, generator=gen)
                m.bias.uniform_(-0.1, 0.1, generator=gen)
                m.running_mean.uniform_(-0.1, 0.1, generator=gen)
                m.running_var.uniform_(0.8, 1.2, generator=gen)
        for head in (model.final_x, model.final_1, model.final_2):
            head[-1].conv.weight.mul_(0.1)
    return model.eval()


@pytest.fixture(scope="module")
def authors_ckpt(tmp_path_factory) -> tuple[Path, AuthorsTransFuseS]:
    model = _authors_model()
    path = tmp_path_factory.mktemp("authors") / "TransFuse-19_best.pth"
    torch.save(model.state_dict(), path)  # what the authors' train script saves
    return path, model


def test_evaluate_runs_on_the_authors_checkpoint_with_one_override(work, authors_ckpt, tmp_path):
    from monai.bundle import ConfigWorkflow

    path, reference = authors_ckpt
    data = tmp_path / "val_only"  # only the split evaluated: nothing else may be needed
    for folder in ISIC2017_SPLITS["val"]:
        shutil.copytree(work["data"] / folder, data / folder)
    no_models = tmp_path / "models"  # absent: evaluation must not look for model.pt
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], workflow_type=None,
        init_ckpt=str(path), dataset_dir=str(data), eval_split="val", num_workers=0,
        ckpt_dir=str(no_models), output_dir=str(tmp_path / "eval"),
        amp=False,  # compared with the authors' float32 forward pass below
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    assert not no_models.exists()

    net = wf.parser.get_parsed_content("network")
    assert net.img_size == (192, 256) and net.align_corners is False  # the released checkpoint's convention
    dataset = wf.parser.get_parsed_content("validate#dataset")
    rows = {r["name"]: r for r in read_csv(tmp_path / "eval" / "isic2017_model_res_per_image.csv")}
    assert len(rows) == len(dataset) == 2
    for item in dataset:
        x = item["image"].as_tensor()[None]
        with torch.no_grad():
            ours = net.eval()(x)
            _, _, ref_final = reference(x)
        torch.testing.assert_close(ours, ref_final, atol=1e-4, rtol=1e-4)
        # the reported metrics are those of the authors' final map
        expected = binary_segmentation_metrics(torch.sigmoid(ref_final[0]), item["label"].as_tensor())
        row = rows[item["name"]]
        assert float(row["jaccard"]) == pytest.approx(expected["jaccard"], abs=1e-5)
        assert float(row["dice"]) == pytest.approx(expected["dice"], abs=1e-5)
    assert (tmp_path / "eval" / "isic2017_original_res_summary.json").is_file()
    assert not (tmp_path / "eval" / "demo_data").exists(), "the data given must be used, not a generated demo"


def test_train_config_fine_tunes_from_the_authors_checkpoint(work, authors_ckpt):
    """In train.json the checkpoint initialises the network (at the training size, position embedding resampled) and
    fine-tuning keeps the bundle's align_corners, so the saved model.pt evaluates the same way as any other."""
    from monai.bundle import ConfigWorkflow

    path, _ = authors_ckpt
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), workflow_type="train", init_ckpt=str(path),
        dataset_dir=str(work["data"]), image_size=list(SIZE), num_workers=0,
    )
    wf.initialize()
    net = wf.parser.get_parsed_content("network")
    assert wf.parser.get_parsed_content("network_def#pretrained") is False  # no ImageNet download needed
    expected = convert_authors_state_dict(torch.load(path, weights_only=True), img_size=SIZE)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)
    assert net.align_corners is True


# ---------------------------------------------------------------------------------------------------------------------
# load_transfuse_checkpoint
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_state() -> dict:
    torch.manual_seed(1)
    return TransFuse(img_size=(32, 32)).state_dict()


@pytest.fixture(scope="module")
def small_net() -> TransFuse:
    torch.manual_seed(2)
    return TransFuse(img_size=(32, 32))


def _same_weights(net: nn.Module, state: dict) -> bool:
    return all(torch.equal(value, state[key]) for key, value in net.state_dict().items())


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module"])
def test_loader_accepts_our_formats(small_state, small_net, tmp_path, wrap):
    content = {
        "plain": small_state,
        "model": {"model": small_state, "optimizer": {}, "trainer": {"epoch": 3}},  # a bundle's checkpoint_last.pt
        "state_dict": {"state_dict": small_state},
        "module": {f"module.{k}": v for k, v in small_state.items()},  # DataParallel / DDP
    }[wrap]
    path = tmp_path / "ckpt.pt"
    if wrap == "model":
        torch.save(content, path)  # through a file once; the other wrappers as loaded dicts
    assert not is_authors_state_dict(content)
    with torch.no_grad():
        for p in small_net.parameters():
            p.zero_()
    small_net.align_corners = True
    assert load_transfuse_checkpoint(small_net, path if wrap == "model" else content) is small_net
    assert small_net.align_corners is True  # only the authors' format changes it
    assert _same_weights(small_net, small_state)


def test_loader_converts_the_authors_format_at_any_size(authors_ckpt):
    path, _ = authors_ckpt
    sd = torch.load(path, weights_only=True)
    assert is_authors_state_dict(sd) and is_authors_state_dict({"state_dict": sd})
    net = load_transfuse_checkpoint(TransFuse(img_size=(32, 64)), path, authors_align_corners=True)
    assert net.align_corners is True
    assert net.transformer.pos_embed.shape[1] == 2 * 4  # 12x16 grid resampled to 2x4
    expected = convert_authors_state_dict(sd, img_size=(32, 64))
    assert _same_weights(net, expected)
    # at the checkpoint's own size the converted network computes the authors' final map: see
    # test_evaluate_runs_on_the_authors_checkpoint_with_one_override


def test_loader_errors_are_clear_and_leave_the_model_untouched(small_state, small_net, tmp_path):
    before = {k: v.clone() for k, v in small_net.state_dict().items()}
    with pytest.raises(FileNotFoundError, match="not found"):
        load_transfuse_checkpoint(small_net, tmp_path / "missing.pth")
    # another number of output channels
    head = "head_final.1.conv"
    two_class = {**small_state, f"{head}.weight": torch.zeros(2, 64, 1, 1), f"{head}.bias": torch.zeros(2)}
    with pytest.raises(ValueError, match="predicts 2 channel.*out_channels=1"):
        load_transfuse_checkpoint(small_net, two_class)
    # our format trained at another input size: named, with the fix
    other_size = {**small_state, "transformer.pos_embed": torch.zeros(1, 6, 384)}
    with pytest.raises(ValueError, match=r"transformer.pos_embed \(1, 6, 384\).*img_size=\(32, 32\)"):
        load_transfuse_checkpoint(small_net, other_size)
    # keys of something else
    with pytest.raises(ValueError, match="1 unexpected: classifier.weight"):
        load_transfuse_checkpoint(small_net, {**small_state, "classifier.weight": torch.zeros(2)})
    incomplete = {k: v for k, v in small_state.items() if not k.startswith("decoder1.")}
    with pytest.raises(ValueError, match="missing: decoder1"):
        load_transfuse_checkpoint(small_net, incomplete)
    assert _same_weights(small_net, before), "a checkpoint that does not fit must not be loaded in part"
    # files that are not state dicts
    bad = tmp_path / "list.pt"
    torch.save([1, 2, 3], bad)
    with pytest.raises(ValueError, match="not a state dict"):
        load_transfuse_checkpoint(small_net, bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as a PyTorch checkpoint"):
        load_transfuse_checkpoint(small_net, garbage)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": small_state, "net": nn.Linear(2, 2)}, pickled)  # a whole module: arbitrary code on load
    with pytest.raises(ValueError, match="besides tensors"):
        load_transfuse_checkpoint(small_net, pickled)
    with pytest.raises(TypeError, match="TransFuse"):
        load_transfuse_checkpoint(nn.Linear(2, 2), small_state)
    assert _same_weights(small_net, before)

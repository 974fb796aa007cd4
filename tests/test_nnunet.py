"""TransFuse inside nnU-Net v2: the trainer's network, loss and options, the conversion of the 2D tasks into nnU-Net's
raw format, the plans configuration, and nnU-Net's own commands end to end (plan and pre-process, train, continue,
predict, evaluate) on a generated dataset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfuse_monai.nnunet import TRAINERS_FOLDER, ext_trainer_value
from transfuse_monai.nnunet.convert import case_identifier, convert_task
from transfuse_monai.nnunet.plans import add_transfuse_configuration, transfuse_patch_size
from transfuse_monai.tasks import get_task

nnunetv2 = pytest.importorskip("nnunetv2", reason="nnU-Net v2 is the [nnunet] extra: pip install -e .[nnunet]")

from transfuse_monai.nnunet.trainer import HeadsLoss, nnUNetTrainerTransFuse  # noqa: E402


#: the architecture entry nnU-Net's planner writes (the trainer replaces the network)
_UNET = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet", "arch_kwargs": {},
         "_kw_requires_import": []}


def _plans(patch_size=(64, 64), **configuration) -> dict:
    return {
        "dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans",
        "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "patch_size": list(patch_size),
                                  "batch_size": 2, "architecture": _UNET, **configuration}},
    }


def _configuration(plans: dict, name: str = "2d"):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans), PlansManager(plans).get_configuration(name)


# ----------------------------------------------------------------------------------------------- network and loss


def test_patch_size_is_rounded_up_to_multiples_of_16():
    assert transfuse_patch_size((40, 56)) == (48, 64)
    assert transfuse_patch_size((64, 352)) == (64, 352)
    assert transfuse_patch_size((1, 17)) == (16, 32)


def test_network_follows_plans_channels_patch_and_transfuse_entry():
    plans = _plans((40, 56), transfuse={"dropout": 0.1, "bifusion": ["spatial", "channel"]})
    manager, configuration = _configuration(plans)
    net = nnUNetTrainerTransFuse.build_network_architecture(manager, configuration, 2, 3, False)
    assert (net.in_channels, net.out_channels, net.img_size) == (2, 3, (48, 64))
    assert net.dropout.p == pytest.approx(0.1)
    assert net.deep_supervision  # the heads are trained (HeadsLoss); eval mode returns the final head only
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 2, 48, 64)).shape == (1, 3, 48, 64)


def test_unknown_option_in_plans_is_named():
    manager, configuration = _configuration(_plans(transfuse={"varient": "L"}))
    with pytest.raises(ValueError, match=r"varient.*'transfuse' entry"):
        nnUNetTrainerTransFuse.build_network_architecture(manager, configuration, 3, 2, False)


def test_3d_configuration_is_refused_with_the_command_to_use():
    manager, configuration = _configuration(_plans((16, 64, 64)))
    with pytest.raises(ValueError, match=r"2D network.*nnUNetv2_train <dataset> 2d"):
        nnUNetTrainerTransFuse.build_network_architecture(manager, configuration, 3, 2, False)


def test_trainer_rounds_the_patch_size_into_the_plans_it_saves(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    plans = {**_plans((40, 56)), "continue_training": False}
    dataset = {"labels": {"background": 0, "polyp": 1}, "channel_names": {"0": "R", "1": "G", "2": "B"},
               "numTraining": 4, "file_ending": ".png"}
    trainer = nnUNetTrainerTransFuse(plans, "2d", 0, dataset, device=torch.device("cpu"))
    assert tuple(trainer.configuration_manager.patch_size) == (48, 64)
    assert trainer.plans_manager.plans["configurations"]["2d"]["_planned_patch_size"] == [40, 56]
    assert trainer.my_init_kwargs["plans"]["configurations"]["2d"]["patch_size"] == [48, 64]  # in checkpoints
    assert (trainer.enable_deep_supervision, trainer.initial_lr) == (False, 1e-4)
    log = next((tmp_path / "results").rglob("training_log_*.txt")).read_text()
    assert "patch size (40, 56) of the plans rounded up to (48, 64)" in log

    plans3d = {**_plans((16, 64, 64)), "continue_training": False}
    with pytest.raises(ValueError, match="2D network"):
        nnUNetTrainerTransFuse(plans3d, "2d", 1, dataset, device=torch.device("cpu"))
    assert not (tmp_path / "results" / "Dataset999_Test" / "nnUNetTrainerTransFuse__nnUNetPlans__2d" / "fold_1").exists()


def test_heads_loss_weights_nnunet_loss_over_full_resolution_heads():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    base = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
    loss = HeadsLoss(base, (0.5, 0.3, 0.2))
    torch.manual_seed(0)
    heads = torch.randn(2, 3, 3, 16, 16)
    target = torch.randint(0, 3, (2, 1, 16, 16)).float()
    expected = sum(w * base(heads[:, i], target) for i, w in enumerate((0.5, 0.3, 0.2)))
    assert torch.allclose(loss(heads, target), expected)
    assert torch.allclose(loss(heads[:, 0], target), base(heads[:, 0], target))  # eval-mode output: the final head
    with pytest.raises(ValueError, match="3 stacked head outputs but 2"):
        HeadsLoss(base, (0.5, 0.5))(heads, target)


def test_pretrained_branches_come_from_local_files(tmp_path):
    """The trainer's ImageNet loading copies the files' tensors into the network it trains (and nothing else)."""
    import timm

    torch.manual_seed(0)
    cnn = timm.create_model("resnet34", pretrained=False).state_dict()
    vit = timm.create_model("deit_small_patch16_224", pretrained=False).state_dict()
    torch.save(cnn, tmp_path / "resnet34.pth")
    torch.save(vit, tmp_path / "deit_s.pth")
    entry = {"cnn_weights": str(tmp_path / "resnet34.pth"), "vit_weights": str(tmp_path / "deit_s.pth")}
    manager, configuration = _configuration(_plans(transfuse=entry))
    trainer = nnUNetTrainerTransFuse.__new__(nnUNetTrainerTransFuse)  # the method alone, without nnU-Net's folders
    trainer.options = nnUNetTrainerTransFuse.resolve_options(configuration, check_files=True)
    trainer.network = nnUNetTrainerTransFuse.build_network_architecture(manager, configuration, 3, 2, False)
    trainer.plans_manager, logged = manager, []
    trainer.print_to_log_file = lambda *a, **k: logged.append(" ".join(map(str, a)))
    head_before = {k: v.clone() for k, v in trainer.network.head_final.state_dict().items()}
    trainer._load_pretrained_branches()
    state = trainer.network.state_dict()
    assert torch.equal(state["cnn.conv1.weight"], cnn["conv1.weight"])
    assert torch.equal(state["transformer.patch_embed.proj.weight"], vit["patch_embed.proj.weight"])
    assert all(torch.equal(head_before[k], v) for k, v in trainer.network.head_final.state_dict().items())
    assert "resnet34.pth" in logged[-1] and "deit_s.pth" in logged[-1]


def test_missing_weights_file_is_named_before_training(tmp_path):
    manager, configuration = _configuration(_plans(transfuse={"cnn_weights": str(tmp_path / "nope.pth")}))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        nnUNetTrainerTransFuse.resolve_options(configuration, check_files=True)
    # predicting (another machine, no ImageNet files) never needs them
    nnUNetTrainerTransFuse.build_network_architecture(manager, configuration, 3, 2, False)


# ----------------------------------------------------------------------------------------------------- conversion


def test_polyp_conversion_writes_nnunet_png_layout(tmp_path):
    task = get_task("polyp")
    root = task.make_sample(tmp_path / "polyp", n_train=4, test_sets={"Kvasir": 2}, size=(40, 48),
                            test_sizes=[(36, 50)])
    folder = convert_task("polyp", root, 501, raw_root=tmp_path / "raw", progress=False)
    assert folder.name == "Dataset501_Polyp"
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert dataset["labels"] == {"background": 0, "polyp": 1}
    assert (dataset["numTraining"], dataset["file_ending"]) == (4, ".png")
    assert dataset["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    images = sorted((folder / "imagesTr").iterdir())
    assert [p.name for p in images] == [f"{i:04d}_0000.png" for i in range(4)]  # JPEG frames are written as PNG
    image = np.asarray(Image.open(images[1]))
    label = np.asarray(Image.open(folder / "labelsTr" / "0001.png"))
    assert image.shape == (40, 48, 3) and label.shape == (40, 48)
    source_mask = np.asarray(Image.open(Path(root) / "TrainDataset" / "masks" / "0001.png"))
    assert set(np.unique(label)) == {0, 1}
    assert np.array_equal(label, (source_mask > 127).astype(np.uint8))  # 0/255 masks -> class indices
    tests = sorted(p.name for p in (folder / "imagesTs").iterdir())
    assert tests == ["Kvasir_0000_0000.png", "Kvasir_0001_0000.png"]
    assert np.asarray(Image.open(folder / "labelsTs" / "Kvasir_0000.png")).shape == (36, 50)

    with pytest.raises(FileExistsError, match="ID 501 is already taken"):
        convert_task("polyp", root, 501, name="Other", raw_root=tmp_path / "raw", progress=False)


def test_conversion_resizes_and_keeps_nothing_on_bad_input(tmp_path):
    task = get_task("polyp")
    root = Path(task.make_sample(tmp_path / "polyp", n_train=3, test_sets={}, size=(40, 48)))
    folder = convert_task(task, root, 7, name="Small", raw_root=tmp_path / "raw", size=(32, 32), progress=False)
    assert np.asarray(Image.open(folder / "imagesTr" / "0000_0000.png")).shape == (32, 32, 3)
    assert not (folder / "imagesTs").exists()

    Image.fromarray(np.full((40, 48), 7, np.uint8)).save(root / "TrainDataset" / "masks" / "0002.png")
    with pytest.raises(ValueError, match="0002.png"):
        convert_task(task, root, 8, raw_root=tmp_path / "raw", progress=False)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset007_Small"]  # nothing partial


def test_isic_conversion_puts_train_and_val_in_training_and_test_apart(tmp_path):
    root = get_task("isic2017").make_sample(tmp_path / "isic", n_train=3, n_val=2, n_test=2, size=(40, 48))
    folder = convert_task("isic2017", root, 504, raw_root=tmp_path / "raw", progress=False)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert (folder.name, dataset["numTraining"], dataset["transfuse_monai"]["test_cases"]) == ("Dataset504_Isic2017", 5, 2)
    training = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert len(training) == 5 and all(n.startswith("ISIC_") and n.endswith("_0000.png") for n in training)
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [n[: -len("_0000.png")] + ".png" for n in training]


def test_hip_conversion_keeps_pixel_spacing(tmp_path):
    import SimpleITK as sitk

    task = get_task("hip")
    root = task.make_sample(tmp_path / "hip", n_train=2, n_val=1, n_test=1, size=(40, 48),
                            formats=("dicom", "png", "nifti"), spacing=(0.2, 0.25))
    folder = convert_task("hip", root, 502, raw_root=tmp_path / "raw", progress=False)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert (dataset["numTraining"], dataset["file_ending"]) == (3, ".nii.gz")  # train + val; test apart
    assert dataset["labels"] == {name: value for value, name in enumerate(task.class_names)}
    for image in sorted((folder / "imagesTr").iterdir()):
        read = sitk.ReadImage(str(image))
        assert read.GetSize() == (48, 40)
        assert read.GetSpacing() == pytest.approx((0.25, 0.2))  # (column, row): nnU-Net reads (row, column)
        case = image.name[: -len("_0000.nii.gz")]
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz")))
        assert set(np.unique(label)) <= set(range(task.num_classes)) and label.max() > 0
    assert len(list((folder / "imagesTs").iterdir())) == 1


def test_3d_task_is_sent_to_nnunets_msd_conversion(tmp_path):
    with pytest.raises(ValueError, match="nnUNetv2_convert_MSD_dataset"):
        convert_task("prostate", tmp_path, 503, raw_root=tmp_path / "raw")
    assert case_identifier({"image": "/x/a b.png", "name": "a b", "set": "CVC-300"}) == "CVC-300_a_b"


# ------------------------------------------------------------------------------------------------ plans and env


def test_configure_adds_a_configuration_inheriting_2d(tmp_path):
    folder = tmp_path / "pre" / "Dataset011_X"
    folder.mkdir(parents=True)
    plans_file = folder / "nnUNetPlans.json"
    plans_file.write_text(json.dumps(_plans((64, 64))))
    weights = tmp_path / "r34.pth"
    weights.write_bytes(b"x")
    add_transfuse_configuration(11, "2d_tf", {"variant": "S", "cnn_weights": str(weights)}, batch_size=3,
                                preprocessed_root=tmp_path / "pre")
    plans = json.loads(plans_file.read_text())
    assert plans["configurations"]["2d"]["patch_size"] == [64, 64]  # the others unchanged
    assert plans["configurations"]["2d_tf"] == {"inherits_from": "2d", "transfuse": {
        "variant": "S", "cnn_weights": str(weights.resolve())}, "batch_size": 3}
    with pytest.raises(ValueError, match="already has a configuration '2d_tf'"):
        add_transfuse_configuration(11, "2d_tf", {}, preprocessed_root=tmp_path / "pre")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        add_transfuse_configuration(11, "2d_b", {"vit_weights": str(tmp_path / "missing.pth")},
                                    preprocessed_root=tmp_path / "pre")
    with pytest.raises(FileNotFoundError, match="nnUNetv2_plan_and_preprocess"):
        add_transfuse_configuration(12, "2d_b", {}, preprocessed_root=tmp_path / "pre")


def test_env_names_the_trainers_folder_once(monkeypatch):
    assert (TRAINERS_FOLDER / "nnUNetTrainerTransFuse.py").is_file()
    value = ext_trainer_value(os.pathsep.join(["/mine", str(TRAINERS_FOLDER)]))
    assert value.split(os.pathsep) == ["/mine", str(TRAINERS_FOLDER)]
    monkeypatch.setenv("nnUNet_extTrainer", "/mine")
    out = subprocess.run([sys.executable, "-m", "transfuse_monai.nnunet", "env"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"export nnUNet_extTrainer=/mine{os.pathsep}{TRAINERS_FOLDER}"


# ------------------------------------------------------------------------------------------ nnU-Net's CLI end to end

_CI_TRAINER = '''
import os
from transfuse_monai.nnunet.trainer import nnUNetTrainerTransFuse_5epochs


class nnUNetTrainerTransFuse_ci(nnUNetTrainerTransFuse_5epochs):
    """A user's variant in their own folder: NNUNET_CI_EPOCHS epochs of 6 iterations."""

    def __init__(self, plans, configuration, fold, dataset_json, device):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ["NNUNET_CI_EPOCHS"])
        self.num_iterations_per_epoch = 6
        self.num_val_iterations_per_epoch = 2
'''


def _cli(name: str, *args: str, env: dict, log: Path) -> str:
    binary = Path(sys.executable).parent / name
    result = subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, timeout=600)
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{name} failed:\n{(result.stdout + result.stderr)[-4000:]}"
    return result.stdout + result.stderr


def test_nnunet_cli_end_to_end(tmp_path, two_threads):
    """Convert, plan and pre-process, train 2 epochs of fold 0 from local ImageNet files, continue to 3 epochs with
    ``--c`` after the files are gone (another machine), find the best configuration, predict the test images and
    evaluate them, all through nnU-Net's commands."""
    import timm

    task = get_task("polyp")
    root = task.make_sample(tmp_path / "polyp", n_train=10, test_sets={"Kvasir": 3}, size=(64, 64),
                            test_sizes=[(60, 72)])
    user_trainers = tmp_path / "my_trainers"
    user_trainers.mkdir()
    (user_trainers / "my_trainer.py").write_text(_CI_TRAINER)
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(tmp_path / "res"), "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1",
           "nnUNet_extTrainer": ext_trainer_value(str(user_trainers)), "NNUNET_CI_EPOCHS": "2",
           "OMP_NUM_THREADS": "2"}
    logs = tmp_path / "logs"
    logs.mkdir()

    subprocess.run([sys.executable, "-m", "transfuse_monai.nnunet", "convert", "polyp", root, "531", "--raw",
                    str(tmp_path / "raw"), "--no-progress"], check=True, env=env)
    _cli("nnUNetv2_plan_and_preprocess", "-d", "531", "-c", "2d", "-np", "1", env=env, log=logs / "plan.log")

    weights = tmp_path / "imagenet"
    weights.mkdir()
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), weights / "resnet34.pth")
    torch.save(timm.create_model("deit_small_patch16_224", pretrained=False).state_dict(), weights / "deit_s.pth")
    subprocess.run([sys.executable, "-m", "transfuse_monai.nnunet", "configure", "531", "--name", "2d_tf",
                    "--cnn-weights", str(weights / "resnet34.pth"), "--vit-weights", str(weights / "deit_s.pth"),
                    "--preprocessed", str(tmp_path / "pre")], check=True, env=env)

    out = _cli("nnUNetv2_train", "531", "2d_tf", "0", "-tr", "nnUNetTrainerTransFuse_ci", "-device", "cpu",
               env=env, log=logs / "train.log")
    assert "ImageNet weights loaded into" in out and "resnet34.pth" in out
    fold = tmp_path / "res" / "Dataset531_Polyp" / "nnUNetTrainerTransFuse_ci__nnUNetPlans__2d_tf" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    saved_plans = json.loads((fold.parent / "plans.json").read_text())
    assert saved_plans["configurations"]["2d_tf"]["transfuse"]["cnn_weights"].endswith("resnet34.pth")

    shutil.rmtree(weights)  # continuing and predicting need no ImageNet file
    env["NNUNET_CI_EPOCHS"] = "3"
    out = _cli("nnUNetv2_train", "531", "2d_tf", "0", "-tr", "nnUNetTrainerTransFuse_ci", "-device", "cpu", "--c",
               env=env, log=logs / "continue.log")
    assert "continuing a training" in out and "Epoch 2" in out and "Epoch 0\n" not in out
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 3 and checkpoint["trainer_name"] == "nnUNetTrainerTransFuse_ci"
    validation = json.loads((fold / "validation" / "summary.json").read_text())
    assert 0.0 <= validation["foreground_mean"]["Dice"] <= 1.0

    _cli("nnUNetv2_find_best_configuration", "531", "-c", "2d_tf", "-tr", "nnUNetTrainerTransFuse_ci", "-f", "0",
         "--disable_ensembling", "-np", "1", env=env, log=logs / "best.log")
    instructions = (tmp_path / "res" / "Dataset531_Polyp" / "inference_instructions.txt").read_text()
    assert "nnUNetv2_predict" in instructions and "-tr nnUNetTrainerTransFuse_ci" in instructions

    raw = tmp_path / "raw" / "Dataset531_Polyp"
    _cli("nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "pred"), "-d", "531", "-c", "2d_tf",
         "-tr", "nnUNetTrainerTransFuse_ci", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
         "--disable_progress_bar", env=env, log=logs / "predict.log")
    predictions = sorted((tmp_path / "pred").glob("*.png"))
    assert [p.name for p in predictions] == ["Kvasir_0000.png", "Kvasir_0001.png", "Kvasir_0002.png"]
    for p in predictions:
        mask = np.asarray(Image.open(p))
        assert mask.shape == (60, 72) and set(np.unique(mask)) <= {0, 1}  # the input size (not a multiple of 16)
    _cli("nnUNetv2_evaluate_folder", str(raw / "labelsTs"), str(tmp_path / "pred"), "-djfile",
         str(fold.parent / "dataset.json"), "-pfile", str(fold.parent / "plans.json"), env=env, log=logs / "eval.log")
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1"} and 0.0 <= summary["mean"]["1"]["Dice"] <= 1.0
    assert len(summary["metric_per_case"]) == 3

"""Multi-node training (README, "Training on several nodes"): the polyp bundle trained by 2 nodes x 1 process, i.e.
two separate ``torchrun --nnodes 2 --node_rank 0|1`` launches meeting at 127.0.0.1 (gloo on CPU).

The two ranks differ in their global rank but both have ``LOCAL_RANK`` 0, as on two real machines. Each node gets
output folders of its own: node 1 must write nothing, node 0 the checkpoints, ``model.pt`` and TensorBoard logs. The
validation metric node 0 records is reduced over both ranks' shares: it equals the mean Dice of ``model.pt`` over
the whole validation set, which differs from the mean over node 0's share alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/multi_gpu_train.json"))
CONFIGS = "['bundles/polyp/configs/train.json','bundles/polyp/configs/multi_gpu_train.json']"
# 12 images, 3 held out for validation (rank 0: images 0 and 2, rank 1: image 1); batches of 1, so that the
# validation's forward passes are the ones repeated here in a single process
OPTIONS = {"epochs": 1, "batch_size": 1, "val_fraction": 0.25, "multi_scale": [1.0], "image_size": [64, 64],
           "num_workers": 0, "pretrained": False}  # fmt: skip


def node_args(data: Path, node: Path) -> list[str]:
    options = [str(x) for k, v in OPTIONS.items() for x in (f"--{k}", str(v).lower() if isinstance(v, bool) else v)]
    return ["training", "--config_file", CONFIGS, "--dataset_dir", str(data), *options,
            "--ckpt_dir", str(node / "models"), "--output_dir", str(node / "eval")]  # fmt: skip


def validation_dice(data: Path, weights: Path) -> torch.Tensor:
    """Per-image validation Dice of ``weights`` in this process (the bundle's own validation, handlers off)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "polyp" / "configs" / "train.json"))
    parser.update({**OPTIONS, "dataset_dir": str(data), "validate#handlers": []})
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    return evaluator.state.metric_details["val_mean_dice"].flatten()


def recorded_scalar(log_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_two_nodes_train_with_reduced_metrics_and_only_rank0_writing(tmp_path, torchrun, single_thread):
    data = Path(get_task("polyp").make_sample(tmp_path / "data", n_train=12, test_sets={}, size=(64, 64), seed=3))
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    logs = torchrun.run_nodes([node_args(data, n) for n in nodes], nproc_per_node=1)

    assert not nodes[1].exists(), f"node 1 wrote {sorted(str(p) for p in nodes[1].rglob('*'))}"
    models = nodes[0] / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_last.pt").is_file()
    last = torch.load(models / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    # 9 training images shared by 2 ranks (DistributedSampler, even_divisible): 5 iterations of 1 image per rank
    assert last["trainer"]["iteration"] == 5
    assert "Train completed" in logs[0] or "Engine run finished" in logs[0]

    per_image = validation_dice(data, models / "model.pt")
    assert per_image.numel() == 3
    whole, node0_share = float(per_image.mean()), float(per_image[0::2].mean())
    assert abs(whole - node0_share) > 1e-3, "the shares' metrics must differ for the check to mean anything"
    recorded = recorded_scalar(nodes[0] / "eval" / "tensorboard", "val_mean_dice")
    assert recorded and recorded[-1] == pytest.approx(whole, abs=1e-5)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_ranks_above_0_keep_the_handlers_every_rank_needs_and_build_no_writer(bundle):
    """``multi_gpu_train.json`` picks handlers by position: ranks > 0 attach the first 4 training handlers (the ones
    every rank must run) and do not even construct the TensorBoard writers (which create their event files when
    constructed), so the positions must stay those of these handlers in ``train.json``."""
    configs = REPO / "bundles" / bundle / "configs"
    train, multi = (json.loads((configs / n).read_text()) for n in ("train.json", "multi_gpu_train.json"))
    targets = [h["_target_"].rsplit(".", 1)[-1] for h in train["train"]["handlers"]]
    assert multi["train#trainer#train_handlers"] == "$@train#handlers[: 4 if @rank > 0 else None]"
    assert targets[:3] == ["ResumableCheckpoint", "StopOnNonFiniteLoss", "GradientClipping"]
    assert targets[3].endswith("ValidationHandler")
    for section, handlers in (("train", train["train"]["handlers"]), ("validate", train["validate"]["handlers"])):
        writers = [i for i, h in enumerate(handlers) if h["_target_"] == "TensorBoardStatsHandler"]
        assert writers, f"{section}: no TensorBoard writer found"
        disabled = {i: multi.get(f"{section}#handlers#{i}#_disabled_") for i in writers}
        assert disabled == dict.fromkeys(writers, "$@rank > 0"), f"{section}: writers built on every rank"

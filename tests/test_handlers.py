"""Tests for transfuse_monai.handlers: GradientClipping, ResumableCheckpoint, SegmentationMetricsReport."""

from __future__ import annotations

import csv
import json
import types

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ignite.engine import Events
from monai.data import MetaTensor, list_data_collate
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from transfuse_monai.handlers import GradientClipping, ResumableCheckpoint, SegmentationMetricsReport, format_table


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Every test here runs tiny CPU models: one intra-op thread (see conftest)."""


def _grad_norm(params) -> float:
    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.cat(grads)))


def _train_items(n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {Keys.IMAGE: torch.rand(1, 8, 8, generator=g), Keys.LABEL: (torch.rand(1, 8, 8, generator=g) > 0.5).float()}
        for _ in range(n)
    ]


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(3, 1, 1))


def _trainer(net, optimizer, max_epochs, handlers=(), loss_scale: float = 1.0) -> SupervisedTrainer:
    bce = torch.nn.BCEWithLogitsLoss()
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(_train_items(), batch_size=2, shuffle=False),
        network=net,
        optimizer=optimizer,
        loss_function=lambda p, t: loss_scale * bce(p, t),
        train_handlers=list(handlers),
    )


# ---------------------------------------------------------------------------------------------------------------------
# GradientClipping
# ---------------------------------------------------------------------------------------------------------------------


def _norms_at_step(trainer) -> list[float]:
    norms: list[float] = []
    params = list(trainer.network.parameters())
    trainer.optimizer.register_step_pre_hook(lambda *a, **k: norms.append(_grad_norm(params)))
    return norms


def test_gradient_clipping_limits_norm_seen_by_optimizer():
    max_norm = 0.5
    net = _net()
    trainer = _trainer(net, torch.optim.SGD(net.parameters(), lr=1e-6), max_epochs=1, loss_scale=1e4)
    # records the pre-clip norm: attached before the clipper, so it runs first on BACKWARD_COMPLETED
    pre_clip: list[float] = []
    trainer.add_event_handler(
        IterationEvents.BACKWARD_COMPLETED, lambda e: pre_clip.append(_grad_norm(e.network.parameters()))
    )
    clipper = GradientClipping(max_norm=max_norm)
    clipper.attach(trainer)
    last_norms: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: last_norms.append(clipper.last_norm))
    at_step = _norms_at_step(trainer)
    trainer.run()

    assert len(at_step) == len(pre_clip) == 2
    assert all(n > 100 * max_norm for n in pre_clip)  # the huge loss scale really gives huge gradients
    assert all(n <= max_norm * (1 + 1e-4) for n in at_step)
    assert all(n == pytest.approx(max_norm, rel=1e-3) for n in at_step)  # clipped, not zeroed
    assert last_norms == pytest.approx(pre_clip, rel=1e-5)


def test_without_clipping_norm_is_large():
    """Control for the test above: the same setup without the handler leaves huge gradients."""
    net = _net()
    trainer = _trainer(net, torch.optim.SGD(net.parameters(), lr=1e-6), max_epochs=1, loss_scale=1e4)
    at_step = _norms_at_step(trainer)
    trainer.run()
    assert all(n > 50 for n in at_step)


def test_gradient_clipping_small_gradients_untouched():
    net = _net()
    trainer = _trainer(net, torch.optim.SGD(net.parameters(), lr=1e-3), max_epochs=1, loss_scale=1e-3)
    clipper = GradientClipping(max_norm=1e3)
    clipper.attach(trainer)
    pre: list[float] = []
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: pre.append(clipper.last_norm))
    at_step = _norms_at_step(trainer)
    trainer.run()
    assert at_step == pytest.approx(pre, rel=1e-6)
    assert clipper.last_norm is not None and clipper.last_norm < 1e3


def test_gradient_clipping_unscales_amp_gradients_first():
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    except Exception as e:  # pragma: no cover - old torch without CPU GradScaler
        pytest.skip(f"no CPU GradScaler: {e}")
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(2, 1, 8, 8)
    loss = 1e3 * net(x).square().mean()
    scaler.scale(loss).backward()
    scaled_norm = _grad_norm(net.parameters())
    engine = types.SimpleNamespace(amp=True, scaler=scaler, optimizer=optimizer, network=net)
    clipper = GradientClipping(max_norm=0.25)
    clipper(engine)
    # last_norm is the norm of the true (unscaled) gradients; the gradients are now clipped in true units
    assert clipper.last_norm == pytest.approx(scaled_norm / 2.0**12, rel=1e-4)
    assert _grad_norm(net.parameters()) == pytest.approx(0.25, rel=1e-3)
    before = [p.detach().clone() for p in net.parameters()]
    scaler.step(optimizer)  # must not unscale a second time
    moved = torch.linalg.vector_norm(torch.cat([(b - p.detach()).flatten() for b, p in zip(before, net.parameters())]))
    assert float(moved) == pytest.approx(0.1 * 0.25, rel=1e-3)


@pytest.mark.parametrize("max_norm", [0, -1.0])
def test_gradient_clipping_bad_max_norm(max_norm):
    with pytest.raises(ValueError):
        GradientClipping(max_norm=max_norm)


# ---------------------------------------------------------------------------------------------------------------------
# ResumableCheckpoint
# ---------------------------------------------------------------------------------------------------------------------


def test_checkpoint_save_and_resume(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    net = _net(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = _trainer(net, opt, max_epochs=2, handlers=[ResumableCheckpoint(ckpt_dir, net, opt, lr_scheduler=sched)])
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    trainer.run()
    assert trainer.state.iteration == 4

    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert "checkpoint_last.pt" in names
    periodic = [n for n in names if n.startswith("checkpoint_epoch=")]
    assert periodic == ["checkpoint_epoch=2.pt"]  # n_saved=1 keeps the last one only
    saved = torch.load(ckpt_dir / "checkpoint_last.pt", weights_only=True)
    assert {"model", "optimizer", "trainer", "lr_scheduler"} <= set(saved)
    assert saved["trainer"]["iteration"] == 4 and saved["trainer"]["epoch_length"] == 2  # ignite: epoch 2

    # resume into fresh objects, up to 3 epochs
    net2 = _net(1)
    assert not torch.equal(next(net2.parameters()), next(net.parameters()))
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    resumed = ResumableCheckpoint(
        tmp_path / "ckpt2", net2, opt2, resume_from=ckpt_dir / "checkpoint_last.pt", lr_scheduler=sched2
    )
    trainer2 = _trainer(net2, opt2, max_epochs=3, handlers=[resumed])
    trainer2.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched2.step())
    at_start = {}

    @trainer2.on(Events.STARTED)  # registered after the loader: sees the restored state
    def _started(engine):
        at_start["epoch"] = engine.state.epoch
        at_start["iteration"] = engine.state.iteration
        at_start["model_equal"] = all(
            torch.equal(a, b) for a, b in zip(net2.state_dict().values(), net.state_dict().values())
        )
        state = opt2.state_dict()["state"]
        at_start["adam_steps"] = sorted({int(s["step"]) for s in state.values()})
        at_start["lr"] = opt2.param_groups[0]["lr"]

    epochs_run = []
    trainer2.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    trainer2.run()

    assert at_start["epoch"] == 2 and at_start["iteration"] == 4
    assert at_start["model_equal"]
    assert at_start["adam_steps"] == [4]  # optimiser state (moments, step count) restored
    assert at_start["lr"] == pytest.approx(1e-2 * 0.25)  # scheduler state restored
    assert epochs_run == [3]  # exactly one more epoch
    assert trainer2.state.epoch == 3 and trainer2.state.iteration == 6
    assert sorted({int(s["step"]) for s in opt2.state_dict()["state"].values()}) == [6]
    assert (tmp_path / "ckpt2" / "checkpoint_last.pt").is_file()
    assert torch.load(tmp_path / "ckpt2" / "checkpoint_last.pt", weights_only=True)["trainer"]["iteration"] == 6


def test_checkpoint_n_saved_and_interval(tmp_path):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    handler = ResumableCheckpoint(tmp_path, net, opt, save_interval=2, n_saved=2)
    _trainer(net, opt, max_epochs=4, handlers=[handler]).run()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint_epoch=2.pt", "checkpoint_epoch=4.pt", "checkpoint_last.pt"]


def test_checkpoint_save_false_writes_nothing(tmp_path):
    src = tmp_path / "src"
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    _trainer(net, opt, max_epochs=1, handlers=[ResumableCheckpoint(src, net, opt)]).run()
    out = tmp_path / "out"
    net2 = _net(1)
    opt2 = torch.optim.SGD(net2.parameters(), lr=1e-2)
    handler = ResumableCheckpoint(out, net2, opt2, resume_from=src / "checkpoint_last.pt", save=False)
    trainer = _trainer(net2, opt2, max_epochs=2, handlers=[handler])
    trainer.run()
    assert trainer.state.epoch == 2 and trainer.state.iteration == 4  # still resumed (from epoch 1)
    assert not out.exists() or not any(out.iterdir())


def test_checkpoint_missing_resume_file(tmp_path):
    net = _net()
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ResumableCheckpoint(tmp_path, net, torch.optim.SGD(net.parameters(), lr=0.1), resume_from=tmp_path / "nope.pt")


# ---------------------------------------------------------------------------------------------------------------------
# SegmentationMetricsReport
# ---------------------------------------------------------------------------------------------------------------------


class _PredFromImage(torch.nn.Module):
    """The 'prediction' is the input image itself (optionally downsampled to produce a shape mismatch)."""

    def __init__(self, downsample: bool = False):
        super().__init__()
        self.downsample = downsample

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 2) if self.downsample else x


def _metric_fn(pred, label):
    assert isinstance(pred, np.ndarray) and isinstance(label, np.ndarray)
    return {"mae": float(np.abs(pred - label).mean()), "fg": float(label.mean())}


def _eval_items(groups=("A", "A", "B", "B", "B")) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    items = []
    for i, group in enumerate(groups):
        item = {
            Keys.IMAGE: torch.rand(1, 6, 6, generator=g),
            Keys.LABEL: (torch.rand(1, 6, 6, generator=g) > 0.5).float(),
            "name": f"img_{i}",
        }
        if group is not None:
            item["set"] = group
        items.append(item)
    return items


def _evaluate(items, handler, net=None, batch_size=2):
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=list_data_collate),
        network=net or _PredFromImage(),
        val_handlers=[handler],
    )
    evaluator.run()
    return evaluator


def test_metrics_report_files_and_summary(tmp_path, capsys):
    items = _eval_items()
    handler = SegmentationMetricsReport(_metric_fn, tmp_path / "report")
    evaluator = _evaluate(items, handler)

    files = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert files == ["metrics_per_image.csv", "metrics_summary.json"]  # no temporary files left behind

    expected = [_metric_fn(it[Keys.IMAGE].numpy(), it[Keys.LABEL].numpy()) for it in items]
    with open(tmp_path / "report" / "metrics_per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"img_{i}" for i in range(5)]
    assert [r["set"] for r in rows] == ["A", "A", "B", "B", "B"]
    assert list(rows[0]) == ["set", "name", "mae", "fg"]
    for r, e in zip(rows, expected):
        assert float(r["mae"]) == pytest.approx(e["mae"], rel=1e-5)
        assert float(r["fg"]) == pytest.approx(e["fg"], rel=1e-5)

    summary = json.loads((tmp_path / "report" / "metrics_summary.json").read_text())
    assert list(summary) == ["A", "B", "all images"]
    assert summary["A"]["n"] == 2 and summary["B"]["n"] == 3 and summary["all images"]["n"] == 5
    assert summary["A"]["mae"] == pytest.approx(np.mean([e["mae"] for e in expected[:2]]), rel=1e-5)
    assert summary["B"]["fg"] == pytest.approx(np.mean([e["fg"] for e in expected[2:]]), rel=1e-5)
    assert summary["all images"]["mae"] == pytest.approx(np.mean([e["mae"] for e in expected]), rel=1e-5)
    assert evaluator.state.metrics["B/mae"] == pytest.approx(summary["B"]["mae"])
    assert evaluator.state.metrics["all images/fg"] == pytest.approx(summary["all images"]["fg"])
    assert handler.summary == summary

    out = capsys.readouterr().out
    assert "| set | n | mae | fg |" in out
    assert f"| all images | 5 | {summary['all images']['mae']:.4f} |" in out


def test_metrics_report_single_group_no_all_row_and_reset(tmp_path):
    items = _eval_items(groups=(None, None, None))
    handler = SegmentationMetricsReport(_metric_fn, tmp_path, prefix="x_", print_table=False)
    evaluator = _evaluate(items, handler)
    summary = json.loads((tmp_path / "x_summary.json").read_text())
    assert list(summary) == ["all"] and summary["all"]["n"] == 3
    # a second run starts a fresh report (EPOCH_STARTED reset)
    evaluator.run()
    assert len(handler.rows) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_per_image.csv", "x_summary.json"]


def test_metrics_report_name_from_image_meta(tmp_path):
    g = torch.Generator().manual_seed(1)
    items = [
        {
            Keys.IMAGE: MetaTensor(torch.rand(1, 4, 4, generator=g), meta={"filename_or_obj": f"/data/case{i}.png"}),
            Keys.LABEL: torch.zeros(1, 4, 4),
        }
        for i in range(2)
    ]
    handler = SegmentationMetricsReport(_metric_fn, tmp_path, print_table=False)
    _evaluate(items, handler)
    assert [r["name"] for r in handler.rows] == ["case0", "case1"]


def test_metrics_report_shape_mismatch_names_image(tmp_path):
    handler = SegmentationMetricsReport(_metric_fn, tmp_path, print_table=False)
    with pytest.raises(ValueError, match="img_0"):
        _evaluate(_eval_items(), handler, net=_PredFromImage(downsample=True))
    assert not any(tmp_path.iterdir())


def test_format_table():
    summary = {"Kvasir": {"n": 2, "dice": 0.91234, "mae": float("nan")}, "all images": {"n": 5, "dice": 0.5}}
    table = format_table(summary, ["dice", "mae"], digits=3)
    assert table.splitlines() == [
        "| set | n | dice | mae |",
        "|---|---|---|---|",
        "| Kvasir | 2 | 0.912 | n/a |",
        "| all images | 5 | 0.500 | n/a |",
    ]

"""Tests of transfuse_monai.handlers: GradientClipping, ResumableCheckpoint, SegmentationMetricsReport and OverlayWriter."""

from __future__ import annotations

import csv
import json
import types

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ignite.engine import Engine, Events
from monai.data import MetaTensor, list_data_collate
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from transfuse_monai.handlers import (
    GradientClipping,
    OverlayWriter,
    ResumableCheckpoint,
    SegmentationMetricsReport,
    format_class_table,
    format_table,
    split_class_metrics,
)


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


# ---------------------------------------------------------------------------------------------------------------------
# SegmentationMetricsReport with per-class metrics and spacing
# ---------------------------------------------------------------------------------------------------------------------

CLASSES = ("background", "liver", "tumour")


def _index_items(n: int = 4, size: int = 24, meta: dict | None = None, spacing=None) -> list[dict]:
    """Class-index maps: liver block and tumour block; the image is the label with the tumour of image i shifted down
    by i rows (the identity 'network' then predicts it)."""
    items = []
    for i in range(n):
        label = torch.zeros(1, size, size)
        label[0, 2:10, 2:12] = 1
        label[0, 12:20, 8:20] = 2
        image = label.clone()
        image[image == 2] = 0
        image[0, 12 + i : 20 + i, 8:20] = 2
        if meta is not None:
            label = MetaTensor(label, affine=meta["affine"], meta={k: v for k, v in meta.items() if k != "affine"})
        item = {Keys.IMAGE: image, Keys.LABEL: label, "name": f"case{i}", "set": "AB"[i % 2]}
        if spacing is not None:
            item["spacing"] = torch.tensor(spacing, dtype=torch.float64)
        items.append(item)
    return items


def test_metrics_report_per_class_table_with_spacing_key(tmp_path, capsys):
    from transfuse_monai.metrics import SegmentationMetrics

    metric = SegmentationMetrics(CLASSES, activation="softmax", metrics=("dice", "hd"))
    items = _index_items(spacing=(0.5, 0.5))
    handler = SegmentationMetricsReport(metric, tmp_path, title="Demo")
    evaluator = _evaluate(items, handler)

    expected = [metric(it[Keys.IMAGE], it[Keys.LABEL], spacing=0.5) for it in items]
    assert [r["hd_tumour"] for r in handler.rows] == pytest.approx([0.0, 0.5, 1.0, 1.5])  # shift i rows * 0.5 mm
    for row, e in zip(handler.rows, expected):
        assert {k: row[k] for k in e} == pytest.approx(e)
    overall = handler.summary["all images"]
    assert overall["dice_liver"] == 1.0 and overall["hd_tumour"] == pytest.approx(0.75)
    assert evaluator.state.metrics["B/hd_tumour"] == pytest.approx(1.0)  # images 1 and 3

    out = capsys.readouterr().out
    assert "| set | n | dice | hd |" in out  # the set table shows the class means only
    assert "dice_liver" not in out.split("Per-class")[0]
    lines = out.splitlines()
    start = lines.index("Per-class metrics, all images:")
    table = lines[start + 1 : start + 6]
    assert table[0] == "| class  |   dice | hd (mm) |"
    assert table[1] == "|:-------|-------:|--------:|"
    assert table[2] == "| liver  | 1.0000 |  0.0000 |"
    assert table[3] == f"| tumour | {overall['dice_tumour']:.4f} |  0.7500 |"
    assert table[4].startswith("| mean   |")
    assert len({len(line) for line in table}) == 1  # aligned
    document = (tmp_path / "metrics_per_class.md").read_text()
    assert document.startswith("# Demo\n") and "Per-class metrics, A (2 images)" in document
    assert "| tumour | 0.8750 |  0.5000 |" in document  # set A: shifts 0 and 2 rows -> Dice (1 + 6/8) / 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics_per_class.md", "metrics_per_image.csv", "metrics_summary.json"
    ]


def test_metrics_report_spacing_from_meta_and_required(tmp_path):
    from transfuse_monai.metrics import SegmentationMetrics

    metric = SegmentationMetrics(CLASSES, activation="softmax", metrics=("hd",))
    affine = torch.diag(torch.tensor([0.25, 2.0, 1.0, 1.0], dtype=torch.float64))
    items = _index_items(meta={"affine": affine, "pixdim": np.array([1.0, 0.25, 2.0, 1.0])})
    handler = SegmentationMetricsReport(metric, tmp_path, print_table=False)
    _evaluate(items, handler)
    assert [r["hd_tumour"] for r in handler.rows] == pytest.approx([0.0, 0.25, 0.5, 0.75])  # rows are 0.25 mm

    # a MetaTensor without a recorded physical spacing (e.g. a PNG): identity affine, no pixdim -> not used as mm
    plain = _index_items(meta={"affine": torch.eye(4, dtype=torch.float64)})
    with pytest.raises(ValueError, match="need the pixel spacing"):
        _evaluate(plain, SegmentationMetricsReport(metric, tmp_path / "x", print_table=False))
    # metric functions without a spacing argument are called as before
    assert not SegmentationMetricsReport(_metric_fn, tmp_path).takes_spacing


def test_metrics_report_nan_aware_means(tmp_path):
    def fn(pred, label):
        return {"hd": float("nan") if label.sum() == 0 else float(label.sum()), "always_nan": float("nan")}

    items = [{Keys.IMAGE: torch.zeros(1, 4, 4), Keys.LABEL: torch.zeros(1, 4, 4), "name": "empty", "set": "A"}]
    items += [{Keys.IMAGE: torch.zeros(1, 4, 4), Keys.LABEL: torch.ones(1, 4, 4), "name": "full", "set": "A"}]
    handler = SegmentationMetricsReport(fn, tmp_path, print_table=False)
    _evaluate(items, handler)
    assert handler.summary["A"]["hd"] == 16.0  # the NaN of the empty image is skipped
    saved = json.loads((tmp_path / "metrics_summary.json").read_text())
    assert saved["A"] == {"n": 2, "hd": 16.0, "always_nan": None}  # standard JSON: NaN as null


def test_format_class_table_and_split():
    values = {"dice": 0.5, "dice_a": 1.0, "dice_b_c": 0.0, "asd_px": 2.0, "asd_px_a": 2.0, "asd_px_b_c": float("nan")}
    metrics, classes = split_class_metrics(list(values))
    assert metrics == ["dice", "asd_px"] and classes == ["a", "b_c"]
    assert split_class_metrics(["dice", "iou", "mae"]) == ([], [])
    assert split_class_metrics(["jaccard_orig", "dice_orig"]) == ([], [])
    table = format_class_table(values, metrics, classes, {"asd_px": "px"}, digits=2)
    assert table.splitlines() == [
        "| class  | dice | asd_px (px) |",
        "|:-------|-----:|------------:|",
        "| a      | 1.00 |        2.00 |",
        "| b_c    | 0.00 |         n/a |",
        "| mean   | 0.50 |        2.00 |",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# OverlayWriter
# ---------------------------------------------------------------------------------------------------------------------


def _run_items(items, handler, batch_size: int = 2):
    """An evaluator-like ignite engine whose output is the decollated batch itself."""
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine)
    engine.run([items[i : i + batch_size] for i in range(0, len(items), batch_size)])
    return engine


def _read_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def _colour_mask(rgb: np.ndarray, colour) -> np.ndarray:
    return np.all(rgb == np.asarray(colour, dtype=np.uint8), axis=-1)


def test_overlay_writer_softmax_contours(tmp_path):
    from skimage.segmentation import find_boundaries

    items = _index_items(n=4, size=32)
    for i, it in enumerate(items):  # prediction: softmax probabilities of the shifted label; image: grey noise
        index = it[Keys.IMAGE]
        it[Keys.PRED] = torch.nn.functional.one_hot(index[0].long(), 3).permute(2, 0, 1).float() * 0.8 + 0.1
        it[Keys.IMAGE] = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(i)) * 7 - 3
    writer = OverlayWriter(tmp_path, max_images=3, activation="softmax", class_names=CLASSES)
    _run_items(items, writer)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["case0.png", "case1.png", "case2.png", "legend.json"]
    legend = json.loads((tmp_path / "legend.json").read_text())
    assert set(legend["classes"]) == {"liver", "tumour"}
    for i in range(3):
        rgb = _read_png(tmp_path / f"case{i}.png")
        assert rgb.shape == (32, 32, 3)
        label, pred = items[i][Keys.LABEL][0].numpy(), items[i][Keys.PRED].argmax(0).numpy()
        for c in (1, 2):
            gt_colour, pred_colour = writer.class_color(c)
            gt_pixels, pred_pixels = _colour_mask(rgb, gt_colour), _colour_mask(rgb, pred_colour)
            gt_boundary = find_boundaries(label == c, mode="inner")
            pred_boundary = find_boundaries(pred == c, mode="inner")
            assert np.all(gt_boundary[gt_pixels]) and np.all(pred_boundary[pred_pixels])
            assert pred_pixels.sum() == pred_boundary.sum()  # the prediction is drawn on top, complete
            assert np.array_equal(gt_pixels, gt_boundary & ~pred_boundary)  # GT visible where the prediction missed
        untouched = ~np.any([_colour_mask(rgb, col) for pair in writer.colors for col in pair], axis=0)
        grey = rgb[untouched]
        assert np.all(grey[:, 0] == grey[:, 1]) and grey.min() == 0 and grey.max() == 255  # per-image rescaling
    assert not _colour_mask(_read_png(tmp_path / "case0.png"), writer.class_color(2)[0]).any()  # perfect tumour


def test_overlay_writer_resizes_image_to_prediction_and_names_from_meta(tmp_path):
    label = torch.zeros(1, 16, 24)
    label[0, 4:12, 6:18] = 1
    item = {
        Keys.IMAGE: MetaTensor(torch.rand(3, 32, 48), meta={"filename_or_obj": "/data/ISIC_0001.jpg"}),
        Keys.PRED: label * 0.9,
        Keys.LABEL: label,
    }
    writer = OverlayWriter(tmp_path, activation="sigmoid")  # classes inferred from the prediction
    _run_items([item], writer)
    rgb = _read_png(tmp_path / "ISIC_0001.png")
    assert rgb.shape == (16, 24, 3)
    pred_colour = writer.class_color(1)[1]
    assert _colour_mask(rgb, pred_colour).sum() == 2 * 8 + 2 * 12 - 4  # the rectangle's boundary


def test_overlay_writer_3d_slice_with_most_foreground(tmp_path):
    label = torch.zeros(1, 16, 16, 6)
    label[0, 4:8, 4:8, 1] = 1
    label[0, 2:14, 2:14, 4] = 1
    writer = OverlayWriter(tmp_path, activation="softmax", class_names=("background", "organ"))
    _run_items([{Keys.IMAGE: torch.rand(1, 16, 16, 6), Keys.PRED: label, Keys.LABEL: label, "name": "vol"}], writer)
    rgb = _read_png(tmp_path / "vol_slice004.png")
    assert rgb.shape == (16, 16, 3)
    assert _colour_mask(rgb, writer.class_color(1)[1]).sum() == 4 * 12 - 4


def test_overlay_writer_bad_arguments():
    with pytest.raises(ValueError, match="max_images"):
        OverlayWriter("x", max_images=0)
    writer = OverlayWriter("x", activation="softmax")
    with pytest.raises(ValueError, match="class_names"):
        writer.render(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))

"""Tests for transfuse_monai.engines.multiscale (MultiScaleIteration with a real MONAI SupervisedTrainer)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import MeanDice, from_engine
from monai.metrics import DiceMetric
from monai.transforms import Activationsd, AsDiscreted, Compose
from monai.utils import CommonKeys as Keys

from ignite.engine import Events

from transfuse_monai.engines import MultiScaleIteration, scaled_size

BASE = 32  # spatial size of the test images
MULTIPLE = 8
SCALES = (0.75, 1.0, 1.25)  # -> 24, 32, 40 with multiple 8
SIZES = {0.75: 24, 1.0: 32, 1.25: 40}


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Every test here runs tiny CPU models: one intra-op thread (see conftest)."""


# ---------------------------------------------------------------------------------------------------------------------
# scaled_size
# ---------------------------------------------------------------------------------------------------------------------


def test_scaled_size_pranet_schedule():
    assert scaled_size((352, 352), 0.75) == (256, 256)
    assert scaled_size((352, 352), 1.0) == (352, 352)
    assert scaled_size((352, 352), 1.25) == (448, 448)


def test_scaled_size_per_axis_multiple_and_minimum():
    # non-square: every axis is rounded independently
    assert scaled_size((352, 288), 0.75) == (256, 224)
    assert scaled_size((32, 40), 1.0, multiple=8) == (32, 40)
    assert scaled_size((32,), 1.25, multiple=8) == (40,)
    # never below one multiple
    assert scaled_size((16, 16), 0.1) == (32, 32)
    # all results are multiples
    for s in (0.5, 0.8, 1.1, 1.7):
        assert all(v % 32 == 0 for v in scaled_size((300, 417), s))


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def _items(n: int = 4, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        image = torch.rand(3, BASE, BASE, generator=g)
        label = (torch.rand(1, BASE, BASE, generator=g) > 0.5).float()
        items.append({Keys.IMAGE: image, Keys.LABEL: label})
    return items


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1)
    )


class _Recorder:
    """Records network input shapes, optimiser steps and per-scale losses of a trainer."""

    def __init__(self, trainer: SupervisedTrainer):
        self.shapes: list[tuple[int, ...]] = []
        self.steps = 0
        self.scale_losses: list[float] = []
        self.iteration_outputs: list = []
        self.iteration_batches: list = []
        self.inner_started = 0
        self.inner_completed = 0
        trainer.network.register_forward_hook(lambda m, inp, out: self.shapes.append(tuple(inp[0].shape)))
        trainer.optimizer.register_step_post_hook(lambda *a, **k: self._step())

        @trainer.on(IterationEvents.LOSS_COMPLETED)
        def _loss(engine):
            self.scale_losses.append(float(engine.state.output[Keys.LOSS].detach()))

        @trainer.on(IterationEvents.INNER_ITERATION_STARTED)
        def _inner_started(engine):
            self.inner_started += 1

        @trainer.on(IterationEvents.INNER_ITERATION_COMPLETED)
        def _inner_completed(engine):
            self.inner_completed += 1

        @trainer.on(Events.ITERATION_COMPLETED)
        def _it(engine):
            self.iteration_outputs.append(engine.state.output)
            self.iteration_batches.append(engine.state.batch)

    def _step(self):
        self.steps += 1


def _trainer(iteration_update, n_items=4, batch_size=2, max_epochs=1, **kwargs) -> SupervisedTrainer:
    net = _net()
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(_items(n_items), batch_size=batch_size, shuffle=False),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=torch.nn.BCEWithLogitsLoss(),
        iteration_update=iteration_update,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------------------
# cycle mode
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("error:Converting a tensor with requires_grad")
@pytest.mark.parametrize("decollate", [True, False])
def test_cycle_mode_steps_and_sizes(decollate):
    trainer = _trainer(MultiScaleIteration(scales=SCALES, multiple=MULTIPLE, mode="cycle"), decollate=decollate)
    rec = _Recorder(trainer)
    trainer.run()

    n_batches = 2
    assert trainer.state.iteration == n_batches  # one ignite iteration per batch
    assert rec.steps == len(SCALES) * n_batches  # one optimiser step per scale
    assert rec.inner_started == rec.inner_completed == len(SCALES) * n_batches
    expected = [(2, 3, SIZES[s], SIZES[s]) for s in SCALES] * n_batches
    assert rec.shapes == expected


@pytest.mark.parametrize("decollate", [True, False])
def test_cycle_output_is_scale_one_with_mean_loss(decollate):
    trainer = _trainer(MultiScaleIteration(scales=SCALES, multiple=MULTIPLE), decollate=decollate)
    rec = _Recorder(trainer)
    trainer.run()

    assert len(rec.scale_losses) == 3 * 2
    for i, output in enumerate(rec.iteration_outputs):
        losses = rec.scale_losses[3 * i : 3 * i + 3]
        # the scale losses differ (different input sizes), so a mean is distinguishable from any single one
        assert len({round(v, 8) for v in losses}) > 1
        mean = sum(losses) / len(losses)
        if decollate:
            assert isinstance(output, list) and len(output) == 2
            for item in output:
                assert item[Keys.LOSS] == pytest.approx(mean, rel=1e-6)
                assert tuple(item[Keys.PRED].shape) == (1, BASE, BASE)
                assert tuple(item[Keys.IMAGE].shape) == (3, BASE, BASE)
            batch = rec.iteration_batches[i]
            assert isinstance(batch, list) and all(tuple(b[Keys.IMAGE].shape) == (3, BASE, BASE) for b in batch)
        else:
            assert isinstance(output, dict)
            assert float(output[Keys.LOSS]) == pytest.approx(mean, rel=1e-6)
            assert tuple(output[Keys.PRED].shape) == (2, 1, BASE, BASE)
            assert tuple(rec.iteration_batches[i][Keys.IMAGE].shape) == (2, 3, BASE, BASE)


def test_cycle_output_pred_matches_scale_one_forward():
    """The kept prediction is the one computed at scale 1.0 (the second forward of each batch here)."""
    preds = []
    trainer = _trainer(MultiScaleIteration(scales=SCALES, multiple=MULTIPLE), n_items=2, decollate=False)
    trainer.network.register_forward_hook(lambda m, i, o: preds.append(o.detach().clone()))
    rec = _Recorder(trainer)
    trainer.run()
    assert len(preds) == 3
    torch.testing.assert_close(rec.iteration_outputs[0][Keys.PRED], preds[1])


def test_labels_rescaled_with_images():
    seen = []
    trainer = _trainer(MultiScaleIteration(scales=(0.5, 1.0), multiple=MULTIPLE), n_items=2, decollate=False)

    @trainer.on(IterationEvents.FORWARD_COMPLETED)
    def _fw(engine):
        seen.append((tuple(engine.state.output[Keys.IMAGE].shape), tuple(engine.state.output[Keys.LABEL].shape)))

    trainer.run()
    assert seen == [((2, 3, 16, 16), (2, 1, 16, 16)), ((2, 3, 32, 32), (2, 1, 32, 32))]


# ---------------------------------------------------------------------------------------------------------------------
# random mode
# ---------------------------------------------------------------------------------------------------------------------


def test_random_mode_one_step_per_batch():
    trainer = _trainer(
        MultiScaleIteration(scales=SCALES, multiple=MULTIPLE, mode="random", seed=3), n_items=12, batch_size=1
    )
    rec = _Recorder(trainer)
    trainer.run()
    assert trainer.state.iteration == 12
    assert rec.steps == 12
    assert len(rec.shapes) == 12
    sizes = {s[-1] for s in rec.shapes}
    assert sizes <= set(SIZES.values())
    assert len(sizes) > 1  # deterministic with the seed; 12 draws out of 3 scales do not all coincide
    # the engine loss is that batch's single loss
    for loss, out in zip(rec.scale_losses, rec.iteration_outputs):
        assert out[0][Keys.LOSS] == pytest.approx(loss, rel=1e-6)


def test_random_mode_seed_reproducible():
    def sizes(seed):
        trainer = _trainer(
            MultiScaleIteration(scales=SCALES, multiple=MULTIPLE, mode="random", seed=seed), n_items=10, batch_size=1
        )
        rec = _Recorder(trainer)
        trainer.run()
        return [s[-1] for s in rec.shapes]

    assert sizes(7) == sizes(7)


# ---------------------------------------------------------------------------------------------------------------------
# postprocessing + key_train_metric (decollated state inside _iteration)
# ---------------------------------------------------------------------------------------------------------------------


def test_cycle_with_postprocessing_and_key_train_metric():
    post = Compose(
        [
            Activationsd(keys=Keys.PRED, sigmoid=True),
            AsDiscreted(keys=[Keys.PRED, Keys.LABEL], threshold=0.5),
        ]
    )
    trainer = _trainer(
        MultiScaleIteration(scales=SCALES, multiple=MULTIPLE),
        n_items=4,
        batch_size=2,
        max_epochs=2,
        postprocessing=post,
        key_train_metric={"train_dice": MeanDice(output_transform=from_engine([Keys.PRED, Keys.LABEL]))},
    )
    rec = _Recorder(trainer)
    epoch_metrics = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epoch_metrics.append(e.state.metrics["train_dice"]))
    trainer.run()

    assert rec.steps == 3 * 2 * 2
    # the metric saw the post-processed scale-1.0 outputs: binary, paired with same-size labels
    dice = DiceMetric(include_background=True, reduction="mean")
    for epoch in range(2):
        dice.reset()
        for output in rec.iteration_outputs[2 * epoch : 2 * epoch + 2]:
            for item in output:
                assert tuple(item[Keys.PRED].shape) == tuple(item[Keys.LABEL].shape) == (1, BASE, BASE)
                assert set(torch.unique(item[Keys.PRED]).tolist()) <= {0.0, 1.0}
                assert set(torch.unique(item[Keys.LABEL]).tolist()) <= {0.0, 1.0}
            dice([o[Keys.PRED] for o in output], [o[Keys.LABEL] for o in output])
        expected = float(dice.aggregate())
        assert math.isfinite(epoch_metrics[epoch])
        assert epoch_metrics[epoch] == pytest.approx(expected, abs=1e-6)
    # the batch left in the state is the scale-1.0 one (paired with the kept output)
    for batch in rec.iteration_batches:
        assert all(tuple(b[Keys.IMAGE].shape) == (3, BASE, BASE) for b in batch)


# ---------------------------------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"scales": ()}, {"scales": (1.0, 0.0)}, {"scales": (-0.5,)}, {"mode": "all"}, {"mode": "Cycle"}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MultiScaleIteration(**kwargs)


def test_none_batch_raises():
    with pytest.raises(ValueError):
        MultiScaleIteration()(None, None)

"""Every finished training leaves a validated ``model.pt``, and evaluation, inference and export without weights stop
before any work with one message naming the path and the ways out.

- ``FinalValidationHandler`` on a tiny Ignite trainer: a final validation when training completes, is stopped
  (``terminate()``) or is interrupted (``KeyboardInterrupt``) on a state that was not validated; none twice for the
  same state, none before the first epoch of an interrupted run ended; ``ResumableCheckpoint`` still saves first.
- Every bundle, as a user runs it (``python -m monai.bundle run`` from the repository root): ``--epochs 1`` with
  validation every 5 epochs, then the evaluation of the model it wrote.
- ``require_weights`` through each bundle's ``evaluate.json`` / ``inference.json`` (and not with
  ``inference_onnx.json``, which loads no ``.pt``) and ``python -m transfuse_monai.export``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from transfuse_monai.handlers import FinalValidationHandler, ResumableCheckpoint
from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("polyp", "isic2017", "hip", "prostate")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny networks: one thread each

# ---------------------------------------------------------------------------------------------------------------------
# FinalValidationHandler on a tiny Ignite trainer (2 iterations an epoch)
# ---------------------------------------------------------------------------------------------------------------------


def _validator(runs: list, trainer: Engine, ckpt_dir: Path | None = None):
    """A MONAI evaluator on one 2x2 image that records the trainer's (epoch, iteration) each time it runs (and
    whether ``checkpoint_last.pt`` exists in ``ckpt_dir`` at that moment)."""
    from monai.engines import SupervisedEvaluator

    data = [{"image": torch.zeros(1, 2, 2), "label": torch.zeros(1, 2, 2)}]
    validator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=torch.utils.data.DataLoader(data),
                                    network=torch.nn.Identity())

    @validator.on(Events.STARTED)
    def _record(_):
        run = (trainer.state.epoch, trainer.state.iteration)
        runs.append(run if ckpt_dir is None else (*run, (ckpt_dir / "checkpoint_last.pt").is_file()))

    return validator


def _trainer(interval: int, runs: list, ckpt_dir: Path | None = None) -> Engine:
    """A trainer doing nothing in its 2 iterations an epoch, validated every ``interval`` epochs by
    ``FinalValidationHandler`` into ``runs``; with ``ResumableCheckpoint`` attached first (as in the bundles) when
    ``ckpt_dir`` is given."""
    trainer = Engine(lambda engine, batch: None)
    if ckpt_dir is not None:
        net = torch.nn.Linear(2, 1)
        ResumableCheckpoint(ckpt_dir, net, torch.optim.Adam(net.parameters())).attach(trainer)
    FinalValidationHandler(interval, validator=_validator(runs, trainer, ckpt_dir)).attach(trainer)
    return trainer


def _train(max_epochs: int, interval: int, event=None, action=None, runs: list | None = None, **kwargs) -> list:
    """Train ``max_epochs`` epochs, calling ``action(trainer)`` at ``event``; return the validations (``runs``)."""
    runs = [] if runs is None else runs
    trainer = _trainer(interval, runs, **kwargs)
    if event is not None:
        trainer.add_event_handler(event, action)
    trainer.run([0, 1], max_epochs=max_epochs)
    return runs


def _interrupt(trainer: Engine) -> None:
    raise KeyboardInterrupt  # what Ctrl-C raises wherever the process is


@pytest.fixture()
def log(caplog):
    with caplog.at_level(logging.INFO, logger="transfuse_monai.handlers.validation"):
        yield caplog


def test_final_validation_when_the_last_epoch_was_not_validated(log):
    assert _train(3, interval=2) == [(2, 4), (3, 6)]
    assert "Final validation: training completed at epoch 3, iteration 6, which was not validated (validation runs " \
           "every 2 epochs, the last one: epoch 2)" in log.text
    assert _train(1, interval=5) == [(1, 2)]  # --epochs 1 with validation every 5 epochs


def test_no_extra_validation_when_the_last_epoch_was_validated(log):
    assert _train(4, interval=2) == [(2, 4), (4, 8)]
    assert _train(2, interval=1) == [(1, 2), (2, 4)]
    assert "Final validation" not in log.text


def test_final_validation_when_training_is_stopped(log):
    # stopped in the middle of epoch 3 (EPOCH_COMPLETED does not fire): the state at iteration 5
    assert _train(10, 2, Events.ITERATION_COMPLETED(once=5), Engine.terminate) == [(2, 4), (3, 5)]
    assert "training was stopped (engine.terminate(), e.g. early stopping) at epoch 3, iteration 5" in log.text
    # stopped right after a validation (early stopping on the validation's metric): nothing new to validate
    assert _train(10, 2, Events.EPOCH_COMPLETED(once=2), Engine.terminate) == [(2, 4)]
    # stopped at the end of an epoch that was not validated
    assert _train(10, 2, Events.EPOCH_COMPLETED(once=3), Engine.terminate) == [(2, 4), (3, 6)]


def test_final_validation_on_keyboard_interrupt_after_an_epoch(log):
    runs: list = []
    with pytest.raises(KeyboardInterrupt):  # the interruption still stops the run
        _train(10, 5, Events.ITERATION_COMPLETED(once=3), _interrupt, runs=runs)
    assert runs == [(2, 3)]  # once, on the state as it was interrupted
    assert "Final validation: training was interrupted (KeyboardInterrupt) at epoch 2, iteration 3" in log.text


def test_keyboard_interrupt_validates_after_the_last_checkpoint_is_saved(tmp_path):
    runs: list = []
    with pytest.raises(KeyboardInterrupt):
        _train(10, 5, Events.ITERATION_COMPLETED(once=3), _interrupt, runs=runs, ckpt_dir=tmp_path)
    assert runs == [(2, 3, True)], "validated once, with checkpoint_last.pt of that state already written"
    assert torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["trainer"]["iteration"] == 3


def test_no_validation_when_interrupted_before_an_epoch_completed(log):
    for event in (Events.ITERATION_COMPLETED(once=1), Events.STARTED):
        runs: list = []
        with pytest.raises(KeyboardInterrupt):
            _train(10, 5, event, _interrupt, runs=runs)
        assert runs == []
    assert "No final validation: training was interrupted at epoch 1, iteration 1, before its first epoch" in log.text


def test_no_validation_on_other_errors_nor_again_after_an_interrupted_validation():
    def fail(trainer):
        raise RuntimeError("data loader broke")

    runs: list = []
    with pytest.raises(RuntimeError, match="data loader broke"):
        _train(10, 5, Events.ITERATION_COMPLETED(once=3), fail, runs=runs)
    assert runs == [], "a failed training is not validated"

    runs = []
    trainer = Engine(lambda engine, batch: None)
    validator = _validator(runs, trainer)
    validator.add_event_handler(Events.ITERATION_COMPLETED, _interrupt)  # Ctrl-C during the periodic validation
    FinalValidationHandler(1, validator=validator).attach(trainer)
    with pytest.raises(KeyboardInterrupt):
        trainer.run([0, 1], max_epochs=3)
    assert runs == [(1, 2)], "the interrupted validation is not started again"


# ---------------------------------------------------------------------------------------------------------------------
# every bundle: --epochs 1 with validation every 5 epochs, then the evaluation
# ---------------------------------------------------------------------------------------------------------------------

SMALL = ["--image_size", "[32,32]", "--num_workers", "0"]
TRAIN = [*SMALL, "--pretrained", "false", "--epochs", "1", "--val_interval", "5", "--batch_size", "2"]
#: per bundle: the generated sample (the smallest the bundle tests use) and the bundle's own options
SAMPLES = {
    "polyp": (dict(n_train=4, test_sets={"Kvasir": 2}, size=(40, 40)), ["--val_fraction", "0.5"]),
    "isic2017": (dict(n_train=4, n_val=1, n_test=1, size=(40, 40)), []),
    "hip": (dict(n_train=3, n_val=1, n_test=1, size=(48, 48)), []),
    "prostate": (dict(n_train=6, n_test=0, size=(40, 48, 6)), ["--slices_per_volume", "2", "--fold", "0"]),
}


def bundle(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.mark.parametrize("name", BUNDLES)
def test_one_epoch_training_leaves_a_model_that_evaluates(name, tmp_path):
    sample, extra = SAMPLES[name]
    data = get_task(name).make_sample(tmp_path / "data", seed=1, **sample)
    configs = f"bundles/{name}/configs"
    common = ["--dataset_dir", data, "--ckpt_dir", tmp_path / "models", "--output_dir", tmp_path / "eval", *extra]
    proc = bundle("training", "--config_file", f"{configs}/train.json", *TRAIN, *common)
    log = proc.stdout + proc.stderr
    model, last = tmp_path / "models" / "model.pt", tmp_path / "models" / "checkpoint_last.pt"
    assert model.is_file(), f"no model.pt after --epochs 1 --val_interval 5:\n{log[-3000:]}"
    assert "Final validation: training completed at epoch 1" in log
    # the model is the network as training ended (validated once, so the best one)
    weights = torch.load(model, map_location="cpu", weights_only=True)
    trained = torch.load(last, map_location="cpu", weights_only=True)["model"]
    assert weights.keys() == trained.keys() and all(torch.equal(weights[k], trained[k]) for k in weights)

    bundle("--config_file", f"['{configs}/train.json','{configs}/evaluate.json']", *SMALL, *common)
    assert (tmp_path / "eval" / "segmentation_summary.json").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# missing weights: one message, before any data is read
# ---------------------------------------------------------------------------------------------------------------------


def _workflow(name: str, configs: list[str], **override):
    """A bundle workflow, initialised as ``python -m monai.bundle run`` does before it runs it."""
    from monai.bundle import ConfigWorkflow

    folder = REPO / "bundles" / name / "configs"
    workflow = ConfigWorkflow(config_file=[str(folder / c) for c in configs], meta_file=str(folder / "metadata.json"),
                              **override)
    workflow.initialize()
    return workflow


def _missing_weights_message(workflow) -> str:
    """The error of ``workflow.run()``; the workflow was initialised without weights (MONAI FL, property checks)."""
    with pytest.raises(RuntimeError) as err:
        workflow.run()
    cause = err.value.__cause__  # MONAI wraps the error of a config expression in a RuntimeError
    assert isinstance(cause, FileNotFoundError), f"not a missing-weights error: {err.value!r}"
    return str(cause)


@pytest.mark.parametrize("name", BUNDLES)
def test_evaluation_and_inference_without_weights_fail_first(name, tmp_path):
    ckpt = tmp_path / "models"
    missing = {"dataset_dir": str(tmp_path / "no_data"), "ckpt_dir": str(ckpt), "output_dir": str(tmp_path / "out")}
    message = _missing_weights_message(_workflow(name, ["train.json", "evaluate.json"], **missing))
    assert f"No trained weights: '{ckpt / 'model.pt'}' does not exist" in message
    for way in ("train the bundle first", f"bundles/{name}/configs/train.json --ckpt_dir {ckpt}", "--ckpt_path FILE",
                "--ckpt_dir DIR"):
        assert way in message, f"'{way}' missing from: {message}"
    assert "training checkpoint" not in message  # none there, none named
    assert not (tmp_path / "out").exists(), "no demo data generated, nothing written"

    ckpt.mkdir()  # training checkpoints without model.pt (a training killed before it validated)
    for stem in ("checkpoint_epoch=3", "checkpoint_last", "checkpoint_epoch=12"):
        (ckpt / f"{stem}.pt").touch()
    inference = {"workflow_type": "infer", "input_dir": str(tmp_path / "no_input"),
                 "output_dir": str(tmp_path / "pred")}
    message = _missing_weights_message(_workflow(name, ["inference.json"], ckpt_dir=str(ckpt), **inference))
    assert f"'{ckpt / 'model.pt'}' does not exist" in message
    assert "checkpoint_epoch=3.pt, checkpoint_epoch=12.pt, checkpoint_last.pt" in message
    assert f"--ckpt_path {ckpt / 'checkpoint_last.pt'}" in message
    assert not (tmp_path / "pred").exists()

    # the check passes with --ckpt_path naming a file that is there; inference_onnx.json loads no .pt but needs its
    # ONNX model, and names it before any work when it is missing
    last = str(ckpt / "checkpoint_last.pt")
    assert _workflow(name, ["inference.json"], ckpt_path=last, **inference).parser.get_parsed_content("run#0") == last
    onnx = _workflow(name, ["inference.json", "inference_onnx.json"], ckpt_dir=str(tmp_path / "empty"), **inference)
    with pytest.raises(RuntimeError) as failure:
        onnx.parser.get_parsed_content("run#0")
    cause = failure.value.__cause__
    assert isinstance(cause, FileNotFoundError) and "empty/model_int8.onnx not found; export it" in str(cause)
    assert not (tmp_path / "pred").exists()


def test_export_without_weights_fails_first(tmp_path, capsys):
    import shutil

    from transfuse_monai.export import main

    root = tmp_path / "polyp"  # a bundle whose training left checkpoints but no model.pt
    shutil.copytree(REPO / "bundles" / "polyp" / "configs", root / "configs")
    (root / "models").mkdir()
    (root / "models" / "checkpoint_last.pt").touch()
    assert main([str(root)]) == 1
    message = capsys.readouterr().err
    assert f"export failed: No trained weights: '{root / 'models' / 'model.pt'}' does not exist" in message
    assert f"train the bundle first: python -m monai.bundle run training --config_file {root / 'configs'}" in message
    assert "--ckpt FILE" in message and f"--ckpt {root / 'models' / 'checkpoint_last.pt'}" in message
    assert "--ckpt_dir" not in message and "--ckpt_path" not in message  # not options of the export
    assert sorted(p.name for p in (root / "models").iterdir()) == ["checkpoint_last.pt"], "nothing exported"

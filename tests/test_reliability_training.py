"""Fault injection on the training side: pretrained weights without network access, a training killed during an
epoch and during a checkpoint save, a NaN loss, run-to-run determinism, and malicious checkpoint files.

The killed trainings run in forked processes (SIGKILLed at a chosen point); everything else runs in-process on tiny
models.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from transfuse_monai.handlers import ResumableCheckpoint
from transfuse_monai.networks.nets import TransFuse, load_transfuse_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Tiny CPU models: one intra-op thread (see conftest)."""


# ---------------------------------------------------------------------------------------------------------------------
# 1. pretrained weights offline
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and a hub endpoint that accepts connections but never answers (a firewall that
    drops traffic hangs the same way), as huggingface_hub would resolve them from HF_HUB_CACHE / HF_ENDPOINT."""
    from huggingface_hub import constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # never accept()ed: a client connects, then waits for an answer that never comes
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield cache
    server.close()


def test_pretrained_without_network_or_cache_fails_fast_and_clearly(offline_hub):
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        TransFuse(in_channels=3, out_channels=1, img_size=(32, 32), pretrained=True)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"took {elapsed:.1f} s"
    message = str(err.value)
    for needed in ("--pretrained false", "--cnn_weights", "--vit_weights", str(offline_hub), "cannot be reached"):
        assert needed in message, f"'{needed}' missing from: {message}"
    assert "timm/deit_small_patch16_224.fb_in1k" in message or "timm/resnet34.a1_in1k" in message
    assert not err.value.__cause__, "one error, not a chained hub trace"


def test_pretrained_with_hub_offline_mode_fails_without_probing(offline_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set") as err:
        TransFuse(in_channels=3, out_channels=1, img_size=(32, 32), pretrained=True)
    assert time.perf_counter() - start < 2.5, "no 3 s probe of the hub in offline mode"
    assert "--pretrained false" in str(err.value) and str(offline_hub) in str(err.value)


def _write_hub_cache(cache: Path, model_name: str) -> dict[str, torch.Tensor]:
    """Put a randomly initialised timm model where ``hf_hub_download`` would have cached its weights."""
    import timm
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    repo_id = get_pretrained_cfg(model_name).hf_hub_id
    state = {k: v.contiguous() for k, v in timm.create_model(model_name, pretrained=False).state_dict().items()}
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / revision / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return state


def test_pretrained_loads_from_local_cache_without_network(offline_hub, monkeypatch):
    import timm.models._hub

    cnn_state = _write_hub_cache(offline_hub, "resnet34")
    vit_state = _write_hub_cache(offline_hub, "deit_small_patch16_224")

    def no_download(*args, **kwargs):
        raise AssertionError(f"hub download attempted: {args} {kwargs}")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_download)
    start = time.perf_counter()
    net = TransFuse(in_channels=3, out_channels=1, img_size=(32, 32), pretrained=True)
    assert time.perf_counter() - start < 10
    cnn = net.cnn.state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer3.5.bn2.running_var"):
        assert torch.equal(cnn[key], cnn_state[key]), key
    vit = net.transformer.state_dict()
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.7.mlp.fc2.bias"):
        assert torch.equal(vit[key], vit_state[key]), key


def test_pretrained_downloads_as_usual_when_the_hub_answers(offline_hub, monkeypatch, tmp_path):
    import http.server

    import timm
    import timm.models._hub
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from transfuse_monai.networks.blocks.backbones import create_timm_model

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)  # any answer proves the hub reachable
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    served = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    save_file(served, str(tmp_path / "model.safetensors"))
    downloads = []

    def fake_download(repo_id, filename, **kwargs):  # what hf_hub_download returns once it has the file
        downloads.append((repo_id, filename))
        return str(tmp_path / "model.safetensors")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", fake_download)
    try:
        model = create_timm_model("resnet18", pretrained=True)
    finally:
        server.shutdown()
    assert downloads == [("timm/resnet18.a1_in1k", "model.safetensors")]
    assert torch.equal(model.state_dict()["layer2.0.conv1.weight"], served["layer2.0.conv1.weight"])


# ---------------------------------------------------------------------------------------------------------------------
# 2. interrupted training: SIGKILL during an epoch and during a checkpoint save, then resume
# ---------------------------------------------------------------------------------------------------------------------

LR = 1e-2


def build(save_dir, max_epochs=4, resume_from=None, loss_function=None):
    """A tiny resumable training: 4 images of 8x8 in batches of 2 (2 iterations an epoch), Adam and a StepLR
    scheduler stepped every epoch, with the bundles' checkpoint and non-finite-loss handlers."""
    from monai.engines import SupervisedTrainer
    from monai.handlers import LrScheduleHandler
    from torch.utils.data import DataLoader

    from transfuse_monai.handlers import StopOnNonFiniteLoss

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    g = torch.Generator().manual_seed(0)
    data = [
        {"image": torch.rand(1, 8, 8, generator=g), "label": (torch.rand(1, 8, 8, generator=g) > 0.5).float()}
        for _ in range(4)
    ]
    handlers = [
        ResumableCheckpoint(save_dir, net, opt, resume_from=resume_from, lr_scheduler=sched),
        StopOnNonFiniteLoss(),
        LrScheduleHandler(sched, print_lr=False),  # after the checkpoint handler, as a config would list it
    ]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=DataLoader(data, batch_size=2),
        network=net, optimizer=opt, loss_function=loss_function or torch.nn.BCEWithLogitsLoss(),
        train_handlers=handlers,
    )
    return trainer, net, opt, sched


def _train_until_stalled(save_dir: Path, mode: str, stalled) -> None:
    """Body of the process the test kills (forked): train, and stall at the point chosen by ``mode``, after calling
    ``stalled()``: ``"epoch"`` in the first iteration of epoch 3, ``"save"`` with the epoch-3 checkpoint half written
    (``torch.save`` writes half the bytes, then hangs)."""
    import io

    torch.set_num_threads(1)
    trainer, *_ = build(save_dir)
    if mode == "epoch":

        @trainer.on(Events.ITERATION_COMPLETED(once=5))
        def _stall(engine):
            stalled()
            time.sleep(600)

    else:
        real_save = torch.save

        def stalling_save(obj, f, *args, **kwargs):
            if trainer.state.epoch == 3:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                with open(f, "wb") as out:
                    out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                stalled()
                time.sleep(600)
            real_save(obj, f, *args, **kwargs)

        torch.save = stalling_save
    trainer.run()


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict[str, Path]:
    """Checkpoint folders of two trainings SIGKILLed at their stall points (see :func:`_train_until_stalled`). They
    run in forked processes: a real process killed in the middle of its work, without an interpreter start-up."""
    import multiprocessing

    root = tmp_path_factory.mktemp("killed")
    context = multiprocessing.get_context("fork")
    folders = {}
    for mode in ("epoch", "save"):
        stalled = context.Event()
        proc = context.Process(target=_train_until_stalled, args=(root / mode, mode, stalled.set), daemon=True)
        proc.start()
        try:
            reached = stalled.wait(timeout=120)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=60)
        finally:
            proc.kill()
        assert reached, f"the '{mode}' training never reached its kill point (exit code {proc.exitcode})"
        assert proc.exitcode == -signal.SIGKILL
        folders[mode] = root / mode
    return folders


def _assert_resumes_like_uninterrupted(save_dir: Path, reference: dict, expect: Path) -> None:
    saved = torch.load(expect, map_location="cpu", weights_only=True)
    assert saved["trainer"]["iteration"] == 4 and saved["trainer"]["epoch_length"] == 2  # end of epoch 2
    trainer, net, opt, sched = build(save_dir, resume_from="auto")
    seen = {}

    @trainer.on(Events.STARTED)  # after the checkpoint loader: the restored state
    def _restored(engine):
        seen.update(epoch=engine.state.epoch, iteration=engine.state.iteration, lr=opt.param_groups[0]["lr"])
        seen["model"] = all(torch.equal(v, saved["model"][k]) for k, v in net.state_dict().items())
        state, ref = opt.state_dict()["state"], saved["optimizer"]["state"]
        seen["optimizer"] = state.keys() == ref.keys() and all(
            torch.equal(state[i][k], ref[i][k]) for i in state for k in ("step", "exp_avg", "exp_avg_sq")
        )
        seen["scheduler"] = sched.state_dict() == saved["lr_scheduler"]

    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    trainer.run()
    assert seen == {
        "epoch": 2, "iteration": 4, "lr": saved["optimizer"]["param_groups"][0]["lr"], "model": True,
        "optimizer": True, "scheduler": True,
    }
    assert seen["lr"] == pytest.approx(LR * 0.5**2)  # two scheduler steps before the save
    assert epochs == [3, 4] and trainer.state.iteration == 8
    for key, value in net.state_dict().items():  # the interruption left no trace in the result
        assert torch.allclose(value, reference[key], rtol=0, atol=1e-7), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    trainer, net, _, _ = build(tmp_path_factory.mktemp("reference"))
    trainer.run()
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_sigkill_during_epoch_then_resume(uninterrupted, killed):
    ckpt = killed["epoch"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint_epoch=2.pt"]  # the periodic one; no partial file
    _assert_resumes_like_uninterrupted(ckpt, uninterrupted, ckpt / "checkpoint_epoch=2.pt")


def test_sigkill_during_checkpoint_save_keeps_the_previous_checkpoint(uninterrupted, killed):
    ckpt = killed["save"]
    names = sorted(p.name for p in ckpt.iterdir())
    visible = [n for n in names if not n.startswith(".")]
    # the half-written epoch-3 file sits under a hidden temporary name; epoch 2's, which it was to replace
    # (n_saved=1), is still there: ignite alone would have deleted it before writing its successor
    assert visible == ["checkpoint_epoch=2.pt"], names
    assert any(n.startswith(".checkpoint_epoch=3.partial-") for n in names), names
    _assert_resumes_like_uninterrupted(ckpt, uninterrupted, ckpt / "checkpoint_epoch=2.pt")


def test_resume_from_an_empty_or_missing_folder(tmp_path):
    trainer, *_ = build(tmp_path / "new", max_epochs=1, resume_from="auto")  # nothing yet: fresh start
    trainer.run()
    assert trainer.state.iteration == 2 and (tmp_path / "new" / "checkpoint_last.pt").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no readable training checkpoint"):
        build(tmp_path / "out", resume_from=tmp_path / "empty")


def test_failed_resume_does_not_overwrite_the_last_checkpoint(tmp_path):
    """A checkpoint that passes the early check but does not fit the network fails at STARTED; the final save on
    EXCEPTION_RAISED must not then replace checkpoint_last.pt with the untrained network."""
    trainer, *_ = build(tmp_path, max_epochs=1)
    trainer.run()
    last = tmp_path / "checkpoint_last.pt"
    saved = torch.load(last, weights_only=True)
    saved["model"]["0.weight"] = torch.zeros(8, 1, 3, 3)  # another architecture
    torch.save(saved, last)
    before = last.read_bytes()
    trainer, *_ = build(tmp_path, max_epochs=2, resume_from=last)
    with pytest.raises(RuntimeError, match="size mismatch"):
        trainer.run()
    assert last.read_bytes() == before


# ---------------------------------------------------------------------------------------------------------------------
# 3. NaN loss
# ---------------------------------------------------------------------------------------------------------------------


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    bce = torch.nn.BCEWithLogitsLoss()
    calls = []

    def loss_nan_at_iteration_3(pred, target):
        calls.append(1)
        loss = bce(pred, target)
        return loss * float("nan") if len(calls) == 3 else loss  # epoch 2, its first iteration

    trainer, net, _, _ = build(tmp_path, max_epochs=3, loss_function=loss_nan_at_iteration_3)
    after_epoch_1 = {}
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED(once=1),
        lambda e: after_epoch_1.update({k: v.clone() for k, v in net.state_dict().items()}),
    )
    with pytest.raises(FloatingPointError) as err:
        trainer.run()
    message = str(err.value)
    for needed in ("loss is nan", "epoch 2", "iteration 3", "learning rate", "gradient clipping", "inputs"):
        assert needed in message, f"'{needed}' missing from: {message}"
    assert trainer.state.iteration == 3 and len(calls) == 3  # stopped at once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]  # no checkpoint_last.pt
    saved = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert all(torch.equal(saved[k], after_epoch_1[k]) for k in after_epoch_1)
    # the NaN never reached the weights (checked before the backward pass)
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())


def test_checkpoints_with_non_finite_weights_are_never_written(tmp_path):
    trainer, net, _, _ = build(tmp_path, max_epochs=2)

    @trainer.on(Events.EPOCH_COMPLETED(once=2))  # a NaN that does not come through the loss
    def _poison(engine):
        with torch.no_grad():
            net[0].weight.fill_(float("inf"))

    trainer.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]


# ---------------------------------------------------------------------------------------------------------------------
# 4. determinism: same seed, same losses (the ISIC 2017 bundle: random augmentation and multi-scale training)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def isic_sample(tmp_path_factory) -> Path:
    from transfuse_monai.tasks import get_task

    root = tmp_path_factory.mktemp("isic")
    return Path(get_task("isic2017").make_sample(root / "data", n_train=4, n_val=1, n_test=1, size=(40, 40), seed=1))


def _bundle_losses(data: Path, out: Path, seed: int) -> list[float]:
    from monai.bundle import ConfigWorkflow
    from monai.handlers import from_engine
    from monai.utils import set_determinism

    configs = REPO / "bundles" / "isic2017" / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"), workflow_type="train",
        dataset_dir=str(data), image_size=[32, 32], epochs=1, batch_size=2, num_workers=0, pretrained=False,
        val_interval=100, seed=seed, save_checkpoints=False, ckpt_dir=str(out / "models"), output_dir=str(out / "eval"),
    )
    try:
        workflow.initialize()  # runs the bundle's "initialize" (set_determinism) before anything is built
        trainer = workflow.parser.get_parsed_content("train#trainer")
        losses = []
        loss = from_engine(["loss"], first=True)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(loss(e.state.output))))
        workflow.run()
    finally:
        set_determinism(seed=None)
    return losses


def test_same_seed_gives_the_same_losses(isic_sample, tmp_path):
    first = _bundle_losses(isic_sample, tmp_path / "a", seed=0)
    second = _bundle_losses(isic_sample, tmp_path / "b", seed=0)
    assert len(first) == 2
    assert first == second  # bit for bit
    assert _bundle_losses(isic_sample, tmp_path / "c", seed=1) != first  # the seed does matter


# ---------------------------------------------------------------------------------------------------------------------
# 5. untrusted checkpoint files
# ---------------------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    net = torch.nn.Conv2d(1, 1, 1)
    torch.save({"model": net.state_dict(), "optimizer": {}, "trainer": {"payload": _Payload(marker)}}, path)
    return path


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _malicious_checkpoint(tmp_path / "checkpoint_last.pt", marker)

    with pytest.raises(ValueError, match="Refusing to resume.*nothing in it was run"):
        build(tmp_path / "out", resume_from=evil)
    with pytest.raises(ValueError, match="holds Python objects besides tensors"):  # torch.load(weights_only=True)
        load_transfuse_checkpoint(TransFuse(in_channels=3, out_channels=1, img_size=(32, 32)), evil)
    # a folder to resume from skips it (with a warning) and finds nothing else
    with pytest.raises(ValueError, match="holds no readable training checkpoint"):
        build(tmp_path / "out", resume_from=tmp_path)
    assert not marker.exists()

    # the payload is real: an unsafe load does run it
    torch.load(_malicious_checkpoint(tmp_path / "other.pt", tmp_path / "ran"), weights_only=False)
    assert (tmp_path / "ran").exists()


def test_truncated_checkpoint_is_refused(tmp_path):
    trainer, *_ = build(tmp_path, max_epochs=1)
    trainer.run()
    data = (tmp_path / "checkpoint_last.pt").read_bytes()
    cut = tmp_path / "cut" / "checkpoint_last.pt"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        build(tmp_path / "out", resume_from=cut)
    model_only = tmp_path / "model.pt"
    torch.save(torch.load(cut.parent.parent / "checkpoint_last.pt", weights_only=True)["model"], model_only)
    with pytest.raises(ValueError, match="init_ckpt"):
        build(tmp_path / "out", resume_from=model_only)


def test_best_model_is_written_atomically(tmp_path, monkeypatch):
    """The bundles' best-model saver (``AtomicCheckpointSaver``, MONAI's ``CheckpointSaver`` otherwise) never leaves a
    partial ``model.pt``: a save that dies half-way keeps the previous best model, byte for byte, and no stray file."""
    from ignite.engine import Engine

    from transfuse_monai.handlers import AtomicCheckpointSaver

    net = torch.nn.Linear(3, 2)
    evaluator = Engine(lambda engine, batch: None)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                                  key_metric_name="dice", key_metric_filename="model.pt")
    saver.attach(evaluator)
    evaluator.state.metrics = {"dice": 0.5}
    evaluator.state.epoch = evaluator.state.iteration = 1
    saver.metrics_completed(evaluator)
    first = (tmp_path / "model.pt").read_bytes()
    torch.testing.assert_close(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight.detach())

    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:20])  # what a kill during the write leaves
        raise KeyboardInterrupt("killed while saving")

    with torch.no_grad():
        net.weight.add_(1.0)
    evaluator.state.metrics = {"dice": 0.7}  # a better model: the saver replaces model.pt
    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        saver.metrics_completed(evaluator)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "model.pt").read_bytes() == first, "the previous best model must survive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"], "no partial file left behind"

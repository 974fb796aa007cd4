"""MONAI Deploy consumes every 2D-image bundle.

For each bundle under ``bundles/``: a TransFuse at a small input size is exported with MONAI's ``ckpt_export``
(``metadata.json`` and ``inference.json`` embedded), the MONAI Deploy application ``deploy/transfuse_seg_app.py``
(``MonaiBundleInferenceOperator``) runs on that ``model.ts`` for one generated image, and its mask must have the
image's size, be uint8 0/255 and equal the mask of the bundle's own inference (``monai.bundle run``) up to a few
pixels.

The application runs in the isolated MONAI Deploy environment (``bash deploy/setup_env.sh``; path ``$DEPLOY_VENV``,
default ``.deploy-venv``): the SDK installs itself inside the ``monai`` package, so this process never imports it.
Without that environment the tests skip, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "deploy" / "transfuse_seg_app.py"
DEPLOY_VENV = Path(os.environ.get("DEPLOY_VENV") or REPO / ".deploy-venv")
DEPLOY_PYTHON = DEPLOY_VENV / "bin" / "python"
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())
IMAGE_HW = (90, 120)  # non-square, not the network size: exercises resizing back and the axis order
TIMEOUT = 900


@pytest.fixture(scope="module")
def deploy_python() -> Path:
    if not os.access(DEPLOY_PYTHON, os.X_OK):
        msg = (f"MONAI Deploy environment not found at {DEPLOY_VENV} (DEPLOY_VENV): create it with "
               "`bash deploy/setup_env.sh`")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return DEPLOY_PYTHON


def small_size(size) -> list[int]:
    """A small input size of about the bundle's aspect ratio: shortest side 64, multiples of 32."""
    scale = 64 / min(size)
    return [max(32, round(s * scale / 32) * 32) for s in size]


def _raise_stack_limit() -> None:  # holoscan recommends a 32 MiB stack
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 32 * 1024 * 1024
    if soft != resource.RLIM_INFINITY and soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


class _Process:
    """A subprocess writing to a log file; ``finish`` waits for it and asserts success, ``stop`` kills it."""

    def __init__(self, what: str, cmd: list, cwd: Path, log: Path, **kwargs) -> None:
        self.what, self.log = what, log
        with log.open("w") as out:
            self.proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         **kwargs)

    def finish(self) -> None:
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            code = "timeout"
        assert code == 0, f"{self.what} failed ({code}):\n{self.log.read_text()[-6000:]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _calibrated_state_dict(parser, image: Path) -> dict:
    """A randomly initialised network whose final bias is shifted so that about half of the image is foreground:
    a trivially all-0 or all-1 mask would make the comparison below meaningless."""
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    state = net.state_dict()
    batch = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"][None]
    with torch.no_grad():
        logits = net(batch.as_tensor() if hasattr(batch, "as_tensor") else batch)
    biases = [k for k in state if k.startswith("head_final") and k.endswith("bias")]
    if biases:
        state[biases[-1]] = state[biases[-1]] - float(logits.median())
    return state


@pytest.mark.parametrize("bundle", BUNDLES)
def test_deploy_app_runs_exported_bundle(bundle, tmp_path, deploy_python):
    from monai.bundle import ConfigParser, ckpt_export

    from transfuse_monai.tasks import get_task

    root = REPO / "bundles" / bundle
    meta_file = root / "configs" / "metadata.json"
    assert meta_file.is_file(), f"{bundle}: no configs/metadata.json, so the bundle cannot be exported for MONAI Deploy"
    inputs = json.loads(meta_file.read_text())["network_data_format"]["inputs"]
    spec = next(iter(inputs.values()))
    if len(inputs) != 1 or spec.get("type") != "image" or len(spec.get("spatial_shape", ())) != 2:
        pytest.skip(f"{bundle}: input is not a single 2D image ({inputs}); the deploy app loads 2D image files")
    if get_task(bundle).spatial_dims != 2:  # a 2D network over volumes: the app has no volume path yet (issue 15)
        pytest.skip(f"{bundle}: a volume task; the deploy app loads 2D image files")
    if get_task(bundle).in_channels != 3:
        # grey radiographs come out transposed from MonaiBundleInferenceOperator (mask (W, H) for an (H, W) image);
        # the radiograph application (DICOM in, DICOM SEG out) is issue 15's
        pytest.skip(f"{bundle}: single-channel images are not handled by this 2D RGB application yet")

    # The bundle's inference config at a small size. ckpt_export embeds the config *file* (command-line overrides
    # are not embedded), so the size is set in a copy of the file, which both consumers then read.
    config = ConfigParser.load_config_file(str(root / "configs" / "inference.json"))
    config["image_size"] = small_size(config.get("image_size", spec["spatial_shape"]))
    config_file = tmp_path / "configs" / "inference.json"
    config_file.parent.mkdir()
    config_file.write_text(json.dumps(config, indent=1))

    get_task("polyp").make_sample(tmp_path / "data", n_train=0, test_sets={"test": 1}, test_sizes=[IMAGE_HW])
    image_dir = tmp_path / "data" / "TestDataset" / "test" / "images"
    (image,) = sorted(image_dir.iterdir())

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(root)
    ckpt, model_ts = tmp_path / "model.pt", tmp_path / "model.ts"
    torch.save(_calibrated_state_dict(parser, image), ckpt)

    # The bundle's own inference (main environment), running while the model is exported and deployed.
    procs = [_Process("bundle inference", [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--input_dir", image_dir,
        "--ckpt_path", ckpt, "--output_dir", tmp_path / "bundle_out", "--num_workers", "0",
    ], root, tmp_path / "bundle_run.log")]
    try:
        # `python -m monai.bundle ckpt_export network_def --filepath ... --ckpt_file ... --meta_file ...
        # --config_file ...` runs this function; called in-process to spare an interpreter start (monai, timm).
        ckpt_export(net_id="network_def", filepath=str(model_ts), ckpt_file=str(ckpt), meta_file=str(meta_file),
                    config_file=str(config_file))
        assert model_ts.is_file()

        # The MONAI Deploy application (deploy environment) on the exported file.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        procs.append(_Process("MONAI Deploy app", [
            deploy_python, APP, "--model", model_ts, "--input", image, "--output", tmp_path / "deploy_out",
        ], tmp_path, tmp_path / "deploy_run.log", env=env, preexec_fn=_raise_stack_limit))
        for proc in reversed(procs):
            proc.finish()
    finally:
        for proc in procs:
            proc.stop()

    h, w = IMAGE_HW
    masks = {}
    for name in ("deploy_out", "bundle_out"):
        path = tmp_path / name / f"{image.stem}.png"
        assert path.is_file(), f"{name}: no mask {path.name} in {sorted(p.name for p in path.parent.glob('*'))}"
        with Image.open(path) as im:
            assert im.size == (w, h), f"{name}: mask size {im.size}, image size {(w, h)}"
            masks[name] = np.asarray(im)
        assert masks[name].dtype == np.uint8 and masks[name].shape == (h, w)
        assert set(np.unique(masks[name])) <= {0, 255}, f"{name}: values {np.unique(masks[name])}"

    fg = (masks["bundle_out"] > 0).mean()
    assert 0.05 < fg < 0.95, f"reference mask is {fg:.1%} foreground: the comparison would be trivial"
    differ = int((masks["deploy_out"] != masks["bundle_out"]).sum())
    assert differ <= max(3, 0.002 * h * w), f"MONAI Deploy and bundle inference masks differ in {differ} pixels"

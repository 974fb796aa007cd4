"""MONAI Deploy consumes every bundle.

For each bundle under ``bundles/``: a TransFuse at a small input size is exported with
``python -m transfuse_monai.export``'s ``export_torchscript`` (MONAI's ``ckpt_export``: ``metadata.json`` and
``inference.json`` embedded), a MONAI Deploy application runs on that ``model.ts`` and its
output must equal the bundle's own inference (``monai.bundle run``) on the same input:

* 2D-picture bundles (polyp, isic2017: RGB; hip: grey radiograph) through ``deploy/apps/seg2d`` (polyp through the
  single-file entry ``deploy/transfuse_seg_app.py``): the mask PNG has the picture's size, uint8 0/255 for a binary
  bundle and the class indices for a multi-class one;
* the prostate bundle (2D network over volumes, ``SliceInferer``) through ``deploy/apps/prostate_mr`` on a 4D NIfTI
  (T2 + ADC): the label NIfTI has the input's shape and affine.

The applications run in the isolated MONAI Deploy environment (``bash deploy/setup_env.sh``; path ``$DEPLOY_VENV``,
default ``.deploy-venv``): the SDK installs itself inside the ``monai`` package, so this process never imports it.
Without that environment the tests skip, except under CI (``CI=true``), where they fail. The DICOM applications are
tested in ``test_deploy_dicom.py``, which uses the helpers of this module; the ``deploy_python`` fixture is in
``conftest.py``.
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
APPS = REPO / "deploy" / "apps"
LEGACY_APP = REPO / "deploy" / "transfuse_seg_app.py"
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())
IMAGE_HW = (90, 120)  # non-square, not the network size: exercises resizing back and the axis order
VOLUME_SIZE = (40, 48, 6)  # prostate sample volume (x, y, z)
TIMEOUT = 900


def small_size(size) -> list[int]:
    """A small input size of about the bundle's aspect ratio: shortest side 64, multiples of 32."""
    scale = 64 / min(size)
    return [max(32, round(s * scale / 32) * 32) for s in size]


def _raise_stack_limit() -> None:  # holoscan recommends a 32 MiB stack
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 32 * 1024 * 1024
    if soft != resource.RLIM_INFINITY and soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


class Process:
    """A subprocess writing to a log file; ``finish`` waits for it and asserts success (or, with ``expect_fail``,
    failure, returning the log), ``stop`` kills it."""

    def __init__(self, what: str, cmd: list, cwd: Path, log: Path, **kwargs) -> None:
        self.what, self.log = what, log
        with log.open("w") as out:
            self.proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         **kwargs)

    def finish(self, expect_fail: bool = False) -> str:
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            code = "timeout"
        text = self.log.read_text()
        if expect_fail:
            assert code not in (0, "timeout"), f"{self.what} should have failed ({code}):\n{text[-4000:]}"
        else:
            assert code == 0, f"{self.what} failed ({code}):\n{text[-6000:]}"
        return text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_all(procs: list[Process]) -> None:
    """Wait for every process (asserting success), killing the others if one fails."""
    try:
        for proc in reversed(procs):
            proc.finish()
    finally:
        for proc in procs:
            proc.stop()


def deploy_app(deploy_python: Path, app: str | Path, model: Path, source: Path, output: Path, log: Path,
               **kwargs) -> Process:
    """Start a Deploy application (``deploy/apps/<app>`` folder, or a script) exactly as a packaged one runs:
    ``python <app> -i <input> -o <output> -m <model>``, in the deploy environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    target = app if isinstance(app, Path) else APPS / app
    return Process(f"MONAI Deploy app {Path(target).name}", [
        deploy_python, target, "-i", source, "-o", output, "-m", model,
    ], log.parent, log, env=env, preexec_fn=_raise_stack_limit, **kwargs)


def bundle_run(config_file: Path, root: Path, input_dir: Path, ckpt: Path, output: Path, log: Path) -> Process:
    """Start the bundle's own inference (main environment)."""
    return Process("bundle inference", [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--input_dir", input_dir,
        "--ckpt_path", ckpt, "--output_dir", output, "--num_workers", "0",
    ], root, log)


def _network_input(parser, image: Path) -> torch.Tensor:
    x = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"]
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    if x.ndim == 4:  # a volume seen slice by slice: its middle slice
        x = x[..., x.shape[-1] // 2]
    return x[None]


def calibrated_state_dict(parser, image: Path) -> dict:
    """A randomly initialised network whose final bias is shifted so that the mask is not trivial: about half of
    the image foreground for a sigmoid output, every class about as likely for a softmax one (a trivially uniform
    mask would make the comparisons meaningless)."""
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    state = net.state_dict()
    with torch.no_grad():
        logits = net(_network_input(parser, image))
    biases = [k for k in state if k.startswith("head_final") and k.endswith("bias")]
    if biases:
        if logits.shape[1] == 1:
            state[biases[-1]] = state[biases[-1]] - float(logits.median())
        else:
            medians = logits.transpose(0, 1).reshape(logits.shape[1], -1).median(dim=1).values
            state[biases[-1]] = state[biases[-1]] - medians
    return state


def small_bundle(bundle: str, tmp_path: Path, image: Path, **overrides) -> tuple[Path, Path, Path, Path]:
    """The bundle's inference config at a small size (``<tmp>/configs/inference.json``, for ``monai.bundle run``),
    calibrated random weights (``model.pt``) and their TorchScript export at that size with the configs embedded
    (``model.ts``, by ``python -m transfuse_monai.export``'s function, which embeds the size override too); returns
    ``(root, config_file, ckpt, model_ts)``. ``overrides`` set further config ids (e.g. ``modalities``) in both."""
    from monai.bundle import ConfigParser

    from transfuse_monai.export import export_torchscript

    root = REPO / "bundles" / bundle
    meta_file = root / "configs" / "metadata.json"
    assert meta_file.is_file(), f"{bundle}: no configs/metadata.json, so the bundle cannot be exported for MONAI Deploy"
    spec = next(iter(json.loads(meta_file.read_text())["network_data_format"]["inputs"].values()))
    config = ConfigParser.load_config_file(str(root / "configs" / "inference.json"))
    config["image_size"] = small_size(spec["spatial_shape"][:2])  # the 2D network's size, stated in the metadata
    config["amp"] = False  # the reference of the Deploy apps, which run the TorchScript export in float32
    config.update(overrides)
    config_file = tmp_path / "configs" / "inference.json"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config, indent=1))

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(root)
    ckpt, model_ts = tmp_path / "model.pt", tmp_path / "model.ts"
    torch.save(calibrated_state_dict(parser, image), ckpt)
    # `python -m transfuse_monai.export <bundle> --formats torchscript --ckpt model.pt --output_dir <tmp>
    # --image_size ...` runs this function; called in-process to spare an interpreter start
    export_torchscript(root, model_ts, ckpt, image_size=config["image_size"], **overrides)
    assert model_ts.is_file()
    return root, config_file, ckpt, model_ts


def _sample_input(bundle: str, tmp_path: Path) -> Path:
    """One generated input of the bundle's kind, alone in its folder."""
    from transfuse_monai.tasks import get_task

    task = get_task(bundle)
    if task.spatial_dims == 3:
        task.make_sample(tmp_path / "data", n_train=0, n_test=1, size=VOLUME_SIZE)
        folder = tmp_path / "data" / "imagesTs"
    elif task.in_channels == 1:  # grey radiographs (hip)
        task.make_sample(tmp_path / "data", n_train=0, n_val=0, n_test=1, size=[IMAGE_HW], formats=("png",))
        folder = tmp_path / "data" / "images"
    else:
        get_task("polyp").make_sample(tmp_path / "data", n_train=0, test_sets={"test": 1}, test_sizes=[IMAGE_HW])
        folder = tmp_path / "data" / "TestDataset" / "test" / "images"
    (image,) = sorted(folder.iterdir())
    return image


@pytest.mark.parametrize("bundle", BUNDLES)
def test_deploy_app_runs_exported_bundle(bundle, tmp_path, deploy_python):
    from transfuse_monai.tasks import get_task

    task = get_task(bundle)
    image = _sample_input(bundle, tmp_path)
    volume = task.spatial_dims == 3
    # the bundle's own inference (main environment) runs while the model is exported and deployed
    root = REPO / "bundles" / bundle
    procs: list[Process] = []
    try:
        root, config_file, ckpt, model_ts = small_bundle(bundle, tmp_path, image)
        procs.append(bundle_run(config_file, root, image.parent, ckpt, tmp_path / "bundle_out",
                                tmp_path / "bundle_run.log"))
        app = "prostate_mr" if volume else (LEGACY_APP if bundle == "polyp" else "seg2d")
        procs.append(deploy_app(deploy_python, app, model_ts, image, tmp_path / "deploy_out",
                                tmp_path / "deploy_run.log"))
        run_all(procs)
    finally:
        for proc in procs:
            proc.stop()

    if volume:
        _check_volumes(tmp_path, image, len(task.class_names))
    else:
        _check_masks(tmp_path, image, len(task.class_names))


def _check_masks(tmp_path: Path, image: Path, num_classes: int) -> None:
    h, w = IMAGE_HW
    masks = {}
    allowed = {0, 255} if num_classes == 2 else set(range(num_classes))
    for name in ("deploy_out", "bundle_out"):
        path = tmp_path / name / f"{image.stem}.png"
        assert path.is_file(), f"{name}: no mask {path.name} in {sorted(p.name for p in path.parent.glob('*'))}"
        with Image.open(path) as im:
            assert im.size == (w, h), f"{name}: mask size {im.size}, image size {(w, h)}"
            masks[name] = np.asarray(im)
        assert masks[name].dtype == np.uint8 and masks[name].shape == (h, w)
        assert set(np.unique(masks[name]).tolist()) <= allowed, f"{name}: values {np.unique(masks[name])}"
    _assert_same_labels(masks["deploy_out"], masks["bundle_out"])


def _assert_same_labels(deploy: np.ndarray, reference: np.ndarray) -> None:
    values, counts = np.unique(reference, return_counts=True)
    assert len(values) >= 2 and counts.max() < 0.95 * reference.size, (
        f"reference mask has classes {dict(zip(values.tolist(), counts.tolist()))}: the comparison would be trivial"
    )
    differ = int((deploy != reference).sum())
    assert differ <= max(3, 0.002 * reference.size), f"MONAI Deploy and bundle inference differ in {differ} pixels"


def _check_volumes(tmp_path: Path, image: Path, num_classes: int) -> None:
    import nibabel as nib

    src = nib.load(str(image))
    out = {}
    for name in ("deploy_out", "bundle_out"):
        path = tmp_path / name / image.name
        assert path.is_file(), f"{name}: no {path.name} in {sorted(p.name for p in path.parent.glob('*'))}"
        out[name] = nib.load(str(path))
        assert out[name].shape == src.shape[:3], f"{name}: shape {out[name].shape}, input {src.shape}"
        np.testing.assert_allclose(out[name].affine, src.affine, atol=1e-4, err_msg=f"{name}: affine")
        assert set(np.unique(np.asarray(out[name].dataobj)).tolist()) <= set(range(num_classes))
    _assert_same_labels(np.asarray(out["deploy_out"].dataobj), np.asarray(out["bundle_out"].dataobj))

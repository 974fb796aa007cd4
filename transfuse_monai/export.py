# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Export a trained bundle's network to TorchScript and ONNX, and check both against eager PyTorch.

Usage::

    python -m transfuse_monai.export bundles/polyp                      # models/model.pt -> model.ts, model.onnx
    python -m transfuse_monai.export bundles/polyp --formats onnx --ckpt path/model.pt --output_dir out/
    python -m transfuse_monai.export bundles/prostate --formats torchscript --modalities "[0]"   # T2-only model

The checkpoint is loaded with :func:`~transfuse_monai.networks.nets.load_transfuse_checkpoint` (strict,
``weights_only=True``, ``{"model": ...}`` wrappers accepted). TorchScript goes through MONAI's ``ckpt_export`` (the
network is scripted, with ``metadata.json`` and ``inference.json`` embedded, as MONAI Deploy expects); ONNX through
MONAI's ``convert_to_onnx`` with a dynamic batch axis and its ONNX Runtime verification. Each exported file is then
run on random input at the bundle's input size (batch 2) and compared with eager PyTorch (ONNX with ONNX Runtime).
Files are written under a temporary name (:func:`transfuse_monai.utils.atomic_path`) and renamed once verified, so a
failed export or verification leaves nothing behind.

``onnx-int8`` (not in the default formats: calibration takes minutes) writes ``model_int8.onnx``: the ONNX export
statically quantised by ONNX Runtime (QDQ, per-channel int8 weights with 7-bit range, uint8 activations calibrated
on the task's training images; the segmentation head, :data:`INT8_FLOAT_MODULES`, and attention's products of two
activations kept in float32), checked against eager PyTorch on held-out training images by the Dice of the
thresholded masks::

    python -m transfuse_monai.export bundles/polyp --formats onnx-int8 --calib_dir /data/polyp --calib_count 32
    cd bundles/polyp  # then run the bundle on the int8 model:
    python -m monai.bundle run --config_file "['configs/inference.json','configs/inference_onnx.json']"

``inference_onnx.json`` keeps ``inference.json``'s pre- and post-processing and replaces its network with
:class:`~transfuse_monai.inferers.OnnxRuntimeNetwork` (``--onnx_path`` selects another file, e.g. ``model.onnx``);
like ``inference_openvino.json`` it switches PyTorch's autocast off (``amp: false``): the runtime computes in its own
precision.

``openvino`` (opt-in, needs ``pip install 'transfuse-monai[openvino]'``) writes the OpenVINO IR ``model.xml`` /
``model.bin``, converted from the network by OpenVINO's PyTorch frontend and checked in float32 against eager
PyTorch; ``inference_openvino.json`` runs it with :class:`~transfuse_monai.inferers.OpenVINONetwork`, in the precision
the CPU plugin picks for the hardware (bfloat16 on CPUs with AMX or AVX512-BF16; ``--openvino_precision f32``
forces float32)::

    python -m transfuse_monai.export bundles/polyp --formats openvino
    python -m monai.bundle run --config_file "['configs/inference.json','configs/inference_openvino.json']"

``openvino-int8`` writes ``model_int8.xml`` / ``.bin``: the float32 IR quantised by NNCF (OpenVINO's post-training
quantisation; int8 weights and activations, calibrated on the task's training images like ``onnx-int8``, the
segmentation head kept in floating point), verified the same way; run it with ``--openvino_path`` pointing at
``model_int8.xml``. With ``--accuracy_count N`` the quantisation is accuracy-controlled on N further labelled
training images (NNCF returns the quantised operations that cost most Dice to floating point until the mean
per-image |Dice change| is at most ``--max_drop``), and ``backend="auto"`` runs the IR on CPUs where it is the
fastest path measured (native bfloat16 without AMX)::

    python -m transfuse_monai.export bundles/polyp --formats openvino-int8 --calib_dir /data/polyp --accuracy_count 64
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import json
import os
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from transfuse_monai.bundle.weights import MODEL_NAME, require_weights
from transfuse_monai.utils import atomic_path

__all__ = [
    "FORMATS",
    "load_bundle_network",
    "parse_overrides",
    "export_onnx_model",
    "export_torchscript",
    "export_onnx",
    "export_onnx_int8",
    "quantize_onnx_int8",
    "export_openvino_model",
    "export_openvino",
    "export_openvino_int8",
    "quantize_openvino_int8",
    "accuracy_items",
    "accuracy_controlled",
    "label_dice",
    "openvino_module_operations",
    "verify_int8_masks",
    "module_nodes",
    "calibration_images",
    "mask_dice",
    "export_bundle",
    "main",
]

FORMATS = ("torchscript", "onnx", "onnx-int8", "openvino", "openvino-int8")
#: formats exported when none is named (the int8 formats need calibration images and minutes, the OpenVINO ones the
#: optional OpenVINO package (and NNCF): opt-in)
DEFAULT_FORMATS = ("torchscript", "onnx")
#: operators quantised to int8 (convolutions, the Linear layers of attention, MLPs and BiFusion); element-wise
#: operators, normalisations, softmax, resizes and, by default, attention's products of two activations stay in float32
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")
#: default of ``min_dice``: mean Dice of the int8 and eager masks on the verification images (both int8 formats)
INT8_MIN_DICE = 0.95
#: submodules the int8 export keeps in float32: TransFuse's segmentation head (3x3 conv + 1x1 conv to the logits at
#: H/4). Quantising its input flips the pixels whose logits lie near the threshold: on the 162 polyp test images
#: with a trained checkpoint, the per-image Dice change against fp32 falls from 0.0067 mean / 0.0216 p95 to
#: 0.0030 / 0.0103 with the head in float32, for at most 2% of the int8 latency (``benchmarks/RESULTS.md``)
INT8_FLOAT_MODULES = ("head_final",)
#: default of ``max_drop`` of the accuracy-controlled ``openvino-int8`` export: the largest mean per-image |Dice
#: change| against the floating-point model (on labelled held-out training images) that NNCF's accuracy control
#: accepts before it returns the most harmful quantised operations to floating point. Below the parity goal (mean
#: <= 0.005 on the polyp test images, ``benchmarks/RESULTS.md``), for a margin: at 0.005 the plainly quantised IR
#: passed on 64 training images (0.0047) and missed the goal on the test images (0.0058); at 0.004 six operations
#: went back to floating point and the goal was met (0.0045); 0.0025 did not converge in half an hour on 2 cores
INT8_MAX_DROP = 0.004
#: images the accuracy control ranks the quantised operations on (NNCF's subset of the accuracy images the
#: quantisation hurts most)
RANKING_IMAGES = 32
#: where an accuracy-controlled IR records its bound (OpenVINO ``rt_info`` path): what ``backend="auto"`` checks
#: before it runs an int8 IR
ACCURACY_CONTROL_RT_INFO = ("transfuse_monai", "accuracy_control_max_drop")
#: where an IR records the inference precision its accuracy was measured in (OpenVINO ``rt_info`` path), which
#: :class:`~transfuse_monai.inferers.OpenVINONetwork` compiles it in unless told otherwise. NNCF's accuracy control
#: runs the floating-point operations of the models it compares in float32; compiled in the CPU's default bfloat16
#: instead, an IR that met ``max_drop = 0.004`` there measured 0.0041 (64 polyp images), and float32 costs the int8
#: IR 1-3% of its latency (2 cores, 352x352)
INFERENCE_PRECISION_RT_INFO = ("transfuse_monai", "inference_precision")


def _bundle_paths(bundle_dir: str | os.PathLike) -> tuple[Path, Path, Path]:
    root = Path(bundle_dir)
    meta, infer = root / "configs" / "metadata.json", root / "configs" / "inference.json"
    for path in (meta, infer):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {root} a bundle folder?")
    return root, meta, infer


def load_bundle_network(
    bundle_dir: str | os.PathLike, ckpt: str | os.PathLike | None = None, **overrides
) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """Build a bundle's ``network_def`` from ``inference.json`` and load its trained weights.

    Args:
        bundle_dir: the bundle folder (holding ``configs/inference.json`` and ``configs/metadata.json``).
        ckpt: the weights, default ``<bundle>/models/model.pt``; read by
            :func:`~transfuse_monai.networks.nets.load_transfuse_checkpoint` (strict, ``weights_only=True``,
            ``{"model": ...}``/``{"state_dict": ...}`` wrappers and the authors' format accepted).
        overrides: config ids to override before the network is built, e.g. ``image_size=[256, 256]``.

    Returns:
        The network in eval mode on the CPU, and the input shape ``(C, *spatial)``: the network's input channels
        (``metadata.json``'s unless an override such as ``modalities`` changes them) and its ``image_size`` (the
        override, else the first two axes of ``metadata.json``'s ``spatial_shape``, which the config reads).

    Raises:
        FileNotFoundError: the bundle's configs or the checkpoint do not exist (checked before anything is built,
            :func:`~transfuse_monai.bundle.require_weights`).
        TypeError: ``network_def`` is not a TransFuse network.
        ValueError: the checkpoint does not fit the network (the message lists the keys and shapes).
    """
    from monai.bundle import ConfigParser

    from transfuse_monai.networks.nets import load_transfuse_checkpoint

    root, meta, infer = _bundle_paths(bundle_dir)
    ckpt = require_weights(root / "models" / MODEL_NAME if ckpt is None else ckpt, root, "--ckpt", dir_option=None)
    parser = ConfigParser()
    parser.read_config(str(infer))
    parser.read_meta(str(meta))
    parser["bundle_root"] = str(root)
    parser.update(overrides)
    net = load_transfuse_checkpoint(parser.get_parsed_content("network_def"), ckpt, map_location="cpu")
    # the network's 2D input size: the override, else the first two axes of metadata.json's spatial_shape
    spatial = tuple(int(s) for s in parser.get_parsed_content("image_size"))
    return net.cpu().eval(), (int(net.in_channels), *spatial)


#: ``inference.json`` ids embedded in the TorchScript file as values rather than expressions: they are computed with
#: timm (the backbone's pretrained input normalisation), which runtimes that only run the exported network (MONAI
#: Deploy's) do not install
RESOLVED_IDS = ("normalization",)
#: ``inference.json`` ids the TorchScript file embeds with a fixed value unless overridden: the exported graph is
#: verified against eager float32, and runtimes that load it (MONAI Deploy) run it in float32 (the bundle's ``"auto"``
#: precision applies to its own eager network), by PyTorch (not an export the bundle folder may hold beside it)
EXPORTED_DEFAULTS = {"amp": False, "backend": "pytorch"}


def _resolved_ids(bundle_dir: Path, **overrides) -> dict:
    """The values of :data:`RESOLVED_IDS` that the bundle's ``inference.json`` defines, with ``overrides``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    parser.update(overrides)
    return {key: parser.get_parsed_content(key) for key in RESOLVED_IDS if key in parser}


def _exported_metadata(meta: Path, shape: Sequence[int], bundle_dir: Path, **overrides) -> dict | None:
    """``metadata.json`` describing the network as exported, or ``None`` when the file already does.

    Overrides can change the network's input: ``image_size``, or ``modalities`` (a T2-only prostate model takes one
    channel). The metadata embedded in the TorchScript file then gives the exported input's ``num_channels``,
    ``spatial_shape`` and ``channel_def`` (the task's ``channel_names``), which is what consumers such as MONAI Deploy
    read."""
    from monai.bundle import ConfigParser

    content = json.loads(meta.read_text())
    spec = next(iter(content["network_data_format"]["inputs"].values()))
    channels, spatial = int(shape[0]), [int(s) for s in shape[1:]]
    declared = list(spec.get("spatial_shape", spatial))
    if int(spec.get("num_channels", channels)) == channels and declared[: len(spatial)] == spatial:
        return None
    # the network's 2D input size; a volume bundle's further axes (prostate's free depth "*") stay as declared
    spec["num_channels"], spec["spatial_shape"] = channels, spatial + declared[len(spatial):]
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    parser.update(overrides)
    names = list(getattr(parser.get_parsed_content("task"), "channel_names", ()) or ())
    if len(names) == channels:
        spec["channel_def"] = {str(i): name for i, name in enumerate(names)}
    return content


def _export_verified(
    final: str | os.PathLike,
    write: Callable[[str], None],
    run: Callable[[str, torch.Tensor], np.ndarray],
    net: torch.nn.Module,
    shape: Sequence[int],
    atol: float,
    what: str,
) -> float:
    """Write with ``write(tmp_path)``, compare ``run(tmp_path, x)`` with eager ``net(x)`` on a batch of 2, and move
    the file into place only when they agree within ``atol`` (through :func:`~transfuse_monai.utils.atomic_path`,
    which deletes the temporary file on any failure); return the max abs error."""
    with atomic_path(final) as tmp:
        write(str(tmp))
        x = torch.randn(2, *shape)
        with torch.no_grad():
            err = float(np.abs(np.asarray(run(str(tmp), x)) - net(x).numpy()).max())
        if not err <= atol:  # also catches NaN
            raise RuntimeError(f"{what} output differs from eager PyTorch by {err:.3g} (> atol={atol:g}).")
    return err


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """MONAI's ``convert_to_onnx`` verification calls ``set_determinism(0)`` and then ``set_determinism(None)``, which
    re-seeds torch's, numpy's and Python's global generators at random: restore the caller's states afterwards."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def _run_onnx(path: str, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0]


def export_onnx_model(
    net: torch.nn.Module, filepath: str | os.PathLike, input_shape: Sequence[int], atol: float = 1e-4, opset: int = 18
) -> float:
    """Export ``net`` to ONNX with a dynamic batch axis through MONAI's ``convert_to_onnx``, and verify it.

    The graph's input is named ``image`` and its output ``pred``. ``convert_to_onnx`` exports an example batch of 2
    with PyTorch's default exporter (``torch.export`` since PyTorch 2.9, the TorchScript tracer before; both keep
    the batch axis dynamic) and compares ONNX Runtime (CPU) with eager PyTorch on it (``rtol=0``, ``atol``); then the
    written file is run once more on a fresh batch of 2 to measure the error returned. The file is written under a
    temporary name and renamed into place only when both checks pass.

    Args:
        net: the network (set to eval mode, moved to the CPU).
        filepath: the ``.onnx`` file to write (its folder is created).
        input_shape: ``(C, *spatial)`` of one input.
        atol: largest allowed absolute difference from eager PyTorch.
        opset: ONNX opset version.

    Returns:
        The max abs difference between ONNX Runtime and eager PyTorch on the fresh batch.

    Raises:
        ValueError: ``atol`` is negative or ``input_shape`` is empty.
        RuntimeError: ONNX Runtime and eager PyTorch differ by more than ``atol`` (nothing is written).
    """
    from monai.networks.utils import convert_to_onnx

    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}.")
    if len(input_shape) < 2:
        raise ValueError(f"input_shape must be (C, *spatial), got {tuple(input_shape)}.")
    net = net.cpu().eval()
    # ``dynamo`` is deliberately not passed: with dynamo=True given, convert_to_onnx hands verification to
    # torch.onnx.export(verify=True), which only logs mismatches instead of raising. PyTorch's default exporter is used
    dynamo = inspect.signature(torch.onnx.export).parameters.get("dynamo")
    if dynamo is not None and dynamo.default is True:
        # torch.export-based by default (PyTorch >= 2.9): the batch axis in its own format (dynamic_axes still works
        # but goes through a deprecated conversion), and the weights inside the file, not in a '.data' file beside
        # it, so that the rename moves all of it
        axes = None
        extra = {"dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=1024)},), "external_data": False}
    else:  # the TorchScript tracer (one file up to 2 GB)
        axes, extra = {"image": {0: "batch"}, "pred": {0: "batch"}}, {}

    def write(path: str) -> None:
        example = torch.randn(2, *input_shape)  # batch 1 would be specialised by torch.export
        try:
            with _preserved_rng():
                convert_to_onnx(
                    net, [example], input_names=["image"], output_names=["pred"], opset_version=opset,
                    dynamic_axes=axes, filename=path, verify=True,
                    device=torch.device("cpu"), use_ort=True, rtol=0.0, atol=atol, use_trace=True, **extra,
                )
        except AssertionError as err:  # torch.testing.assert_close in MONAI's verification
            detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            raise RuntimeError(f"ONNX Runtime output differs from eager PyTorch (atol={atol:g}): {detail}") from err

    return _export_verified(filepath, write, _run_onnx, net, input_shape, atol, "ONNX Runtime")


def export_torchscript(
    bundle_dir: str | os.PathLike,
    filepath: str | os.PathLike,
    ckpt: str | os.PathLike | None = None,
    atol: float = 1e-4,
    **overrides,
) -> float:
    """Script a bundle's network with MONAI's ``ckpt_export`` (configs embedded) and verify it against eager PyTorch.

    Args:
        bundle_dir: the bundle folder.
        filepath: the ``.ts`` file to write.
        ckpt: the weights (default ``<bundle>/models/model.pt``), see :func:`load_bundle_network`.
        atol: largest allowed absolute difference from eager PyTorch.
        overrides: config ids to override (e.g. ``image_size``); the embedded ``inference.json`` carries them too,
            and the values of :data:`RESOLVED_IDS` (the input normalisation, from timm).

    Returns:
        The max abs difference between the TorchScript module and eager PyTorch on a random batch of 2.

    Raises:
        FileNotFoundError, TypeError, ValueError: see :func:`load_bundle_network`.
        RuntimeError: the outputs differ by more than ``atol`` (nothing is written).
    """
    from monai.bundle import ckpt_export

    root, meta, infer = _bundle_paths(bundle_dir)
    net, shape = load_bundle_network(root, ckpt, **overrides)

    def write(path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp_dir:
            # ckpt_export loads its ckpt_file strictly as a plain state dict: give it the weights exactly as
            # load_transfuse_checkpoint loaded them (wrappers removed, authors' format converted)
            weights = Path(tmp_dir) / "model.pt"
            torch.save(net.state_dict(), weights)
            config_file = infer
            embedded = {**EXPORTED_DEFAULTS, **overrides, **_resolved_ids(root, **overrides)}
            if embedded:
                # ckpt_export embeds the config file as written: embed the overridden one, so consumers of the
                # TorchScript file (MONAI Deploy) use the same settings (e.g. image_size) as the exported network,
                # with the values they cannot compute without timm (RESOLVED_IDS)
                config = json.loads(infer.read_text())
                config.update(embedded)
                config_file = Path(tmp_dir) / infer.name
                config_file.write_text(json.dumps(config, indent=4))
            # TorchScript archives hold their files under a folder named after the file, and MONAI Deploy's
            # bundle operator looks for ``<file stem>/extra/*.json``: export under the final name, then move to
            # the temporary path (the archive keeps the final name's folder)
            meta_file = meta
            exported_meta = _exported_metadata(meta, shape, root, **overrides)
            if exported_meta is not None:
                meta_file = Path(tmp_dir) / meta.name
                meta_file.write_text(json.dumps(exported_meta, indent=4))
            named = Path(tmp_dir) / Path(filepath).name
            ckpt_export(
                net_id="network_def", filepath=str(named), ckpt_file=str(weights), meta_file=str(meta_file),
                config_file=str(config_file), bundle_root=str(root),
            )
            shutil.move(named, path)

    def run(path: str, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.jit.load(path)(x).numpy()

    return _export_verified(filepath, write, run, net, shape, atol, "TorchScript")


def export_onnx(
    bundle_dir: str | os.PathLike,
    filepath: str | os.PathLike,
    ckpt: str | os.PathLike | None = None,
    atol: float = 1e-4,
    opset: int = 18,
    **overrides,
) -> float:
    """Export a bundle's network to ONNX (dynamic batch) with :func:`export_onnx_model` and verify it.

    Args:
        bundle_dir: the bundle folder.
        filepath: the ``.onnx`` file to write.
        ckpt: the weights (default ``<bundle>/models/model.pt``), see :func:`load_bundle_network`.
        atol: largest allowed absolute difference from eager PyTorch.
        opset: ONNX opset version.
        overrides: config ids to override (e.g. ``image_size``).

    Returns:
        The max abs difference between ONNX Runtime and eager PyTorch on a random batch of 2.

    Raises:
        FileNotFoundError, TypeError, ValueError: see :func:`load_bundle_network`.
        RuntimeError: the outputs differ by more than ``atol`` (nothing is written).
    """
    net, shape = load_bundle_network(bundle_dir, ckpt, **overrides)
    return export_onnx_model(net, filepath, shape, atol=atol, opset=opset)


def export_openvino_model(
    net: torch.nn.Module, filepath: str | os.PathLike, input_shape: Sequence[int], atol: float = 1e-4
) -> dict:
    """Convert ``net`` to an OpenVINO IR (``.xml`` + ``.bin``, dynamic batch) with OpenVINO's PyTorch frontend, and
    verify it before anything is moved into place.

    The IR is compiled in float32 (``INFERENCE_PRECISION_HINT`` ``f32``) and must match eager PyTorch within
    ``atol`` on a random batch of 2. It is then compiled with the CPU's default precision (bfloat16 on CPUs with AMX
    or AVX512-BF16), which is what :class:`~transfuse_monai.inferers.OpenVINONetwork` runs by default, and the mask
    Dice of that run against eager is reported. Both files are written in a temporary folder beside ``filepath``
    and moved into place (``.bin`` first) only when the check passes.

    Args:
        net: the network (set to eval mode, moved to the CPU).
        filepath: the ``.xml`` file to write (the ``.bin`` goes beside it).
        input_shape: ``(C, *spatial)`` of one input.
        atol: largest allowed absolute difference of the float32 IR from eager PyTorch.

    Returns:
        ``{"max_abs_error": float32 difference, "default_precision": str, "default_mask_dice": mean Dice}``.

    Raises:
        ModuleNotFoundError: OpenVINO is not installed.
        ValueError: ``filepath`` does not end in ``.xml``.
        RuntimeError: the float32 IR differs from eager PyTorch by more than ``atol`` (nothing is written).
    """
    try:
        import openvino as ov
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("the openvino format needs OpenVINO: pip install 'transfuse-monai[openvino]'.") from err

    from transfuse_monai.inferers.openvino import precision_name

    final = Path(filepath)
    if final.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is written as '<name>.xml' (with '<name>.bin' beside it), got '{final}'.")
    net = net.cpu().eval()
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.stem}.") as tmp:
        xml = Path(tmp) / final.name
        with torch.no_grad(), _preserved_rng():
            model = ov.convert_model(net, example_input=torch.randn(2, *input_shape),
                                     input=[ov.PartialShape([-1, *input_shape])])
        ov.save_model(model, str(xml), compress_to_fp16=False)
        core = ov.Core()
        x = torch.randn(2, *input_shape)
        with torch.no_grad():
            ref = net(x).numpy()
        exact = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        err = float(np.abs(exact(x.numpy())[exact.output(0)] - ref).max())
        if not err <= atol:  # also catches NaN
            raise RuntimeError(f"OpenVINO (f32) output differs from eager PyTorch by {err:.3g} (> atol={atol:g}).")
        default = core.compile_model(str(xml), "CPU")
        dice = float(mask_dice(np.asarray(default(x.numpy())[default.output(0)]), ref).mean())
        _move_ir(xml, final)
    return {"max_abs_error": err, "default_precision": precision_name(default), "default_mask_dice": dice}


def _move_ir(xml: Path, final: Path) -> None:
    """Move an IR's ``.bin`` then its ``.xml`` into place (a reader finds the ``.xml`` only once both exist)."""
    os.replace(xml.with_suffix(".bin"), final.with_suffix(".bin"))
    os.replace(xml, final)


def export_openvino(
    bundle_dir: str | os.PathLike,
    filepath: str | os.PathLike,
    ckpt: str | os.PathLike | None = None,
    atol: float = 1e-4,
    **overrides,
) -> dict:
    """Export a bundle's network as an OpenVINO IR with :func:`export_openvino_model` and verify it.

    Args:
        bundle_dir: the bundle folder.
        filepath: the ``.xml`` file to write.
        ckpt: the weights (default ``<bundle>/models/model.pt``), see :func:`load_bundle_network`.
        atol: largest allowed absolute difference of the float32 IR from eager PyTorch.
        overrides: config ids to override (e.g. ``image_size``).

    Raises:
        FileNotFoundError, TypeError, ValueError: see :func:`load_bundle_network`.
        RuntimeError: the outputs differ by more than ``atol`` (nothing is written).
    """
    net, shape = load_bundle_network(bundle_dir, ckpt, **overrides)
    return export_openvino_model(net, filepath, shape, atol=atol)


def mask_dice(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-image Dice of the masks of two logit batches ``(B, C, *spatial)``: ``logit > 0`` (sigmoid > 0.5) for one
    channel, the foreground of the argmax for several (softmax); two empty masks agree (Dice 1)."""
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {ref.shape}.")
    from monai.metrics import compute_dice

    if pred.shape[1] == 1:
        a, b = pred[:, :1] > 0, ref[:, :1] > 0
    else:
        a, b = pred.argmax(1)[:, None] > 0, ref.argmax(1)[:, None] > 0
    dice = compute_dice(torch.as_tensor(a), torch.as_tensor(b), include_background=True, ignore_empty=False)
    return dice[:, 0].double().numpy()


def calibration_images(
    bundle_dir: str | os.PathLike, calib_dir: str | os.PathLike | None = None, count: int = 16, seed: int = 0,
    **overrides,
) -> np.ndarray:
    """Up to ``count`` training images of a bundle's task, preprocessed exactly as ``inference.json`` does.

    The images come from ``calib_dir``: the task's dataset layout (its ``datalist(root, "train")``, default the
    ``dataset_dir`` of the bundle's ``train.json``), or else a folder of images. When neither holds images, the task's
    generated demo sample is used with a warning (quantisation ranges from synthetic images suit no real data). The
    images are a seeded random choice.

    Args:
        bundle_dir: the bundle folder.
        calib_dir: dataset root or image folder (default: ``train.json``'s ``dataset_dir``).
        count: number of images (all of them when fewer exist).
        seed: seed of the choice.
        overrides: config ids to override (e.g. ``image_size``).

    Returns:
        ``(N, C, *spatial)`` float32 array.
    """
    from monai.bundle import ConfigParser

    from transfuse_monai.data import image_datalist

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}.")
    root, meta, infer = _bundle_paths(bundle_dir)
    parser = ConfigParser()
    parser.read_config(str(infer))
    parser.read_meta(str(meta))
    parser["bundle_root"] = str(root)
    parser.update(overrides)
    task = parser.get_parsed_content("task")
    if calib_dir is None:
        train = root / "configs" / "train.json"
        calib_dir = json.loads(train.read_text()).get("dataset_dir", "") if train.is_file() else ""
    source = Path(calib_dir)
    with tempfile.TemporaryDirectory(prefix="tf_calib_") as tmp:
        if task.is_dataset(source):
            items = task.datalist(source, "train", validate=False)
        else:
            try:
                items = image_datalist(source) if source.is_dir() else []
            except ValueError:  # a folder without images
                items = []
            if not items:
                items = task.datalist(task.resolve_dataset(source, Path(tmp) / "demo_data"), "train", validate=False)
        chosen = _training_order(len(items), seed)[:count]
        preprocessing = parser.get_parsed_content("preprocessing")
        images = [np.asarray(preprocessing({"image": items[i]["image"]})["image"], np.float32) for i in chosen]
    return np.stack(images)


def _training_order(n: int, seed: int) -> list[int]:
    """The seeded order in which training images are taken for calibration, verification and accuracy control
    (each takes the next ones, so the three sets never overlap)."""
    return random.Random(seed).sample(range(n), n)


def _module_paths(node) -> list[str]:
    """The dotted paths of the modules an exported ONNX node comes from, outermost first: from the scopes that the
    ``torch.export``-based exporter records in the node's metadata, else from the TorchScript exporter's node name
    (``/transformer/blocks/blocks.0/attn/MatMul``: each scope is named within its parent, Sequential children as
    ``parent.index``)."""
    meta = {p.key: p.value for p in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" in meta:
        return [s for s in ast.literal_eval(meta["pkg.torch.onnx.name_scopes"]) if s]
    paths: list[str] = []
    parts: list[str] = []
    for scope in node.name.strip("/").split("/")[:-1]:
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope
        else:
            parts.append(scope)
        paths.append(".".join(parts))
    return paths


def module_nodes(model, modules: Sequence[str], op_types: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Names of the nodes of an exported ONNX graph that belong to each of ``modules`` (dotted submodule paths of the
    exported network, e.g. ``"head_final"``, ``"transformer.blocks.0"``), optionally only those of ``op_types``.

    Args:
        model: an ``onnx.ModelProto`` exported from PyTorch.
        modules: submodule paths.
        op_types: keep only nodes of these operator types (default: all).

    Returns:
        ``{module: [node name, ...]}``, empty lists for modules with no such node.
    """
    found: dict[str, list[str]] = {m: [] for m in modules}
    for node in model.graph.node:
        if op_types is not None and node.op_type not in op_types:
            continue
        paths = _module_paths(node)
        for m in modules:
            if any(p == m or p.startswith(m + ".") for p in paths):
                found[m].append(node.name)
    return found


def _activation_products(model) -> list[str]:
    """Names of the MatMul nodes of an ONNX graph that multiply two activations: neither input is an initializer
    or a ``Constant`` (attention's q.k^T and attn.v, not the weighted products of Linear layers)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not set(n.input) & constants]


def quantize_onnx_int8(
    fp32_path: str | os.PathLike,
    filepath: str | os.PathLike,
    calibration: np.ndarray,
    op_types: Sequence[str] = INT8_OP_TYPES,
    per_channel: bool = True,
    reduce_range: bool = True,
    nodes_to_exclude: Sequence[str] = (),
    float_modules: Sequence[str] = (),
    activation_products: bool = False,
) -> None:
    """Quantise an fp32 ONNX model statically with ONNX Runtime (QDQ format, int8 weights, uint8 activations).

    The model first goes through ONNX Runtime's ``quant_pre_process`` (ONNX shape inference and graph optimisation;
    its symbolic shape inference is skipped: it fails on the transformer's reshapes), then ``quantize_static`` with
    MinMax calibration, one image per calibration batch.

    Args:
        fp32_path: the fp32 model, e.g. written by :func:`export_onnx_model` (input ``image``).
        filepath: the int8 model to write.
        calibration: ``(N, C, *spatial)`` calibration images, e.g. from :func:`calibration_images`.
        op_types: operator types to quantise; the others stay in float32.
        per_channel: one weight scale per output channel (recommended for convolutions).
        reduce_range: 7-bit weights, against the saturation of the u8s8 products of x86 CPUs without VNNI (their
            16-bit intermediate sums); ONNX Runtime's advice for such CPUs, and on TransFuse-S on an AVX2 host as
            fast as 8-bit weights with closer masks (``benchmarks/RESULTS.md``). ``False`` for 8-bit weights.
        nodes_to_exclude: node names kept in float32.
        float_modules: submodules of the exported network kept in float32 (their ``op_types`` nodes, found by
            :func:`module_nodes`), e.g. :data:`INT8_FLOAT_MODULES`.
        activation_products: also quantise the MatMuls of two activations (attention's q.k^T and attn.v) and so the
            softmax between them. Off by default: on a CPU without VNNI, ONNX Runtime's uint8 x uint8 products and
            its quantised softmax are slow, and TransFuse-S runs about 5% faster with them in float32, with the
            same masks (``benchmarks/RESULTS.md``).

    Raises:
        ValueError: a module of ``float_modules`` has no node of ``op_types`` in the graph (nothing is written).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": np.ascontiguousarray(batch, np.float32)}

    exclude = list(nodes_to_exclude)
    if float_modules:
        found = module_nodes(onnx.load(str(fp32_path), load_external_data=False), float_modules, op_types)
        missing = [m for m, names in found.items() if not names]
        if missing:
            raise ValueError(f"float_modules {missing} match no {'/'.join(op_types)} node of {fp32_path}: name "
                             "submodules of the exported network (e.g. 'head_final'), or pass none.")
        exclude += [name for names in found.values() for name in names]
    with tempfile.TemporaryDirectory(prefix="tf_int8_") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        if not activation_products and "MatMul" in op_types:  # ONNX Runtime's MatMulConstBOnly is QOperator-only
            exclude += _activation_products(onnx.load(str(pre), load_external_data=False))
        quantize_static(
            str(pre), str(filepath), _Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
            per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
        )


def export_onnx_int8(
    bundle_dir: str | os.PathLike,
    filepath: str | os.PathLike,
    ckpt: str | os.PathLike | None = None,
    calib_dir: str | os.PathLike | None = None,
    calib_count: int = 16,
    verify_count: int = 8,
    min_dice: float = INT8_MIN_DICE,
    opset: int = 18,
    reduce_range: bool = True,
    float_modules: Sequence[str] = INT8_FLOAT_MODULES,
    activation_products: bool = False,
    **overrides,
) -> dict[str, float]:
    """Export a bundle's network to an int8 ONNX model (:func:`quantize_onnx_int8`) and verify it on real images.

    The fp32 ONNX export (:func:`export_onnx_model`, verified within 1e-4) is quantised with ``calib_count`` training
    images (:func:`calibration_images`); the int8 model is then run by ONNX Runtime on ``verify_count`` other
    training images (the calibration images when there are no others) and compared with eager PyTorch: the mean
    per-image Dice of the thresholded masks (:func:`mask_dice`) must be at least ``min_dice``. An int8 model's logits
    differ from fp32 by a few percent of their range, so a max-abs tolerance would say little; the masks are what a
    segmentation keeps. The file is written under a temporary name and moved into place only once verified.

    Args:
        bundle_dir: the bundle folder.
        filepath: the int8 ``.onnx`` file to write.
        ckpt: the weights (default ``<bundle>/models/model.pt``), see :func:`load_bundle_network`.
        calib_dir: calibration images, see :func:`calibration_images`.
        calib_count: number of calibration images.
        verify_count: number of verification images.
        min_dice: smallest allowed mean Dice between the int8 and eager masks.
        opset: ONNX opset version.
        reduce_range: 7-bit weights, see :func:`quantize_onnx_int8`.
        float_modules: submodules kept in float32, see :func:`quantize_onnx_int8`.
        activation_products: quantise attention's products of two activations too, see :func:`quantize_onnx_int8`.
        overrides: config ids to override (e.g. ``image_size``).

    Returns:
        ``{"mean_dice": ..., "min_dice": ..., "max_prob_diff": ...}`` on the verification images (``max_prob_diff``:
        max |sigmoid(int8) - sigmoid(eager)|).

    Raises:
        FileNotFoundError, TypeError, ValueError: see :func:`load_bundle_network`.
        RuntimeError: the int8 masks agree less than ``min_dice`` with eager PyTorch (nothing is written).
    """
    from transfuse_monai.inferers.onnx import ort_session

    if not 0.0 <= min_dice <= 1.0:
        raise ValueError(f"min_dice must be in [0, 1], got {min_dice}.")
    net, shape = load_bundle_network(bundle_dir, ckpt, **overrides)
    calib, verify = _split_calibration(bundle_dir, calib_dir, calib_count, verify_count, **overrides)
    with atomic_path(filepath) as tmp, tempfile.TemporaryDirectory(prefix="tf_int8_") as tmp_dir:
        fp32 = Path(tmp_dir) / "model_fp32.onnx"
        export_onnx_model(net, fp32, shape, opset=opset)
        quantize_onnx_int8(fp32, tmp, calib, reduce_range=reduce_range, float_modules=float_modules,
                           activation_products=activation_products)
        session = ort_session(tmp)  # as OnnxRuntimeNetwork runs it (graph optimisations on)
        report = verify_int8_masks(lambda x: session.run(None, {"image": x})[0], net, verify, min_dice, "int8 ONNX")
    return report


def verify_int8_masks(
    run: Callable[[np.ndarray], np.ndarray], net: torch.nn.Module, images: np.ndarray, min_dice: float, name: str
) -> dict[str, float]:
    """Compare a quantised model with eager PyTorch on ``images``, one at a time, by the per-image Dice of their
    masks (:func:`mask_dice`).

    Args:
        run: the quantised model: a ``(1, C, *spatial)`` float32 array to its logits.
        net: the float32 network (eval mode, CPU).
        images: ``(N, C, *spatial)`` verification images.
        min_dice: smallest allowed mean Dice.
        name: the model's name in the error message.

    Returns:
        ``{"mean_dice", "min_dice", "max_prob_diff"}`` (``max_prob_diff``: max |sigmoid(int8) - sigmoid(eager)|,
        softmax for several channels).

    Raises:
        RuntimeError: the mean Dice is below ``min_dice`` (or NaN).
    """
    out = np.concatenate([np.asarray(run(np.ascontiguousarray(images[i : i + 1])), np.float32)
                          for i in range(len(images))])
    with torch.no_grad():
        ref = net(torch.from_numpy(images)).numpy()
    dice = mask_dice(out, ref)
    prob = torch.sigmoid if ref.shape[1] == 1 else lambda t: torch.softmax(t, 1)
    diff = float((prob(torch.from_numpy(out)) - prob(torch.from_numpy(ref))).abs().max())
    report = {"mean_dice": float(dice.mean()), "min_dice": float(dice.min()), "max_prob_diff": diff}
    if not report["mean_dice"] >= min_dice:  # also catches NaN
        raise RuntimeError(
            f"{name} masks agree with eager PyTorch at mean Dice {report['mean_dice']:.4f} (< min_dice="
            f"{min_dice:g}) on {len(images)} images; calibrate on more images (--calib_count) or keep fp32."
        )
    return report


def _split_calibration(bundle_dir, calib_dir, calib_count: int, verify_count: int, **overrides):
    """Calibration images and the verification images held out from them (the calibration images themselves when
    the dataset has no others), see :func:`calibration_images`."""
    images = calibration_images(bundle_dir, calib_dir, calib_count + verify_count, **overrides)
    calib, held_out = images[:calib_count], images[calib_count:]
    return calib, (held_out if len(held_out) else calib)


def accuracy_items(
    bundle_dir: str | os.PathLike, calib_dir: str | os.PathLike | None = None, count: int = 64, skip: int = 0,
    seed: int = 0, **overrides,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Labelled training images of a bundle's task at the network's input, for accuracy-controlled quantisation.

    The images are chosen as :func:`calibration_images` chooses them (same seed and order), after the first ``skip``
    (the calibration and verification images), and preprocessed by ``train.json``'s validation transforms
    (``validate#preprocessing``: the image exactly as ``inference.json`` prepares it, the label resized with it). A
    volume of a 2D network (prostate) gives its slices along the last axis, a seeded choice of them.

    Args:
        bundle_dir: the bundle folder (with ``configs/train.json``).
        calib_dir: the task's dataset root (default: ``train.json``'s ``dataset_dir``).
        count: number of items.
        skip: items of the seeded order left out first.
        seed: seed of the choice.
        overrides: config ids to override (e.g. ``image_size``).

    Returns:
        ``[(image (1, C, H, W) float32, label (H, W) int64 class indices), ...]``.

    Raises:
        FileNotFoundError: the bundle has no ``train.json``.
        ValueError: ``count`` < 1, or the dataset holds no more than ``skip`` labelled training images.
    """
    from monai.bundle import ConfigParser

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}.")
    root, _, _ = _bundle_paths(bundle_dir)
    train = root / "configs" / "train.json"
    if not train.is_file():
        raise FileNotFoundError(f"{train} not found: accuracy control needs the task's labelled training images.")
    parser = ConfigParser()
    parser.read_config(str(train))
    parser["bundle_root"] = str(root)
    parser.update(overrides)
    source = Path(calib_dir if calib_dir is not None else parser.get_parsed_content("dataset_dir"))
    parser["dataset_dir"] = str(source)
    task = parser.get_parsed_content("task")
    if not task.is_dataset(source):
        raise ValueError(f"{source} is not a {type(task).__name__} dataset: accuracy control needs labelled training "
                         "images (--calib_dir <dataset root>).")
    items = task.datalist(source, "train", validate=False)
    order = _training_order(len(items), seed)[skip:]
    if not order:
        raise ValueError(f"{source} has {len(items)} training images, none left after the {skip} calibration and "
                         "verification images.")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    rng = random.Random(seed)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for i in order:
        sample = preprocessing(dict(items[i]))
        image = np.asarray(sample["image"], np.float32)
        label = np.asarray(sample["label"])
        if label.shape[0] > 1:  # one-hot
            label = label.argmax(0)[None]
        pairs = [(image, label)]
        if image.ndim == 4:  # (C, H, W, D) volume, 2D network: slices along the last axis
            pairs = [(image[..., k], label[..., k]) for k in range(image.shape[-1])]
            pairs = rng.sample(pairs, min(len(pairs), count - len(out)))
        out += [(np.ascontiguousarray(x[None]), np.rint(y[0]).astype(np.int64)) for x, y in pairs]
        if len(out) >= count:
            break
    return out[:count]


def label_dice(logits: np.ndarray, label: np.ndarray) -> float:
    """Dice of one image's prediction against its label, the mean over the foreground classes (the thresholded
    single-channel logits, or the argmax of several channels); 1 for a class absent from both.

    Args:
        logits: ``(1, C, *spatial)`` network output.
        label: ``(*spatial)`` class indices.
    """
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    logits = torch.as_tensor(np.asarray(logits, np.float32))
    classes = max(logits.shape[1], 2)
    pred = (logits[:, :1] > 0).long() if logits.shape[1] == 1 else logits.argmax(1, keepdim=True)
    target = torch.as_tensor(np.asarray(label, np.int64))[None, None]
    dice = compute_dice(one_hot(pred, classes), one_hot(target, classes), include_background=False,
                        ignore_empty=False)
    return float(dice.mean())


def openvino_module_operations(model, modules: Sequence[str]) -> dict[str, list[str]]:
    """Friendly names of the operations of an OpenVINO model converted from PyTorch that belong to each of
    ``modules`` (dotted submodule paths of the network, e.g. ``"head_final"``).

    OpenVINO's PyTorch frontend names each operation after its module (``__module.head_final.1.conv/aten::...``),
    except a convolution or matrix product into which it folded the BatchNorm that follows: that one is renamed, and
    is found as the weighted operation that feeds one of the module's operations directly.
    """
    ops = list(model.get_ops())
    found: dict[str, list[str]] = {}
    for module in modules:
        prefix = re.compile(rf"__module\.{re.escape(module)}[./]")
        own = [op for op in ops if prefix.match(op.get_friendly_name())]
        own_names = {op.get_friendly_name() for op in own}
        folded = {op.input_value(i).get_node().get_friendly_name() for op in own for i in range(op.get_input_size())
                  if op.input_value(i).get_node().get_type_name() in ("Convolution", "MatMul")}
        found[module] = sorted(own_names | folded)
    return found


def quantize_openvino_int8(
    xml_path: str | os.PathLike,
    filepath: str | os.PathLike,
    calibration: np.ndarray,
    float_modules: Sequence[str] = INT8_FLOAT_MODULES,
    accuracy: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    max_drop: float = INT8_MAX_DROP,
) -> dict | None:
    """Quantise a float32 OpenVINO IR to int8 with NNCF's post-training quantisation.

    Weights and activations of convolutions and matrix products become int8 (NNCF's ``PERFORMANCE`` preset:
    symmetric), calibrated one image at a time on ``calibration``; ``ModelType.TRANSFORMER`` applies NNCF's
    transformer rules (SmoothQuant on the Linear layers, softmax and layer norms kept in floating point). The
    operations of ``float_modules`` (:func:`openvino_module_operations`) are left out (NNCF ignored scope). At run
    time OpenVINO computes what stays floating point in the CPU's default precision (float32 for an
    accuracy-controlled IR, below).

    With ``accuracy`` (labelled images, :func:`accuracy_items`) the quantisation is accuracy-controlled
    (``nncf.quantize_with_accuracy_control``): the metric is one minus the mean per-image |Dice change|
    (:func:`label_dice` against the labels) of the quantised model against the float32 IR, and NNCF returns the
    quantised operations that cost most to floating point, one ranked group at a time, until the drop is at most
    ``max_drop``. The drop is measured, as NNCF measures it, with the floating-point operations in float32; the bound
    and that precision are recorded in the IR (:data:`ACCURACY_CONTROL_RT_INFO`, :data:`INFERENCE_PRECISION_RT_INFO`),
    so that :class:`~transfuse_monai.inferers.OpenVINONetwork` runs it as it was measured. On the polyp bundle's trained
    checkpoint (``max_drop`` 0.004, 64 images) this returned 6 of 123 operations to floating point (the two input
    convolutions and four decoder convolutions) and met the parity goal on the 162 test images where plain
    quantisation did not (``benchmarks/RESULTS.md``); it costs minutes of evaluation (18 on 2 CPU cores at 352x352).

    Args:
        xml_path: the float32 IR, e.g. written by :func:`export_openvino_model`.
        filepath: the ``.xml`` to write (with its ``.bin``).
        calibration: ``(N, C, *spatial)`` calibration images (:func:`calibration_images`).
        float_modules: submodules kept in floating point, e.g. :data:`INT8_FLOAT_MODULES`.
        accuracy: ``[(image (1, C, *spatial), label (*spatial)), ...]`` held out from ``calibration``: quantise
            with accuracy control on them (default: plain quantisation).
        max_drop: with ``accuracy``: the largest mean |Dice change| accepted.

    Returns:
        With ``accuracy``: ``{"kept_float": [convolutions and matrix products left in floating point besides
        ``float_modules``], "quantized": number of quantised ones, "accuracy_images": N, "max_drop": max_drop,
        "drop": the mean |Dice change| reached}``; else ``None``.

    Raises:
        ModuleNotFoundError: NNCF is not installed.
        ValueError: a module of ``float_modules`` names no operation of the IR, or ``max_drop`` is negative (nothing
            is written).
        RuntimeError: the accuracy control ended above ``max_drop`` (measured against the float32 IR; nothing is
            written).
    """
    try:
        import nncf
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("the openvino-int8 format needs NNCF: pip install 'transfuse-monai[openvino]'.") from err
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    found = openvino_module_operations(model, float_modules)
    missing = [m for m, names in found.items() if not names]
    if missing:
        raise ValueError(f"float_modules {missing} name no operation of {xml_path}: name submodules of the exported "
                         "network (e.g. 'head_final'), or pass none.")
    if not max_drop >= 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}.")
    options = dict(
        preset=nncf.QuantizationPreset.PERFORMANCE, model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
        ignored_scope=nncf.IgnoredScope(names=[n for names in found.values() for n in names]) if found else None,
    )
    dataset = nncf.Dataset([np.ascontiguousarray(calibration[i : i + 1], np.float32) for i in range(len(calibration))])
    report = None
    if not accuracy:
        quantized = nncf.quantize(model, dataset, **options)
    else:
        reference = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        items = [(x, y, label_dice(reference(x)[reference.output(0)], y)) for x, y in accuracy]

        def parity(compiled, data) -> tuple[float, list[float]]:
            """1 - |Dice change| per image, and their mean: NNCF's metric (higher is better)."""
            values = [1.0 - abs(label_dice(compiled(x)[compiled.output(0)], y) - ref) for x, y, ref in data]
            return float(np.mean(values)), values

        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        quantized = nncf.quantize_with_accuracy_control(
            model, dataset, nncf.Dataset(items, lambda item: item[0]), parity, max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE, **options,
            # each ranking evaluates every quantised operation (about 120) on these images: NNCF takes the ones
            # the quantisation hurts most; the drop itself is always measured on all the accuracy images
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                ranking_subset_size=min(len(items), RANKING_IMAGES)),
        )
        # as NNCF measured it and as OpenVINONetwork will run it (INFERENCE_PRECISION_RT_INFO): floating-point
        # operations in float32, against the float32 reference
        compiled = ov.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        drop = 1.0 - parity(compiled, items)[0]
        if not drop <= max_drop:
            raise RuntimeError(f"accuracy control ended at a mean |Dice change| of {drop:.4f} on {len(items)} images "
                               f"(> max_drop={max_drop:g}); nothing written: raise max_drop or add accuracy images.")
        fake_quantized = {op.get_friendly_name() for op in quantized.get_ops()
                          if any(op.input_value(i).get_node().get_type_name() == "FakeQuantize"
                                 for i in range(op.get_input_size()))
                          and op.get_type_name() in ("Convolution", "MatMul")}
        weighted = [op.get_friendly_name() for op in ov.Core().read_model(str(xml_path)).get_ops()
                    if op.get_type_name() in ("Convolution", "MatMul")]
        ignored = {n for names in found.values() for n in names}
        report = {"kept_float": sorted(n for n in weighted if n not in fake_quantized and n not in ignored),
                  "quantized": len(fake_quantized), "accuracy_images": len(items), "max_drop": float(max_drop),
                  "drop": drop}
        quantized.set_rt_info(str(float(max_drop)), list(ACCURACY_CONTROL_RT_INFO))
        quantized.set_rt_info("f32", list(INFERENCE_PRECISION_RT_INFO))
    ov.save_model(quantized, str(filepath), compress_to_fp16=False)
    return report


def accuracy_controlled(xml_path: str | os.PathLike) -> float | None:
    """The ``max_drop`` an int8 IR was quantised under with accuracy control (:func:`quantize_openvino_int8`), or
    ``None`` (plain quantisation, or not an IR of this library)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    key = list(ACCURACY_CONTROL_RT_INFO)
    return float(model.get_rt_info(key).astype(str)) if model.has_rt_info(key) else None


def export_openvino_int8(
    bundle_dir: str | os.PathLike,
    filepath: str | os.PathLike,
    ckpt: str | os.PathLike | None = None,
    calib_dir: str | os.PathLike | None = None,
    calib_count: int = 16,
    verify_count: int = 8,
    min_dice: float = INT8_MIN_DICE,
    float_modules: Sequence[str] = INT8_FLOAT_MODULES,
    accuracy_count: int = 0,
    max_drop: float = INT8_MAX_DROP,
    **overrides,
) -> dict:
    """Export a bundle's network to an int8 OpenVINO IR (:func:`quantize_openvino_int8`) and verify it on real
    images, as :func:`export_onnx_int8` does for ONNX: the float32 IR (:func:`export_openvino_model`, checked
    within 1e-4) is quantised on ``calib_count`` training images and compiled for the CPU as
    :class:`~transfuse_monai.inferers.OpenVINONetwork` runs it; its masks on ``verify_count`` other training images
    must agree with eager PyTorch at a mean Dice of at least ``min_dice``. Both files are moved into place only then.
    With ``accuracy_count`` the quantisation is accuracy-controlled on that many further labelled training images
    (:func:`accuracy_items`, ``max_drop``): the IR that ``backend="auto"`` runs on CPUs with int8 dot products
    but without AMX.

    Args:
        bundle_dir: the bundle folder.
        filepath: the ``.xml`` to write (e.g. ``models/model_int8.xml``).
        ckpt: the weights (default ``<bundle>/models/model.pt``), see :func:`load_bundle_network`.
        calib_dir: calibration images, see :func:`calibration_images`.
        calib_count: number of calibration images.
        verify_count: number of verification images.
        min_dice: smallest allowed mean Dice between the int8 and eager masks.
        float_modules: submodules kept in floating point.
        accuracy_count: labelled training images of the accuracy control (0: plain quantisation).
        max_drop: the accuracy control's largest mean per-image |Dice change|, see :func:`quantize_openvino_int8`.
        overrides: config ids to override (e.g. ``image_size``).

    Returns:
        The figures of :func:`verify_int8_masks`, ``precision``, the precision OpenVINO compiled the floating point
        part in, and with accuracy control its report (:func:`quantize_openvino_int8`) under ``"accuracy_control"``.

    Raises:
        FileNotFoundError, TypeError, ValueError: see :func:`load_bundle_network`.
        ModuleNotFoundError: OpenVINO or NNCF is not installed.
        RuntimeError: the float32 IR differs from eager, or the int8 masks agree less than ``min_dice``.
    """
    if not 0.0 <= min_dice <= 1.0:
        raise ValueError(f"min_dice must be in [0, 1], got {min_dice}.")
    import openvino  # noqa: F401  (fails here, before any work, when OpenVINO is missing)

    from transfuse_monai.inferers.openvino import OpenVINONetwork

    final = Path(filepath)
    if final.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is written as '<name>.xml' (with '<name>.bin' beside it), got '{final}'.")
    if accuracy_count < 0:
        raise ValueError(f"accuracy_count must be >= 0, got {accuracy_count}.")
    net, shape = load_bundle_network(bundle_dir, ckpt, **overrides)
    calib, verify = _split_calibration(bundle_dir, calib_dir, calib_count, verify_count, **overrides)
    accuracy = None
    if accuracy_count:  # at the exported network's input size (train.json's image_size may differ)
        accuracy = accuracy_items(bundle_dir, calib_dir, accuracy_count, skip=calib_count + verify_count,
                                  **{**overrides, "image_size": list(shape[1:])})
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.stem}.") as tmp:
        fp32, xml = Path(tmp) / "model_fp32.xml", Path(tmp) / final.name
        export_openvino_model(net, fp32, shape)
        control = quantize_openvino_int8(fp32, xml, calib, float_modules, accuracy, max_drop)
        runner = OpenVINONetwork(xml)  # as inference runs it: in the precision the IR records, if any
        report = verify_int8_masks(lambda x: runner(torch.from_numpy(x)).numpy(), net, verify, min_dice,
                                   "int8 OpenVINO")
        _move_ir(xml, final)
    return {**report, "precision": runner.precision, **({"accuracy_control": control} if control else {})}


def export_bundle(
    bundle_dir: str | os.PathLike,
    formats: Sequence[str] = DEFAULT_FORMATS,
    ckpt: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    atol: float = 1e-4,
    calib_dir: str | os.PathLike | None = None,
    calib_count: int = 16,
    min_dice: float = INT8_MIN_DICE,
    float_modules: Sequence[str] = INT8_FLOAT_MODULES,
    accuracy_count: int = 0,
    max_drop: float = INT8_MAX_DROP,
    **overrides,
) -> dict[str, dict]:
    """Export a bundle's network in each of ``formats`` to ``output_dir`` (default ``<bundle>/models``).

    Args:
        bundle_dir: the bundle folder.
        formats: a subset of :data:`FORMATS` (default :data:`DEFAULT_FORMATS`).
        ckpt: the weights (default ``<bundle>/models/model.pt``).
        output_dir: where ``model.ts``, ``model.onnx``, ``model_int8.onnx``, ``model.xml`` / ``model.bin`` and
            ``model_int8.xml`` / ``model_int8.bin`` are written.
        atol: largest allowed absolute difference from eager PyTorch (TorchScript, fp32 ONNX).
        calib_dir: int8 formats: calibration images, see :func:`calibration_images`.
        calib_count: int8 formats: number of calibration images.
        min_dice: int8 formats: smallest allowed mean Dice between int8 and eager masks.
        float_modules: int8 formats: submodules kept in floating point.
        accuracy_count: ``openvino-int8``: labelled training images of NNCF's accuracy control (0: plain
            quantisation), see :func:`export_openvino_int8`.
        max_drop: ``openvino-int8`` with ``accuracy_count``: the largest mean per-image |Dice change| accepted.
        overrides: config ids to override (e.g. ``image_size``).

    Returns:
        ``{format: {"file": path, ...}}``: ``max_abs_error`` for TorchScript, ONNX and OpenVINO, the verification
        figures of :func:`verify_int8_masks` for the int8 formats.

    Raises:
        ValueError: an unknown format (before anything is exported); see also :func:`export_torchscript`.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}; choose from {list(FORMATS)}.")
    root = Path(bundle_dir)
    out = Path(output_dir) if output_dir is not None else root / "models"
    results: dict[str, dict] = {}
    if "torchscript" in formats:
        path = out / "model.ts"
        err = export_torchscript(root, path, ckpt, atol, **overrides)
        results["torchscript"] = {"file": str(path), "max_abs_error": err}
    if "onnx" in formats:
        path = out / "model.onnx"
        results["onnx"] = {"file": str(path), "max_abs_error": export_onnx(root, path, ckpt, atol, **overrides)}
    if "onnx-int8" in formats:
        path = out / "model_int8.onnx"
        info = export_onnx_int8(root, path, ckpt, calib_dir, calib_count, min_dice=min_dice,
                                float_modules=float_modules, **overrides)
        results["onnx-int8"] = {"file": str(path), **info}
    if "openvino" in formats:
        path = out / "model.xml"
        results["openvino"] = {"file": str(path), **export_openvino(root, path, ckpt, atol, **overrides)}
    if "openvino-int8" in formats:
        path = out / "model_int8.xml"
        info = export_openvino_int8(root, path, ckpt, calib_dir, calib_count, min_dice=min_dice,
                                    float_modules=float_modules, accuracy_count=accuracy_count, max_drop=max_drop,
                                    **overrides)
        results["openvino-int8"] = {"file": str(path), **info}
    return results


def _override_value(text: str):
    """A command-line override's value as ``monai.bundle run`` reads it: JSON / Python literals (``[0]``, ``true``,
    ``0.5``, ``'name'``), else the text itself."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


def parse_overrides(tokens: Sequence[str], bundle_dir: str | os.PathLike) -> dict:
    """The bundle overrides among the export's command-line arguments: ``--<id> <value>`` or ``--<id>=<value>`` for
    ids of the bundle's ``inference.json`` (``--modalities "[0]"``, ``--in_channels 1``, ``--network_def#...``),
    which change the exported network or its pre-processing and are embedded in the exported ``inference.json``.

    Raises:
        ValueError: an argument that is not ``--<id> <value>``, or an id that ``inference.json`` does not have.
    """
    from monai.bundle import ConfigParser

    overrides: dict = {}
    tokens = list(tokens)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"unexpected argument {token!r}: bundle overrides are given as --<id> <value>")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if not tokens or tokens[0].startswith("--"):
                raise ValueError(f"--{key} needs a value")
            value = tokens.pop(0)
        overrides[key] = _override_value(value)
    if overrides:
        _, _, infer = _bundle_paths(bundle_dir)
        parser = ConfigParser()
        parser.read_config(str(infer))
        unknown = [k for k in overrides if k not in parser]
        if unknown:
            known = ", ".join(sorted(k for k in parser.config if not k.startswith("_")))
            raise ValueError(f"{infer} has no {', '.join(unknown)} to override (its ids: {known})")
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transfuse_monai.export", description=__doc__.split("\n\n")[0],
        epilog="Any other --<id> <value> overrides that id of the bundle's inference.json, as `monai.bundle run` does "
        "(e.g. --modalities \"[0]\" for a T2-only prostate model); the exported network is built with it and the "
        "embedded inference.json and metadata.json carry it.",
    )
    parser.add_argument("bundle", help="bundle folder, e.g. bundles/polyp")
    parser.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS), choices=list(FORMATS))
    parser.add_argument("--ckpt", default=None, help="weights (default <bundle>/models/model.pt)")
    parser.add_argument("--output_dir", default=None, help="default <bundle>/models")
    parser.add_argument("--image_size", type=int, nargs="+", default=None, help="override the bundle's image_size")
    parser.add_argument("--atol", type=float, default=1e-4, help="maximum allowed difference from eager PyTorch")
    parser.add_argument("--calib_dir", default=None,
                        help="int8 formats: the task's dataset (or a folder of images) to calibrate on (default: "
                        "train.json's dataset_dir; a generated sample, with a warning, when it holds no images)")
    parser.add_argument("--calib_count", type=int, default=16, help="int8 formats: number of calibration images")
    parser.add_argument("--min_dice", type=float, default=INT8_MIN_DICE,
                        help="int8 formats: smallest mean Dice of int8 vs eager masks on held-out training images")
    parser.add_argument("--float_modules", nargs="*", default=list(INT8_FLOAT_MODULES), metavar="MODULE",
                        help="int8 formats: submodules kept in floating point (default: %(default)s; none: quantise "
                        "all)")
    parser.add_argument("--accuracy_count", type=int, default=0,
                        help="openvino-int8: quantise with NNCF's accuracy control on this many further labelled "
                        "training images (e.g. 64; minutes of evaluation; 0: plain quantisation)")
    parser.add_argument("--max_drop", type=float, default=INT8_MAX_DROP,
                        help="openvino-int8 with --accuracy_count: largest mean per-image |Dice change| against the "
                        "float model (default: %(default)s)")
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(extra, args.bundle)
        if args.image_size:
            overrides["image_size"] = args.image_size
        results = export_bundle(args.bundle, args.formats, args.ckpt, args.output_dir, args.atol, args.calib_dir,
                                args.calib_count, args.min_dice, args.float_modules, args.accuracy_count,
                                args.max_drop, **overrides)
    except (FileNotFoundError, RuntimeError, TypeError, ValueError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    for fmt, info in results.items():
        if "max_abs_error" in info:
            extra = (f"; {info['default_precision']} by default: mask Dice {info['default_mask_dice']:.4f}"
                     if "default_precision" in info else "")
            print(f"{fmt:13s} {info['file']}  max |export - eager| = {info['max_abs_error']:.2e}{extra}")
        else:
            print(f"{fmt:13s} {info['file']}  int8 vs eager masks: mean Dice {info['mean_dice']:.4f} (min "
                  f"{info['min_dice']:.4f}), max |prob diff| = {info['max_prob_diff']:.3f}")
            control = info.get("accuracy_control")
            if control:
                print(f"{'':13s} accuracy control on {control['accuracy_images']} images: mean |Dice change| "
                      f"{control['drop']:.4f} (max_drop {control['max_drop']:g}), {control['quantized']} operations "
                      f"int8, {len(control['kept_float'])} kept in floating point: {', '.join(control['kept_float'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

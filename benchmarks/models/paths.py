# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Execution paths of the inference benchmark and their parity checks.

A path is a ``+``-joined set of modifiers (``eager``, ``channels_last``, ``bf16``, ``fp16``, ``sdpa``, ``no_sdpa``,
``compile``, ``onnx``, ``trt``, ``fp32``): :func:`parse_path` validates it, :func:`prepare` turns a model into a
:class:`Runner` for it (ONNX export and ONNX Runtime session, TensorRT conversion, ``torch.compile``, autocast...),
and :func:`parity` / :func:`judge` compare a path's output with fp32 eager.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from transfuse_monai.export import INT8_FLOAT_MODULES

REFERENCE_PATH = "eager"
MODIFIERS = ("channels_last", "bf16", "fp16", "sdpa", "no_sdpa", "compile", "onnx", "trt", "fp32", "cudagraphs", "int8",
             "auto", "openvino", "ovep")
# compile is opt-in (--paths ... compile): inductor takes minutes per model and input shape on 2 cores
DEFAULT_PATHS = ("eager", "channels_last", "bf16", "channels_last+bf16", "auto", "sdpa", "no_sdpa", "onnx", "fp16",
                 "channels_last+fp16", "trt")
TOL_FP32 = 1e-4  # fp32 paths: max |diff| <= TOL_FP32 * max(1, max|eager|)
MAX_FLIP_PCT_HALF = 0.5  # reduced-precision paths: at most this share (%) of mask pixels (logit > 0) may flip
#: messages of :class:`PathUnavailable` that mean "not on this device" (reported apart, not per row)
DEVICE_NA = ("no GPU", "fp16 autocast is a GPU path", "ONNX Runtime path runs on CPU only",
             "the OpenVINO path runs on CPU only")


class PathUnavailable(Exception):
    """The path does not apply to this model/device (reported as n/a or skipped, not as an error)."""


def _attention_modules(model: nn.Module) -> list[tuple[nn.Module, str]]:
    found = []
    for m in model.modules():
        if hasattr(m, "fused_attn") and hasattr(m, "qkv"):  # timm Attention
            found.append((m, "fused_attn"))
        elif hasattr(m, "use_flash_attention") and hasattr(m, "qkv"):  # MONAI WindowAttention (SwinUNETR)
            found.append((m, "use_flash_attention"))
    return found


def attention_default(model: nn.Module) -> bool | None:
    """Whether the model's togglable attention is fused by default (``None``: it has none)."""
    mods = _attention_modules(model)
    if not mods:
        return None
    return all(bool(getattr(m, attr)) for m, attr in mods)


def set_fused_attention(model: nn.Module, fused: bool) -> int:
    """Switch fused attention on/off in every togglable attention module; returns how many were set."""
    mods = _attention_modules(model)
    for m, attr in mods:
        setattr(m, attr, fused)
    return len(mods)


def parse_path(path: str) -> frozenset[str]:
    """The modifiers of a ``+``-joined path (``eager`` is the empty set); raises ``ValueError`` for unknown or
    contradictory ones."""
    mods = frozenset(p for p in path.split("+") if p and p != "eager")
    unknown = mods - set(MODIFIERS)
    if unknown:
        raise ValueError(f"unknown path modifier(s) {sorted(unknown)} in '{path}'; choose from {MODIFIERS}")
    if "auto" in mods and len(mods) > 1:
        raise ValueError(f"'{path}': 'auto' stands alone (the bundles' default precision, resolved per device)")
    if {"bf16", "fp16"} <= mods or {"sdpa", "no_sdpa"} <= mods or {"onnx", "trt"} <= mods:
        raise ValueError(f"contradictory path '{path}'")
    if "fp32" in mods and not mods & {"trt", "openvino"}:
        raise ValueError("'fp32' only qualifies 'trt' or 'openvino' (their precision)")
    if "openvino" in mods and (mods - {"openvino", "fp32", "int8"} or {"fp32", "int8"} <= mods):
        raise ValueError(f"'{path}': 'openvino' combines only with 'fp32' or 'int8' (else the CPU plugin's default "
                         "precision)")
    if "cudagraphs" in mods and mods & {"onnx", "trt", "compile"}:
        raise ValueError(f"'{path}': cudagraphs captures an eager PyTorch path (compile: mode='reduce-overhead')")
    if ("onnx" in mods or "trt" in mods) and mods & {"bf16", "fp16", "compile", "channels_last"}:
        raise ValueError(f"'{path}': onnx/trt combine only with sdpa/no_sdpa (trt: fp32)")
    if "ovep" in mods and "onnx" not in mods:
        raise ValueError(f"'{path}': 'ovep' qualifies 'onnx' (ONNX Runtime's OpenVINO execution provider)")
    if "int8" in mods and not mods & {"onnx", "openvino"}:
        raise ValueError(f"'{path}': 'int8' qualifies 'onnx' (ONNX Runtime static int8 quantisation) or 'openvino' "
                         "(NNCF)")
    return mods


def resolve_auto(mods: frozenset[str], device: torch.device) -> tuple[frozenset[str], str]:
    """The concrete modifiers of the ``auto`` path on ``device`` (what the bundles' ``--amp auto`` runs, from
    :func:`transfuse_monai.bundle.choose_precision`) and the reason; other paths are returned as they are."""
    if "auto" not in mods:
        return mods, ""
    from transfuse_monai.bundle import FastPaths

    fast = FastPaths(device, "auto")
    if not fast.amp:
        return frozenset(), fast.precision.reason
    dtype = "bf16" if fast.precision.dtype == torch.bfloat16 else "fp16"
    return frozenset({dtype, "channels_last"} if fast.channels_last else {dtype}), fast.precision.reason


def is_reduced_precision(mods: frozenset[str]) -> bool:
    """Whether the path computes in bf16/fp16 (judged by mask flips instead of max |diff|)."""
    return ("bf16" in mods or "fp16" in mods or "int8" in mods
            or (bool(mods & {"trt", "openvino"}) and "fp32" not in mods))


class Runner:
    """A model prepared for one path: ``runner(x)`` returns fp32 logits on the model's device."""

    def __init__(self, fn: Callable, prep: Callable, setup_s: float = 0.0, note: str = "") -> None:
        self.fn, self.prep, self.setup_s, self.note = fn, prep, setup_s, note

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.prep(x))


def first_output(out):
    """The first head of a model output (tuple/list: the authors' and some MONAI nets), as fp32."""
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.float()


#: ONNX Runtime's intra-op threads spin after each run by default, which steals the cores from whatever runs next;
#: the interleaved pass turns spinning off so that an ONNX runner does not slow down the runner after it.
ORT_SPINNING = True


#: ONNX Runtime's OpenVINO execution provider (the ``onnxruntime-openvino`` build), for the ``ovep`` modifier
OVEP = "OpenVINOExecutionProvider"


def _ort_session(path: Path, threads: int, ovep: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not ORT_SPINNING:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if ovep:  # the CPU plugin in its default precision, with torch's thread count
        return ort.InferenceSession(str(path), so, providers=[(OVEP, {"device_type": "CPU",
                                                                      "num_of_threads": str(threads)})])
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _shortcut_a(x: torch.Tensor, planes: int, stride: int, spatial_dims: int = 3) -> torch.Tensor:
    """MONAI ResNet's "A" shortcut (stride-``stride`` subsampling, zero channels appended) without its ``out.data``,
    which the dynamo exporter cannot serialise and the TorchScript tracer freezes into a constant of the example
    input. Same values."""
    from monai.networks.layers.utils import get_pool_layer

    out = get_pool_layer(("avg", {"kernel_size": 1, "stride": stride}), spatial_dims=spatial_dims)(x)
    return F.pad(out, [0, 0] * (out.dim() - 2) + [0, planes - out.shape[1]])


def exportable(model: nn.Module) -> tuple[nn.Module, str]:
    """Rewrite known export blockers in a model copy (same maths); return it and a note (empty: nothing changed)."""
    import functools

    n = 0
    for m in model.modules():
        ds = getattr(m, "downsample", None)
        if isinstance(ds, functools.partial) and getattr(ds.func, "__name__", "") == "_downsample_basic_block":
            m.downsample = functools.partial(_shortcut_a, **ds.keywords)
            n += 1
    return model, (f"{n} MONAI ResNet 'A' shortcuts rewritten without .data for export" if n else "")


#: segmentation heads kept in float32 by the ``onnx+int8`` path: ours (the library export's ``INT8_FLOAT_MODULES``)
#: and the authors' TransFuse_S's head of the map it predicts with (``AuthorsTransFuseS.net.final_2``)
INT8_HEADS = (*INT8_FLOAT_MODULES, "net.final_2")


def prepare_onnx(model: nn.Module, size, batch: int, tmpdir: Path, threads: int, int8: bool = False,
                 ovep: bool = False) -> Runner:
    """Export with ``torch.onnx.export(dynamo=True)`` and a dynamic batch axis; run with ONNX Runtime (CPU).

    ``int8``: each exported graph is quantised first by :func:`quantize_onnx_int8` (the ``onnx-int8`` export of
    ``transfuse_monai.export``; calibrated here on random images, as the weights are random too), the model's
    segmentation head (:data:`INT8_HEADS`) kept in float32 as the library's export does. ``ovep``: the sessions run
    on ONNX Runtime's OpenVINO execution provider instead of its CPU provider.

    Fallback, reported in the row's note: when the dynamo export fails, or its graph does not run at batch 1 and
    ``batch``, the TorchScript-based exporter (``dynamo=False``) writes one static-shape graph per batch size.
    """
    import numpy as np
    import onnxruntime as ort

    start = time.perf_counter()
    model, patched = exportable(model)
    submodules = dict(model.named_modules())
    heads = [m for m in INT8_HEADS if m in submodules]
    stem = tmpdir / f"model_{os.getpid()}_{id(model)}"
    sessions: dict[int, object] = {}
    exporter = "dynamo export, dynamic batch"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            path = stem.with_suffix(".onnx")
            example = torch.randn(2, 3, *size)  # batch 1 would be specialised by torch.export
            dim = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["pred"],
                              opset_version=18, dynamo=True, dynamic_shapes=({0: dim},), external_data=True,
                              verbose=False)
            session = _ort_session(_int8_model(path, size, heads) if int8 else path, threads, ovep)
            for b in sorted({1, batch}):
                session.run(None, {"image": np.zeros((b, 3, *size), np.float32)})
                sessions[b] = session
        except Exception as e:
            # e.g. MONAI's ResNet "A" shortcut (FlexibleUNet) lifts a constant that the dynamo exporter cannot
            # serialise, and the traced graph bakes the batch size into it
            exporter = (f"TorchScript exporter, static batch {'1, batches run image by image' if int8 else 'per size'}"
                        f" (dynamo export failed: {type(e).__name__})")
            # int8: the batch-1 graph only (calibration feeds one image at a time), run image by image at batch B
            for b in [1] if int8 else sorted({1, batch}):
                path = stem.with_name(f"{stem.name}_b{b}.onnx")
                torch.onnx.export(model, (torch.randn(b, 3, *size),), str(path), input_names=["image"],
                                  output_names=["pred"], opset_version=18, dynamo=False)
                sessions[b] = _ort_session(_int8_model(path, size, heads) if int8 else path, threads, ovep)
    setup = time.perf_counter() - start

    def run_onnx(x):
        session = sessions.get(int(x.shape[0]))
        if session is None:  # a static batch-1 graph: one call per image
            return torch.cat([run_onnx(x[i : i + 1]) for i in range(x.shape[0])])
        (out,) = session.run(None, {"image": np.ascontiguousarray(x.numpy())})
        return torch.from_numpy(out).float()

    provider = f"{OVEP} (device CPU)" if ovep else "CPU provider"
    note = (f"ORT {ort.__version__}, {provider}, {threads} intra-op threads, {exporter}"
            + (f"; {patched}" if patched else ""))
    if int8:
        note += ("; static int8 (QDQ, per-channel 7-bit weights, transfuse_monai.export.quantize_onnx_int8; "
                 "activation x activation products" + (f" and {'/'.join(heads)}" if heads else "") + " in float32)")
    return Runner(run_onnx, lambda x: x, setup, note)


def _int8_model(path: Path, size, float_modules=(), calib_images: int = 4) -> Path:
    """``path`` quantised to int8 by the library's ``onnx-int8`` export (:func:`quantize_onnx_int8`, the submodules
    ``float_modules`` kept in float32), calibrated on ``calib_images`` seeded random images (the benchmark's models
    have random weights); returns the new file."""
    from transfuse_monai.export import quantize_onnx_int8

    g = torch.Generator().manual_seed(0)
    calibration = torch.randn(calib_images, 3, *size, generator=g).numpy()
    out = path.with_name(f"{path.stem}_int8.onnx")
    quantize_onnx_int8(path, out, calibration, float_modules=float_modules)
    return out


def prepare(base: nn.Module, mods: frozenset[str], device: torch.device, size, batch: int, tmpdir: Path,
            threads: int) -> Runner:
    """A copy of ``base`` set up for the path ``mods`` on ``device``; raises :class:`PathUnavailable` when the path
    does not apply (device, model without togglable attention, or equal to eager)."""
    if "onnx" in mods and device.type != "cpu":
        raise PathUnavailable("ONNX Runtime path runs on CPU only")
    if "ovep" in mods:
        import onnxruntime as ort

        if OVEP not in ort.get_available_providers():
            raise PathUnavailable(f"this ONNX Runtime ({ort.__version__}) has no {OVEP}: pip install "
                                  "onnxruntime-openvino (in place of onnxruntime)")
    if "openvino" in mods and device.type != "cpu":
        raise PathUnavailable("the OpenVINO path runs on CPU only")
    if "trt" in mods and device.type != "cuda":
        raise PathUnavailable("no GPU: TensorRT needs CUDA")
    if "fp16" in mods and device.type != "cuda":
        raise PathUnavailable("fp16 autocast is a GPU path (CPU uses bf16)")
    if "cudagraphs" in mods and device.type != "cuda":
        raise PathUnavailable("no GPU: CUDA graphs need CUDA")
    if ("sdpa" in mods or "no_sdpa" in mods):
        default = attention_default(base)
        if default is None:
            raise PathUnavailable("no togglable attention in this model")
        if default == ("sdpa" in mods) and not mods - {"sdpa", "no_sdpa"}:
            raise PathUnavailable("= eager (library default)")
    model = copy.deepcopy(base).eval()
    if "sdpa" in mods:
        set_fused_attention(model, True)
    if "no_sdpa" in mods:
        set_fused_attention(model, False)
    prep = lambda x: x  # noqa: E731

    if "onnx" in mods:
        runner = prepare_onnx(model, size, batch, tmpdir, threads, int8="int8" in mods, ovep="ovep" in mods)
        del model
        return runner

    if "openvino" in mods:
        from transfuse_monai.export import export_openvino_model
        from transfuse_monai.inferers import OpenVINONetwork

        start = time.perf_counter()
        model, _ = exportable(model)  # MONAI's ResNet 'A' shortcuts otherwise trace a fixed batch size
        xml = tmpdir / f"model_{os.getpid()}_{id(model)}.xml"
        # the library's export (PyTorch frontend, dynamic batch); parity is judged by this benchmark, not at export
        export_openvino_model(model, xml, (3, *size), atol=float("inf"))
        note = ""
        if "int8" in mods:  # the library's openvino-int8 quantisation, calibrated on random images like onnx+int8
            from transfuse_monai.export import quantize_openvino_int8

            heads = [m for m in INT8_HEADS if m in dict(model.named_modules())]
            calibration = torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(0)).numpy()
            int8_xml = xml.with_name(f"{xml.stem}_int8.xml")
            quantize_openvino_int8(xml, int8_xml, calibration, heads)
            xml, note = int8_xml, (f"; NNCF int8 (transfuse_monai.export.quantize_openvino_int8"
                                   f"{', ' + '/'.join(heads) + ' in floating point' if heads else ''})")
        ov_net = OpenVINONetwork(xml, precision="f32" if "fp32" in mods else None, num_threads=threads)
        del model
        return Runner(lambda x: ov_net(x), lambda x: x, time.perf_counter() - start,
                      f"OpenVINO IR, inference precision {ov_net.precision}{note}")

    if "trt" in mods:
        from monai.networks.utils import convert_to_trt

        precision = "fp32" if "fp32" in mods else "fp16"
        start = time.perf_counter()
        trt_model = convert_to_trt(model.to(device), precision, input_shape=[1, 3, *size],
                                   dynamic_batchsize=[1, batch, batch], use_trace=True, device=device.index or 0)
        setup = time.perf_counter() - start

        def run_trt(x):
            with torch.no_grad():
                return first_output(trt_model(x))

        return Runner(run_trt, prep, setup, f"TensorRT {precision} via monai.networks.utils.convert_to_trt")

    model = model.to(device)
    if "channels_last" in mods:
        model = model.to(memory_format=torch.channels_last)
        prep = lambda x: x.contiguous(memory_format=torch.channels_last)  # noqa: E731
    dtype = torch.bfloat16 if "bf16" in mods else torch.float16 if "fp16" in mods else None
    fn = model
    note = ""
    if "compile" in mods:
        fn = torch.compile(model, dynamic=False)
        note = "torch.compile (inductor)"

    def run_torch(x):
        amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            return first_output(fn(x))

    if "cudagraphs" in mods:
        start = time.perf_counter()
        replay = cuda_graphed(run_torch, prep, device, size, batch)
        return Runner(replay, prep, time.perf_counter() - start, "CUDA graphs (one capture per batch size)")
    runner = Runner(run_torch, prep, 0.0, note)
    if "compile" in mods:
        # compilation happens on the first call of each input shape: time both shapes as set-up
        start = time.perf_counter()
        for b in (1, batch):
            runner(torch.randn(b, 3, *size, device=device))
        sync(device)
        runner.setup_s = time.perf_counter() - start
    return runner


def cuda_graphed(run: Callable, prep: Callable, device: torch.device, size, batch: int) -> Callable:
    """``run`` captured as one CUDA graph per batch size (1 and ``batch``), after a few warm-up calls on a side
    stream (cuDNN algorithm selection, allocator); the returned function copies its input into the graph's static
    input, replays the graph and returns the static output (overwritten by the next replay)."""
    graphs = {}
    for b in sorted({1, batch}):
        static_in = prep(torch.randn(b, 3, *size, device=device))
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                run(static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = run(static_in)
        graphs[b] = (graph, static_in, static_out)

    def replay(x):
        graph, static_in, static_out = graphs[int(x.shape[0])]
        static_in.copy_(x)
        graph.replay()
        return static_out

    return replay


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parity(out: torch.Tensor, ref: torch.Tensor, mods: frozenset[str]) -> dict:
    """Max |out - ref|, max |ref| and the share (%) of mask pixels (logit > 0) that flip, judged by :func:`judge`."""
    diff = float((out.float().cpu() - ref).abs().max())
    flips = float(((out.float().cpu() > 0) != (ref > 0)).float().mean()) * 100  # sigmoid > 0.5 masks that differ
    return judge({"max_abs_diff": diff, "max_abs_ref": float(ref.abs().max()), "mask_flip_pct": flips}, mods)


def judge(par: dict, mods: frozenset[str]) -> dict:
    """Set ``passed`` and ``criterion`` of a parity record (criteria: ``python -m benchmarks models --help``)."""
    diff, scale = par["max_abs_diff"], max(1.0, par["max_abs_ref"])
    if is_reduced_precision(mods):
        passed = math.isfinite(diff) and par["mask_flip_pct"] <= MAX_FLIP_PCT_HALF
        criterion = f"mask flips <= {MAX_FLIP_PCT_HALF:g}%"
    else:
        passed = math.isfinite(diff) and diff <= TOL_FP32 * scale
        criterion = f"max|diff| <= {TOL_FP32:g} * max(1, max|eager|)"
    return {**par, "passed": bool(passed), "criterion": criterion}

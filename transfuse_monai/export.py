# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Export a trained bundle's network to TorchScript and ONNX, and check both against eager PyTorch.

Usage::

    python -m transfuse_monai.export bundles/polyp                      # models/model.pt -> model.ts, model.onnx
    python -m transfuse_monai.export bundles/polyp --formats onnx --ckpt path/model.pt --output_dir out/

TorchScript goes through MONAI's ``ckpt_export`` (the network is scripted, with ``metadata.json`` and
``inference.json`` embedded, as MONAI Deploy expects); ONNX through ``torch.onnx.export`` with a dynamic batch axis.
Each exported file is run on random input at the bundle's input size (batch 2) and compared with eager PyTorch
(ONNX with ONNX Runtime). Files are written under a temporary name and renamed once verified, so a failed export
leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["FORMATS", "load_bundle_network", "export_torchscript", "export_onnx", "export_bundle", "main"]

FORMATS = ("torchscript", "onnx")


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
    """Instantiate a bundle's ``network_def`` from ``inference.json``, load ``ckpt`` (default ``models/model.pt``),
    and return it in eval mode on the CPU with the input shape ``(C, *spatial)`` from ``metadata.json``."""
    from monai.bundle import ConfigParser

    root, meta, infer = _bundle_paths(bundle_dir)
    ckpt = Path(ckpt) if ckpt is not None else root / "models" / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"Checkpoint {ckpt} not found; train the bundle first or pass --ckpt.")
    parser = ConfigParser()
    parser.read_config(str(infer))
    parser.read_meta(str(meta))
    parser["bundle_root"] = str(root)
    parser.update(overrides)
    net = parser.get_parsed_content("network_def")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    net.load_state_dict(state)
    image = next(iter(json.loads(meta.read_text())["network_data_format"]["inputs"].values()))
    spatial = tuple(int(s) for s in overrides.get("image_size", image["spatial_shape"]))
    return net.eval(), (int(image["num_channels"]), *spatial)


def _export_verified(
    final: str | os.PathLike, write: Callable[[str], None], run: Callable[[str, torch.Tensor], np.ndarray],
    net: torch.nn.Module, shape: Sequence[int], atol: float, what: str,
) -> float:
    """Write with ``write(tmp_path)``, compare ``run(tmp_path, x)`` with eager ``net(x)`` on a batch of 2, and move
    the file into place only when they agree within ``atol``; return the max abs error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.partial{final.suffix}")
    try:
        write(str(tmp))
        x = torch.randn(2, *shape)
        with torch.no_grad():
            err = float(np.abs(np.asarray(run(str(tmp), x)) - net(x).numpy()).max())
        if err > atol:
            raise RuntimeError(f"{what} output differs from eager PyTorch by {err:.3g} (> {atol}).")
        os.replace(tmp, final)
        return err
    finally:
        tmp.unlink(missing_ok=True)


def export_torchscript(
    bundle_dir: str | os.PathLike, filepath: str | os.PathLike, ckpt: str | os.PathLike | None = None,
    atol: float = 1e-4, **overrides,
) -> float:
    """Script the network with MONAI's ``ckpt_export`` (configs embedded), verify it, and return the max abs error."""
    from monai.bundle import ckpt_export

    root, meta, infer = _bundle_paths(bundle_dir)
    net, shape = load_bundle_network(root, ckpt, **overrides)

    def write(path: str) -> None:
        config_file = infer
        with tempfile.TemporaryDirectory() as tmp_dir:
            if overrides:
                # ckpt_export embeds the config file as written: embed the overridden one, so consumers of the
                # TorchScript file (MONAI Deploy) use the same settings (e.g. image_size) as the exported network
                config = json.loads(infer.read_text())
                config.update(overrides)
                config_file = Path(tmp_dir) / infer.name
                config_file.write_text(json.dumps(config, indent=4))
            ckpt_export(
                net_id="network_def", filepath=path, ckpt_file=str(ckpt or root / "models" / "model.pt"),
                meta_file=str(meta), config_file=str(config_file), bundle_root=str(root),
            )

    def run(path: str, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.jit.load(path)(x).numpy()

    return _export_verified(filepath, write, run, net, shape, atol, "TorchScript")


def export_onnx(
    bundle_dir: str | os.PathLike, filepath: str | os.PathLike, ckpt: str | os.PathLike | None = None,
    atol: float = 1e-4, opset: int = 18, **overrides,
) -> float:
    """Export the network to ONNX (dynamic batch), verify with ONNX Runtime, and return the max abs error."""
    import onnxruntime as ort

    net, shape = load_bundle_network(bundle_dir, ckpt, **overrides)

    def write(path: str) -> None:
        example = torch.randn(2, *shape)  # batch 1 would be specialised by torch.export
        torch.onnx.export(
            net, (example,), path, input_names=["image"], output_names=["pred"], opset_version=opset, dynamo=True,
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}}, external_data=False,
        )

    def run(path: str, x: torch.Tensor) -> np.ndarray:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {"image": x.numpy()})[0]

    return _export_verified(filepath, write, run, net, shape, atol, "ONNX Runtime")


def export_bundle(
    bundle_dir: str | os.PathLike,
    formats: Sequence[str] = FORMATS,
    ckpt: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    atol: float = 1e-4,
    **overrides,
) -> dict[str, dict]:
    """Export a bundle's network in each of ``formats`` to ``output_dir`` (default ``<bundle>/models``).

    Returns:
        ``{format: {"file": path, "max_abs_error": err}}``.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}; choose from {list(FORMATS)}.")
    root = Path(bundle_dir)
    out = Path(output_dir) if output_dir is not None else root / "models"
    results: dict[str, dict] = {}
    if "torchscript" in formats:
        path = out / "model.ts"
        results["torchscript"] = {"file": str(path), "max_abs_error": export_torchscript(root, path, ckpt, atol, **overrides)}
    if "onnx" in formats:
        path = out / "model.onnx"
        results["onnx"] = {"file": str(path), "max_abs_error": export_onnx(root, path, ckpt, atol, **overrides)}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfuse_monai.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="bundle folder, e.g. bundles/polyp")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--ckpt", default=None, help="weights (default <bundle>/models/model.pt)")
    parser.add_argument("--output_dir", default=None, help="default <bundle>/models")
    parser.add_argument("--image_size", type=int, nargs="+", default=None, help="override the bundle's image_size")
    parser.add_argument("--atol", type=float, default=1e-4, help="maximum allowed difference from eager PyTorch")
    args = parser.parse_args(argv)
    overrides = {"image_size": args.image_size} if args.image_size else {}
    try:
        results = export_bundle(args.bundle, args.formats, args.ckpt, args.output_dir, args.atol, **overrides)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    for fmt, info in results.items():
        print(f"{fmt:12s} {info['file']}  max |export - eager| = {info['max_abs_error']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

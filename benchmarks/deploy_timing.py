# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Seconds per radiograph and per MR volume through the MONAI Deploy applications on this machine.

Exports the hip and prostate bundles at their own input sizes with random weights (the time does not depend on the
weights), writes generated inputs of clinical size (DX radiographs of ``--radiograph`` pixels; an MR study with a T2
series of ``--t2`` voxels, an ADC series of ``--adc`` voxels and a localiser; the same T2 + ADC as a 4D NIfTI), runs
each application in the deploy environment (``bash deploy/setup_env.sh``) exactly as a user does, and prints a
Markdown table: the whole run (interpreter, SDK and model start-up included) and the steady-state time per item from
the applications' own log (from the graph's start, once every input was checked, to the last output saved, over the
items).

    python -m benchmarks deploy-timing                        # 4 radiographs, one MR study, 2 threads
    python -m benchmarks deploy-timing --radiographs 8 --threads 2 --out /tmp/deploy_timing
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REPO, cpu_isa, cpu_name, md_table, sys_path_entry

#: "<time> INFO transfuse_deploy.<module>: ..." before the SDK configures logging, "[<time>] [INFO]
#: (transfuse_deploy.<module>) - ..." after it
_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]? (?:INFO transfuse_deploy[.\w]*:|\[INFO\] "
                    r"\(transfuse_deploy[.\w]*\) -) (inputs checked|saved)")


def export(bundle: str, out: Path) -> Path:
    """The bundle's network at its own input size, random weights, exported with the configs embedded."""
    from monai.bundle import ConfigParser

    from transfuse_monai.export import export_torchscript

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / f"{bundle}.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    model = out / bundle / "model.ts"
    model.parent.mkdir(parents=True, exist_ok=True)
    export_torchscript(REPO / "bundles" / bundle, model, ckpt)
    return model


def radiographs(folder: Path, count: int, size: tuple[int, int]) -> Path:
    """``count`` generated DX radiographs of ``size`` (rows, columns) as DICOM files in ``folder``."""
    from transfuse_monai.data.synthetic import draw_hip, write_dicom

    for i in range(count):
        image, _ = draw_hip(np.random.default_rng(i), *size)
        write_dicom(folder / f"dx_{i:02d}.dcm", image, (0.143, 0.143), bits_stored=12)
    return folder


def mr_study(folder: Path, nifti: Path, t2_size: tuple[int, int, int], adc_size: tuple[int, int, int]) -> None:
    """A T2 series, an ADC series on a coarser grid and a localiser; and the T2 + ADC (ADC resampled onto the T2
    grid by the application's own function) as the 4D NIfTI the bundle reads."""
    import nibabel as nib
    from pydicom.uid import generate_uid

    from transfuse_monai.tasks import get_task
    from transfuse_monai.data.synthetic import write_mr_series

    t2_spacing = (0.5, 0.5, 3.0)
    adc_spacing = tuple(t2_spacing[i] * t2_size[i] / adc_size[i] for i in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        vols = []
        for size, spacing, channel in ((t2_size, t2_spacing, 0), (adc_size, adc_spacing, 1)):
            get_task("prostate").make_sample(tmp, seed=0, n_train=1, size=size, spacing=spacing)
            data = np.asarray(nib.load(f"{tmp}/imagesTr/prostate_00.nii.gz").dataobj)[..., channel]
            vols.append(np.round(data).astype(np.uint16))
    study = {"uid": generate_uid(), "frame_of_reference": generate_uid()}
    origin = (-80.0, -80.0, -36.0)
    write_mr_series(folder, vols[0][:, :, :3], t2_spacing, (-80.0, -80.0, 0.0), "t2_localizer", study, 1)
    write_mr_series(folder, vols[0], t2_spacing, origin, "t2_tse_tra", study, 2)
    write_mr_series(folder, vols[1], adc_spacing, origin, "ep2d_diff_ADC", study, 3)

    with sys_path_entry(REPO / "deploy"):  # the applications' package, not installed in this environment
        from transfuse_deploy.volumes import resample_to_grid

    def ras(spacing):
        return np.array([[-spacing[0], 0, 0, -origin[0]], [0, -spacing[1], 0, -origin[1]],
                         [0, 0, spacing[2], origin[2]], [0, 0, 0, 1.0]])

    adc_on_t2 = resample_to_grid(vols[1], ras(adc_spacing), ras(t2_spacing), vols[0].shape)
    nifti.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.stack([vols[0].astype(np.float32), adc_on_t2], -1), ras(t2_spacing)), str(nifti))


def run_app(app: str, source: Path, out: Path, model: Path, threads: int, outputs_per_item: int) -> tuple[float, float,
                                                                                                       int]:
    """``(wall seconds, seconds per item from the graph's start to the last file saved, items)`` of one run."""
    python = Path(os.environ.get("DEPLOY_VENV") or REPO / ".deploy-venv") / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run([str(python), str(REPO / "deploy" / "apps" / app), "-i", str(source), "-o", str(out),
                           "-m", str(model), "--overwrite"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{app} failed:\n{log[-4000:]}")
    stamps = [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), m.group(2))
              for m in map(_STAMP.match, log.splitlines()) if m]
    started = next(t for t, kind in stamps if kind == "inputs checked")
    saved = [t for t, kind in stamps if kind == "saved"]
    items = len(saved) // outputs_per_item
    per_item = (saved[-1] - started).total_seconds() / items
    return wall, per_item, items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--radiographs", type=int, default=4, help="number of DX radiographs")
    parser.add_argument("--radiograph", type=int, nargs=2, default=(2048, 2500), metavar=("ROWS", "COLUMNS"))
    parser.add_argument("--t2", type=int, nargs=3, default=(320, 320, 24), metavar=("X", "Y", "SLICES"))
    parser.add_argument("--adc", type=int, nargs=3, default=(128, 128, 20), metavar=("X", "Y", "SLICES"))
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of the applications")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")


def run(args: argparse.Namespace) -> None:
    """Export, write the inputs, run the three application runs; print the table."""
    out = args.out or Path(tempfile.mkdtemp(prefix="deploy_timing_"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        hip_model, prostate_model = export("hip", out / "models"), export("prostate", out / "models")
        dx = radiographs(out / "dx", args.radiographs, tuple(args.radiograph))
        mr_study(out / "study", out / "nifti" / "case.nii.gz", tuple(args.t2), tuple(args.adc))
        rows = [
            ("hip_dicom", f"{args.radiographs} DX radiographs {args.radiograph[0]}x{args.radiograph[1]}", "radiograph",
             run_app("hip_dicom", dx, out / "hip_out", hip_model, args.threads, 2)),
            ("prostate_mr", f"MR study: T2 {'x'.join(map(str, args.t2))}, ADC {'x'.join(map(str, args.adc))}, "
             "localiser", "volume",
             run_app("prostate_mr", out / "study", out / "mr_out", prostate_model, args.threads, 2)),
            ("prostate_mr", f"4D NIfTI T2 + ADC {'x'.join(map(str, args.t2))}", "volume",
             run_app("prostate_mr", out / "nifti" / "case.nii.gz", out / "nifti_out", prostate_model,
                     args.threads, 1)),
        ]
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"CPU: {cpu_name()}, PyTorch ISA {cpu_isa()}, {args.threads} threads")
    table = md_table(["application", "input", "whole run (s)", "graph start to last output, per item (s)"],
                     [[f"`{app}`", what, f"{wall:.1f}", f"{per_item:.2f} per {unit}"]
                      for app, what, unit, (wall, per_item, items) in rows], align="llrr")
    print("\n".join(table))

# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Seconds per prostate MRI volume: TransFuse-S through the prostate bundle's inference vs nnU-Net-like DynUNets.

The paper (Table 4) reports 0.192 s per volume for TransFuse-S against 0.209 s for nnU-Net 2D and 0.381 s for nnU-Net
3D full resolution. This benchmark measures the three on the same generated volumes (MSD Task05-like: 2 channels,
``--shape`` slices x rows x columns, default 20 x 320 x 320, 0.625 x 0.625 x 3.6 mm, written as 4D NIfTI), each
through the same pipeline, the prostate bundle's ``inference.json``:

    load NIfTI -> channel first -> modalities -> RAS -> z-score (non-zero, per channel) [-> in-plane resize]
    -> network -> softmax -> invert onto the input grid -> argmax -> write NIfTI (atomically)

and reports, per model, the mean and median seconds per volume (after ``--warmup`` volumes), parameters and the
ratio to TransFuse-S. The models are timed round-robin, one volume each in turn, so that a change in machine load
affects them alike. Weights are random (speed does not depend on them).

* **TransFuse-S**: the bundle's ``network_def`` (ResNet-34 + DeiT-S, 8 blocks) on every axial slice resized to
  ``--image-size`` (320 x 320), ``SliceInferer`` with ``--sw-batch-size`` slices per call.
* **nnU-Net 2D** (MONAI ``DynUNet``, 2D): configured like nnU-Net (v1)'s 2D plan for Task05: 7 resolution stages
  (3x3 convolutions, stride 2 from the second stage: 320 -> 5), 32 features doubling to at most 480, instance
  norm, leaky ReLU, transposed-convolution upsampling, no deep-supervision heads at inference; whole slices at the
  native in-plane size (no resize), ``--sw-batch-size`` slices per call.
* **nnU-Net 3D full resolution** (MONAI ``DynUNet``, 3D): nnU-Net (v1)'s 3d_fullres plan for Task05: patch
  320 x 256 x 20 (rows x columns x slices), 7 stages with in-plane-only (1-voxel-deep) kernels and strides in the
  first stages, as nnU-Net plans anisotropic data: kernels (3,3,1), (3,3,1), then (3,3,3); strides (1,1,1),
  (2,2,1), (2,2,1), (2,2,2), (2,2,2), (2,2,1), (2,2,1); 32 features doubling to at most 320; sliding-window
  inference with 50 % overlap and Gaussian weighting (nnU-Net's step size 0.5), batch 1.

No test-time mirroring for any model (nnU-Net mirrors by default, which multiplies its network time by 4 in 2D and 8
in 3D); no resampling to a target spacing for the DynUNets (the generated volumes are at nnU-Net's target spacing).

    python -m benchmarks prostate-speed                        # 3 timed volumes per model after 1 warm-up
    python -m benchmarks prostate-speed --volumes 5 --device cuda --amp
    python -m benchmarks prostate-speed --shape 20 160 160 --image-size 160 160 --volumes 1   # a quick look

Results: a Markdown table on stdout and in ``<out>/prostate_speed.md``, everything in ``<out>/prostate_speed.json``
(default ``benchmarks/output/prostate_speed``, git-ignored).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import OUTPUT, REPO, UsageError, cpu_name, loadavg, md_row, md_table, time_calls, write_results

BUNDLE = REPO / "bundles" / "prostate"
PAPER = {"TransFuse-S": 0.192, "nnU-Net 2D": 0.209, "nnU-Net 3D full resolution": 0.381}


def write_volumes(folder: Path, count: int, shape: tuple[int, int, int], seed: int = 0) -> list[Path]:
    """``count`` generated 2-channel 4D NIfTI volumes of ``shape`` = (slices, rows, columns), stored (x, y, z, c)."""
    from transfuse_monai.tasks import get_task

    slices, rows, cols = shape
    root = get_task("prostate").make_sample(folder, seed=seed, n_train=count, size=(cols, rows, slices),
                                            spacing=(0.625, 0.625, 3.6))
    return sorted((Path(root) / "imagesTr").glob("*.nii.gz"))


def dynunet_2d(in_channels: int, out_channels: int):
    from monai.networks.nets import DynUNet

    stages = 7
    return DynUNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
        kernel_size=[[3, 3]] * stages, strides=[[1, 1]] + [[2, 2]] * (stages - 1),
        upsample_kernel_size=[[2, 2]] * (stages - 1), filters=[min(32 * 2**i, 480) for i in range(stages)],
        norm_name="instance", act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=False, res_block=False,
    )


def dynunet_3d(in_channels: int, out_channels: int):
    from monai.networks.nets import DynUNet

    strides = [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1], [2, 2, 1]]
    return DynUNet(
        spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
        kernel_size=[[3, 3, 1], [3, 3, 1]] + [[3, 3, 3]] * 5, strides=strides, upsample_kernel_size=strides[1:],
        filters=[min(32 * 2**i, 320) for i in range(len(strides))],
        norm_name="instance", act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=False, res_block=False,
    )


def bundle_pipeline(args, model: str, output_dir: Path) -> dict:
    """The prostate bundle's inference pieces (``inference.json``), with the network and inferer of ``model``."""
    import torch
    from monai.bundle import ConfigParser
    from monai.inferers import SlidingWindowInferer

    from transfuse_monai.inferers import VolumeSliceInferer

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({
        "bundle_root": str(BUNDLE), "output_dir": str(output_dir), "image_size": list(args.image_size),
        "device": args.device, "amp": args.amp, "sw_batch_size": args.sw_batch_size, "num_workers": 0,
    })
    if model != "TransFuse-S":
        transforms = parser["preprocessing"]["transforms"]
        parser["preprocessing"]["transforms"] = [t for t in transforms if t.get("_target_") != "Resized"]
        parser["network_init"] = "@network_def"
    torch.manual_seed(0)
    fast_paths = parser.get_parsed_content("fast_paths")
    if model == "TransFuse-S":
        network = parser.get_parsed_content("network")
        inferer = parser.get_parsed_content("inferer")
    elif model == "nnU-Net 2D":
        network = fast_paths.place(dynunet_2d(2, 3))
        inferer = fast_paths.inferer(VolumeSliceInferer(2, roi_size=[-1, -1], sw_batch_size=args.sw_batch_size))
    else:
        network = fast_paths.place(dynunet_3d(2, 3))
        roi = [min(320, args.shape[1]), min(256, args.shape[2]), args.shape[0]]
        inferer = fast_paths.inferer(SlidingWindowInferer(roi, sw_batch_size=1, overlap=0.5, mode="gaussian"))
    network.eval()
    return {
        "network": network, "inferer": inferer, "device": torch.device(args.device),
        "preprocessing": parser.get_parsed_content("preprocessing"),
        "postprocessing": parser.get_parsed_content("postprocessing"),
        "parameters": sum(p.numel() for p in network.parameters()),
    }


def time_volume(pipeline: dict, path: Path) -> float:
    """Seconds for one volume: what MONAI's evaluator does for a batch of 1 (pre-process, collate, infer,
    decollate, post-process: invert and write)."""
    import torch
    from monai.data import decollate_batch, list_data_collate

    sync = torch.cuda.synchronize if pipeline["device"].type == "cuda" else None

    def one_volume():
        batch = list_data_collate([pipeline["preprocessing"]({"image": str(path)})])
        with torch.no_grad():
            batch["pred"] = pipeline["inferer"](batch["image"].to(pipeline["device"]), pipeline["network"])
        for item in decollate_batch(batch):
            pipeline["postprocessing"](item)

    return time_calls(one_volume, 1, sync)[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--volumes", type=int, default=3, help="timed volumes per model (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed volumes per model first")
    parser.add_argument("--shape", type=int, nargs=3, default=[20, 320, 320], metavar=("SLICES", "ROWS", "COLS"))
    parser.add_argument("--image-size", type=int, nargs=2, default=[320, 320], help="TransFuse-S in-plane input size")
    parser.add_argument("--sw-batch-size", type=int, default=16, help="slices per network call (2D models)")
    parser.add_argument("--models", nargs="+", default=list(PAPER), choices=list(PAPER))
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--amp", action="store_true", help="the bundle's amp flag (bf16 on CPU, fp16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", type=Path, default=OUTPUT / "prostate_speed")


def run(args: argparse.Namespace) -> None:
    """Time every model on the same volumes, round-robin; the table and ``prostate_speed.{md,json}``."""
    if args.volumes < 1 or args.warmup < 0:
        raise UsageError("--volumes must be at least 1 and --warmup at least 0")

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    load = loadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        volumes = write_volumes(tmp_path / "data", args.warmup + args.volumes, tuple(args.shape))
        pipelines = {m: bundle_pipeline(args, m, tmp_path / "pred" / str(i)) for i, m in enumerate(args.models)}
        times: dict[str, list[float]] = {m: [] for m in args.models}
        for index, volume in enumerate(volumes):  # round-robin: one volume per model in turn
            for model, pipeline in pipelines.items():
                seconds = time_volume(pipeline, volume)
                if index >= args.warmup:
                    times[model].append(seconds)
                print(f"{model}: volume {index + 1}/{len(volumes)}: {seconds:.3f} s"
                      f"{' (warm-up)' if index < args.warmup else ''}", flush=True)
    reference = statistics.mean(times["TransFuse-S"]) if "TransFuse-S" in times else None
    rows = {}
    for model, values in times.items():
        mean = statistics.mean(values)
        rows[model] = {
            "seconds_per_volume": mean, "median": statistics.median(values), "min": min(values),
            "parameters": pipelines[model]["parameters"], "ratio_to_transfuse": mean / reference if reference else None,
            "paper_seconds_per_volume": PAPER[model],
            "paper_ratio_to_transfuse": PAPER[model] / PAPER["TransFuse-S"],
        }
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_name()
    lines = [
        f"Seconds per volume, {args.shape[0]} x {args.shape[1]} x {args.shape[2]} voxels, 2 channels; device {device} "
        f"({args.device}, {torch.get_num_threads()} threads, amp={args.amp}); {args.volumes} volume(s) after "
        f"{args.warmup} warm-up; load average {load:.2f} at the start",
        "",
    ]
    lines += md_table(["model", "params (M)", "s / volume (mean)", "median", "min", "ratio to TransFuse-S",
                       "paper s / volume", "paper ratio"], align="lrrrrrrr")
    for model, r in rows.items():
        ratio = f"{r['ratio_to_transfuse']:.2f}" if r["ratio_to_transfuse"] is not None else "n/a"
        lines.append(md_row([
            model, f"{r['parameters'] / 1e6:.1f}", f"{r['seconds_per_volume']:.3f}", f"{r['median']:.3f}",
            f"{r['min']:.3f}", ratio, f"{r['paper_seconds_per_volume']:.3f}", f"{r['paper_ratio_to_transfuse']:.2f}",
        ]))
    table = "\n".join(lines)
    print(table)
    result = {"arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "device": device, "threads": torch.get_num_threads(), "load_average": load, "results": rows}
    write_results(args.out, table + "\n", result, stem="prostate_speed")

#!/usr/bin/env bash
# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
#
# Download the pinned wheels that the GPU machine lacks into benchmarks/gpu/wheels/ (git-ignored), for run.sh to
# install offline there (pip install --no-index --find-links wheels --target <tmp site>).
#
# The lent machine has Python 3.12 with torch, torchvision, timm, onnx, onnxruntime (CPU), scipy, scikit-image,
# tensorboard, pillow and numpy, but not MONAI, pytorch-ignite or fire. Their own requirements: monai -> numpy, torch
# (present); pytorch-ignite -> torch, packaging (packaging is pinned here, in case); fire -> termcolor. All are pure
# Python (py3-none-any), so the platform tags only guard against a binary wheel slipping in. Also carried, and
# installed only when missing there: tqdm (Ignite's ProgressBar in the bundle's handlers) and einops (SwinUNETR).
#
#     bash benchmarks/gpu/fetch_wheels.sh            # needs PyPI access (pip download), here, not on the GPU machine
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="${1:-$HERE/wheels}"
PYTHON="${PYTHON:-python3}"
# pytorch-ignite: the version of this project's development environment (pip show pytorch-ignite)
PINS=(monai==1.6.1 pytorch-ignite==0.5.5 fire==0.7.1 termcolor==3.3.0 packaging==26.4 tqdm==4.70.1
      einops==0.8.2)

mkdir -p "$DEST"
"$PYTHON" -m pip download --disable-pip-version-check --quiet --only-binary=:all: --no-deps \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    --dest "$DEST" "${PINS[@]}"
ls -l "$DEST"
du -sh "$DEST"

#!/usr/bin/env bash
# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
#
# The GPU run kit: model benchmark on CUDA, then the polyp bundle's training recipe for TransFuse-S and MONAI's
# FlexibleUNet at equal budgets, within about 8 minutes; results.md, results.json and curves (PNG) in --out.
# Offline: MONAI, pytorch-ignite and fire come from benchmarks/gpu/wheels (fetch_wheels.sh), installed into a
# temporary folder; this repository's packages are used from the working tree. See benchmarks/gpu/README.md.
#
#     bash benchmarks/gpu/run.sh --out $OUT/gpu                # on the GPU machine
#     bash benchmarks/gpu/run.sh --smoke --out /tmp/gpu_smoke   # CPU check, tiny sizes, generated data
#
# Stage budgets: environment variables KIT_TOTAL_S (470), KIT_MODELS_S (95), KIT_COMPILE_S (75),
# KIT_TRAIN_OVERHEAD_S (60), KIT_MARGIN_S (10); other options are passed on to the kit (python -m benchmarks gpu-kit -h).
set -uo pipefail
START="$(date +%s.%N)"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"

OUT=""
ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; ARGS+=("$1" "$2"); shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
if [[ -z "$OUT" ]]; then echo "run.sh: --out DIR is required" >&2; exit 2; fi
mkdir -p "$OUT"

# Missing packages from the carried wheels, into a temporary site folder (never into the machine's Python).
if ! "$PYTHON" -c "import monai, ignite, fire" 2>/dev/null; then
    if ! ls "$HERE"/wheels/monai-*.whl >/dev/null 2>&1; then
        echo "run.sh: MONAI/pytorch-ignite/fire are not importable and $HERE/wheels has no wheels:" \
             "run benchmarks/gpu/fetch_wheels.sh where PyPI is reachable and carry benchmarks/gpu/wheels" >&2
        exit 3
    fi
    SITE="$(mktemp -d "${TMPDIR:-/tmp}/gpu_kit_site.XXXXXX")"
    trap 'rm -rf "$SITE"' EXIT
    PKGS=(monai pytorch-ignite fire termcolor)
    for opt in packaging tqdm einops; do  # carried too, installed only where missing
        "$PYTHON" -c "import $opt" 2>/dev/null || PKGS+=("$opt")
    done
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --find-links "$HERE/wheels" \
        --target "$SITE" "${PKGS[@]}" || { echo "run.sh: installing the carried wheels failed" >&2; exit 3; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed ${PKGS[*]} from $HERE/wheels into $SITE"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO" || exit 1
"$PYTHON" -m benchmarks gpu-kit --start "$START" "${ARGS[@]}"

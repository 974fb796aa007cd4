#!/usr/bin/env bash
# Create (or bring up to date) the virtual environment that runs the MONAI Label server with this repository's bundles.
#
#   bash monailabel_app/setup_server_env.sh            # -> .monailabel-venv in the repository root
#   MONAILABEL_VENV=/path/venv bash monailabel_app/setup_server_env.sh
#
# Why a separate environment: the server needs MONAI Label's full stack (FastAPI, uvicorn, DICOM tooling, SAM2's
# package), and some of it only works with old releases, whereas the main environment installs monailabel without its
# dependencies for the bundle tasks alone (requirements-monailabel.txt).
#
# Pins: monailabel 0.8.5 resolves the newest pydicom, dicomweb-client and pynetdicom, and its server then fails to
# start (it is written against pydicom 2 / dicomweb-client 0.59 / pynetdicom 2), hence pydicom<3, dicomweb-client<0.60,
# pynetdicom<3. MONAI is the one requirements.txt pins; timm is what TransFuse's backbones need.
#
# Idempotent: a stamp file records the requirement set; when it matches and the server imports, nothing is installed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MONAILABEL_VENV:-$REPO_ROOT/.monailabel-venv}"
PYTHON="${MONAILABEL_PYTHON:-python3}"

# torch first and alone, so that the resolver keeps it: the main environment's release, with the torchvision built for
# it (MONAI Label imports torchvision; PyPI's torchvision does not load beside a CPU-only torch wheel). Override with
# MONAILABEL_TORCH (a space-separated list of requirements).
read -r -a TORCH_REQ <<<"${MONAILABEL_TORCH:-torch==2.14.1 torchvision==0.29.1}"
# SAM2, a monailabel requirement, is an sdist whose isolated build (PEP 517) installs the newest CUDA torch (GBs)
# just to build it: it is built against the torch above instead, without its CUDA extension (this app has no SAM2).
SAM2_REQ="sam2==1.1.0"
REQS=(
    "monailabel==0.8.5"
    "monai[fire,nibabel,itk,skimage,ignite,tensorboard,pillow,tqdm]==1.6.1"   # as requirements.txt
    "pydicom<3"
    "dicomweb-client<0.60"
    "pynetdicom<3"
    "timm>=1.0.20,<2"
)
CHECK='import monailabel.app, monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle, timm, transfuse_monai'

stamp_text="$(printf '%s\n' "$PYTHON" "${TORCH_REQ[@]}" "$SAM2_REQ" "${REQS[@]}")"
STAMP="$VENV/.transfuse-monailabel-stamp"

quiet_import() {
    "$VENV/bin/python" -c "$CHECK" >/dev/null 2>"$VENV/.import-check.log"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp_text" ] && [ -x "$VENV/bin/python" ] && quiet_import; then
    echo "MONAI Label server venv up to date: $VENV"
    exit 0
fi

start=$SECONDS
echo "creating/updating the MONAI Label server venv at $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip "setuptools>=64" wheel
"${PIP[@]}" install "${TORCH_REQ[@]}"
SAM2_BUILD_CUDA=0 "${PIP[@]}" install --no-build-isolation "${TORCH_REQ[@]}" "$SAM2_REQ"
"${PIP[@]}" install "${TORCH_REQ[@]}" "$SAM2_REQ" "${REQS[@]}"
# This repository's package (the bundle configs reference transfuse_monai.*); editable, so the server always uses the
# working tree; --no-deps: its requirements are all above.
"${PIP[@]}" install --no-deps --no-build-isolation -e "$REPO_ROOT"

if ! quiet_import; then
    echo "MONAI Label server venv import check failed:" >&2
    cat "$VENV/.import-check.log" >&2
    exit 1
fi
printf '%s' "$stamp_text" >"$STAMP"
echo "MONAI Label server venv ready: $VENV ($((SECONDS - start)) s, $(du -sh "$VENV" | cut -f1))"

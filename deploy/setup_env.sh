#!/usr/bin/env bash
# Create (or bring up to date) the isolated virtual environment for the MONAI Deploy application in this folder.
#
#   bash deploy/setup_env.sh            # -> .deploy-venv in the repository root
#   DEPLOY_VENV=/path/venv bash deploy/setup_env.sh
#
# Why a separate environment: monai-deploy-app-sdk installs its code inside the `monai` package (monai/deploy), and
# `import monai` imports every monai submodule, so in an environment with the SDK `import monai` also needs
# holoscan, tritonclient, pydicom and highdicom. Keeping the SDK here leaves the main environment untouched.
#
# Idempotent: a stamp file records the requirement set; when it matches and the SDK imports, nothing is installed.
# Lean: CPU-only torch (the 2.13.0 CPU wheel that pip's find-links provides on these machines), and the SDK and
# holoscan-cu13 without their dependency trees (no cupy-cuda13x, cuda-python or perf-analyzer, which the application
# does not use); their run-time imports are satisfied explicitly below. holoscan-cli (the packager) is resolved with
# its dependencies.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DEPLOY_VENV:-$REPO_ROOT/.deploy-venv}"
PYTHON="${DEPLOY_PYTHON:-python3}"

# Resolved with dependencies. torch==2.13.0 must come first and alone: with no torch installed, any other spelling
# (or a package requiring torch) may pull the newest CUDA build from the registry (several GB).
TORCH_REQ="torch==2.13.0"
REQS=(
    "monai[pillow]==1.6.1"        # same MONAI as requirements.txt; pillow for PILReader
    "numpy>=2,<2.6"
    "scipy"                       # transfuse_monai.metrics imports scipy at module level
    "pytorch-ignite==0.5.5"       # transfuse_monai.handlers imports ignite at module level
    "nibabel==5.4.2"              # NIfTI volumes (prostate application) and MONAI's NibabelReader
    "pydicom==3.0.2"              # imported by monai.deploy.operators (hence by `import monai`)
    "highdicom==0.28.2"           # likewise
    "pylibjpeg==2.1.0"            # compressed DICOM as PACS export it: pydicom's decoder plug-ins for JPEG, JPEG
    "pylibjpeg-libjpeg==2.5.0"    #   Lossless and JPEG-LS (libjpeg) and JPEG 2000 (openjpeg); RLE is pydicom's own
    "pylibjpeg-openjpeg==2.6.0"
    "tritonclient[http,grpc]==2.73.0"  # imported by monai.deploy.core (TritonModel)
    "typeguard>=3.0.0"
    "colorama>=0.4.1"
    "cloudpickle>=3.0,<4.0"       # holoscan requirement
    "wheel-axle-runtime<1.0"      # holoscan requirement: finalises the wheel's shared-library symlinks
    "holoscan-cli==3.11.0"        # the MAP packager: the last release with the `monai-deploy` command (4.x/5.x have
                                  # only `holoscan`); resolved with its dependencies (Jinja2, python-on-whales, ...)
)
# Installed without their dependencies (see above).
NODEPS=(
    "monai-deploy-app-sdk==4.0.0"
    "holoscan-cu13==4.6.0"
)
CHECK='import monai, monai.deploy.operators.monai_bundle_inference_operator, holoscan.core, highdicom, nibabel, transfuse_monai'

stamp_text="$(printf '%s\n' "$PYTHON" "$TORCH_REQ" "${REQS[@]}" "${NODEPS[@]}")"
STAMP="$VENV/.transfuse-deploy-stamp"

quiet_import() {  # holoscan warns about the stack size on import; keep the output for errors only
    "$VENV/bin/python" -W ignore -c "$CHECK" >/dev/null 2>"$VENV/.import-check.log"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp_text" ] && [ -x "$VENV/bin/python" ] && quiet_import; then
    echo "deploy venv up to date: $VENV"
    exit 0
fi

start=$SECONDS
echo "creating/updating the MONAI Deploy venv at $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip "setuptools>=64" wheel
"${PIP[@]}" install "$TORCH_REQ"
"${PIP[@]}" install "$TORCH_REQ" "${REQS[@]}"
if ! "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.version.cuda is None else 1)'; then
    echo "warning: the deploy venv's torch is a CUDA build (the local CPU wheel was not found)" >&2
fi
"${PIP[@]}" install --no-deps "${NODEPS[@]}"
# This repository's package (bundle configs reference transfuse_monai.* transforms and writers); editable, so the
# deploy app always uses the working tree. --no-deps: the network itself travels inside the TorchScript file, so
# timm/torchvision (and training-only requirements) are not needed here.
"${PIP[@]}" install --no-deps --no-build-isolation -e "$REPO_ROOT"

# The first interpreter start finalises holoscan's wheel (symlinks); do it now, not in parallel test workers.
if ! quiet_import; then
    echo "deploy venv import check failed:" >&2
    cat "$VENV/.import-check.log" >&2
    exit 1
fi
printf '%s' "$stamp_text" >"$STAMP"
echo "deploy venv ready: $VENV ($((SECONDS - start)) s, $(du -sh "$VENV" | cut -f1))"

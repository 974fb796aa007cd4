#!/usr/bin/env bash
# Package one application as a MONAI Application Package (MAP, a container image) with the SDK's packager.
#
#   bash deploy/package.sh APP MODEL TAG [extra `monai-deploy package` options]
#   bash deploy/package.sh hip_dicom bundles/hip/models/model.ts transfuse-hip-dicom:0.1
#
# APP is a folder under deploy/apps (seg2d, hip_dicom, prostate_mr); MODEL the exported model.ts (configs embedded,
# `python -m transfuse_monai.export`). Runs in the deploy environment (`bash deploy/setup_env.sh`: holoscan-cli 3.11,
# whose `monai-deploy package` builds MAPs) and needs a Docker daemon with buildx.
#
# The bundle configs inside model.ts use transfuse_monai's transforms, so the package carries this repository's
# library: a wheel is built (`pip wheel --no-deps .`), installed into a staging folder, and its `transfuse_monai`
# package added to the MAP with `--add` (the packager copies it to the image's library folder, which is on
# PYTHONPATH); the application's own requirements.txt lists the library's run-time requirements. The application
# folder's `transfuse_deploy` link is copied as the shared operator package it points to.
set -euo pipefail

if [ "$#" -lt 3 ]; then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
APP="$1"; MODEL="$2"; TAG="$3"; shift 3
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DEPLOY_VENV:-$REPO_ROOT/.deploy-venv}"
APP_DIR="$REPO_ROOT/deploy/apps/$APP"
[ -f "$APP_DIR/app.py" ] || { echo "no application $APP_DIR (choose: $(ls "$REPO_ROOT/deploy/apps" | xargs))" >&2; exit 2; }
[ -f "$MODEL" ] || { echo "model $MODEL not found: export it with python -m transfuse_monai.export" >&2; exit 2; }
[ -x "$VENV/bin/monai-deploy" ] || { echo "no monai-deploy in $VENV: run bash deploy/setup_env.sh" >&2; exit 2; }

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
# the application folder with its operator package as real files (the packager copies the folder)
cp -rL "$APP_DIR" "$STAGE/app"
rm -rf "$STAGE/app/__pycache__" "$STAGE/app/transfuse_deploy/__pycache__"
# the library, from a wheel of this repository
"$VENV/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$STAGE/wheel" "$REPO_ROOT"
"$VENV/bin/python" -m pip install --quiet --no-deps --target "$STAGE/lib" "$STAGE"/wheel/transfuse_monai-*.whl
echo "packaging $APP_DIR with $(basename "$STAGE"/wheel/*.whl) and $MODEL as $TAG"

"$VENV/bin/monai-deploy" package "$STAGE/app" --config "$STAGE/app/app.yaml" --models "$MODEL" --tag "$TAG" \
    --platform x86_64 --add "$STAGE/lib/transfuse_monai" "$@"

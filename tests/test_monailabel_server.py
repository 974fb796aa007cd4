"""The MONAI Label server serves every 2D bundle over HTTP: ``monailabel_app/check_server.py`` starts it on localhost
with README's command line and checks ``/info`` and ``/infer`` (PNG labels of the image's size with class values, for
JPEG and PNG frames, uploaded and from the datastore).

The server runs from its own environment (``bash monailabel_app/setup_server_env.sh`` -> ``.monailabel-venv``, or
``MONAILABEL_VENV``); without it this test is skipped.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("MONAILABEL_VENV", REPO / ".monailabel-venv"))
PYTHON = VENV / "bin" / "python"


# written by setup_server_env.sh once the environment is complete
READY = VENV / ".transfuse-monailabel-stamp"


@pytest.mark.skipif(not READY.is_file(), reason=f"no MONAI Label server env at {VENV}")
def test_server_returns_png_class_labels_for_every_2d_bundle():
    proc = subprocess.run(
        [str(PYTHON), str(REPO / "monailabel_app" / "check_server.py"), "--image_size", "64"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    for bundle in ("polyp", "isic2017", "hip"):
        checked = [line for line in lines if line.startswith(bundle) and line.rstrip().endswith("ok")]
        assert len(checked) == 5, f"{bundle}: expected /info and 4 /infer checks, got {checked}"  # 2 frames x 2 ways
    assert "PASSED" in lines[-1]

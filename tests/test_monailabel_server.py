"""The MONAI Label server serves every bundle over HTTP: ``monailabel_app/check_server.py`` starts it on localhost with
README's command line and checks ``/info`` (dimension, labels) and ``/infer``, uploaded and from the datastore: PNG
labels of the image's size with class values for JPEG and PNG frames (2D bundles), a NIfTI label of the volume's
spatial shape and affine with class values for a 4D T2 + ADC NIfTI (prostate).

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
def test_server_returns_class_labels_for_every_bundle():
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
    # /info, then 2 frames (2D) or 1 volume (prostate), each uploaded and from the datastore
    expected = {"polyp": 5, "isic2017": 5, "hip": 5, "prostate": 3}
    for bundle, count in expected.items():
        checked = [line for line in lines if line.startswith(bundle) and line.rstrip().endswith("ok")]
        assert len(checked) == count, f"{bundle}: expected /info and {count - 1} /infer checks, got {checked}"
    volume_labels = [line for line in lines if line.split()[:2] == ["prostate", "/infer"]]
    assert len(volume_labels) == 2 and all(".nii.gz" in line for line in volume_labels), volume_labels
    assert "PASSED" in lines[-1]

"""The MONAI Label server serves every bundle over HTTP: ``monailabel_app/check_server.py`` starts it on localhost with
README's command line and checks ``/info`` (dimension, labels) and ``/infer``, uploaded and from the datastore: PNG
labels of the image's size with class values for JPEG and PNG frames (2D bundles), a NIfTI label of the volume's
spatial shape and affine with class values for a 4D T2 + ADC NIfTI (prostate). With ``--loop`` it runs the
active-learning loop over HTTP for every bundle: score, next image, label, train, infer again.

The server runs from its own environment (``bash monailabel_app/setup_server_env.sh`` -> ``.monailabel-venv``, or
``MONAILABEL_VENV``), which CI builds; elsewhere these tests are skipped without it.
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


if os.environ.get("CI"):
    assert READY.is_file(), f"CI must have the MONAI Label server env ({VENV}): bash monailabel_app/setup_server_env.sh"
needs_server = pytest.mark.skipif(not READY.is_file(), reason=f"no MONAI Label server env at {VENV}")


def _check_server(*args: str) -> list[str]:
    """Run ``check_server.py`` with the server environment's Python; its stdout lines (the table, then PASSED)."""
    proc = subprocess.run(
        [str(PYTHON), str(REPO / "monailabel_app" / "check_server.py"), "--image_size", "64", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    return proc.stdout.splitlines()


@needs_server
def test_server_returns_class_labels_for_every_bundle():
    lines = _check_server()
    # /info, then 2 frames (2D) or 1 volume (prostate), each uploaded and from the datastore
    expected = {"polyp": 5, "isic2017": 5, "hip": 5, "prostate": 3}
    for bundle, count in expected.items():
        checked = [line for line in lines if line.startswith(bundle) and line.rstrip().endswith("ok")]
        assert len(checked) == count, f"{bundle}: expected /info and {count - 1} /infer checks, got {checked}"
    volume_labels = [line for line in lines if line.split()[:2] == ["prostate", "/infer"]]
    assert len(volume_labels) == 2 and all(".nii.gz" in line for line in volume_labels), volume_labels
    assert "PASSED" in lines[-1]


@needs_server
def test_active_learning_loop_over_http_for_every_bundle():
    """Each bundle served alone: epistemic scores for every image, the highest served first, three labels submitted
    (``PUT /datastore/label``), ``POST /train/<bundle>`` run to the end while a second request gets 429, the model
    file replaced, ``/infer`` answering with another label, and the images left rescored by the new model."""
    lines = _check_server("--loop")
    steps = ["/scoring/epistemic", "/activelearning/epistemic", "/infer/", "PUT /datastore/label",
             "/activelearning/epistemic", "PUT /datastore/label", "/activelearning/epistemic", "PUT /datastore/label",
             "POST /train/", "/train while running", "GET /train/", "/infer/", "rescore, next image"]
    for bundle in ("polyp", "isic2017", "hip", "prostate"):
        rows = [line for line in lines if line.startswith(f"{bundle} ")]
        assert len(rows) == len(steps) and all(row.rstrip().endswith("ok") for row in rows), rows
        assert all(row.split(None, 1)[1].startswith(step) for row, step in zip(rows, steps)), rows
        assert "label changed" in rows[11] and "DONE" in rows[10] and "second request 429" in rows[9], rows
    assert "PASSED" in lines[-1]

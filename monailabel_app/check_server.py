"""End-to-end check of the MONAI Label server with this repository's bundles, over HTTP on localhost.

Run with the server environment's Python (``bash monailabel_app/setup_server_env.sh`` builds it)::

    .monailabel-venv/bin/python monailabel_app/check_server.py                   # bundles at their config size
    .monailabel-venv/bin/python monailabel_app/check_server.py --image_size 64   # quicker (the pytest uses this)

What it does, in a temporary folder:

1. builds a MONAI Label app exactly as README's recipe does: a copy of this folder with each bundle's ``configs``
   copied to ``model/<name>`` and a randomly initialised TransFuse (``pretrained=False``) saved as its
   ``models/model.pt`` (the plumbing is under test, not the weights);
2. writes into the studies folder, for a 2D bundle a JPEG and a PNG frame of different non-square sizes (RGB, or
   grey-scale for a 1-channel bundle), for a volume bundle (prostate) a 4D NIfTI T2 + ADC volume of a non-square
   in-plane size with an LPS-like affine (the task's ``make_sample``);
3. starts ``monailabel start_server`` on a free localhost port with README's command line, waits for ``/info`` and
   checks each model's ``dimension`` (the task's ``spatial_dims``: 2, or 3 for prostate) and ``labels`` (the
   foreground keys of the bundle's ``channel_def`` in configs/metadata.json);
4. for every bundle and image, ``POST /infer/<bundle>`` twice, with nothing but the image: as a multipart file
   upload, and by the image's id in the datastore; and checks the returned label: for a frame a PNG (lossless
   whatever the input's format), single-channel uint8, of the frame's size; for a volume a NIfTI, uint8, of the
   volume's spatial shape and affine; in both cases with values in ``{0}`` and the foreground ``channel_def`` keys;
5. prints a table, stops the server and exits non-zero on any failure (the server's log is printed then).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
import torch
from PIL import Image
from requests_toolbelt.multipart.decoder import MultipartDecoder

from transfuse_monai.bundle import network_input_size
from transfuse_monai.networks.nets import TransFuse
from transfuse_monai.tasks import SegmentationTask, get_task

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
BUNDLES = ("polyp", "isic2017", "hip", "prostate")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (format, suffix, (width, height)): non-square, and different per format, so that a transposed label shows
FRAMES = (("JPEG", ".jpg", (96, 72)), ("PNG", ".png", (80, 56)))
# a volume bundle's input: (x, y, z) voxels, non-square in-plane so that a transposed label shows; a few slices
VOLUME_SIZE = (56, 64, 8)
NIFTI_SUFFIX = ".nii.gz"
# ITK writes the label's geometry in float32 (origin and spacing in mm)
AFFINE_ATOL = 1e-4
# README's command line, less the paths and the port (see server_command)
SERVER_CONF = {"preload": "true"}


def server_command(python: str, app: Path, studies: Path, bundles: list[str], port: int) -> list[str]:
    """``monailabel start_server`` as README's recipe runs it (the ``monailabel`` launcher script runs
    ``python -m monailabel.main`` with whichever ``python`` is first on PATH, so the venv's is named here)."""
    cmd = [python, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--conf", "models", ",".join(bundles)]
    for key, value in SERVER_CONF.items():
        cmd += ["--conf", key, value]
    return cmd


def foreground_values(bundle_dir: Path) -> dict[int, str]:
    """Mask value -> class name of the bundle's foreground classes (``channel_def`` of its output, no background)."""
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    pred = next(iter(meta["network_data_format"]["outputs"].values()))
    return {int(k): v for k, v in pred["channel_def"].items() if v.lower() != "background"}


def image_size(bundle_dir: Path) -> list[int]:
    """The bundle's ``image_size``: a literal where ``make_app`` set one, else the size its metadata states."""
    size = json.loads((bundle_dir / "configs" / "inference.json").read_text())["image_size"]
    return size if isinstance(size, list) else network_input_size(None, bundle_dir)


def make_app(dest: Path, bundles: list[str], size: int | None) -> Path:
    """A copy of this app with each bundle under ``model/<name>`` and a random TransFuse-S as its weights.

    Args:
        dest: folder to create the app in.
        bundles: names of folders under ``bundles/``.
        size: when given, the bundles' ``image_size`` (inference and training) is set to ``[size, size]``.
    """
    app = dest / "app"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in bundles:
        bundle = app / "model" / name
        shutil.copytree(REPO_ROOT / "bundles" / name / "configs", bundle / "configs")
        if size is not None:
            for config in ("inference.json", "train.json"):
                path = bundle / "configs" / config
                cfg = json.loads(path.read_text())
                if "image_size" in cfg:
                    cfg["image_size"] = [size, size]
                    path.write_text(json.dumps(cfg, indent=4))
        task = get_task(name)
        torch.manual_seed(0)
        net = TransFuse(
            in_channels=task.in_channels, out_channels=task.out_channels, img_size=image_size(bundle), pretrained=False
        )
        (bundle / "models").mkdir()
        torch.save(net.state_dict(), bundle / "models" / "model.pt")
    return app


def make_frames(studies: Path, channels: int) -> list[Path]:
    """A JPEG and a PNG frame (a bright disc on a textured background), RGB or grey-scale."""
    frames = []
    for fmt, suffix, (width, height) in FRAMES:
        rng = np.random.default_rng(width)
        yy, xx = np.mgrid[:height, :width]
        disc = ((yy - height / 2) ** 2 + (xx - width / 2.5) ** 2) < (min(width, height) / 3) ** 2
        array = rng.integers(20, 90, size=(height, width, 3)) + disc[..., None] * np.array([150, 100, 80])
        image = Image.fromarray(array.clip(0, 255).astype(np.uint8), "RGB")
        path = studies / f"frame_{'grey' if channels == 1 else 'rgb'}_{fmt.lower()}{suffix}"
        (image.convert("L") if channels == 1 else image).save(path, format=fmt)
        frames.append(path)
    return frames


def make_volume(studies: Path, task: SegmentationTask) -> Path:
    """One case of the volume task's generated sample (prostate's ``make_sample``: T2 + ADC in the last axis, an
    LPS-like affine with a random origin) as ``volume_<channel names>.nii.gz``."""
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(task.make_sample(tmp, n_train=1, size=VOLUME_SIZE, channels=task.in_channels))
        (case,) = (sample / "imagesTr").iterdir()
        path = studies / f"volume_{'_'.join(task.channel_names).lower()}{NIFTI_SUFFIX}"
        shutil.copy(case, path)
    return path


def make_images(studies: Path, bundle: str) -> list[Path]:
    """The datastore images a bundle is checked on: two frames for a 2D bundle, a volume for a 3D one."""
    studies.mkdir(parents=True, exist_ok=True)
    task = get_task(bundle)
    if task.spatial_dims == 3:
        return [make_volume(studies, task)]
    return make_frames(studies, task.in_channels)


def image_id(path: Path) -> str:
    """The image's id in MONAI Label's local datastore: its file name without the extension (``.nii.gz`` whole)."""
    return path.name[: -len(NIFTI_SUFFIX)] if path.name.endswith(NIFTI_SUFFIX) else path.stem


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_info(url: str, server: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before answering /info")
        with contextlib.suppress(requests.ConnectionError, requests.Timeout):
            response = requests.get(f"{url}/info/", timeout=10)
            if response.status_code == 200:
                return response.json()
        time.sleep(1)
    raise TimeoutError(f"the server did not answer {url}/info/ within {timeout:.0f} s")


def stop(server: subprocess.Popen) -> None:
    """Stop the server (its own process group, started by this script): SIGINT, then SIGKILL after 30 s."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def returned_label(response: requests.Response) -> tuple[str, bytes]:
    """(file name, bytes) of the label in MONAI Label's multipart answer (``params`` JSON + ``image`` file)."""
    for part in MultipartDecoder.from_response(response).parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        if 'name="image"' in disposition:
            name = disposition.split("filename=")[-1].strip('"') if "filename=" in disposition else ""
            return name, part.content
    raise ValueError("the answer has no 'image' part (no label file was returned)")


def check_label(content: bytes, size: tuple[int, int], allowed: set[int]) -> tuple[list[int], list[str]]:
    """Pixel values of a 2D label and the list of its problems (empty when it is right)."""
    problems = []
    if not content.startswith(PNG_SIGNATURE):
        problems.append(f"not a PNG (starts with {content[:4]!r})")
    with Image.open(io.BytesIO(content)) as label:
        array = np.asarray(label)
        if label.size != size:
            problems.append(f"size {label.size} != image size {size}")
    if array.ndim != 2 or array.dtype != np.uint8:
        problems.append(f"array {array.dtype}{list(array.shape)}, expected channel-less uint8")
    values = sorted(int(v) for v in np.unique(array))
    if not set(values) <= allowed:
        problems.append(f"values {sorted(set(values) - allowed)} are not class values {sorted(allowed)}")
    return values, problems


def check_volume_label(
    content: bytes, file_name: str, volume: Path, allowed: set[int]
) -> tuple[list[int], list[str]]:
    """Voxel values of a volume label and the list of its problems: a uint8 NIfTI with the volume's spatial shape and
    affine (the source file's header) and class values."""
    if not file_name.endswith((".nii", NIFTI_SUFFIX)):
        return [], [f"not a NIfTI file name: {file_name!r} (starts with {content[:4]!r})"]
    problems = []
    source = nib.load(volume)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(file_name).name
        path.write_bytes(content)
        label = nib.load(path)
        array = np.asarray(label.dataobj)
        affine = label.affine
    if array.shape != source.shape[:3]:
        problems.append(f"shape {array.shape} != the volume's spatial shape {source.shape[:3]}")
    if array.dtype != np.uint8:
        problems.append(f"dtype {array.dtype}, expected uint8")
    if not np.allclose(affine, source.affine, rtol=0, atol=AFFINE_ATOL):
        problems.append(f"affine {affine.round(4).tolist()} != the volume's {source.affine.round(4).tolist()}")
    values = sorted(int(v) for v in np.unique(array))
    if not set(values) <= allowed:
        problems.append(f"values {sorted(set(values) - allowed)} are not class values {sorted(allowed)}")
    return values, problems


def check_info(models: dict, name: str, labels: dict[str, int], dimension: int) -> list[str]:
    """Problems of ``/info``'s entry for a model: missing, other labels or another dimension than expected."""
    if name not in models:
        return [f"/info lists no model '{name}' (models: {sorted(models)})"]
    problems = []
    if models[name].get("labels") != labels:
        problems.append(f"/info labels {models[name].get('labels')} != channel_def {labels}")
    if models[name].get("dimension") != dimension:
        problems.append(f"/info dimension {models[name].get('dimension')} != {dimension} (the task's spatial_dims)")
    return problems


def run_checks(url: str, info: dict, app: Path, images: dict[str, list[Path]]) -> list[dict]:
    """Check ``/info`` and ``/infer`` for every bundle (``images``: bundle name -> its images in the datastore)."""
    rows = []
    models = info.get("models", {})
    for name, bundle_images in images.items():
        classes = foreground_values(app / "model" / name)
        dimension = get_task(name).spatial_dims
        problems = check_info(models, name, {v.lower(): k for k, v in classes.items()}, dimension)
        rows.append({"bundle": name, "request": "/info", "image": f"dimension {dimension}", "seconds": 0.0,
                     "values": "-", "problems": problems})
        for image in bundle_images:
            if dimension == 2:
                with Image.open(image) as img:
                    size = img.size
            for mode in ("upload", "datastore"):
                start = time.monotonic()
                if mode == "upload":
                    with open(image, "rb") as fp:
                        response = requests.post(
                            f"{url}/infer/{name}", files={"file": (image.name, fp)}, data={"params": "{}"}, timeout=600
                        )
                else:
                    response = requests.post(
                        f"{url}/infer/{name}", params={"image": image_id(image)}, data={"params": "{}"}, timeout=600
                    )
                seconds = time.monotonic() - start
                row = {"bundle": name, "request": f"/infer ({mode})", "image": image.name, "seconds": seconds,
                       "values": "-", "problems": []}
                if response.status_code != 200:
                    row["problems"].append(f"HTTP {response.status_code}: {response.text[:300]}")
                else:
                    try:
                        file_name, content = returned_label(response)
                        if dimension == 2:
                            values, row["problems"] = check_label(content, size, {0, *classes})
                        else:
                            values, row["problems"] = check_volume_label(content, file_name, image, {0, *classes})
                        row["values"] = f"{values} {''.join(Path(file_name).suffixes) or '?'}"
                    except Exception as err:  # noqa: BLE001 (report any malformed answer as a failed check)
                        row["problems"].append(f"{type(err).__name__}: {err}")
                rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'bundle':<9} {'request':<18} {'image':<22} {'s':>5}  {'label values':<18} result"
    print(header)
    print("-" * len(header))
    for row in rows:
        result = "ok" if not row["problems"] else "FAIL: " + "; ".join(row["problems"])
        print(f"{row['bundle']:<9} {row['request']:<18} {row['image']:<22} {row['seconds']:>5.1f}  "
              f"{row['values']:<18} {result}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", default=",".join(BUNDLES), help="comma-separated bundles to serve")
    parser.add_argument("--image_size", type=int, default=None,
                        help="set the bundles' image_size to N x N (default: each bundle's own size)")
    parser.add_argument("--python", default=sys.executable,
                        help="Python of the MONAI Label server environment (default: the one running this script)")
    parser.add_argument("--startup_timeout", type=float, default=900.0, help="seconds to wait for /info")
    parser.add_argument("--keep", action="store_true", help="keep the temporary app, studies and server log")
    args = parser.parse_args(argv)
    bundles = [b.strip() for b in args.bundles.split(",") if b.strip()]
    has_monailabel = "import importlib.util, sys; sys.exit(importlib.util.find_spec('monailabel') is None)"
    if subprocess.run([args.python, "-c", has_monailabel], capture_output=True).returncode:
        parser.error(f"{args.python} cannot import monailabel: run `bash monailabel_app/setup_server_env.sh` and "
                     "run this script with .monailabel-venv/bin/python")

    begin = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="transfuse-monailabel-"))
    studies = tmp / "studies"
    log_path = tmp / "server.log"
    server = None
    rows: list[dict] = []
    failure = None
    try:
        app = make_app(tmp, bundles, args.image_size)
        # the datastore holds the images before the server starts
        images = {name: make_images(studies, name) for name in bundles}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = server_command(args.python, app, studies, bundles, port)
        print("server:", " ".join(cmd), flush=True)
        with open(log_path, "wb") as log:
            # own process group, so that stop() reaches uvicorn and its children; no proxy for localhost
            env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
            server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        info = wait_for_info(url, server, args.startup_timeout)
        startup = time.monotonic() - begin
        print(f"server up after {startup:.1f} s (app built, models loaded): models {sorted(info.get('models', {}))}")
        rows = run_checks(url, info, app, images)
    except Exception as err:  # noqa: BLE001 (any failure is reported with the server log below)
        failure = f"{type(err).__name__}: {err}"
    finally:
        if server is not None:
            stop(server)
    if rows:
        print_table(rows)
    failed = failure is not None or any(row["problems"] for row in rows)
    if failed:
        if failure:
            print("FAILED:", failure)
        if log_path.is_file():
            print(f"---- server log ({log_path}) ----")
            print(log_path.read_text(errors="replace")[-20000:])
    print(f"{'FAILED' if failed else 'PASSED'}: {len(rows)} checks, {sum(bool(r['problems']) for r in rows)} failed, "
          f"{time.monotonic() - begin:.1f} s in all")
    if args.keep:
        print("kept:", tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

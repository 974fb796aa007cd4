"""End-to-end check of the MONAI Label server with this repository's bundles, over HTTP on localhost.

Run with the server environment's Python (``bash monailabel_app/setup_server_env.sh`` builds it)::

    .monailabel-venv/bin/python monailabel_app/check_server.py                   # bundles at their config size
    .monailabel-venv/bin/python monailabel_app/check_server.py --image_size 64   # quicker (the pytest uses this)
    .monailabel-venv/bin/python monailabel_app/check_server.py --image_size 64 --loop            # active learning

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

With ``--loop`` it runs MONAI Label's active-learning loop over HTTP instead, for each bundle served alone on a
datastore of five generated images of its task (``make_sample``), as an annotator's client does:

1. ``POST /scoring/epistemic`` scores every image (Monte Carlo dropout, stored in the datastore);
2. ``POST /activelearning/epistemic`` serves the image of the highest score, ``/infer`` labels it;
3. ``PUT /datastore/label`` submits its label (class values), then two more images served by the strategy, none of
   them one already labelled;
4. ``POST /train/<bundle>`` fine-tunes on the three labels (``max_epochs`` 6); while it runs ``GET /train/`` reports
   it and a second request is refused (HTTP 429, MONAI Label's answer); it must end ``DONE`` with ``models/model.pt``
   replaced;
5. ``/infer`` on the first image answers with another label (the new weights are served);
6. the new model rescores the images left and the strategy serves one of them.

The server runs with ``MONAI_LABEL_AUTO_UPDATE_SCORING=false`` so that scoring runs when the loop asks for it, not
in the background after each request.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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
    from requests_toolbelt.multipart.decoder import MultipartDecoder  # the server environment's (MONAI Label's)

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


#: make_sample's arguments for the active-learning loop's labelled images: small sets of what MONAI Label's datastore
#: lists (hip's radiographs as NIfTI; prostate writes at least the five cases its folds need)
LOOP_SAMPLES = {
    "polyp": {"test_sets": {}},
    "isic2017": {"n_val": 0, "n_test": 0},
    "hip": {"n_val": 0, "n_test": 0, "formats": ("nifti",)},
    "prostate": {},
}
LOOP_DATALIST = {"prostate": {"fold": "all"}}  # the task's datalist arguments for all of its training cases
LOOP_IMAGES = 5  # in the datastore; the annotator labels LOOP_LABELS of them, the rest stay to be scored
LOOP_LABELS = 3
# the train request a client sends: MONAI Label's options of BundleTrainTask (val_split: 1 of the 3 labels)
LOOP_TRAIN = {"max_epochs": 6, "val_split": 0.34, "device": "cpu", "multi_gpu": False, "pretrained": True}
# extra configuration of a loop server: scores are computed when the loop asks for them, not in the background
LOOP_ENV = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}


def loop_images(studies: Path, truth: Path, bundle: str) -> dict[str, Path]:
    """Generated labelled images of a bundle's task: the images go to the datastore (``studies``), their labels as
    an annotator would submit them (class values: a binary task's 0/255 masks become 0/1) to ``truth``.

    Returns:
        image id -> the label file to submit.
    """
    task = get_task(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        sample = task.make_sample(tmp, n_train=LOOP_IMAGES, **LOOP_SAMPLES[bundle])
        items = task.datalist(sample, "train", **LOOP_DATALIST.get(bundle, {}))[:LOOP_IMAGES]
        studies.mkdir(parents=True, exist_ok=True)
        truth.mkdir(parents=True, exist_ok=True)
        labels = {}
        for item in items:
            image = Path(item["image"])
            shutil.copy(image, studies / image.name)
            ident = image_id(image)
            label = Path(item["label"])
            if label.suffix == ".png":
                array = np.asarray(Image.open(label))
                if task.num_classes == 2 and array.max() > 1:
                    array = (array > 127).astype(np.uint8)
                labels[ident] = truth / f"{ident}.png"
                Image.fromarray(array.astype(np.uint8)).save(labels[ident])
            else:
                labels[ident] = truth / f"{ident}{''.join(label.suffixes)}"
                shutil.copy(label, labels[ident])
    return labels


def label_array(content: bytes, file_name: str) -> np.ndarray:
    """The class values of a label file returned by ``/infer`` (PNG or NIfTI)."""
    if content.startswith(PNG_SIGNATURE):
        with Image.open(io.BytesIO(content)) as label:
            return np.asarray(label)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(file_name).name
        path.write_bytes(content)
        return np.asarray(nib.load(path).dataobj)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_loop(url: str, bundle: str, app: Path, labels: dict[str, Path], timeout: float) -> list[dict]:
    """MONAI Label's active-learning loop over HTTP for one bundle served alone, as an annotator's client runs it:
    score, fetch the next image, label it, train, infer again. Each step is a row of the table."""
    rows: list[dict] = []
    model = app / "model" / bundle / "models" / "model.pt"

    def step(name: str, detail: str, problems: list[str], start: float) -> bool:
        rows.append({"bundle": bundle, "request": name, "image": detail, "seconds": time.monotonic() - start,
                     "values": "-", "problems": problems})
        return not problems

    def http(method: str, path: str, expect: int = 200, **kwargs) -> tuple[requests.Response, list[str]]:
        response = requests.request(method, f"{url}{path}", timeout=600, **kwargs)
        problems = [] if response.status_code == expect else [
            f"{method} {path}: HTTP {response.status_code} (expected {expect}): {response.text[:300]}"]
        return response, problems

    def scores() -> dict[str, float | None]:
        objects = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
        return {k: v["image"]["info"].get("epistemic_entropy") for k, v in objects.items()}

    def infer(image: str) -> tuple[np.ndarray | None, list[str]]:
        response, problems = http("POST", f"/infer/{bundle}", params={"image": image}, data={"params": "{}"})
        if problems:
            return None, problems
        file_name, content = returned_label(response)
        return label_array(content, file_name), []

    # 1. score every unlabelled image
    start = time.monotonic()
    response, problems = http("POST", "/scoring/epistemic", params={"run_sync": "true"})
    first_scores = scores() if not problems else {}
    if not problems and (None in first_scores.values() or len(first_scores) != len(labels)):
        problems.append(f"scores after /scoring/epistemic: {first_scores}")
    if not step("/scoring/epistemic", f"{len(first_scores)} images scored", problems, start):
        return rows

    # 2. the next image to label, then its label from the current model; 3. the annotator labels LOOP_LABELS images
    labelled: list[str] = []
    before = None
    for index in range(LOOP_LABELS):
        start = time.monotonic()
        response, problems = http("POST", "/activelearning/epistemic", json={})
        chosen = response.json().get("id") if not problems else None
        unlabelled = {k: v for k, v in first_scores.items() if k not in labelled}
        if not problems and chosen in labelled:
            problems.append(f"served '{chosen}', which is already labelled")
        if not problems and index == 0 and first_scores[chosen] != max(unlabelled.values()):
            problems.append(f"served '{chosen}' ({first_scores[chosen]:.4f}), not the highest score: {unlabelled}")
        if not step("/activelearning/epistemic", f"{chosen} ({(first_scores.get(chosen) or 0):.4f})", problems, start):
            return rows
        if index == 0:
            start = time.monotonic()
            before, problems = infer(chosen)
            if not step(f"/infer/{bundle}", f"{chosen}: before training", problems, start):
                return rows
        start = time.monotonic()
        with open(labels[chosen], "rb") as fp:
            response, problems = http("PUT", "/datastore/label", params={"image": chosen, "tag": "final"},
                                      files={"label": (labels[chosen].name, fp)}, data={"params": "{}"})
        if not step("PUT /datastore/label", f"{chosen} ({labels[chosen].name})", problems, start):
            return rows
        labelled.append(chosen)

    # 4. train; a second request while it runs is refused (MONAI Label answers 429); the status reports the run
    digest = file_digest(model)
    start = time.monotonic()
    response, problems = http("POST", f"/train/{bundle}", json=LOOP_TRAIN)
    task_id = response.json().get("id") if not problems else None
    if not step(f"POST /train/{bundle}", f"task {task_id}: {json.dumps(LOOP_TRAIN)}", problems, start):
        return rows
    start = time.monotonic()
    status = {}
    while time.monotonic() - start < 60 and status.get("status") in (None, "SUBMITTED"):
        status = requests.get(f"{url}/train/", timeout=60).json()  # SUBMITTED until its process has started
        time.sleep(0.2)
    _, problems = http("GET", "/train/", params={"check_if_running": "true"})
    _, refused = http("POST", f"/train/{bundle}", expect=429, json=LOOP_TRAIN)
    if not step("/train while running", "status RUNNING, a second request 429", problems + refused, start):
        return rows
    start = time.monotonic()
    status = {}
    while time.monotonic() - start < timeout:
        status = requests.get(f"{url}/train/", timeout=60).json()
        if status.get("id") == task_id and status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(2)
    problems = [] if status.get("status") == "DONE" else [
        f"training ended as {status.get('status')!r}: {list(status.get('details', []))[-8:]}"]
    if not problems and file_digest(model) == digest:
        problems.append(f"training is DONE but {model} is unchanged")
    if not step("GET /train/", f"{status.get('status')} ({status.get('start_ts')} .. {status.get('end_ts')})",
                problems, start):
        return rows

    # 5. the served model is the new one: the same image's label changes
    start = time.monotonic()
    after, problems = infer(labelled[0])
    if not problems and np.array_equal(before, after):
        problems.append(f"the label of '{labelled[0]}' is the same after training: /infer did not use the new weights")
    if not problems:
        truth = label_array(labels[labelled[0]].read_bytes(), labels[labelled[0]].name)
        agree = [float((label == truth).mean()) for label in (before, after)]
        detail = f"{labelled[0]}: label changed, agreement with its label {agree[0]:.2f} -> {agree[1]:.2f}"
    else:
        detail = labelled[0]
    if not step(f"/infer/{bundle}", detail, problems, start):
        return rows

    # 6. the new model scores the images left, and the strategy serves one of them
    start = time.monotonic()
    _, problems = http("POST", "/scoring/epistemic", params={"run_sync": "true"})
    new_scores = scores() if not problems else {}
    left = sorted(set(first_scores) - set(labelled))
    if not problems and any(new_scores[k] is None or new_scores[k] == first_scores[k] for k in left):
        problems.append(f"the images left were not rescored by the new model: {first_scores} -> {new_scores}")
    response, served = http("POST", "/activelearning/epistemic", json={})
    chosen = response.json().get("id") if not served else None
    if not served and chosen not in left:
        served.append(f"served '{chosen}', not one of the unlabelled images {left}")
    step("rescore, next image", f"{len(left)} rescored, next: {chosen}", problems + served, start)
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'bundle':<9} {'request':<18} {'image':<22} {'s':>5}  {'label values':<18} result"
    print(header)
    print("-" * len(header))
    for row in rows:
        result = "ok" if not row["problems"] else "FAIL: " + "; ".join(row["problems"])
        print(f"{row['bundle']:<9} {row['request']:<18} {row['image']:<22} {row['seconds']:>5.1f}  "
              f"{row['values']:<18} {result}")


@contextlib.contextmanager
def serving(python: str, app: Path, studies: Path, bundles: list[str], log_path: Path, timeout: float,
            env: dict[str, str] | None = None):
    """Run README's server command for ``bundles`` on a free localhost port until the block ends; yields
    ``(url, /info)``. The server's output goes to ``log_path``."""
    port = free_port()
    cmd = server_command(python, app, studies, bundles, port)
    print("server:", " ".join(cmd), flush=True)
    # own process group, so that stop() reaches uvicorn and its children; no proxy for localhost
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **(env or {})}
    with open(log_path, "ab") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        info = wait_for_info(url, server, timeout)
        print(f"server up after {time.monotonic() - started:.1f} s: models {sorted(info.get('models', {}))}, "
              f"scoring {sorted(info.get('scoring', {}))}, "
              f"strategies {sorted(info.get('strategies', {}))}", flush=True)
        yield url, info
    finally:
        stop(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", default=",".join(BUNDLES), help="comma-separated bundles to serve")
    parser.add_argument("--image_size", type=int, default=None,
                        help="set the bundles' image_size to N x N (default: each bundle's own size)")
    parser.add_argument("--loop", action="store_true",
                        help="run the active-learning loop (score, next image, label, train, infer) for each bundle, "
                             "each served alone on a datastore of its own, instead of the inference checks")
    parser.add_argument("--python", default=sys.executable,
                        help="Python of the MONAI Label server environment (default: the one running this script)")
    parser.add_argument("--startup_timeout", type=float, default=900.0, help="seconds to wait for /info")
    parser.add_argument("--train_timeout", type=float, default=600.0, help="seconds to wait for a training (--loop)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary app, studies and server log")
    args = parser.parse_args(argv)
    bundles = [b.strip() for b in args.bundles.split(",") if b.strip()]
    unknown = sorted(set(bundles) - set(BUNDLES))
    if unknown:
        parser.error(f"--bundles: unknown {unknown}; choose from {list(BUNDLES)}")
    has_monailabel = "import importlib.util, sys; sys.exit(importlib.util.find_spec('monailabel') is None)"
    if subprocess.run([args.python, "-c", has_monailabel], capture_output=True).returncode:
        parser.error(f"{args.python} cannot import monailabel: run `bash monailabel_app/setup_server_env.sh` and "
                     "run this script with .monailabel-venv/bin/python")

    begin = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="transfuse-monailabel-"))
    log_path = tmp / "server.log"
    rows: list[dict] = []
    failure = None
    try:
        app = make_app(tmp, bundles, args.image_size)
        if args.loop:
            for bundle in bundles:
                # the datastore holds the images before the server starts
                labels = loop_images(tmp / bundle / "studies", tmp / bundle / "truth", bundle)
                with serving(args.python, app, tmp / bundle / "studies", [bundle], log_path, args.startup_timeout,
                             env=LOOP_ENV) as (url, _):
                    rows += run_loop(url, bundle, app, labels, args.train_timeout)
                if any(row["problems"] for row in rows):
                    break
        else:
            studies = tmp / "studies"
            images = {name: make_images(studies, name) for name in bundles}
            with serving(args.python, app, studies, bundles, log_path, args.startup_timeout) as (url, info):
                rows = run_checks(url, info, app, images)
    except Exception as err:  # noqa: BLE001 (any failure is reported with the server log below)
        failure = f"{type(err).__name__}: {err}"
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

"""Record what every bundle does on a fixed generated sample, to prove a refactoring changes no behaviour.

For each task the bundle runs as a new user runs it, with no dataset (so each run trains on its task's generated demo
sample, seed 0, the demo image size and epochs): ``training``, the evaluation (``train.json`` + ``evaluate.json``)
and the inference (``inference.json``) on the test images. The snapshot holds every number of the evaluation
summaries and a hash of every mask the inference writes (of the decoded array, so container details such as a
gzip time stamp do not count). Run it on the code before and after a change, on one machine, and compare::

    python .ci/behaviour_snapshot.py --output before.json            # on the old tree (PYTHONPATH=<old tree>)
    python .ci/behaviour_snapshot.py --output after.json
    python .ci/behaviour_snapshot.py --compare before.json after.json [--tolerance 1e-6]

Wall-clock timings (``seconds_summary.json``) are not behaviour and are left out.

A comparison lists every metric that differs by more than the tolerance and every mask that differs, and exits
with 1 when there is any.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("polyp", "isic2017", "hip", "prostate")
COMMON = ["--num_workers", "0"]
#: Summaries of wall-clock time (seconds per volume): not behaviour, left out of the snapshot.
TIMING_SUMMARIES = ("seconds_summary.json",)


def bundle(repo: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


def flatten(value, prefix: str = "") -> dict[str, float]:
    """Every number of a JSON document under a dotted key."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)
    return out


def mask_hash(path: Path) -> str:
    import numpy as np

    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        array = np.asanyarray(nib.load(str(path)).dataobj)
    else:
        from PIL import Image

        with Image.open(path) as pic:
            array = np.asarray(pic)
    digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]
    return f"{array.dtype}{list(array.shape)}:{digest}"


def inference_input(task_name: str, data_root: Path, work: Path) -> list[str]:
    """Overrides that point the bundle's inference at the test images of the generated sample."""
    from transfuse_monai.tasks import get_task

    task = get_task(task_name)
    if task_name == "hip":
        return ["--input_dir", str(data_root / "datalist.json"), "--input_split", "test"]
    if task_name == "prostate":
        items = task.datalist(data_root, "test", validate=False)
        listing = work / "to_segment.json"
        listing.write_text(json.dumps({"testing": [{"image": d["image"]} for d in items]}))
        return ["--input_dir", str(listing)]
    if task_name == "polyp":
        groups = task.test_datalists(data_root, list(task.demo_sample["test_sets"]))
    else:
        groups = {"test": task.datalist(data_root, "test", validate=False)}
    folder = work / "to_segment"
    folder.mkdir(parents=True, exist_ok=True)
    for group, items in groups.items():  # the PraNet test sets reuse file names: one link per set and name
        for d in items:
            link = folder / f"{group}_{Path(d['image']).name}"
            if not link.exists():
                link.symlink_to(d["image"])
    return ["--input_dir", str(folder)]


def snapshot_task(repo: Path, task_name: str, work: Path) -> dict:
    configs = repo / "bundles" / task_name / "configs"
    dirs = ["--dataset_dir", str(work / "no_dataset"), "--ckpt_dir", str(work / "models"),
            "--output_dir", str(work / "eval")]
    start = time.perf_counter()
    bundle(repo, "training", "--config_file", str(configs / "train.json"), *dirs, *COMMON)
    bundle(repo, "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']", *dirs, *COMMON)
    summaries = {p.name: flatten(json.loads(p.read_text())) for p in sorted((work / "eval").glob("*summary*.json"))
                 if p.name not in TIMING_SUMMARIES}
    data_root = work / "eval" / "demo_data"
    bundle(repo, "--config_file", str(configs / "inference.json"), "--ckpt_dir", str(work / "models"),
           "--output_dir", str(work / "pred"), *inference_input(task_name, data_root, work), *COMMON)
    masks = {str(p.relative_to(work / "pred")): mask_hash(p) for p in sorted((work / "pred").rglob("*"))
             if p.is_file() and p.name.endswith((".png", ".nii.gz"))}
    print(f"{task_name}: {sum(len(s) for s in summaries.values())} numbers, {len(masks)} masks "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return {"summaries": summaries, "masks": masks}


def compare(before: dict, after: dict, tolerance: float) -> int:
    problems = []
    for task in sorted(set(before) | set(after)):
        b, a = before.get(task), after.get(task)
        if a is None or b is None:
            problems.append(f"{task}: only in {'before' if a is None else 'after'}")
            continue
        for name in sorted((set(b["summaries"]) | set(a["summaries"])) - set(TIMING_SUMMARIES)):
            bs, as_ = b["summaries"].get(name, {}), a["summaries"].get(name, {})
            for key in sorted(set(bs) | set(as_)):
                x, y = bs.get(key), as_.get(key)
                if x is None or y is None:
                    problems.append(f"{task} {name} {key}: only {'before' if y is None else 'after'}")
                elif not (math.isclose(x, y, rel_tol=0, abs_tol=tolerance) or (math.isnan(x) and math.isnan(y))):
                    problems.append(f"{task} {name} {key}: {x!r} -> {y!r}")
        for mask in sorted(set(b["masks"]) | set(a["masks"])):
            if b["masks"].get(mask) != a["masks"].get(mask):
                problems.append(f"{task} mask {mask}: {b['masks'].get(mask)} -> {a['masks'].get(mask)}")
        numbers = sum(len(s) for s in b["summaries"].values())
        print(f"{task}: {numbers} numbers, {len(b['masks'])} masks compared")
    for p in problems:
        print("DIFFERS:", p)
    print("same behaviour" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="snapshot JSON to write")
    parser.add_argument("--repo", type=Path, default=REPO, help="the tree whose bundles run (default: this one)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--tolerance", type=float, default=1e-6, help="absolute tolerance of the metrics")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        return compare(before, after, args.tolerance)
    if args.output is None:
        parser.error("--output or --compare is required")
    import transfuse_monai

    print(f"transfuse_monai from {Path(transfuse_monai.__file__).parent}", flush=True)
    result = {}
    with tempfile.TemporaryDirectory(prefix="snapshot_") as tmp:
        for name in args.tasks:
            result[name] = snapshot_task(args.repo.resolve(), name, Path(tmp) / name)
    args.output.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

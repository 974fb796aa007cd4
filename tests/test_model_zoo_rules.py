"""Every bundle passes the MONAI model zoo's rules, checked here without the zoo's code and without network access.

The zoo's CI runs ``ci/verify_bundle.py -m min`` on every pull request: the necessary files (``configs/metadata.json``,
``LICENSE``), the preferred inference config, ``version`` listed in ``changelog`` and the metadata validated against
the schema its ``schema`` URL names. Its CONTRIBUTING.md, pull-request template and README template add: a display
``name``, the config key names, no personal paths, files of at most 25 MB, "descriptions consistent with the content,
such as ``eval_metrics`` of the provided weights", and the README's sections. On top of those, this project's own
rules for what the zoo leaves to the reviewer:

* ``eval_metrics`` describes weights the bundle provides. These bundles ship none (users train them; weights are
  never committed), so ``eval_metrics`` must be absent until a bundle references weights (``large_files.yml``); a
  value must then be reported in the README's Performance section, and may never be one of the figures of the
  README's "Paper reports" table (the paper's numbers are not the bundle's).
* ``outputs`` describes the network's forward output (what ``verify_net_in_out`` checks): logits, so
  ``value_range`` is ``[]`` (the MONAI Bundle specification's "not known"); ``num_channels`` follows the task's
  activation (``transfuse_monai.tasks``): one channel per foreground class with sigmoid (format ``segmentation``: one
  channel whose thresholded sigmoid assigns each pixel a value of ``channel_def``), one per class with softmax (format
  ``labels``: the label is the index of the largest channel). ``channel_def`` maps each mask value to its class,
  background included, because MONAI Label takes its labels from those keys. ``post_processed_outputs`` describes the
  one-channel mask that ``inference.json``'s postprocessing makes, and the class texts say the same.
* The README has the template's sections (Tags, Limitations, Citation with the TransFuse BibTeX, License, a TensorRT
  statement, ...) and the command that runs the zoo's own script on the bundle.

The schema is vendored as ``tests/data/meta_schema_20240725.json`` (the public MONAI file, checked by its md5), so
the tests pass offline and without ``../shared``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path

import pytest

from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"  # the file the metadata's "schema" URL serves
MAX_FILE_BYTES = 25 * 1024 * 1024  # the zoo's limit for a file in its repository
#: Folders of a bundle that hold outputs (weights, reports), never part of what is submitted.
OUTPUT_DIRS = ("models", "eval", "runs", "output")

INFERENCE_KEYS = ("bundle_root", "device", "network_def", "inferer", "output_dir")
TRAIN_KEYS = (
    "bundle_root", "device", "dataset_dir", "output_dir", "val_interval",
    "train#trainer", "train#trainer#max_epochs", "train#dataset", "train#dataset#data", "train#handlers",
    "train#preprocessing", "train#postprocessing", "train#inferer", "train#key_metric",
    "validate#evaluator", "validate#handlers", "validate#dataset", "validate#dataset#data",
    "validate#preprocessing", "validate#postprocessing", "validate#inferer", "validate#key_metric",
)
#: README sections (headings of any level starting with these words), from the zoo's template and its bundles.
README_SECTIONS = (
    "Model Overview", "Tags", "Data", "Training configuration", "Performance", "MONAI Bundle Commands", "TensorRT",
    "Limitations", "Citation", "References", "License",
)
BIBTEX_FACTS = (
    "@inproceedings", "TransFuse: Fusing Transformers and CNNs for Medical Image Segmentation",
    "Zhang, Yundong and Liu, Huiye and Hu, Qiang", "MICCAI 2021", "12901", "14--24", "2102.08005",
)


# --------------------------------------------------------------------------------------------------- reading


def bundle_dir(bundle: str) -> Path:
    return REPO / "bundles" / bundle


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def readme_sections(text: str) -> list[tuple[int, str, str]]:
    """``(level, title, body)`` for every Markdown heading; the body runs to the next heading of the same or a higher
    level (so it includes its subsections). Lines inside fenced code blocks are never headings."""
    lines, heads, fenced = text.splitlines(), [], False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)):
            heads.append((i, len(m.group(1)), m.group(2).strip("* ")))
    out = []
    for n, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[n + 1:] if lv <= level), len(lines))
        out.append((level, title, "\n".join(lines[i + 1:end])))
    return out


def section(text: str, name: str) -> str | None:
    """The body of the first heading whose title starts with ``name`` (case-insensitive), or ``None``."""
    return next((body for _, title, body in readme_sections(text) if title.lower().startswith(name.lower())), None)


def numbers(text: str) -> set[float]:
    return {float(x) for x in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", text)}


def paper_figures(readme: str) -> set[float]:
    """The decimal figures of the README's "Paper reports" section (the paper's own results)."""
    return numbers(section(readme, "Paper reports") or "")


def config_has(config: dict, key: str) -> bool:
    """Whether a ``#``-separated id (``train#trainer#max_epochs``) is defined in a raw config."""
    node = config
    for part in key.split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


def find_file(folder: Path, stem: str, suffixes=(".json", ".yaml", ".yml")) -> Path | None:
    return next((folder / f"{stem}{s}" for s in suffixes if (folder / f"{stem}{s}").is_file()), None)


def weights_referenced(root: Path) -> bool:
    """Whether the bundle provides weights the zoo's way: a ``large_files`` config listing ``models/model.pt``."""
    large = find_file(root, "large_files", (".yml", ".yaml", ".json"))
    return large is not None and "models/model.pt" in large.read_text()


# ---------------------------------------------------------------------------------------------------- rules
# Each rule returns the list of problems it finds (empty: the bundle passes), so that the tests below can also
# apply it to metadata that is known to be wrong.


def file_problems(root: Path) -> list[str]:
    """``verify_bundle_directory`` of the zoo (``models/model.pt`` aside: it is what training writes), the docs and
    the 25 MB limit."""
    problems = [f"necessary file {f} is missing" for f in ("configs/metadata.json", "LICENSE", "docs/README.md")
                if not (root / f).is_file()]
    if find_file(root / "configs", "inference") is None:
        problems.append("no configs/inference.json (or .yaml/.yml)")
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] not in OUTPUT_DIRS and path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{rel} is larger than 25 MB: give a download link in large_files.yml instead")
    return problems


def version_problems(meta: dict) -> list[str]:
    """``verify_version_changes``: a version, listed in the changelog, and the newest entry of it."""
    version, changelog = meta.get("version"), meta.get("changelog")
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        return [f"'version' must be MAJOR.MINOR.PATCH, got {version!r}"]
    if not isinstance(changelog, dict) or version not in changelog:
        return [f"version {version} is missing from 'changelog'"]
    newest = max(changelog, key=lambda v: tuple(int(x) for x in v.split(".")))
    return [] if newest == version else [f"version {version} is not the newest changelog entry ({newest})"]


def name_problems(meta: dict, bundle: str) -> list[str]:
    """CONTRIBUTING.md: a display name for the model browser (a phrase, not the folder name)."""
    name = meta.get("name")
    if not isinstance(name, str) or " " not in name.strip() or name.strip() == bundle:
        return [f"'name' must be a human-readable display name, got {name!r}"]
    return []


def schema_problems(meta: dict) -> list[str]:
    """``verify_metadata_format``: the metadata validated against the schema its ``schema`` URL names."""
    import jsonschema

    url = meta.get("schema", "")
    if url.rsplit("/", 1)[-1] != SCHEMA.name:
        return [f"'schema' names {url!r}; the tests validate against {SCHEMA.name}"]
    schema = load_json(SCHEMA)
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(meta)]


def eval_metrics_problems(meta: dict, root: Path, readme: str) -> list[str]:
    """``eval_metrics`` only for weights the bundle provides, each reported in the README, none of them the paper's."""
    metrics = meta.get("eval_metrics") or {}
    if not metrics:
        return []
    problems = []
    if not weights_referenced(root):
        problems.append(f"eval_metrics {sorted(metrics)} given, but the bundle provides no weights "
                        "(no large_files.yml listing models/model.pt)")
    paper = paper_figures(readme)
    performance = (section(readme, "Performance") or "").replace(section(readme, "Paper reports") or "\0", "")
    for key, value in metrics.items():
        if "paper" in key.lower():
            problems.append(f"eval_metrics '{key}' is a paper figure, not one of these weights")
        if isinstance(value, (int, float)) and any(math.isclose(value, p, abs_tol=1e-9) for p in paper):
            problems.append(f"eval_metrics '{key}' = {value} is a figure of the README's 'Paper reports' table")
        if str(value) not in performance:
            problems.append(f"eval_metrics '{key}' = {value} is not reported in the README's Performance section")
    return problems


def network_format_problems(meta: dict, task, inference: dict) -> list[str]:
    """``num_channels``, ``channel_def``, ``value_range``, the class texts and ``inference.json``'s postprocessing
    agree with each other and with the task's classes and activation."""
    fmt = meta["network_data_format"]
    problems = []
    ((input_name, image),) = fmt["inputs"].items()
    if image.get("num_channels") != task.in_channels:
        problems.append(f"inputs.{input_name}.num_channels {image.get('num_channels')} != {task.in_channels}")
    if image.get("channel_def") != {str(i): n for i, n in enumerate(task.channel_names)}:
        problems.append(f"inputs.{input_name}.channel_def {image.get('channel_def')} != {task.channel_names}")
    outputs = fmt["outputs"]
    if len(outputs) != 1:
        return problems + [f"expected one output, found {sorted(outputs)}"]
    ((name, pred),) = outputs.items()
    classes = task.channel_def()  # mask value -> class name, background included (MONAI Label's labels)
    sigmoid = task.activation == "sigmoid"
    channels, form = (task.num_classes - 1, "segmentation") if sigmoid else (task.num_classes, "labels")
    if pred.get("num_channels") != channels:
        problems.append(f"outputs.{name}.num_channels {pred.get('num_channels')}: the {task.activation} network "
                        f"has {channels}")
    if pred.get("channel_def") != classes:
        problems.append(f"outputs.{name}.channel_def {pred.get('channel_def')} != mask value -> class {classes}")
    elif len(classes) != (channels + 1 if sigmoid else channels):
        problems.append(f"outputs.{name}: {channels} {task.activation} channel(s) cannot give the {len(classes)} "
                        f"mask values of channel_def")
    if pred.get("format") != form:
        problems.append(f"outputs.{name}.format {pred.get('format')!r}: {task.activation} outputs are {form!r}")
    if pred.get("value_range") != []:
        problems.append(f"outputs.{name}.value_range {pred.get('value_range')}: the network outputs logits, "
                        "unbounded, so []")
    post = fmt.get("post_processed_outputs", {}).get(name)
    want_post = {"num_channels": 1, "format": "segmentation", "channel_def": classes,
                 "value_range": [0, task.num_classes - 1], "spatial_shape": ["*"] * task.spatial_dims}
    if post is None:
        problems.append(f"post_processed_outputs.{name} is missing: describe the mask the postprocessing makes")
    else:
        problems += [f"post_processed_outputs.{name}.{k} {post.get(k)} != {v}" for k, v in want_post.items()
                     if post.get(k) != v]
    text = meta.get("pred_classes", "")
    for word in ("logit", task.activation, "threshold" if sigmoid else "argmax", *task.class_names):
        if word.lower() not in text.lower():
            problems.append(f"pred_classes does not mention '{word}': {text!r}")
    problems += [f"label_classes does not mention '{c}'" for c in task.foreground
                 if c.lower() not in meta.get("label_classes", "").lower()]
    transforms = inference["postprocessing"]["transforms"]
    if not any(t["_target_"] == "Activationsd" and t.get(task.activation) is True for t in transforms):
        problems.append(f"inference.json's postprocessing has no Activationsd({task.activation}=True)")
    discrete = [t for t in transforms if t["_target_"] == "AsDiscreted"]
    if not any(("threshold" in t) if sigmoid else t.get("argmax") is True for t in discrete):
        problems.append(f"inference.json's postprocessing does not {'threshold' if sigmoid else 'argmax'} the output")
    return problems


def description_problems(meta: dict, config_ids: set[str]) -> list[str]:
    """Option names quoted in ``description`` (lower-case words with an underscore) are ids of the bundle's configs,
    so a renamed option cannot linger there."""
    words = set(re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", meta.get("description", "")))
    return [f"description names '{w}', which no config defines" for w in sorted(words - config_ids)]


def config_problems(root: Path) -> list[str]:
    """CONTRIBUTING.md's key names of inference and training configs, ``ValidationHandler`` at ``val_interval``, and
    no personal paths."""
    inference, train = load_json(root / "configs" / "inference.json"), load_json(root / "configs" / "train.json")
    problems = [f"inference.json lacks '{k}'" for k in INFERENCE_KEYS if not config_has(inference, k)]
    problems += [f"train.json lacks '{k}'" for k in TRAIN_KEYS if not config_has(train, k)]
    handlers = [h for h in train["train"]["handlers"] if h.get("_target_") == "ValidationHandler"]
    problems += [f"ValidationHandler interval {h.get('interval')!r} is not '@val_interval'" for h in handlers
                 if h.get("interval") != "@val_interval"]
    for config in sorted((root / "configs").glob("*.json")):
        problems += [f"{config.name}: personal path {s!r}" for s in strings(load_json(config))
                     if re.search(r"/home/|/Users/|[A-Za-z]:\\\\Users", s)]
    return problems


def readme_problems(readme: str, root: Path) -> list[str]:
    """The template's sections, the TransFuse citation as BibTeX, the licences, the paper's figures labelled as the
    paper's, and the command that runs the zoo's own script."""
    problems = [f"README has no '{s}' section" for s in README_SECTIONS if not (section(readme, s) or "").strip()]
    citation = section(readme, "Citation") or ""
    bibtex = "\n".join(re.findall(r"```bibtex\n(.*?)```", citation, re.S))
    problems += [f"the Citation section's bibtex block lacks {fact!r}" for fact in BIBTEX_FACTS if fact not in bibtex]
    license_text = section(readme, "License") or ""
    if "Apache" not in license_text:
        problems.append("the License section does not state the code's licence (Apache-2.0)")
    if (root / "docs" / "data_license.txt").is_file() and "data_license.txt" not in license_text:
        problems.append("the License section does not point to docs/data_license.txt")
    if not paper_figures(readme):
        problems.append("the Performance section has no 'Paper reports' table with the paper's figures")
    if "ci/verify_bundle.py" not in readme or "-m min" not in readme:
        problems.append("README does not give the command that runs the zoo's ci/verify_bundle.py -m min")
    return problems


def all_problems(bundle: str, meta: dict | None = None, readme: str | None = None) -> dict[str, list[str]]:
    """Every rule applied to one bundle; ``meta`` / ``readme`` replace its files (to check the rules themselves)."""
    root = bundle_dir(bundle)
    meta = load_json(root / "configs" / "metadata.json") if meta is None else meta
    readme = (root / "docs" / "README.md").read_text() if readme is None else readme
    inference = load_json(root / "configs" / "inference.json")
    ids = {k for name in ("train.json", "inference.json") for k in load_json(root / "configs" / name)}
    return {
        "files": file_problems(root),
        "version": version_problems(meta),
        "name": name_problems(meta, bundle),
        "schema": schema_problems(meta),
        "eval_metrics": eval_metrics_problems(meta, root, readme),
        "network_data_format": network_format_problems(meta, get_task(bundle), inference),
        "description": description_problems(meta, ids),
        "configs": config_problems(root),
        "readme": readme_problems(readme, root),
    }


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_passes_the_model_zoo_rules(bundle):
    problems = {rule: p for rule, p in all_problems(bundle).items() if p}
    assert not problems, f"bundles/{bundle}:\n" + "\n".join(f"  [{r}] {m}" for r, ps in problems.items() for m in ps)


def test_the_vendored_schema_is_the_published_one():
    assert hashlib.md5(SCHEMA.read_bytes()).hexdigest() == SCHEMA_MD5


@pytest.mark.parametrize("bundle", BUNDLES)
def test_monai_verify_metadata_runs_offline_on_the_local_schema(bundle):
    """MONAI's own check: ``verify_metadata`` "downloads" the schema to ``filepath`` and skips the download when the
    file exists (its md5 checked with ``hash_val``), so the vendored file makes it work offline."""
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(bundle_dir(bundle) / "configs" / "metadata.json"), filepath=str(SCHEMA),
                    hash_val=SCHEMA_MD5, hash_type="md5")


def _mutate(meta: dict, change) -> dict:
    meta = copy.deepcopy(meta)
    change(meta)
    return meta


def _pred(meta: dict) -> dict:
    return meta["network_data_format"]["outputs"]["pred"]


#: Faults of earlier versions of the metadata, and others of their kind: (rule, bundle, change, what it must say).
FAULTS = {
    "no name": ("name", "polyp", lambda m: m.pop("name"), "display name"),
    "name is the folder name": ("name", "hip", lambda m: m.update(name="hip"), "display name"),
    "the paper's Dice as eval_metrics": ("eval_metrics", "polyp", lambda m: m.update(eval_metrics={"mean_dice": 0.918}),
                                         "'Paper reports' table"),
    "eval_metrics without weights": ("eval_metrics", "hip", lambda m: m.update(eval_metrics={"mean_hd_mm": 3.25}),
                                     "provides no weights"),
    "paper_ key in eval_metrics": ("eval_metrics", "prostate",
                                   lambda m: m.update(eval_metrics={"paper_mean_dice": 0.7639}), "is a paper figure"),
    "value_range [0, 1] next to logits": ("network_data_format", "isic2017",
                                          lambda m: _pred(m).update(value_range=[0, 1]), "logits"),
    "two sigmoid channels for a two-entry channel_def": ("network_data_format", "polyp",
                                                         lambda m: _pred(m).update(num_channels=2), "num_channels 2"),
    "channel_def keyed by channel index": ("network_data_format", "polyp",
                                           lambda m: _pred(m).update(channel_def={"0": "polyp"}), "mask value"),
    "softmax output described as one channel": ("network_data_format", "hip",
                                                lambda m: _pred(m).update(num_channels=1), "softmax network has 4"),
    "no post_processed_outputs": ("network_data_format", "prostate",
                                  lambda m: m["network_data_format"].pop("post_processed_outputs"), "missing"),
    "pred_classes without the activation": ("network_data_format", "prostate",
                                            lambda m: m.update(pred_classes="three channels: background, PZ, TZ"),
                                            "'softmax'"),
    "renamed option in the description": ("description", "isic2017",
                                          lambda m: m.update(description=m["description"] + " Use pretrained_ckpt."),
                                          "pretrained_ckpt"),
    "version not in changelog": ("version", "hip", lambda m: m.update(version="9.9.9"), "missing from"),
    "version older than the changelog's newest": ("version", "polyp", lambda m: m["changelog"].update({"9.0.0": "x"}),
                                                  "newest"),
    "schema type violation": ("schema", "hip", lambda m: m.update(references="Zhang et al. 2021"), "references"),
    "schema required key missing": ("schema", "polyp", lambda m: m.pop("copyright"), "copyright"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_rules_report_known_faults(fault):
    """Each rule rejects the fault it is there for, with a message that names it."""
    rule, bundle, change, message = FAULTS[fault]
    meta = _mutate(load_json(bundle_dir(bundle) / "configs" / "metadata.json"), change)
    problems = all_problems(bundle, meta=meta)
    assert any(message in p for p in problems[rule]), f"{fault}: rule '{rule}' reported {problems[rule]}"
    assert not any(problems[r] for r in problems if r != rule), f"{fault}: other rules fired: {problems}"


def test_readme_rules_report_missing_sections_and_citation():
    readme = (bundle_dir("polyp") / "docs" / "README.md").read_text()
    stripped = re.sub(r"```bibtex\n.*?```", "", readme, flags=re.S).replace("## Limitations", "## Caveats")
    problems = readme_problems(stripped, bundle_dir("polyp"))
    assert any("'Limitations'" in p for p in problems) and any("bibtex" in p for p in problems)
    # a heading inside a code block does not count as a section
    assert section("```\n# Tags\nx\n```\n", "Tags") is None and section("## Tags\nx\n", "Tags") == "x"


def test_eval_metrics_of_provided_weights_are_accepted(tmp_path):
    """With weights referenced the zoo's way and the figure reported as measured, ``eval_metrics`` passes; the same
    figure is refused when the README reports it as the paper's."""
    (tmp_path / "large_files.yml").write_text('large_files:\n  - path: "models/model.pt"\n    url: "https://x/m.pt"\n')
    measured = "## Performance\n\nMeasured with models/model.pt: mean Dice 0.8123.\n\n### Paper reports\n\n| 0.918 |\n"
    meta = {"eval_metrics": {"mean_dice": 0.8123}}
    assert eval_metrics_problems(meta, tmp_path, measured) == []
    as_paper = measured.replace("| 0.918 |", "| 0.8123 |")
    assert any("'Paper reports'" in p for p in eval_metrics_problems(meta, tmp_path, as_paper))
    assert any("provides no weights" in p for p in eval_metrics_problems(meta, tmp_path / "none", measured))

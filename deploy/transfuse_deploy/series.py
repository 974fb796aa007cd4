"""DICOM series selection as a radiologist makes it (no MONAI Deploy imports): by modality and description, image type,
orientation, slice count and geometry, with a documented tie-break and a log of every candidate.

A rules file uses MONAI Deploy's JSON layout (``{"selections": [{"name": ..., "conditions": {...}}]}``) with three
optional keys per selection:

``conditions``
    DICOM keyword -> regular expression searched in the series' value (``(?i)`` for case-insensitive).
``image_type``
    values that ``ImageType`` must all hold (e.g. ``["ORIGINAL", "PRIMARY"]``: no derived or secondary images).
``orientation``
    ``"axial"``, ``"sagittal"`` or ``"coronal"``: the plane whose normal is closest to the slice normal of
    ``ImageOrientationPatient``, within :data:`MAX_TILT_DEGREES` (oblique-axial prostate series pass, sagittal ones do
    not).
``min_instances``
    the fewest images a series may have (a localiser of 1-3 slices is no volume).

Every selected series must also carry the geometry a volume needs (``PixelSpacing``, ``ImagePositionPatient``,
``ImageOrientationPatient``) and evenly spaced slices (positions along the slice normal within
:data:`SPACING_TOLERANCE` of their median step: no gap, no duplicated slice). When several series match, the tie-break
picks, in this order: the most images, the largest matrix (rows x columns), the highest series number (the latest
repeat of a sequence). The choice is logged with every rejected series and the reason; when no series matches, the
error lists them all.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MAX_TILT_DEGREES",
    "SelectionRule",
    "SeriesInfo",
    "SeriesSelectionError",
    "group_series",
    "orientation_of",
    "read_rules",
    "select_series",
]

logger = logging.getLogger(__name__)

#: The largest angle between the slice normal and a plane's normal for the series to count as that plane.
MAX_TILT_DEGREES = 45.0
ORIENTATIONS = ("sagittal", "coronal", "axial")  # normal along patient x (L), y (P), z (S)
GEOMETRY = ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient")
#: The largest relative deviation of a step between slice positions from the median step.
SPACING_TOLERANCE = 0.1


class SeriesSelectionError(ValueError):
    """No series (or no single study) fits a selection; the message lists every series and why it was rejected."""


def orientation_of(image_orientation: Sequence[float] | None) -> str:
    """``"axial"``, ``"sagittal"``, ``"coronal"``, ``"oblique"`` (tilted more than :data:`MAX_TILT_DEGREES` from all
    three) or ``"unknown"`` (no ``ImageOrientationPatient``)."""
    if image_orientation is None or len(image_orientation) != 6:
        return "unknown"
    row, col = np.asarray(image_orientation[:3], float), np.asarray(image_orientation[3:], float)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm == 0:
        return "unknown"
    normal = np.abs(normal) / norm
    axis = int(np.argmax(normal))
    return ORIENTATIONS[axis] if normal[axis] >= math.cos(math.radians(MAX_TILT_DEGREES)) else "oblique"


@dataclass(frozen=True)
class SeriesInfo:
    """What selection looks at in one series (from its first image and its image count)."""

    uid: str
    study_uid: str
    number: int | None
    description: str
    modality: str
    image_type: tuple[str, ...]
    orientation: str
    instances: int
    rows: int
    columns: int
    missing_geometry: tuple[str, ...]
    spacing_problem: str | None = None
    attributes: dict = field(default_factory=dict, compare=False, repr=False)
    files: tuple[Path, ...] = field(default=(), compare=False, repr=False)

    @property
    def label(self) -> str:
        number = f"#{self.number} " if self.number is not None else ""
        return (f"{number}'{self.description}' ({self.modality}, {self.orientation}, {self.instances} image(s), "
                f"{self.rows}x{self.columns})")

    @classmethod
    def from_datasets(cls, datasets: Sequence[Any], files: Sequence[Path] = ()) -> SeriesInfo:
        first = datasets[0]
        number = first.get("SeriesNumber")
        iop = first.get("ImageOrientationPatient")
        return cls(
            uid=str(first.SeriesInstanceUID),
            study_uid=str(first.get("StudyInstanceUID", "")),
            number=int(number) if number not in (None, "") else None,
            description=str(first.get("SeriesDescription", "") or ""),
            modality=str(first.get("Modality", "") or ""),
            image_type=tuple(str(v).upper() for v in (first.get("ImageType") or [])),
            orientation=orientation_of([float(v) for v in iop] if iop else None),
            instances=len(datasets),
            rows=int(first.get("Rows", 0) or 0),
            columns=int(first.get("Columns", 0) or 0),
            missing_geometry=tuple(a for a in GEOMETRY if a not in first),
            spacing_problem=_spacing_problem(datasets),
            attributes={e.keyword: e.value for e in first if e.keyword and e.keyword != "PixelData"},
            files=tuple(files),
        )


def _spacing_problem(datasets: Sequence[Any]) -> str | None:
    """Why the slices of a series are not evenly spaced along their normal (a gap, a duplicated position), or None
    (one slice, or no geometry to tell)."""
    first = datasets[0]
    if len(datasets) < 2 or "ImageOrientationPatient" not in first:
        return None
    try:
        iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        positions = np.sort([float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in datasets])
    except (AttributeError, TypeError, ValueError):
        return "slices without ImagePositionPatient"
    steps = np.diff(positions)
    step = float(np.median(steps))
    if step <= 1e-6 or np.any(steps <= 1e-6):
        return "several slices at the same position"
    worst = float(np.max(np.abs(steps - step)))
    if worst > SPACING_TOLERANCE * step:
        return f"uneven slice spacing (steps of {steps.min():.2f} to {steps.max():.2f} mm around {step:.2f} mm)"
    return None


def group_series(datasets: Iterable[tuple[Path, Any]]) -> list[SeriesInfo]:
    """The image series of ``(file, dataset)`` pairs, grouped by ``SeriesInstanceUID`` (datasets that are no image,
    without ``Rows``, e.g. structured reports, left out; the pixels themselves are not needed), in series-number
    order."""
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path, ds in datasets:
        if ds is None or "Rows" not in ds or "SeriesInstanceUID" not in ds:
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    series = [SeriesInfo.from_datasets([d for _, d in items], [p for p, _ in items]) for items in groups.values()]
    return sorted(series, key=lambda s: (s.number if s.number is not None else math.inf, s.uid))


@dataclass(frozen=True)
class SelectionRule:
    """One selection of a rules file (see the module docstring)."""

    name: str
    conditions: dict[str, str] = field(default_factory=dict)
    image_type: tuple[str, ...] = ()
    orientation: str | None = None
    min_instances: int = 1

    @classmethod
    def from_json(cls, item: dict, source: str = "rules") -> SelectionRule:
        name = str(item.get("name", "")).strip()
        unknown = set(item) - {"name", "conditions", "image_type", "orientation", "min_instances"}
        if not name or unknown:
            raise ValueError(f"{source}: a selection needs a 'name' and may have 'conditions', 'image_type', "
                             f"'orientation', 'min_instances' (got {sorted(item)})")
        orientation = item.get("orientation")
        if orientation is not None and orientation not in ORIENTATIONS:
            raise ValueError(f"{source}: selection {name!r}: orientation {orientation!r} is not one of {ORIENTATIONS}")
        conditions = {str(k): str(v) for k, v in (item.get("conditions") or {}).items()}
        for key, pattern in conditions.items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{source}: selection {name!r}: {key} pattern {pattern!r}: {err}") from err
        image_type = tuple(str(v).upper() for v in item.get("image_type", ()))
        return cls(name=name, conditions=conditions, image_type=image_type, orientation=orientation,
                   min_instances=int(item.get("min_instances", 1)))

    def rejects(self, series: SeriesInfo) -> str | None:
        """Why ``series`` does not fit this rule, or None."""
        for key, pattern in self.conditions.items():
            value = series.attributes.get(key, "")
            if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__"):  # multi-valued (ImageType)
                value = "\\".join(map(str, value))
            value = str(value)
            if not re.search(pattern, value):
                return f"{key} {value!r} does not match {pattern!r}"
        missing = [v for v in self.image_type if v not in series.image_type]
        if missing:
            return f"ImageType {'/'.join(series.image_type) or 'missing'} lacks {'/'.join(missing)}"
        if self.orientation and series.orientation != self.orientation:
            return f"orientation {series.orientation}, expected {self.orientation}"
        if series.instances < self.min_instances:
            return f"{series.instances} image(s), fewer than {self.min_instances}"
        if series.missing_geometry:
            return f"has no {', '.join(series.missing_geometry)} (a volume needs its voxel spacing and slice geometry)"
        if series.spacing_problem:
            return series.spacing_problem
        return None


def read_rules(path: str | Path, names: Sequence[str]) -> dict[str, SelectionRule]:
    """The selections ``names`` of the rules file ``path``.

    Raises:
        ValueError: not a JSON file with a ``selections`` list, a malformed selection, or a name without selection.
    """
    try:
        selections = json.loads(Path(path).read_text())["selections"]
        if not isinstance(selections, list):
            raise TypeError("'selections' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"series selection rules {path}: not a JSON file with a 'selections' list ({err})") from err
    rules = {}
    for name in names:
        found = [s for s in selections if isinstance(s, dict) and str(s.get("name", "")).strip() == name]
        if len(found) != 1:
            raise ValueError(f"series selection rules {path} have {len(found)} selections named {name!r}, need one")
        rules[name] = SelectionRule.from_json(found[0], source=str(path))
    return rules


def _tie_break_key(series: SeriesInfo) -> tuple:
    return series.instances, series.rows * series.columns, series.number if series.number is not None else -1


def select_series(series: Sequence[SeriesInfo], rule: SelectionRule, rules_file: str = "the rules") -> SeriesInfo:
    """The series that ``rule`` selects among ``series`` (one study), logging the candidates, the tie-break and the
    rejected series with their reasons.

    Raises:
        SeriesSelectionError: no series fits; the message names the rule and lists every series with its reason.
    """
    rejected = [(s, rule.rejects(s)) for s in series]
    candidates = [s for s, reason in rejected if reason is None]
    rejected = [(s, reason) for s, reason in rejected if reason is not None]
    if not candidates:
        found = "; ".join(f"{s.label}: {reason}" for s, reason in rejected)
        raise SeriesSelectionError(
            f"no DICOM series matches the {rule.name!r} selection of {rules_file} ({_describe(rule)}); series found: "
            f"{found or 'none (no DICOM image series in the input)'}"
        )
    chosen = max(candidates, key=_tie_break_key)
    if len(candidates) > 1:
        others = ", ".join(s.label for s in candidates if s is not chosen)
        logger.info("%s series: %d candidates; the tie-break (most images, then largest matrix, then highest series "
                    "number) chose %s over %s", rule.name, len(candidates), chosen.label, others)
    logger.info("%s series: '%s' (%s) selected: %s", rule.name, chosen.description, chosen.uid, chosen.label)
    for s, reason in rejected:
        logger.info("%s series:   rejected %s: %s", rule.name, s.label, reason)
    return chosen


def _describe(rule: SelectionRule) -> str:
    parts = [json.dumps(rule.conditions)] if rule.conditions else []
    if rule.image_type:
        parts.append(f"ImageType {'/'.join(rule.image_type)}")
    if rule.orientation:
        parts.append(rule.orientation)
    if rule.min_instances > 1:
        parts.append(f"at least {rule.min_instances} images")
    return ", ".join(parts) or "any series"


def single_study(series: Sequence[SeriesInfo], input_path: str | Path) -> list[SeriesInfo]:
    """``series`` when they belong to one study.

    Raises:
        SeriesSelectionError: no image series, or series of several studies (one study per run).
    """
    studies = sorted({s.study_uid for s in series})
    if not series:
        raise SeriesSelectionError(f"{input_path}: no DICOM image series found")
    if len(studies) > 1:
        per_study = "; ".join(
            f"{uid}: {', '.join(s.label for s in series if s.study_uid == uid)}" for uid in studies
        )
        raise SeriesSelectionError(f"{input_path} holds {len(studies)} studies; give one study per run ({per_study})")
    return list(series)

"""MONAI Deploy operators shared by the applications under ``deploy/apps``.

Loaders put each input into a :class:`monai.deploy.core.Image` holding exactly the array and MONAI metadata that the
bundle's own ``LoadImage(d)`` gives (``MonaiBundleInferenceOperator`` drops ``LoadImage*``/``SaveImage*`` and runs the
rest of the bundle's ``preprocessing``, ``inferer`` and ``postprocessing``); writers save the prediction to the files
the application chose for each input before the graph started (:mod:`transfuse_deploy.cli`: never over or inside
the input). Every writer prepares all of its files first and moves them into place together
(``transfuse_monai.utils.atomic_path``): a failure leaves no partial output.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Fragment, Image, IOType, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.monai_bundle_inference_operator import IOMapping, MonaiBundleInferenceOperator

from transfuse_deploy.bundle import CONFIG_NAMES, BundleIO, load_with, reverses_indexing
from transfuse_deploy.volumes import monai_meta, resample_to_grid
from transfuse_monai.utils import atomic_path

__all__ = [
    "ALGORITHM",
    "bundle_inference_operator",
    "compose_file_pipeline",
    "write_outputs",
    "ImageFileLoaderOperator",
    "MaskWriterOperator",
    "RadiographSegWriterOperator",
    "SeriesByUidSelectorOperator",
    "MRChannelStackOperator",
    "VolumeWriterOperator",
]

logger = logging.getLogger(__name__)

#: Algorithm name and version written into DICOM SEG objects.
ALGORITHM = ("TransFuse", "transfuse-monai 0.1")
#: Colours (RGB) of the classes 1.. in the PNG previews.
PREVIEW_COLOURS = np.array([[230, 60, 60], [60, 200, 60], [70, 110, 240], [240, 200, 40], [200, 80, 220]], np.float32)


def write_outputs(writers: Mapping[Path, Callable[[Path], None]]) -> list[Path]:
    """Write several files all-or-nothing: each ``writer(tmp)`` writes a temporary file beside its target, and the
    targets appear only when every writer succeeded (else every temporary file is removed)."""
    with contextlib.ExitStack() as stack:
        temps = {target: stack.enter_context(atomic_path(target)) for target in writers}
        for target, write in writers.items():
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            write(Path(temps[target]))
    for target in writers:
        logger.info("saved %s", target)
    return list(writers)


def _label_array(seg: Any) -> tuple[np.ndarray, dict]:
    array = np.asarray(seg.asnumpy() if isinstance(seg, Image) else seg)
    return array, dict(seg.metadata()) if isinstance(seg, Image) else {}


def _check_classes(mask: np.ndarray, num_classes: int, source: Any) -> None:
    found = np.unique(mask)
    if not set(found.tolist()) <= set(range(num_classes)):
        raise ValueError(f"{source}: segmentation values {found.tolist()} are not class indices 0..{num_classes - 1}")


def _save_png(array: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        PILImage.fromarray(array).save(tmp, format="PNG")

    return write


def _save_dicom(ds: Any) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        ds.save_as(tmp, enforce_file_format=True)

    return write


def _save_nifti(array: np.ndarray, affine: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        import nibabel as nib

        nib.save(nib.Nifti1Image(array, affine), str(tmp))

    return write


# ---------------------------------------------------------------------------------------------------------- loading


class ImageFileLoaderOperator(Operator):
    """Loads one file per call with the bundle's ``LoadImage(d)`` transform and emits it as a
    :class:`monai.deploy.core.Image`: the array as loaded (channel last) and MONAI's metadata (incl.
    ``filename_or_obj``), i.e. what ``monai.bundle run`` passes to the rest of the preprocessing.

    Named output:
        image (configurable): the loaded image.
    """

    def __init__(self, fragment: Fragment, *args, files: Sequence[Path], loader: Any, output_name: str = "image",
                 **kwargs):
        self.files = list(files)
        self.loader = loader
        self.output_name = output_name
        self._next = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output(self.output_name)

    def compute(self, op_input, op_output, context):
        path = self.files[self._next]
        self._next += 1
        img = load_with(self.loader, path)
        meta = dict(getattr(img, "meta", {}))
        meta["filename_or_obj"] = str(path)
        data = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
        logger.info("loaded %s: array %s", path, tuple(data.shape))
        op_output.emit(Image(data, metadata=meta), self.output_name)


# ---------------------------------------------------------------------------------------------------------- 2D output


def _mask_2d(seg: Any, loader: Any, num_classes: int) -> tuple[np.ndarray, Path]:
    """The 2D class-index mask of a prediction, in the picture's ``(rows, columns)`` order, and its source file."""
    mask, meta = _label_array(seg)
    mask = np.squeeze(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D segmentation, got shape {mask.shape}")
    source = Path(str(meta.get("filename_or_obj", "mask")))
    if loader is not None and reverses_indexing(loader, source):  # the reader stored the picture (W, H)
        mask = mask.T
    _check_classes(mask, num_classes, source)
    return mask.astype(np.uint8), source


class MaskWriterOperator(Operator):
    """Saves a 2D segmentation to the file chosen for its input (``targets``: source file -> mask PNG) at the input
    picture's size (checked against the file), as the bundle's own inference writes it: uint8 0/255 for a binary
    bundle (``num_classes=2``), the class indices 0..K-1 for a multi-class one.

    Named input:
        pred (configurable): the segmentation from ``MonaiBundleInferenceOperator``.
    """

    def __init__(self, fragment: Fragment, *args, targets: Mapping[Path, Path], loader: Any = None,
                 input_name: str = "pred", num_classes: int = 2, **kwargs):
        self.targets = {Path(k).absolute(): Path(v) for k, v in targets.items()}
        self.loader = loader
        self.num_classes = int(num_classes)
        self.input_name = input_name
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input(self.input_name)

    def compute(self, op_input, op_output, context):
        mask, source = _mask_2d(op_input.receive(self.input_name), self.loader, self.num_classes)
        with PILImage.open(source) as im:
            width, height = im.size
        if mask.shape != (height, width):
            raise ValueError(f"mask shape {mask.shape} does not match {source} ({height}x{width} pixels)")
        out = mask * np.uint8(255 if self.num_classes == 2 else 1)
        write_outputs({_target(self.targets, source): _save_png(out)})


def _target(targets: Mapping[Path, Any], source: Path) -> Any:
    """The output(s) chosen for ``source`` before the graph started."""
    try:
        return targets[Path(source).absolute()]
    except KeyError:
        raise ValueError(f"no output was planned for {source}") from None


def preview(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """An RGB uint8 picture of ``grey`` (min-max scaled) with the classes of ``mask`` blended in colour."""
    grey = np.asarray(grey, dtype=np.float32)
    lo, hi = float(grey.min()), float(grey.max())
    base = (grey - lo) / (hi - lo) if hi > lo else np.zeros_like(grey)
    rgb = np.repeat(base[..., None] * 255.0, 3, axis=-1)
    for value in range(1, int(mask.max()) + 1):
        sel = mask == value
        rgb[sel] = 0.55 * rgb[sel] + 0.45 * PREVIEW_COLOURS[(value - 1) % len(PREVIEW_COLOURS)]
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


class RadiographSegWriterOperator(Operator):
    """Saves the segmentation of a DICOM radiograph to the two files chosen for it (``targets``: source file ->
    ``(SEG path, preview path)``): a DICOM SEG referencing the source instance, one segment per class with its SNOMED
    CT code, the source's pixel spacing and the AI-generated marking (see :mod:`transfuse_deploy.seg`), and the
    radiograph with the classes in colour; both or neither.

    Named input:
        pred (configurable): the segmentation from ``MonaiBundleInferenceOperator`` (source file in its metadata).
    """

    def __init__(self, fragment: Fragment, *args, targets: Mapping[Path, tuple[Path, Path]],
                 class_names: Sequence[str], loader: Any, input_name: str = "pred", **kwargs):
        self.targets = {Path(k).absolute(): (Path(a), Path(b)) for k, (a, b) in targets.items()}
        self.class_names = list(class_names)
        self.loader = loader
        self.input_name = input_name
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input(self.input_name)

    def compute(self, op_input, op_output, context):
        import pydicom

        from transfuse_deploy.seg import build_segmentation
        from transfuse_monai.data.readers import read_radiograph

        mask, source = _mask_2d(op_input.receive(self.input_name), self.loader, len(self.class_names))
        seg_path, preview_path = _target(self.targets, source)
        ds = pydicom.dcmread(source)
        seg = build_segmentation([ds], mask[None], self.class_names, *ALGORITHM,
                                 series_description=f"{ALGORITHM[0]} hip segmentation")
        grey, _ = read_radiograph(source)  # the pixels the bundle sees (MONOCHROME1 inverted, windowed)
        write_outputs({seg_path: _save_dicom(seg), preview_path: _save_png(preview(grey, mask))})


# ---------------------------------------------------------------------------------------------------------- DICOM MR


class SeriesByUidSelectorOperator(DICOMSeriesSelectorOperator):
    """``DICOMSeriesSelectorOperator`` that emits the series the application selected before the graph started
    (:func:`transfuse_deploy.series.select_series`, by its rules, with the tie-break and the log), found by its
    ``SeriesInstanceUID`` in the loaded study.

    Args:
        series_uid: the selected series.
        what: the selection's name (e.g. ``"T2"``).
    """

    def __init__(self, fragment: Fragment, *args, series_uid: str, what: str, **kwargs):
        self.series_uid = str(series_uid)
        self.what = what
        super().__init__(fragment, *args, **kwargs)

    def filter(self, selection_rules, dicom_study_list, all_matched=False, sort_by_sop_instance_count=False):
        for study in dicom_study_list or []:
            for series in study.get_all_series():
                if str(series.SeriesInstanceUID) == self.series_uid:
                    selected = StudySelectedSeries(study)
                    selected.add_selected_series(SelectedSeries(self.what, series, None))
                    return [selected]
        raise ValueError(f"the {self.what} series {self.series_uid} selected before the run is not in the loaded study")


def _volume_whd(img: Image) -> tuple[np.ndarray, np.ndarray]:
    """``(array (W, H, D), RAS affine)`` of a volume from ``DICOMSeriesToVolumeOperator`` (array ``(D, H, W)``),
    the layout MONAI's readers give (what ``MonaiBundleInferenceOperator`` does with a DICOM volume)."""
    meta = img.metadata()
    return np.swapaxes(img.asnumpy(), 0, 2).astype(np.float32), np.asarray(meta["nifti_affine_transform"], np.float64)


class MRChannelStackOperator(Operator):
    """Stacks the T2 volume and the ADC volume resampled onto the T2 grid (:func:`resample_to_grid`) as the bundle's
    channels (channel last, T2 first), with the T2 geometry as MONAI metadata; a T2-only bundle gets T2 alone.

    Named inputs:
        t2, adc (the latter only when ``channels`` is 2): volumes from ``DICOMSeriesToVolumeOperator``.
    Named output:
        image (configurable): the stacked volume.
    """

    def __init__(self, fragment: Fragment, *args, channels: int = 2, output_name: str = "image", **kwargs):
        if channels not in (1, 2):
            raise ValueError(f"the prostate application takes T2 (1 channel) or T2 + ADC (2), not {channels} channels")
        self.channels = int(channels)
        self.output_name = output_name
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("t2")
        if self.channels == 2:
            spec.input("adc")
        spec.output(self.output_name)

    def compute(self, op_input, op_output, context):
        t2_img = op_input.receive("t2")
        t2, affine = _volume_whd(t2_img)
        volumes = [t2]
        if self.channels == 2:
            adc, adc_affine = _volume_whd(op_input.receive("adc"))
            volumes.append(resample_to_grid(adc, adc_affine, affine, t2.shape))
        data = np.stack(volumes, axis=-1)
        uid = t2_img.metadata().get("SeriesInstanceUID", "t2")
        logger.info("input volume %s (T2 grid %s)", data.shape, t2.shape)
        op_output.emit(Image(data, metadata=monai_meta(affine, t2.shape, str(uid), channel_last=True)),
                       self.output_name)


class VolumeWriterOperator(Operator):
    """Saves a volume segmentation as a NIfTI (uint8 labels on the input's grid and affine, as the bundle's own
    inference writes it) and, given the source DICOM series, a DICOM SEG on that series' instances (frame ``k`` on
    slice ``k``), all or nothing, to the files chosen before the graph started.

    Args:
        targets: NIfTI input: source file -> NIfTI path. DICOM input (``dicom``): ``{"nifti": path, "seg": path}``.

    Named inputs:
        pred (configurable): the segmentation from ``MonaiBundleInferenceOperator`` (array ``(D, H, W)``).
        study_selected_series_list (when ``dicom`` is true): the selection holding the source series (T2).
    """

    def __init__(self, fragment: Fragment, *args, targets: Mapping, class_names: Sequence[str],
                 input_name: str = "pred", dicom: bool = False, **kwargs):
        self.targets = dict(targets) if dicom else {Path(k).absolute(): Path(v) for k, v in targets.items()}
        self.class_names = list(class_names)
        self.input_name = input_name
        self.dicom = bool(dicom)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input(self.input_name)
        if self.dicom:
            spec.input("study_selected_series_list")

    def compute(self, op_input, op_output, context):
        labels, meta = _label_array(op_input.receive(self.input_name))
        if labels.ndim != 3:
            raise ValueError(f"expected a 3D segmentation, got shape {labels.shape}")
        _check_classes(labels, len(self.class_names), meta.get("filename_or_obj", "volume"))
        labels_whd = np.ascontiguousarray(np.swapaxes(labels, 0, 2)).astype(np.uint8)  # back to the input's layout
        affine = np.asarray(meta.get("original_affine", meta.get("affine")), dtype=np.float64)
        writers: dict[Path, Callable[[Path], None]] = {}
        if self.dicom:
            from transfuse_deploy.seg import build_segmentation

            series = op_input.receive("study_selected_series_list")[0].selected_series[0].series
            sources = [inst.get_native_sop_instance() for inst in series.get_sop_instances()]
            seg = build_segmentation(sources, labels.astype(np.uint8), self.class_names, *ALGORITHM,
                                     series_description=f"{ALGORITHM[0]} prostate zones")
            writers[Path(self.targets["seg"])] = _save_dicom(seg)
            nifti = Path(self.targets["nifti"])
        else:
            nifti = _target(self.targets, Path(str(meta.get("filename_or_obj", "volume"))))
        writers[nifti] = _save_nifti(labels_whd, affine)
        write_outputs(writers)


def bundle_inference_operator(
    app: Application, app_context: AppContext, model_path: Path, bundle: BundleIO, name: str = "bundle_inference"
) -> MonaiBundleInferenceOperator:
    """The SDK's ``MonaiBundleInferenceOperator`` on ``model_path``: the bundle's embedded preprocessing, inferer and
    postprocessing between its in-memory input and output (``bundle.input_name`` -> ``bundle.output_name``)."""
    return MonaiBundleInferenceOperator(
        app, app_context=app_context, bundle_path=model_path, bundle_config_names=CONFIG_NAMES,
        input_mapping=[IOMapping(bundle.input_name, Image, IOType.IN_MEMORY)],
        output_mapping=[IOMapping(bundle.output_name, Image, IOType.IN_MEMORY)],
        name=name,
    )


def compose_file_pipeline(
    app: Application,
    app_context: AppContext,
    model_path: Path,
    bundle: BundleIO,
    files: Sequence[Path],
    writer_op: Operator,
    loader_name: str = "image_loader",
) -> None:
    """The graph of the file-based applications: each of ``files`` read with the bundle's own ``LoadImage`` ->
    :func:`bundle_inference_operator` -> ``writer_op`` (which takes ``bundle.output_name``)."""
    loader_op = ImageFileLoaderOperator(
        app, CountCondition(app, len(files)), files=files, loader=bundle.loader, output_name=bundle.input_name,
        name=loader_name,
    )
    bundle_op = bundle_inference_operator(app, app_context, model_path, bundle)
    app.add_flow(loader_op, bundle_op, {(bundle.input_name, bundle.input_name)})
    app.add_flow(bundle_op, writer_op, {(bundle.output_name, bundle.output_name)})

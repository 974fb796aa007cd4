"""MONAI Deploy application: prostate MR (DICOM study or NIfTI) -> prostate bundle -> DICOM SEG + NIfTI.

    python deploy/apps/prostate_mr -i study_folder|volume.nii.gz -o out_dir -m model.ts [--overwrite]

DICOM input (a folder holding one study as a PACS or CD exports it: nested folders, files with or without ``.dcm``;
``DICOMDIR`` skipped): before the graph starts, every file is read and decoded (a file that is not DICOM, truncated,
or in a transfer syntax without a decoder stops the run, named), and the T2 and ADC series are selected by the rules
of ``series_rules.json`` (beside this file; ``TRANSFUSE_SERIES_RULES`` names another file): description, image type,
axial orientation, slice count and geometry, with a logged tie-break when several series fit
(:mod:`transfuse_deploy.series`). ``DICOMDataLoaderOperator`` then loads the study, ``DICOMSeriesToVolumeOperator``
converts the selected series, the ADC volume is resampled onto the T2 grid and stacked after T2 as the bundle's two
channels (a T2-only export, ``in_channels`` 1, takes T2 alone), and ``MonaiBundleInferenceOperator`` runs the bundle's
preprocessing, ``SliceInferer`` and postprocessing. Output: ``<T2 SeriesInstanceUID>_seg.dcm``, a DICOM SEG on the
T2 series (one frame per T2 slice; segments PZ and TZ with SNOMED CT codes), and ``<T2 SeriesInstanceUID>.nii.gz``
(labels on the T2 grid, RAS affine).

NIfTI input (a 4D T2 + ADC volume, channel last as in MSD Task05, or a 3D T2 volume; one file or a folder): read with
the bundle's own ``LoadImaged``, written as ``<stem>.nii.gz`` like the bundle's own inference (same shape, affine and
labels).

The output folder may not be, hold or lie inside the input; outputs that exist are skipped unless ``--overwrite``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from transfuse_deploy.bundle import list_files
from transfuse_deploy.cli import Invocation, run_app
from transfuse_deploy.inputs import check_nifti, check_output_folder, find_dicom_files, pending, read_dicom
from transfuse_deploy.operators import (
    MRChannelStackOperator,
    SeriesByUidSelectorOperator,
    VolumeWriterOperator,
    bundle_inference_operator,
    compose_file_pipeline,
)
from transfuse_deploy.series import group_series, read_rules, select_series, single_study
from transfuse_monai.data.formats import NIFTI_EXTENSIONS, file_stem

RULES_FILE = Path(__file__).resolve().parent / "series_rules.json"
#: Selection names in the rules file, in the bundle's channel order.
CHANNELS = ("T2", "ADC")

# run as a script this module is "app" or "__main__", so it is named after its application
logger = logging.getLogger("transfuse_deploy.prostate_mr")


def is_nifti_input(path: Path) -> bool:
    """A NIfTI file, or a folder holding NIfTI files (else the input is a DICOM study folder)."""
    if path.is_file():
        return path.name.lower().endswith(NIFTI_EXTENSIONS)
    return path.is_dir() and any(p.name.lower().endswith(NIFTI_EXTENSIONS) for p in path.iterdir())


@dataclass
class Plan:
    """What the graph runs: NIfTI files with their outputs, or the selected DICOM series with theirs."""

    nifti: dict[Path, Path] | None = None
    series_uids: dict[str, str] | None = None  # selection name -> SeriesInstanceUID
    dicom_targets: dict[str, Path] | None = None  # "seg", "nifti"


def prepare(run: Invocation) -> Plan | None:
    """Find, read and check every input, select the series and choose the outputs (see the module docstring)."""
    channels = run.bundle.in_channels
    if channels not in (1, 2):
        raise ValueError(f"{run.model_path}: the bundle takes {channels} channels; this application gives T2 (1) or "
                         "T2 + ADC (2)")
    needed = CHANNELS[:channels]
    logger.info("model %s takes %d channel(s): %s", run.model_path, channels, " + ".join(needed))
    if is_nifti_input(run.input_path):
        files = list_files(run.input_path, NIFTI_EXTENSIONS, what="NIfTI volume")
        for path in files:
            check_nifti(path)
        out = check_output_folder(run.output_folder, run.input_path, files)
        targets = {f.absolute(): out / f"{file_stem(f)}.nii.gz" for f in files}
        todo = pending({f: [t] for f, t in targets.items()}, run.overwrite)
        logger.info("%d NIfTI volume(s), %d to segment", len(files), len(todo))
        return Plan(nifti={f: targets[f] for f in todo}) if todo else None

    if not run.input_path.is_dir():
        raise ValueError(f"input {run.input_path}: expected a DICOM study folder or a NIfTI volume (.nii, .nii.gz)")
    files = find_dicom_files(run.input_path)
    out = check_output_folder(run.output_folder, run.input_path, files)
    logger.info("reading and decoding %d DICOM file(s) under %s", len(files), run.input_path)
    series = single_study(group_series((f, read_dicom(f, keep_pixels=False)) for f in files), run.input_path)
    rules_file = Path(os.environ.get("TRANSFUSE_SERIES_RULES") or RULES_FILE)
    rules = read_rules(rules_file, needed)
    chosen = {name: select_series(series, rules[name], str(rules_file)) for name in needed}
    t2 = chosen[CHANNELS[0]].uid
    targets = {"seg": out / f"{t2}_seg.dcm", "nifti": out / f"{t2}.nii.gz"}
    if not pending({t2: list(targets.values())}, run.overwrite):
        return None
    return Plan(series_uids={name: s.uid for name, s in chosen.items()}, dicom_targets=targets)


class ProstateMRApp(Application):
    """T2 (+ ADC) MR -> prostate bundle (TorchScript with embedded configs) -> DICOM SEG (PZ, TZ) + NIfTI.

    Composed from ``self.invocation`` and ``self.plan``, set by :func:`~transfuse_deploy.cli.run_app` after every
    input was checked.
    """

    def compose(self):
        run: Invocation = self.invocation
        plan: Plan = self.plan
        app_context = Application.init_app_context(self.argv)
        bundle = run.bundle
        if plan.nifti is not None:
            writer_op = VolumeWriterOperator(self, targets=plan.nifti, class_names=bundle.class_names,
                                             input_name=bundle.output_name, name="volume_writer")
            compose_file_pipeline(self, app_context, run.model_path, bundle, list(plan.nifti), writer_op,
                                  loader_name="volume_loader")
            return

        study_loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=run.input_path,
                                               name="dicom_loader")
        stack_op = MRChannelStackOperator(self, channels=len(plan.series_uids), output_name=bundle.input_name,
                                          name="stack")
        writer_op = VolumeWriterOperator(self, targets=plan.dicom_targets, class_names=bundle.class_names,
                                         input_name=bundle.output_name, dicom=True, name="seg_writer")
        series_port = "study_selected_series_list"
        for name, uid in plan.series_uids.items():
            selector = SeriesByUidSelectorOperator(self, series_uid=uid, what=name, name=f"select_{name}")
            to_volume = DICOMSeriesToVolumeOperator(self, name=f"volume_{name}")
            self.add_flow(study_loader, selector, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(selector, to_volume, {(series_port, series_port)})
            self.add_flow(to_volume, stack_op, {("image", name.lower())})
            if name == CHANNELS[0]:
                self.add_flow(selector, writer_op, {(series_port, series_port)})
        bundle_op = bundle_inference_operator(self, app_context, run.model_path, bundle)
        self.add_flow(stack_op, bundle_op, {(bundle.input_name, bundle.input_name)})
        self.add_flow(bundle_op, writer_op, {(bundle.output_name, bundle.output_name)})


def main(argv: list[str] | None = None) -> int:
    return run_app(ProstateMRApp, prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())

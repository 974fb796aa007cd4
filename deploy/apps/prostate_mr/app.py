"""MONAI Deploy application: prostate MR (DICOM study or NIfTI) -> prostate bundle -> DICOM SEG + NIfTI.

    python deploy/apps/prostate_mr -i study_folder|volume.nii.gz -o out_dir -m model.ts

DICOM input (a folder holding one study, any number of series): ``DICOMDataLoaderOperator`` reads it,
``DICOMSeriesSelectorOperator`` picks the T2 and the ADC series by the rules of ``series_rules.json`` (beside this
file; ``TRANSFUSE_SERIES_RULES`` names another file), ``DICOMSeriesToVolumeOperator`` converts each, the ADC volume is
resampled onto the T2 grid and stacked after T2 as the bundle's two channels (a T2-only bundle, ``in_channels`` 1 in
the embedded ``inference.json``, takes T2 alone). ``MonaiBundleInferenceOperator`` runs the bundle's preprocessing,
``SliceInferer`` and postprocessing. Output: ``<T2 SeriesInstanceUID>_seg.dcm``, a DICOM SEG on the T2 series (one
frame per T2 slice; segments PZ and TZ with SNOMED CT codes), and ``<T2 SeriesInstanceUID>.nii.gz`` (labels on the T2
grid, RAS affine).

NIfTI input (a 4D T2 + ADC volume, channel last as in MSD Task05, or a 3D T2 volume; one file or a folder): read with
the bundle's own ``LoadImaged``, written as ``<stem>.nii.gz`` like the bundle's own inference (same shape, affine and
labels).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from transfuse_deploy.bundle import BundleIO, list_files, resolve_model
from transfuse_deploy.operators import (
    MRChannelStackOperator,
    RequiredSeriesSelectorOperator,
    VolumeWriterOperator,
    bundle_inference_operator,
    compose_file_pipeline,
    read_selection_rules,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
RULES_FILE = Path(__file__).resolve().parent / "series_rules.json"
#: Selection names in the rules file, in the bundle's channel order.
CHANNELS = ("T2", "ADC")

logger = logging.getLogger("transfuse_deploy.prostate_mr")


def is_nifti_input(path: Path) -> bool:
    """A NIfTI file, or a folder holding NIfTI files (else the input is a DICOM study folder)."""
    if path.is_file():
        return path.name.lower().endswith(NIFTI_SUFFIXES)
    return path.is_dir() and any(p.name.lower().endswith(NIFTI_SUFFIXES) for p in path.iterdir())


class ProstateMRApp(Application):
    """T2 (+ ADC) MR -> prostate bundle (TorchScript with embedded configs) -> DICOM SEG (PZ, TZ) + NIfTI."""

    def compose(self):
        app_context: AppContext = Application.init_app_context(self.argv)
        model_path = resolve_model(app_context.model_path)
        input_path, output_folder = Path(app_context.input_path), Path(app_context.output_path)
        if not input_path.exists():
            raise FileNotFoundError(f"input path {input_path} does not exist")
        bundle = BundleIO(model_path)
        channels = bundle.in_channels
        if channels not in (1, 2):
            raise ValueError(f"{model_path}: the bundle takes {channels} channels; this application gives T2 (1) or "
                             "T2 + ADC (2)")
        if is_nifti_input(input_path):
            files = list_files(input_path, NIFTI_SUFFIXES, what="NIfTI volume")
            logger.info("model %s (%d channel(s)), %d NIfTI volume(s)", model_path, channels, len(files))
            writer_op = VolumeWriterOperator(
                self, output_folder=output_folder, class_names=bundle.class_names, input_name=bundle.output_name,
                name="volume_writer",
            )
            compose_file_pipeline(self, app_context, model_path, bundle, files, writer_op,
                                  loader_name="volume_loader")
            return

        if not input_path.is_dir():
            raise ValueError(f"input {input_path}: expected a DICOM study folder or a NIfTI volume (.nii, .nii.gz)")
        rules_file = Path(os.environ.get("TRANSFUSE_SERIES_RULES") or RULES_FILE)
        rules = read_selection_rules(rules_file, CHANNELS[:channels])
        logger.info("model %s (%d channel(s): %s), DICOM study %s", model_path, channels,
                    " + ".join(CHANNELS[:channels]), input_path)
        study_loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_path,
                                               name="dicom_loader")
        stack_op = MRChannelStackOperator(self, channels=channels, output_name=bundle.input_name, name="stack")
        writer_op = VolumeWriterOperator(
            self, output_folder=output_folder, class_names=bundle.class_names, input_name=bundle.output_name,
            dicom=True, name="seg_writer",
        )
        series_port = "study_selected_series_list"
        for name in CHANNELS[:channels]:
            selector = RequiredSeriesSelectorOperator(self, rules=rules[name], what=name, rules_file=str(rules_file),
                                                      name=f"select_{name}")
            to_volume = DICOMSeriesToVolumeOperator(self, name=f"volume_{name}")
            self.add_flow(study_loader, selector, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(selector, to_volume, {(series_port, series_port)})
            self.add_flow(to_volume, stack_op, {("image", name.lower())})
            if name == CHANNELS[0]:
                self.add_flow(selector, writer_op, {(series_port, series_port)})
        bundle_op = bundle_inference_operator(self, app_context, model_path, bundle)
        self.add_flow(stack_op, bundle_op, {(bundle.input_name, bundle.input_name)})
        self.add_flow(bundle_op, writer_op, {(bundle.output_name, bundle.output_name)})


def main(argv: list[str] | None = None) -> None:
    app = ProstateMRApp(argv) if argv else ProstateMRApp()
    app.run()


if __name__ == "__main__":
    main()

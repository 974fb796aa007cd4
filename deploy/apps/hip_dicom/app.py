"""MONAI Deploy application: hip radiograph (DICOM DX / CR) -> hip bundle -> DICOM SEG + PNG preview.

    python deploy/apps/hip_dicom -i radiograph.dcm|folder -o out_dir -m model.ts

Input: single-frame DICOM DX or CR radiographs (MONOCHROME1 or MONOCHROME2) with ``PixelSpacing`` or
``ImagerPixelSpacing``, one file or a folder of them. Each is read with the bundle's own loader
(``transfuse_monai.tasks.hip.RadiographReader``: modality LUT, VOI LUT, MONOCHROME1 inverted), so the network sees the
pixels of ``monai.bundle run``. Output per radiograph: ``<stem>_seg.dcm``, a DICOM SEG referencing the source
instance with one segment per class (pelvis, left femur, right femur; SNOMED CT codes, the patient's sides), and
``<stem>_preview.png``. Every file is checked before the graph runs (modality, frames, spacing): a bad input stops the
application with a message naming the file, before anything is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import AppContext, Application

from transfuse_deploy.bundle import BundleIO, list_files, resolve_model
from transfuse_deploy.operators import RadiographSegWriterOperator, compose_file_pipeline

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
MODALITIES = ("DX", "CR")

logger = logging.getLogger("transfuse_deploy.hip_dicom")


def check_radiograph(path: Path) -> None:
    """Raise a ValueError naming ``path`` unless it is a single-frame grey DX / CR radiograph with a pixel spacing."""
    import pydicom

    from transfuse_monai.tasks.hip import probe_radiograph

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for non-DICOM files
        raise ValueError(f"{path} is not a DICOM file: {err}") from err
    modality = str(ds.get("Modality", ""))
    if modality not in MODALITIES:
        raise ValueError(f"{path}: modality {modality or 'missing'!r}, expected a radiograph "
                         f"({' or '.join(MODALITIES)})")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"{path}: expected one grey frame, found {ds.get('NumberOfFrames', 1)} frame(s) of "
                         f"{ds.get('SamplesPerPixel', 1)} sample(s) per pixel")
    _, spacing, _ = probe_radiograph(path)
    if spacing is None:
        raise ValueError(f"{path}: no pixel spacing (PixelSpacing or ImagerPixelSpacing): the hip segmentation is "
                         "reported in millimetres and never assumes 1 mm per pixel")


class HipDicomApp(Application):
    """DICOM radiograph(s) -> hip bundle (TorchScript with embedded configs) -> DICOM SEG + PNG preview."""

    def compose(self):
        app_context: AppContext = Application.init_app_context(self.argv)
        model_path = resolve_model(app_context.model_path)
        files = list_files(app_context.input_path, DICOM_SUFFIXES, what="DICOM file")
        for path in files:
            check_radiograph(path)
        output_folder = Path(app_context.output_path)
        bundle = BundleIO(model_path)
        logger.info("model %s, %d radiograph(s), output %s", model_path, len(files), output_folder)

        writer_op = RadiographSegWriterOperator(
            self, output_folder=output_folder, class_names=bundle.class_names, loader=bundle.loader,
            input_name=bundle.output_name, name="seg_writer",
        )
        compose_file_pipeline(self, app_context, model_path, bundle, files, writer_op,
                              loader_name="radiograph_loader")

def main(argv: list[str] | None = None) -> None:
    app = HipDicomApp(argv) if argv else HipDicomApp()
    app.run()


if __name__ == "__main__":
    main()

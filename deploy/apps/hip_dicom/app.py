"""MONAI Deploy application: hip radiograph (DICOM DX / CR) -> hip bundle -> DICOM SEG + PNG preview.

    python deploy/apps/hip_dicom -i radiograph|folder -o out_dir -m model.ts [--overwrite]

Input: single-frame DICOM DX or CR radiographs (MONOCHROME1 or MONOCHROME2) with ``PixelSpacing`` or
``ImagerPixelSpacing``: one file, or a folder as a PACS or CD exports it (searched recursively; files with or without
``.dcm``, recognised by the DICOM preamble; ``DICOMDIR`` skipped). Before the graph starts every file is read, its
pixels decoded (compressed transfer syntaxes through pydicom's installed decoders, else refused naming the packages)
and checked (modality, frames, spacing): a bad input stops the application with a message naming the file, before
anything is written. Each radiograph is then read with the bundle's own loader
(``transfuse_monai.data.RadiographReader``: modality LUT, VOI LUT, MONOCHROME1 inverted), so the network sees
the pixels of ``monai.bundle run``. Output per radiograph, in the input's sub-folder: ``<name>_seg.dcm``, a DICOM SEG
referencing the source instance with one segment per class (pelvis, left femur, right femur; SNOMED CT codes, the
patient's sides), and ``<name>_preview.png``. Outputs that exist are skipped unless ``--overwrite``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Application

from transfuse_deploy.cli import Invocation, run_app
from transfuse_deploy.inputs import check_output_folder, find_dicom_files, pending, read_dicom
from transfuse_deploy.operators import RadiographSegWriterOperator, compose_file_pipeline
from transfuse_monai.data.formats import file_stem

MODALITIES = ("DX", "CR")

# run as a script this module is "app" or "__main__", so it is named after its application
logger = logging.getLogger("transfuse_deploy.hip_dicom")


def check_radiograph(path: Path) -> None:
    """Raise a ValueError naming ``path`` unless it is a decodable single-frame grey DX / CR radiograph with a pixel
    spacing."""
    from transfuse_monai.data.readers import probe_radiograph

    ds = read_dicom(path)  # read and its pixels decoded once: truncated files and missing decoders are reported here
    if ds is None:
        raise ValueError(f"{path} is a DICOMDIR, not a radiograph")
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


def prepare(run: Invocation) -> dict[Path, tuple[Path, Path]] | None:
    """Every radiograph checked, with its two outputs (source file -> (SEG, preview)); None when all exist."""
    files = [f.absolute() for f in find_dicom_files(run.input_path)]
    for path in files:
        check_radiograph(path)
    out = check_output_folder(run.output_folder, run.input_path, files)
    root = run.input_path if run.input_path.is_dir() else run.input_path.parent
    targets = {}
    for path in files:
        folder = out / path.parent.relative_to(root)
        targets[path] = (folder / f"{file_stem(path)}_seg.dcm", folder / f"{file_stem(path)}_preview.png")
    todo = pending(targets, run.overwrite)
    logger.info("model %s, %d radiograph(s), %d to segment, output %s", run.model_path, len(files), len(todo), out)
    return {f: targets[f] for f in todo} or None


class HipDicomApp(Application):
    """DICOM radiograph(s) -> hip bundle (TorchScript with embedded configs) -> DICOM SEG + PNG preview."""

    def compose(self):
        run: Invocation = self.invocation
        app_context = Application.init_app_context(self.argv)
        writer_op = RadiographSegWriterOperator(
            self, targets=self.plan, class_names=run.bundle.class_names, loader=run.bundle.loader,
            input_name=run.bundle.output_name, name="seg_writer",
        )
        compose_file_pipeline(self, app_context, run.model_path, run.bundle, list(self.plan), writer_op,
                              loader_name="radiograph_loader")


def main(argv: list[str] | None = None) -> int:
    return run_app(HipDicomApp, prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())

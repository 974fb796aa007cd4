"""MONAI Deploy DICOM applications: DICOM in, DICOM SEG out, equal to the bundle's own inference.

* ``deploy/apps/hip_dicom``: generated DX radiographs (MONOCHROME2 with rescale, MONOCHROME1; ImagerPixelSpacing)
  -> DICOM SEG (pelvis, left femur, right femur) referencing the source instance + PNG preview. The SEG, read back
  with highdicom, must equal the hip bundle's ``monai.bundle run`` mask of the same DICOM file.
* ``deploy/apps/prostate_mr``: a generated MR study (T2 and ADC series on different grids, plus a DWI series and a
  T2 localiser as distractors for the series-selection rules) -> DICOM SEG (PZ, TZ) on the T2 series + NIfTI. Both
  must equal the prostate bundle's ``monai.bundle run`` on a NIfTI of the same pixels (T2, and ADC resampled onto the
  T2 grid with the application's own resampling function), and the SEG's frames must lie on the T2 slices (frame of
  reference, image position and orientation).
* bad inputs (no matching series, wrong modality, missing spacing) stop the application with a clear message and
  no output file.

Runs in the isolated MONAI Deploy environment like ``test_deploy.py`` (skipped without it, failing under CI).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_deploy import REPO, Process, bundle_run, deploy_app, run_all, small_bundle

IMAGE_HW = (72, 96)
T2_SIZE, T2_SPACING = (40, 48, 6), (0.6, 0.6, 3.6)  # (x = columns, y = rows, slices), mm
ADC_SIZE, ADC_SPACING = (20, 24, 5), (1.2, 1.2, 4.0)  # another grid

# Read a SEG back with highdicom (deploy environment): labels per source instance and the geometry of each frame.
READ_SEG = r"""
import json, sys
import highdicom as hd, numpy as np, pydicom
seg_path, sources, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
seg = hd.seg.segread(seg_path)
uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources]
labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                           ignore_spatial_locations=True)
frames = []
for item in seg.PerFrameFunctionalGroupsSequence:
    pos = item.get("PlanePositionSequence")
    src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    frames.append({"source": str(src), "position": [float(v) for v in pos[0].ImagePositionPatient] if pos else None})
shared = seg.SharedFunctionalGroupsSequence[0]
orient = shared.get("PlaneOrientationSequence")
measures = shared.get("PixelMeasuresSequence")
plain = pydicom.dcmread(seg_path)  # pydicom alone reads it too
plain_pixels = list(plain.pixel_array.shape)
segments = [{"number": int(s.SegmentNumber), "label": str(s.SegmentLabel),
             "type": str(s.SegmentedPropertyTypeCodeSequence[0].CodeValue),
             "modifier": [str(m.CodeValue) for m in s.get("SegmentedPropertyTypeModifierCodeSequence", [])]}
            for s in seg.SegmentSequence]
np.save(out + ".npy", np.asarray(labels).astype(np.uint8))
json.dump({"modality": str(seg.Modality), "sop_class": str(seg.SOPClassUID), "uids": uids, "frames": frames,
           "frame_of_reference": str(seg.get("FrameOfReferenceUID", "")),
           "orientation": [float(v) for v in orient[0].ImageOrientationPatient] if orient else None,
           "referenced_series": [str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence],
           "pixel_spacing": [float(v) for v in measures[0].PixelSpacing] if measures else None,
           "slice_thickness": [bool(measures) and "SliceThickness" in measures[0],
                               float(measures[0].SliceThickness) if measures and measures[0].get("SliceThickness")
                               not in (None, "") else None],
           "content_label": str(seg.ContentLabel), "content_description": str(seg.get("ContentDescription", "")),
           "series_description": str(seg.SeriesDescription), "pydicom_pixels": plain_pixels,
           "segments": segments}, open(out + ".json", "w"))
"""


def read_seg(deploy_python: Path, seg: Path, sources: list[Path], out: Path) -> tuple[np.ndarray, dict]:
    """The SEG's label map ``(len(sources), rows, cols)`` (segment numbers) and its description."""
    proc = Process("read SEG", [deploy_python, "-c", READ_SEG, seg, json.dumps([str(p) for p in sources]), out],
                   out.parent, out.parent / f"{out.name}.log")
    run_all([proc])
    return np.load(str(out) + ".npy"), json.loads(Path(str(out) + ".json").read_text())


def output_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ------------------------------------------------------------------------------------------------------- hip DX


@pytest.fixture(scope="module")
def hip(tmp_path_factory):
    """A small hip bundle export and two DX radiographs of one generated hip: MONOCHROME2 (12 bits, rescale slope 2,
    intercept -1000) and MONOCHROME1 (16 bits), both with ImagerPixelSpacing."""
    from transfuse_monai.data.synthetic import draw_hip, write_dicom

    tmp = tmp_path_factory.mktemp("hip")
    image, _ = draw_hip(np.random.default_rng(3), *IMAGE_HW)
    dicom = tmp / "dicom"
    write_dicom(dicom / "dx_mono2.dcm", image, (0.2, 0.25), bits_stored=12, slope=2.0, intercept=-1000.0)
    write_dicom(dicom / "dx_mono1.dcm", image, (0.2, 0.25), monochrome1=True, bits_stored=16)
    root, config_file, ckpt, model_ts = small_bundle("hip", tmp / "model", dicom / "dx_mono2.dcm")
    return {"tmp": tmp, "dicom": dicom, "root": root, "config": config_file, "ckpt": ckpt, "model": model_ts}


def test_hip_dicom_app_writes_seg_equal_to_bundle_inference(hip, deploy_python, tmp_path):
    out = tmp_path / "deploy_out"
    run_all([
        bundle_run(hip["config"], hip["root"], hip["dicom"], hip["ckpt"], tmp_path / "bundle_out",
                   tmp_path / "bundle_run.log"),
        deploy_app(deploy_python, "hip_dicom", hip["model"], hip["dicom"], out, tmp_path / "deploy_run.log"),
    ])
    assert output_files(out) == sorted(f"dx_{m}_{s}" for m in ("mono1", "mono2") for s in ("seg.dcm", "preview.png"))
    refs = {}
    for name in ("dx_mono2", "dx_mono1"):
        source = hip["dicom"] / f"{name}.dcm"
        with Image.open(tmp_path / "bundle_out" / f"{name}.png") as im:
            refs[name] = reference = np.asarray(im)
        labels, info = read_seg(deploy_python, out / f"{name}_seg.dcm", [source], tmp_path / f"{name}_seg")
        assert info["modality"] == "SEG" and labels.shape == (1, *IMAGE_HW)
        # a binary SEG: one frame per segment, each derived from the source instance
        assert [f["source"] for f in info["frames"]] == info["uids"] * 3, "the SEG must reference the source instance"
        assert {s["number"]: (s["label"], s["type"], s["modifier"]) for s in info["segments"]} == {
            1: ("pelvis", "118645006", []),
            2: ("left femur", "71341001", ["7771000"]),
            3: ("right femur", "71341001", ["24028007"]),
        }
        values, counts = np.unique(reference, return_counts=True)
        assert len(values) >= 2 and counts.max() < 0.95 * reference.size, f"trivial reference {values} {counts}"
        differ = int((labels[0] != reference).sum())
        assert differ <= max(3, 0.002 * reference.size), f"{name}: SEG and bundle inference differ in {differ} pixels"
        with Image.open(out / f"{name}_preview.png") as im:
            assert im.mode == "RGB" and im.size == IMAGE_HW[::-1]
    # MONOCHROME1 is inverted on reading: both files show the same hip
    assert int((refs["dx_mono1"] != refs["dx_mono2"]).sum()) <= 0.01 * refs["dx_mono1"].size


def test_hip_dicom_app_rejects_bad_input(hip, deploy_python, tmp_path):
    import pydicom

    from transfuse_monai.data.synthetic import draw_hip, write_dicom

    image, _ = draw_hip(np.random.default_rng(4), *IMAGE_HW)
    mr = write_dicom(tmp_path / "mr" / "image.dcm", image)
    ds = pydicom.dcmread(mr)
    ds.Modality = "MR"
    ds.save_as(mr)
    no_spacing = write_dicom(tmp_path / "nospacing" / "image.dcm", image, spacing=None)
    cases = {"mr": (mr, "modality 'MR'"), "nospacing": (no_spacing, "no pixel spacing")}
    procs = {k: deploy_app(deploy_python, "hip_dicom", hip["model"], path, tmp_path / f"out_{k}",
                           tmp_path / f"{k}.log") for k, (path, _) in cases.items()}
    try:
        for key, (path, message) in cases.items():
            log = procs[key].finish(expect_fail=True)
            assert message in log and str(path) in log, f"{key}: no clear error in\n{log[-3000:]}"
            assert output_files(tmp_path / f"out_{key}") == [], f"{key}: output written"
    finally:
        for proc in procs.values():
            proc.stop()


# ------------------------------------------------------------------------------------------------------- prostate MR


def _ras_affine(spacing, origin_lps) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS of an axial series (row direction +x, column direction +y in LPS)."""
    return np.array([
        [-spacing[0], 0, 0, -origin_lps[0]],
        [0, -spacing[1], 0, -origin_lps[1]],
        [0, 0, spacing[2], origin_lps[2]],
        [0, 0, 0, 1.0],
    ])


def write_series(folder: Path, volume: np.ndarray, spacing, origin_lps, description: str, study: dict,
                 number: int, **kwargs) -> list[Path]:
    """``volume`` ``(columns, rows, slices)`` as a DICOM series (the prostate task's writer)."""
    from transfuse_monai.data.synthetic import write_mr_series

    return write_mr_series(folder, volume, spacing, origin_lps, description, study, number, **kwargs)


def _mr_volumes(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer T2 on the T2 grid and ADC on its own (coarser, shorter) grid, from the prostate task's generator."""
    import nibabel as nib

    from transfuse_monai.tasks import get_task

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        vols = []
        for size, spacing in ((T2_SIZE, T2_SPACING), (ADC_SIZE, ADC_SPACING)):
            get_task("prostate").make_sample(tmp, seed=seed, n_train=1, size=size, spacing=spacing)
            vols.append(np.asarray(nib.load(f"{tmp}/imagesTr/prostate_00.nii.gz").dataobj))
    return np.round(vols[0][..., 0]).astype(np.uint16), np.round(vols[1][..., 1]).astype(np.uint16)


def write_study(folder: Path, seed: int = 0, **overrides) -> dict:
    """A two-series MR study (T2, ADC on different grids) with a DWI series and a T2 localiser as distractors;
    ``overrides`` change one series' arguments (``t2=dict(...)``, ``adc=None`` to leave it out, ...)."""
    from pydicom.uid import generate_uid

    t2, adc = _mr_volumes(seed)
    study = {"uid": generate_uid(), "frame_of_reference": generate_uid()}
    t2_origin, adc_origin = (-12.0, -14.0, -9.0), (-11.5, -13.0, -10.0)
    series = {  # written in this order: distractors first
        "localiser": dict(volume=t2[:, :, 2:3], spacing=T2_SPACING, origin_lps=(-12.0, -14.0, 0.0),
                          description="t2_localizer", number=1),
        "dwi": dict(volume=adc * 2, spacing=ADC_SPACING, origin_lps=adc_origin, description="ep2d_diff_b800_TRACEW",
                    number=2),
        "t2": dict(volume=t2, spacing=T2_SPACING, origin_lps=t2_origin, description="t2_tse_tra", number=3),
        "adc": dict(volume=adc, spacing=ADC_SPACING, origin_lps=adc_origin, description="ep2d_diff_ADC", number=4),
    }
    files = {}
    for key, args in series.items():
        if key in overrides and overrides[key] is None:
            continue
        files[key] = write_series(folder, study=study, **{**args, **overrides.get(key, {})})
    return {"t2": t2, "adc": adc, "files": files, "study": study,
            "t2_affine": _ras_affine(T2_SPACING, t2_origin), "adc_affine": _ras_affine(ADC_SPACING, adc_origin)}


@pytest.fixture(scope="module")
def prostate(tmp_path_factory):
    """A small prostate bundle export, a generated MR study and the bundle's input made from the same pixels: a 4D
    NIfTI of T2 and ADC resampled onto the T2 grid by the application's function."""
    import nibabel as nib

    sys.path.insert(0, str(REPO / "deploy"))
    from transfuse_deploy.volumes import resample_to_grid

    tmp = tmp_path_factory.mktemp("prostate")
    study = write_study(tmp / "study")
    adc_on_t2 = resample_to_grid(study["adc"], study["adc_affine"], study["t2_affine"], study["t2"].shape)
    volume = np.stack([study["t2"].astype(np.float32), adc_on_t2], axis=-1)
    reference_input = tmp / "nifti" / "case.nii.gz"
    reference_input.parent.mkdir()
    nib.save(nib.Nifti1Image(volume, study["t2_affine"]), str(reference_input))
    root, config_file, ckpt, model_ts = small_bundle("prostate", tmp / "model", reference_input)
    return {"tmp": tmp, **study, "folder": tmp / "study", "nifti": reference_input, "root": root,
            "config": config_file, "ckpt": ckpt, "model": model_ts}


def test_prostate_dicom_app_selects_series_and_writes_seg(prostate, deploy_python, tmp_path):
    import nibabel as nib

    out = tmp_path / "deploy_out"
    run_all([
        bundle_run(prostate["config"], prostate["root"], prostate["nifti"].parent, prostate["ckpt"],
                   tmp_path / "bundle_out", tmp_path / "bundle_run.log"),
        deploy_app(deploy_python, "prostate_mr", prostate["model"], prostate["folder"], out,
                   tmp_path / "deploy_run.log"),
    ])
    log = (tmp_path / "deploy_run.log").read_text()
    assert "T2 series: 't2_tse_tra'" in log and "ADC series: 'ep2d_diff_ADC'" in log, "wrong series selected"
    t2_files = prostate["files"]["t2"]
    import pydicom

    t2_series = str(pydicom.dcmread(t2_files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert output_files(out) == sorted([f"{t2_series}.nii.gz", f"{t2_series}_seg.dcm"])

    reference = nib.load(str(tmp_path / "bundle_out" / "case.nii.gz"))
    ref = np.asarray(reference.dataobj)
    deployed = nib.load(str(out / f"{t2_series}.nii.gz"))
    assert deployed.shape == ref.shape == prostate["t2"].shape
    np.testing.assert_allclose(deployed.affine, prostate["t2_affine"], atol=1e-4)
    np.testing.assert_allclose(reference.affine, prostate["t2_affine"], atol=1e-4)
    values, counts = np.unique(ref, return_counts=True)
    assert len(values) >= 2 and counts.max() < 0.95 * ref.size, f"trivial reference {values} {counts}"
    differ = int((np.asarray(deployed.dataobj) != ref).sum())
    assert differ <= max(3, 0.002 * ref.size), f"NIfTI: MONAI Deploy and bundle inference differ in {differ} voxels"

    labels, info = read_seg(deploy_python, out / f"{t2_series}_seg.dcm", t2_files, tmp_path / "seg")
    assert info["modality"] == "SEG" and info["referenced_series"] == [t2_series]
    # the T2 series' spacing (PixelSpacing: between rows, between columns) and slice thickness; the AI marking
    assert info["pixel_spacing"] == [T2_SPACING[1], T2_SPACING[0]] and info["slice_thickness"] == [True, T2_SPACING[2]]
    assert info["content_label"] == "AI_SEGMENTATION" and "not for clinical use" in info["series_description"]
    assert info["pydicom_pixels"] == [2 * len(t2_files), *prostate["t2"].shape[1::-1]]
    assert {s["number"]: (s["label"], s["type"]) for s in info["segments"]} == {
        1: ("PZ", "279706003"), 2: ("TZ", "399384005")
    }
    # label map per T2 slice (rows, columns) = the reference volume's (x = columns, y = rows) slices transposed
    expected = np.transpose(ref, (2, 1, 0))
    assert labels.shape == expected.shape
    assert int((labels != expected).sum()) <= max(3, 0.002 * ref.size)
    # geometry: the T2 series' frame of reference, and each frame on its T2 slice
    assert info["frame_of_reference"] == prostate["study"]["frame_of_reference"]
    assert info["orientation"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    positions = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID):
                 [float(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient]
                 for p in t2_files}
    assert len(info["frames"]) == 2 * len(t2_files)  # one frame per segment and T2 slice
    assert {f["source"] for f in info["frames"]} == set(positions)
    for frame in info["frames"]:
        np.testing.assert_allclose(frame["position"], positions[frame["source"]], atol=1e-4)


def t2_only_study_and_bundle(tmp_path: Path) -> tuple:
    """An MR study without ADC, the bundle's 3D NIfTI input of its T2 pixels and a T2-only (``modalities [0]``) small
    bundle: ``(study, nifti, root, config_file, ckpt, image_size)``."""
    import nibabel as nib

    study = write_study(tmp_path / "study", adc=None)
    reference_input = tmp_path / "nifti" / "case.nii.gz"
    reference_input.parent.mkdir()
    nib.save(nib.Nifti1Image(study["t2"].astype(np.float32), study["t2_affine"]), str(reference_input))
    root, config_file, ckpt, _ = small_bundle("prostate", tmp_path / "model", reference_input, modalities=[0])
    return study, reference_input, root, config_file, ckpt, json.loads(config_file.read_text())["image_size"]


def test_prostate_dicom_app_t2_only_bundle_takes_the_t2_series(deploy_python, tmp_path):
    """A T2-only model (``modalities [0]``, one input channel) needs no ADC: the app selects the T2 series alone (the
    study has none here) and its label volume equals the bundle's own inference on a 3D NIfTI of the T2 pixels."""
    import nibabel as nib
    import pydicom

    from transfuse_monai.export import main as export_main

    study, reference_input, root, config_file, ckpt, size = t2_only_study_and_bundle(tmp_path)
    # the documented command line: the override builds the network and is embedded with it
    assert export_main([str(root), "--formats", "torchscript", "--ckpt", str(ckpt), "--output_dir",
                        str(tmp_path / "cli"), "--image_size", *map(str, size), "--modalities", "[0]"]) == 0
    model_ts = tmp_path / "cli" / "model.ts"
    import zipfile

    with zipfile.ZipFile(model_ts) as archive:
        embedded = json.loads(archive.read("model/extra/inference.json"))
        meta = json.loads(archive.read("model/extra/metadata.json"))
    assert embedded["modalities"] == [0] and embedded["image_size"] == size
    image_spec = meta["network_data_format"]["inputs"]["image"]
    assert image_spec["num_channels"] == 1 and image_spec["spatial_shape"] == [*size, "*"]
    out = tmp_path / "deploy_out"
    run_all([
        bundle_run(config_file, root, reference_input.parent, ckpt, tmp_path / "bundle_out", tmp_path / "bundle.log"),
        deploy_app(deploy_python, "prostate_mr", model_ts, tmp_path / "study", out, tmp_path / "deploy.log"),
    ])
    log = (tmp_path / "deploy.log").read_text()
    assert "T2 series: 't2_tse_tra'" in log and "ADC series" not in log, log[-3000:]
    assert "takes 1 channel(s): T2" in log, log[-3000:]
    t2_series = str(pydicom.dcmread(study["files"]["t2"][0], stop_before_pixels=True).SeriesInstanceUID)
    assert output_files(out) == sorted([f"{t2_series}.nii.gz", f"{t2_series}_seg.dcm"])
    ref = np.asarray(nib.load(str(tmp_path / "bundle_out" / "case.nii.gz")).dataobj)
    values, counts = np.unique(ref, return_counts=True)
    assert len(values) >= 2 and counts.max() < 0.95 * ref.size, f"trivial reference {values} {counts}"
    deployed = np.asarray(nib.load(str(out / f"{t2_series}.nii.gz")).dataobj)
    assert deployed.shape == ref.shape == study["t2"].shape
    differ = int((deployed != ref).sum())
    assert differ <= max(3, 0.002 * ref.size), f"MONAI Deploy and bundle inference differ in {differ} voxels"


@pytest.mark.parametrize("case", ["no_adc", "ct", "no_spacing"])
def test_prostate_dicom_app_rejects_bad_input(case, prostate, deploy_python, tmp_path):
    overrides, message = {
        "no_adc": ({"adc": None}, "no DICOM series matches the 'ADC' selection"),
        "ct": ({k: {"modality": "CT"} for k in ("localiser", "dwi", "t2", "adc")},
               "#3 't2_tse_tra' (CT, axial, 6 image(s), 48x40): Modality 'CT' does not match"),
        "no_spacing": ({"t2": {"pixel_spacing": False}}, "has no PixelSpacing"),
    }[case]
    write_study(tmp_path / "study", **overrides)
    out = tmp_path / "out"
    log = deploy_app(deploy_python, "prostate_mr", prostate["model"], tmp_path / "study", out,
                     tmp_path / "deploy.log").finish(expect_fail=True)
    assert message in log, f"{case}: no clear error in\n{log[-3000:]}"
    if case != "no_spacing":  # the message names the rule and lists the study's series
        assert "no DICOM series matches the " in log and "series_rules.json" in log, log[-3000:]
        assert "series found: " in log and "ep2d_diff_b800_TRACEW" in log, log[-3000:]
    assert output_files(out) == [], f"{case}: output written"


# ------------------------------------------------------------------------------------ inputs as PACS export them


def _compressed(path: Path, syntax: str) -> Path:
    """Rewrite a DX file in a compressed transfer syntax: RLE / JPEG-LS / JPEG 2000 lossless (pydicom's encoders), or
    JPEG baseline (8-bit, Pillow, encapsulated)."""
    import io

    import pydicom
    from pydicom import uid
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(path)
    if syntax == "jpeg_baseline":  # 8-bit stored values, lossy
        pixels = (ds.pixel_array >> (int(ds.BitsStored) - 8)).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        ds.WindowCenter, ds.WindowWidth = "128", "256"
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    else:
        ds.compress({"rle": uid.RLELossless, "jpeg_ls": uid.JPEGLSLossless,
                     "jpeg2000": uid.JPEG2000Lossless}[syntax])
    ds.save_as(path, enforce_file_format=True)
    return path


def _run_app(deploy_python: Path, args: list, log: Path, cwd: Path | None = None, module: str | None = None) -> Process:
    """Start an application with any arguments (``python <app folder> ...``, or ``python -m <module> ...`` in
    ``cwd``)."""
    import os

    from test_deploy import APPS, _raise_stack_limit

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    target = ["-m", module] if module else [APPS / args.pop(0)]
    return Process(f"MONAI Deploy {module or target[0]}", [deploy_python, *target, *args], cwd or log.parent, log,
                   env=env, preexec_fn=_raise_stack_limit)


def test_hip_dicom_app_reads_a_pacs_export(hip, deploy_python, tmp_path):
    """A PACS / CD export: nested folders, files without extension, a DICOMDIR, radiographs with PixelSpacing or
    ImagerPixelSpacing, uncompressed and in four compressed transfer syntaxes; ``-m`` a folder holding model.ts.
    Every SEG reads back with highdicom and pydicom, carries the source's spacing and the AI marking, and the lossless
    ones equal the uncompressed radiograph's mask. A second run (``python -m apps.hip_dicom``) skips every finished
    output, ``--overwrite`` computes them again."""
    import shutil

    import pydicom

    from transfuse_monai.data.synthetic import draw_hip, write_dicom

    image, _ = draw_hip(np.random.default_rng(3), *IMAGE_HW)
    pacs = tmp_path / "pacs"
    layout = {
        "DICOM/S1/IM00001": (None, "ImagerPixelSpacing"),
        "DICOM/S1/IM00002": (None, "PixelSpacing"),
        "DICOM/S2/IM00001": ("rle", "ImagerPixelSpacing"),
        "DICOM/S2/IM00002": ("jpeg_ls", "ImagerPixelSpacing"),
        "DICOM/S3/IM00001": ("jpeg2000", "ImagerPixelSpacing"),
        "DICOM/S3/IM00002": ("jpeg_baseline", "ImagerPixelSpacing"),
    }
    for name, (syntax, attr) in layout.items():
        path = write_dicom(pacs / name, image, (0.2, 0.25), bits_stored=12, spacing_attr=attr)
        if syntax:
            _compressed(path, syntax)
    dicomdir = pydicom.Dataset()  # the CD's index: skipped
    dicomdir.file_meta = pydicom.dataset.FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = dicomdir.SOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    dicomdir.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dicomdir.save_as(pacs / "DICOMDIR", enforce_file_format=True)
    model_dir = tmp_path / "model_folder"  # -m <folder> with model.ts directly inside
    model_dir.mkdir()
    shutil.copy(hip["model"], model_dir / "model.ts")

    out = tmp_path / "out"
    log = _run_app(deploy_python, ["hip_dicom", "-i", pacs, "-o", out, "-m", model_dir],
                   tmp_path / "run1.log").finish()
    expected = sorted(f"DICOM/{name.split('/')[1]}/{name.split('/')[2]}_{kind}" for name in layout
                      for kind in ("seg.dcm", "preview.png"))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == expected, log[-3000:]

    labels = {}
    for name, (syntax, attr) in layout.items():
        seg_path = out / f"{name}_seg.dcm"
        labels[name], info = read_seg(deploy_python, seg_path, [pacs / name], tmp_path / name.replace("/", "_"))
        assert info["modality"] == "SEG" and info["pydicom_pixels"] == [3, *IMAGE_HW]  # 3 segments, 1 frame each
        assert info["pixel_spacing"] == [0.2, 0.25], f"{name} ({attr}): spacing {info['pixel_spacing']}"
        assert info["slice_thickness"] == [True, None], "Pixel Measures: SliceThickness present, unknown"
        assert info["content_label"] == "AI_SEGMENTATION"
        assert "AI-generated, not for clinical use" in info["series_description"]
        assert "AI-generated, not for clinical use" in info["content_description"]
        assert [f["source"] for f in info["frames"]] == info["uids"] * 3
    reference = labels["DICOM/S1/IM00001"]
    values, counts = np.unique(reference, return_counts=True)
    assert len(values) >= 2 and counts.max() < 0.95 * reference.size, f"trivial mask {values} {counts}"
    for name, (syntax, _) in layout.items():
        if syntax != "jpeg_baseline":  # lossless: the same pixels, the same mask
            assert np.array_equal(labels[name], reference), f"{name} ({syntax}) differs from the uncompressed mask"
    lossy = int((labels["DICOM/S3/IM00002"] != reference).sum())
    assert lossy <= 0.05 * reference.size, f"8-bit JPEG mask differs in {lossy} pixels"

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.dcm")}
    log = _run_app(deploy_python, ["-i", pacs, "-o", out, "-m", hip["model"]], tmp_path / "run2.log",
                   cwd=REPO / "deploy", module="apps.hip_dicom").finish()
    assert "nothing to do: every output exists" in log, log[-3000:]
    assert log.count("INFO transfuse_deploy.inputs: skipping ") == len(layout), log[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.dcm")} == stamps, "a finished output was written again"
    log = _run_app(deploy_python, ["hip_dicom", "-i", pacs / "DICOM" / "S1", "-o", out / "DICOM" / "S1", "-m",
                                   hip["model"], "--overwrite"], tmp_path / "run3.log").finish()
    assert (out / "DICOM" / "S1" / "IM00001_seg.dcm").stat().st_mtime_ns > stamps[out / "DICOM/S1/IM00001_seg.dcm"]


@pytest.mark.parametrize("case", ["truncated", "not_dicom", "output_inside_input"])
def test_hip_dicom_app_checks_every_file_first(case, hip, deploy_python, tmp_path):
    from transfuse_monai.data.synthetic import draw_hip, write_dicom

    image, _ = draw_hip(np.random.default_rng(4), *IMAGE_HW)
    folder = tmp_path / "in"
    write_dicom(folder / "a" / "good.dcm", image, (0.2, 0.2))
    bad = folder / "b" / "bad.dcm"
    out = tmp_path / "out"
    if case == "truncated":
        data = write_dicom(bad, image, (0.2, 0.2)).read_bytes()
        bad.write_bytes(data[: len(data) - 100])
        message = f"{bad}: its pixel data cannot be decoded"
    elif case == "not_dicom":
        bad.parent.mkdir()
        bad.write_text("not a radiograph")
        message = f"{bad} is not a readable DICOM file"
    else:
        out = folder / "segmentations"
        message = f"output folder {out} is inside the input folder {folder}"
    log = _run_app(deploy_python, ["hip_dicom", "-i", folder, "-o", out, "-m", hip["model"]],
                   tmp_path / "run.log").finish(expect_fail=True)
    assert message in log, f"{case}: no clear error in\n{log[-3000:]}"
    assert "Traceback" not in log and output_files(out) == [], f"{case}: traceback or output"


def test_prostate_nifti_output_folder_holding_the_input_is_refused(prostate, deploy_python, tmp_path):
    """The reported failure: ``-i dir/t2.nii.gz -o dir`` replaced the input volume by its labels."""
    import shutil

    folder = tmp_path / "dir"
    folder.mkdir()
    volume = shutil.copy(prostate["nifti"], folder / "case.nii.gz")
    before = Path(volume).read_bytes()
    log = _run_app(deploy_python, ["prostate_mr", "-i", volume, "-o", folder, "-m", prostate["model"]],
                   tmp_path / "run.log").finish(expect_fail=True)
    assert f"output folder {folder} holds the input file {volume}" in log, log[-3000:]
    assert Path(volume).read_bytes() == before and output_files(folder) == ["case.nii.gz"]


def test_prostate_selects_the_axial_t2_of_a_tra_and_sag_study(prostate, deploy_python, tmp_path):
    """The usual protocol has t2_tse_tra and t2_tse_sag; the sagittal one (listed first, more slices) must lose to the
    axial one, with the choice and the rejected series in the log."""
    import pydicom

    sag = np.repeat(prostate["t2"][:, :, :2], 6, axis=2)  # another series: 12 sagittal slices of 48x40
    study = write_study(tmp_path / "study", t2_sag=None)
    write_series(tmp_path / "study", sag, (3.6, 0.6, 0.6), (-20.0, -14.0, 30.0), "t2_tse_sag",
                 {"uid": study["study"]["uid"], "frame_of_reference": study["study"]["frame_of_reference"]}, 0,
                 plane="sagittal")
    out = tmp_path / "out"
    log = deploy_app(deploy_python, "prostate_mr", prostate["model"], tmp_path / "study", out,
                     tmp_path / "deploy.log").finish()
    selection = [line for line in log.splitlines() if " series" in line and ("selected" in line or "rejected" in line)]
    print("\n".join(selection))  # the selection log, as a user sees it
    assert any("T2 series: 't2_tse_tra'" in line and "selected" in line for line in selection), log[-3000:]
    assert any("T2 series:   rejected #0 't2_tse_sag' (MR, sagittal, 12 image(s), 48x40): orientation sagittal, "
               "expected axial" in line for line in selection), selection
    t2_uid = str(pydicom.dcmread(study["files"]["t2"][0], stop_before_pixels=True).SeriesInstanceUID)
    assert output_files(out) == sorted([f"{t2_uid}.nii.gz", f"{t2_uid}_seg.dcm"])


def test_prostate_truncated_slice_is_named_before_the_graph(prostate, deploy_python, tmp_path):
    study = write_study(tmp_path / "study")
    broken = study["files"]["t2"][3]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) - 64])
    out = tmp_path / "out"
    log = deploy_app(deploy_python, "prostate_mr", prostate["model"], tmp_path / "study", out,
                     tmp_path / "deploy.log").finish(expect_fail=True)
    assert f"{broken}: its pixel data cannot be decoded" in log, log[-3000:]
    assert "Traceback" not in log and output_files(out) == []


def test_monai_ckpt_export_of_a_t2_only_network_is_refused_with_the_way_out(deploy_python, tmp_path):
    """``monai.bundle ckpt_export ... --modalities "[0]"`` builds a one-channel network but embeds the config file
    (two modalities): the application says so before the graph and names the export that embeds the override."""
    from monai.bundle import ckpt_export

    _, _, root, _, ckpt, size = t2_only_study_and_bundle(tmp_path)
    mismatched = tmp_path / "ckpt_export" / "model.ts"
    mismatched.parent.mkdir()
    ckpt_export(net_id="network_def", filepath=str(mismatched), ckpt_file=str(ckpt),
                meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / "inference.json"),
                bundle_root=str(root), modalities=[0], image_size=size)
    log = deploy_app(deploy_python, "prostate_mr", mismatched, tmp_path / "study", tmp_path / "out",
                     tmp_path / "deploy.log").finish(expect_fail=True)
    assert "the network takes 1 input channel(s) but its embedded inference.json feeds 2" in log, log[-3000:]
    assert "python -m transfuse_monai.export" in log and "object at 0x" not in log
    assert output_files(tmp_path / "out") == []


@pytest.mark.parametrize("case", ["truncated", "same_output_name"])
def test_seg2d_app_checks_every_picture_first(case, hip, deploy_python, tmp_path):
    """``seg2d`` (here with the hip bundle, a grey 2D-picture bundle) decodes every picture before the graph and refuses
    two pictures that would write the same mask."""
    from transfuse_monai.data.synthetic import draw_hip

    image, _ = draw_hip(np.random.default_rng(5), *IMAGE_HW)
    folder = tmp_path / "in"
    folder.mkdir()
    picture = Image.fromarray((image * 255).astype(np.uint8))
    picture.save(folder / "a.png")
    if case == "truncated":
        picture.save(folder / "b.png")
        (folder / "b.png").write_bytes((folder / "b.png").read_bytes()[:200])
        message = f"unreadable or corrupt image file 'b.png' ({folder / 'b.png'})"
    else:
        picture.save(folder / "a.jpg")
        message = f"{folder / 'a.jpg'} and {folder / 'a.png'} would both write {tmp_path / 'out' / 'a.png'}"
    log = _run_app(deploy_python, ["seg2d", "-i", folder, "-o", tmp_path / "out", "-m", hip["model"]],
                   tmp_path / "run.log").finish(expect_fail=True)
    assert message in log, f"{case}: no clear error in\n{log[-3000:]}"
    assert "Traceback" not in log and output_files(tmp_path / "out") == []

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
segments = [{"number": int(s.SegmentNumber), "label": str(s.SegmentLabel),
             "type": str(s.SegmentedPropertyTypeCodeSequence[0].CodeValue),
             "modifier": [str(m.CodeValue) for m in s.get("SegmentedPropertyTypeModifierCodeSequence", [])]}
            for s in seg.SegmentSequence]
np.save(out + ".npy", np.asarray(labels).astype(np.uint8))
json.dump({"modality": str(seg.Modality), "sop_class": str(seg.SOPClassUID), "uids": uids, "frames": frames,
           "frame_of_reference": str(seg.get("FrameOfReferenceUID", "")),
           "orientation": [float(v) for v in orient[0].ImageOrientationPatient] if orient else None,
           "referenced_series": [str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence],
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
    from transfuse_monai.tasks.hip import draw_hip, write_dicom

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

    from transfuse_monai.tasks.hip import draw_hip, write_dicom

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
                 number: int, modality: str = "MR", pixel_spacing: bool = True) -> list[Path]:
    """Write ``volume`` ``(columns, rows, slices)`` (integers) as an axial DICOM series, one file per slice."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"
    series_uid, files = generate_uid(), []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Prostate", "P1", "", "M"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study["uid"], "20260101", "120000", "1"
        ds.ReferringPhysicianName, ds.AccessionNumber, ds.StudyDescription = "", "", "Prostate MRI"
        ds.FrameOfReferenceUID = study["frame_of_reference"]
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
        ds.Modality, ds.InstanceNumber, ds.ImageType = modality, k + 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2] + k * spacing[2])]
        if pixel_spacing:
            ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # (between rows, between columns)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).astype(np.uint16).tobytes()
        path = folder / f"s{number:02d}_{k:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


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


def test_prostate_dicom_app_t2_only_bundle_takes_the_t2_series(deploy_python, tmp_path):
    """A T2-only model (``modalities [0]``, one input channel) needs no ADC: the app selects the T2 series alone (the
    study has none here) and its label volume equals the bundle's own inference on a 3D NIfTI of the T2 pixels."""
    import nibabel as nib
    import pydicom

    study = write_study(tmp_path / "study", adc=None)
    reference_input = tmp_path / "nifti" / "case.nii.gz"
    reference_input.parent.mkdir()
    nib.save(nib.Nifti1Image(study["t2"].astype(np.float32), study["t2_affine"]), str(reference_input))
    root, config_file, ckpt, model_ts = small_bundle("prostate", tmp_path / "model", reference_input, modalities=[0])
    out = tmp_path / "deploy_out"
    run_all([
        bundle_run(config_file, root, reference_input.parent, ckpt, tmp_path / "bundle_out", tmp_path / "bundle.log"),
        deploy_app(deploy_python, "prostate_mr", model_ts, tmp_path / "study", out, tmp_path / "deploy.log"),
    ])
    log = (tmp_path / "deploy.log").read_text()
    assert "T2 series: 't2_tse_tra'" in log and "ADC series" not in log, log[-3000:]
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
               "CT 't2_tse_tra' (6 images)"),  # T2 or ADC, whichever selector runs first, lists the CT series
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

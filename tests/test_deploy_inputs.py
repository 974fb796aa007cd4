"""The Deploy applications' input layer, without the SDK (``deploy/transfuse_deploy/inputs.py`` and ``series.py``):

* series selection like a radiologist's: a protocol with T2 in three planes, a repeated axial T2, a localiser, DWI and
  ADC, in shuffled order, selects the axial T2 with the documented tie-break and logs every rejected series; no match
  lists every series with its reason;
* DICOM files found as PACS and CD exports lay them out (nested folders, no extension, DICOMDIR skipped), each one
  decoded up front with errors naming the file (truncated pixels, not DICOM, a transfer syntax without a decoder);
* output folders that are, hold or lie inside an input are refused; finished outputs are skipped unless overwritten.

The applications themselves (SDK graph, end to end) are tested in ``test_deploy_dicom.py``.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))

from transfuse_deploy.inputs import (  # noqa: E402
    check_nifti,
    check_output_folder,
    decoder_problem,
    find_dicom_files,
    pending,
    read_dicom,
)
from transfuse_monai.data.readers import is_dicom_file  # noqa: E402
from transfuse_deploy.series import (  # noqa: E402
    SelectionRule,
    SeriesSelectionError,
    group_series,
    orientation_of,
    read_rules,
    select_series,
)

RULES_FILE = REPO / "deploy" / "apps" / "prostate_mr" / "series_rules.json"
#: ImageOrientationPatient (row direction, column direction) of each plane; the oblique axial is tilted 20 degrees
PLANES = {
    "axial": [1, 0, 0, 0, 1, 0],
    "sagittal": [0, 1, 0, 0, 0, -1],
    "coronal": [1, 0, 0, 0, 0, -1],
    "oblique axial": [1, 0, 0, 0, float(np.cos(np.radians(20))), float(np.sin(np.radians(20)))],
}


def mr_slice(series: dict, k: int, study_uid: str) -> pydicom.Dataset:
    """Slice ``k`` of a series described by ``series`` (description, plane, slices, matrix, number, image_type)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series["uid"]
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = series.get("modality", "MR"), series["number"], \
        series["description"]
    ds.ImageType = series.get("image_type", ["ORIGINAL", "PRIMARY", "M", "ND"])
    ds.InstanceNumber = k + 1
    ds.ImageOrientationPatient = PLANES[series.get("plane", "axial")]
    ds.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
    ds.PixelSpacing = [0.5, 0.5]
    rows, cols = series.get("matrix", (8, 8))
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * cols, dtype=np.uint16) % 4096).tobytes()
    return ds


def protocol(**changes) -> list[dict]:
    """A prostate MR protocol as scanners export it: T2 in three planes, the axial T2 repeated (motion), a localiser,
    DWI and ADC; ``changes`` replace or (with None) drop series by key."""
    series = {
        "localiser": dict(description="t2_localizer", plane="axial", slices=3, number=1),
        "t2_sag": dict(description="t2_tse_sag", plane="sagittal", slices=20, number=2, matrix=(12, 12)),
        "t2_cor": dict(description="t2_tse_cor", plane="coronal", slices=20, number=3, matrix=(12, 12)),
        "t2_tra": dict(description="t2_tse_tra", plane="axial", slices=12, number=4),
        "t2_tra_repeat": dict(description="t2_tse_tra", plane="axial", slices=12, number=5),
        "dwi": dict(description="ep2d_diff_b50_800_TRACEW", slices=12, number=6,
                    image_type=["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW"]),
        "adc": dict(description="ep2d_diff_b50_800_ADC", slices=12, number=7,
                    image_type=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]),
    }
    for key, value in changes.items():
        if value is None:
            series.pop(key)
        else:
            series[key] = {**series.get(key, {}), **value}
    for key, s in series.items():
        s.setdefault("uid", generate_uid())
        s["key"] = key
    return list(series.values())


def study_datasets(series: list[dict], seed: int = 0) -> list[tuple[Path, pydicom.Dataset]]:
    """Every slice of every series as (file name, dataset), in a shuffled order (as a PACS export may list them)."""
    study_uid = generate_uid()
    items = [(Path(f"{s['key']}_{k:03d}.dcm"), mr_slice(s, k, study_uid)) for s in series for k in range(s["slices"])]
    random.Random(seed).shuffle(items)
    return items


def uid_of(series: list[dict], key: str) -> str:
    return next(s["uid"] for s in series if s["key"] == key)


@pytest.fixture()
def rules():
    return read_rules(RULES_FILE, ["T2", "ADC"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_protocol_selects_the_axial_t2_and_the_adc(rules, seed, caplog):
    series = protocol()
    found = group_series(study_datasets(series, seed))
    assert [s.number for s in found] == [1, 2, 3, 4, 5, 6, 7], "grouped and ordered by series number"
    with caplog.at_level(logging.INFO, logger="transfuse_deploy"):
        t2 = select_series(found, rules["T2"], "series_rules.json")
        adc = select_series(found, rules["ADC"], "series_rules.json")
    # the repeat of the axial T2 (same size, same matrix) wins on the higher series number: the latest acquisition
    assert t2.uid == uid_of(series, "t2_tra_repeat") and t2.orientation == "axial"
    assert adc.uid == uid_of(series, "adc")
    log = caplog.text
    assert "T2 series: 2 candidates; the tie-break (most images, then largest matrix, then highest series number) " \
           "chose #5 't2_tse_tra'" in log
    for rejected in ("#2 't2_tse_sag' (MR, sagittal, 20 image(s), 12x12): orientation sagittal, expected axial",
                     "#3 't2_tse_cor' (MR, coronal, 20 image(s), 12x12): orientation coronal, expected axial",
                     "#1 't2_localizer'", "#6 'ep2d_diff_b50_800_TRACEW'", "#7 'ep2d_diff_b50_800_ADC'"):
        assert rejected in log, f"{rejected!r} not logged as rejected:\n{log}"


def test_tie_break_prefers_more_slices_then_a_larger_matrix(rules):
    series = protocol(t2_tra=dict(slices=16), t2_tra_repeat=dict(slices=12))
    assert select_series(group_series(study_datasets(series)), rules["T2"]).uid == uid_of(series, "t2_tra")
    series = protocol(t2_tra=dict(matrix=(10, 10)), t2_tra_repeat=dict(matrix=(8, 8)))
    assert select_series(group_series(study_datasets(series)), rules["T2"]).uid == uid_of(series, "t2_tra")


def test_tra_and_sag_t2_takes_the_axial_even_listed_second(rules):
    """The failure this replaces: with t2_tse_tra and t2_tse_sag, the first series listed won, whatever its plane."""
    series = protocol(t2_cor=None, t2_tra_repeat=None, localiser=None, t2_sag=dict(number=1), t2_tra=dict(number=9))
    chosen = select_series(group_series(study_datasets(series)), rules["T2"])
    assert chosen.uid == uid_of(series, "t2_tra")


def test_oblique_axial_is_axial_and_derived_t2_is_rejected(rules):
    series = protocol(t2_tra=dict(plane="oblique axial"), t2_tra_repeat=dict(image_type=["DERIVED", "SECONDARY"]),
                      t2_sag=None, t2_cor=None)
    chosen = select_series(group_series(study_datasets(series)), rules["T2"])
    assert chosen.uid == uid_of(series, "t2_tra") and chosen.orientation == "axial"


def test_series_with_a_gap_or_duplicated_slices_is_rejected(rules):
    series = protocol(t2_sag=None, t2_cor=None, t2_tra_repeat=None)
    items = study_datasets(series)
    t2 = sorted((ds for _, ds in items if ds.SeriesInstanceUID == uid_of(series, "t2_tra")),
                key=lambda ds: int(ds.InstanceNumber))
    for ds in t2[5:]:  # two slices missing between the 5th and the 6th
        ds.ImagePositionPatient = [0.0, 0.0, float(ds.ImagePositionPatient[2]) + 6.0]
    with pytest.raises(SeriesSelectionError, match=r"'t2_tse_tra' \(MR, axial, 12 image\(s\), 8x8\): uneven slice "
                       r"spacing \(steps of 3.00 to 9.00 mm around 3.00 mm\)"):
        select_series(group_series(items), rules["T2"])
    t2[5].ImagePositionPatient = t2[4].ImagePositionPatient  # a duplicated slice
    with pytest.raises(SeriesSelectionError, match="several slices at the same position"):
        select_series(group_series(items), rules["T2"])


def test_no_axial_t2_lists_every_series_and_why(rules):
    series = protocol(t2_tra=None, t2_tra_repeat=None)
    with pytest.raises(SeriesSelectionError) as err:
        select_series(group_series(study_datasets(series)), rules["T2"], "series_rules.json")
    message = str(err.value)
    assert message.startswith("no DICOM series matches the 'T2' selection of series_rules.json")
    assert "series found: #1 't2_localizer'" in message
    assert "#2 't2_tse_sag' (MR, sagittal, 20 image(s), 12x12): orientation sagittal, expected axial" in message
    assert "#7 'ep2d_diff_b50_800_ADC'" in message and "does not match" in message


def test_orientation_of():
    assert [orientation_of(PLANES[p]) for p in PLANES] == ["axial", "sagittal", "coronal", "axial"]
    # the slice normal (1, 1, 1) / sqrt(3) is 55 degrees from each axis
    assert orientation_of([0.70711, -0.70711, 0, 0.40825, 0.40825, -0.8165]) == "oblique"
    assert orientation_of(None) == "unknown"


def test_rules_file_errors(tmp_path):
    bad = tmp_path / "rules.json"
    bad.write_text(json.dumps({"selections": [{"name": "T2", "orientation": "transverse"}]}))
    with pytest.raises(ValueError, match="orientation 'transverse' is not one of"):
        read_rules(bad, ["T2"])
    bad.write_text(json.dumps({"selections": [{"name": "T2", "conditions": {"SeriesDescription": "(t2"}}]}))
    with pytest.raises(ValueError, match="SeriesDescription pattern"):
        read_rules(bad, ["T2"])
    with pytest.raises(ValueError, match="0 selections named 'T1'"):
        read_rules(RULES_FILE, ["T1"])
    assert SelectionRule.from_json({"name": "x"}).rejects(group_series(study_datasets(protocol()))[0]) is None


# ------------------------------------------------------------------------------------------------ files and outputs


def write(ds: pydicom.Dataset, path: Path, preamble: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def test_pacs_layout_is_found_recursively_without_extensions(tmp_path):
    series = protocol()
    items = study_datasets(series)[:4]
    files = [write(ds, tmp_path / "DICOM" / f"S{i % 2}" / f"IM{i:05d}") for i, (_, ds) in enumerate(items)]
    (tmp_path / "DICOM" / "readme.txt").write_text("not dicom")
    (tmp_path / ".hidden").mkdir()
    write(items[0][1], tmp_path / ".hidden" / "copy.dcm")
    dicomdir = pydicom.Dataset()
    dicomdir.file_meta = FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dicomdir.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicomdir.SOPClassUID = "1.2.840.10008.1.3.10"
    write(dicomdir, tmp_path / "DICOMDIR")
    assert find_dicom_files(tmp_path) == sorted(files)
    assert all(is_dicom_file(f) for f in files) and not is_dicom_file(tmp_path / "DICOM" / "readme.txt")
    assert read_dicom(tmp_path / "DICOMDIR") is None
    empty = tmp_path / "DICOM" / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("not dicom")
    with pytest.raises(ValueError) as err:
        find_dicom_files(empty)
    assert f"no DICOM file in {empty}" in str(err.value) and "recursively" in str(err.value)


def test_every_file_is_decoded_up_front_naming_the_file(tmp_path):
    _, ds = study_datasets(protocol())[0]
    good = write(ds, tmp_path / "good.dcm")
    assert read_dicom(good).pixel_array.shape == (ds.Rows, ds.Columns)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match=f"{truncated}: its pixel data cannot be decoded"):
        read_dicom(truncated)
    header = read_dicom(good, keep_pixels=False)  # decoded, then only the header kept (a whole study is read)
    assert "PixelData" not in header and group_series([(good, header)])[0].uid == str(ds.SeriesInstanceUID)
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("hello")
    with pytest.raises(ValueError, match=f"{not_dicom} is not a readable DICOM file"):
        read_dicom(not_dicom)


def test_a_transfer_syntax_without_decoder_is_refused_with_the_packages(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    _, ds = study_datasets(protocol())[0]
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    decoder = get_decoder(JPEGLosslessSV1)  # as on a machine without pylibjpeg-libjpeg (and without GDCM)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setitem(decoder._unavailable, "pylibjpeg", ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1"))
    problem = decoder_problem(ds)
    assert problem.startswith("no decoder installed for its transfer syntax JPEG Lossless, Non-Hierarchical, "
                              "First-Order Prediction")
    assert "pylibjpeg-libjpeg" in problem


def test_output_folder_never_over_or_inside_the_input(tmp_path):
    volume = tmp_path / "data" / "t2.nii.gz"
    volume.parent.mkdir()
    volume.touch()
    # the reported failure: -i dir/t2.nii.gz -o dir replaced the input by its label volume
    with pytest.raises(ValueError, match="holds the input file .*t2.nii.gz"):
        check_output_folder(tmp_path / "data", volume, [volume])
    with pytest.raises(ValueError, match="is the input file"):
        check_output_folder(volume, volume, [volume])
    with pytest.raises(ValueError, match="is inside the input folder"):
        check_output_folder(tmp_path / "data" / "out", tmp_path / "data", [volume])
    with pytest.raises(ValueError, match="is inside the input folder"):
        check_output_folder(tmp_path / "data", tmp_path / "data", [volume])
    assert check_output_folder(tmp_path / "out", tmp_path / "data", [volume]) == (tmp_path / "out").resolve()


def test_finished_outputs_are_skipped_unless_overwritten(tmp_path, caplog):
    done = [tmp_path / "a_seg.dcm", tmp_path / "a_preview.png"]
    for f in done:
        f.touch()
    outputs = {"a": done, "b": [tmp_path / "b_seg.dcm", tmp_path / "b_preview.png"], "c": [done[0], tmp_path / "x"]}
    with caplog.at_level(logging.INFO, logger="transfuse_deploy"):
        assert pending(outputs, overwrite=False) == ["b", "c"]
    assert "skipping a: already done" in caplog.text and "--overwrite" in caplog.text
    assert pending(outputs, overwrite=True) == ["a", "b", "c"]


def test_volumes_are_read_up_front_naming_the_file(tmp_path):
    import nibabel as nib

    volume = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3, 2), np.float32), np.eye(4)), str(volume))
    assert check_nifti(volume) == (4, 5, 3, 2)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(volume.read_bytes()[:-20])
    with pytest.raises(ValueError, match=f"{cut} is not a readable NIfTI volume"):
        check_nifti(cut)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.float32), np.eye(4)), str(flat))
    with pytest.raises(ValueError, match="expected 3D"):
        check_nifti(flat)

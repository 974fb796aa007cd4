"""The file formats named once (``transfuse_monai.data.formats``): the stem every output name is made from."""

from __future__ import annotations

import pytest

from transfuse_monai.data.formats import KNOWN_EXTENSIONS, NIFTI_EXTENSIONS, file_stem
from transfuse_monai.data.readers import RADIOGRAPH_EXTENSIONS


@pytest.mark.parametrize(
    "path, stem",
    [
        ("data/case_01.nii.gz", "case_01"),  # the double extension whole
        ("case_01.NII", "case_01"),
        ("frame.PNG", "frame"),
        ("a.b.jpeg", "a.b"),
        ("DICOM/S1/IM00001", "IM00001"),  # a PACS file without extension
        ("1.2.840.113619.2.1", "1.2.840.113619.2.1"),  # a UID-named file: its last part is no extension
        ("notes.txt", "notes.txt"),
        (".png", ".png"),  # nothing left without the extension: the name itself
    ],
)
def test_file_stem(path, stem):
    assert file_stem(path) == stem


def test_one_list_per_kind():
    assert NIFTI_EXTENSIONS[0] == ".nii.gz", "the compressed ending is tried first"
    assert set(RADIOGRAPH_EXTENSIONS) == set(KNOWN_EXTENSIONS), "the hip task reads every known kind"
    assert len(KNOWN_EXTENSIONS) == len(set(KNOWN_EXTENSIONS))

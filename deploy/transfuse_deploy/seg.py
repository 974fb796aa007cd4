"""DICOM SEG (highdicom) of a class-index mask on its source images, one segment per class with coded anatomy.

Every SEG reads back with ``highdicom.seg.segread`` and pydicom: it references its source instances, carries their
pixel spacing (for a projection radiograph with ``ImagerPixelSpacing`` only, that spacing) in its Pixel Measures,
and is marked as AI-generated and not for clinical use (``SeriesDescription``, ``ContentLabel``,
``ContentDescription``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AI_CONTENT_LABEL", "AI_NOTICE", "ANATOMY", "segment_descriptions", "build_segmentation"]

#: ``ContentLabel`` (CS, at most 16 characters) and the notice in ``ContentDescription`` and ``SeriesDescription``.
AI_CONTENT_LABEL = "AI_SEGMENTATION"
AI_NOTICE = "AI-generated, not for clinical use"

#: Type 2 patient / study attributes that highdicom copies from the source into the SEG: a source without them (they
#: may be absent from anonymised or synthetic files) gets them empty, in a copy.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "AccessionNumber", "StudyID")

#: Class name (``channel_def`` of the bundles' ``metadata.json``, lower case) -> (SNOMED CT property type keyword of
#: :data:`pydicom.sr.codedict.codes`, laterality keyword or None). "Left" / "right" are the patient's sides.
ANATOMY: dict[str, tuple[str, str | None]] = {
    "pelvis": ("BoneStructureOfPelvis", None),
    "left femur": ("Femur", "Left"),
    "right femur": ("Femur", "Right"),
    "pz": ("PeripheralZoneOfTheProstate", None),
    "tz": ("TransitionZoneOfTheProstate", None),
    "polyp": ("Polyp", None),
    "lesion": ("Lesion", None),
}


def segment_descriptions(class_names: Sequence[str], algorithm: str, version: str) -> list:
    """One :class:`highdicom.seg.SegmentDescription` per foreground class (mask value ``i`` -> segment ``i``):
    category "Anatomical Structure", the class's SNOMED CT code (:data:`ANATOMY`) as property type with its
    laterality as modifier, algorithm type AUTOMATIC; an unknown class name gets the generic "Tissue" code."""
    import highdicom as hd
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.sr.codedict import codes

    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm, version=version, family=codes.DCM.ArtificialIntelligence
    )
    descriptions = []
    for number, name in enumerate(class_names[1:], start=1):
        keyword, side = ANATOMY.get(name.lower(), ("Tissue", None))
        code = getattr(codes.SCT, keyword, codes.SCT.Tissue)
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=code,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id,
            tracking_uid=hd.UID(),
            tracking_id=f"{algorithm} {name}",
        )
        if side is not None:
            desc.SegmentedPropertyTypeModifierCodeSequence = DicomSequence(
                [hd.sr.CodedConcept.from_code(getattr(codes.SCT, side))]
            )
        descriptions.append(desc)
    return descriptions


def _pixel_measures(source: Any):
    """Pixel Measures of a single-frame projection image (no ``ImagePositionPatient``): the source's ``PixelSpacing``,
    else its ``ImagerPixelSpacing`` (at the detector), with ``SliceThickness`` as the source has it, or present and
    empty (unknown; highdicom's reader requires the attribute). None for cross-sectional images (highdicom takes the
    spacing, thickness and plane positions from the series) or a source without any spacing."""
    import highdicom as hd

    if "ImagePositionPatient" in source:
        return None
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    if not spacing:
        return None
    thickness = source.get("SliceThickness")
    measures = hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in spacing],
                                        slice_thickness=float(thickness) if thickness not in (None, "") else None)
    if "SliceThickness" not in measures[0]:
        measures[0].SliceThickness = None  # type 2: present, value unknown
    return measures


def build_segmentation(
    source_images: Sequence, labels: np.ndarray, class_names: Sequence[str], algorithm: str, version: str,
    series_description: str,
):
    """A binary DICOM SEG of ``labels`` (``(frames, rows, columns)`` class indices, frame ``i`` on
    ``source_images[i]``), every frame kept (empty ones too) so that frame ``i`` stays on source image ``i``.

    ``series_description`` (shortened where needed) is followed by :data:`AI_NOTICE`, within DICOM's 64 characters.

    Raises:
        ValueError: the label array does not match the source images (named sizes).
    """
    import highdicom as hd

    labels = np.asarray(labels)
    source_images = [_with_type2(ds) for ds in source_images]
    rows, cols = int(source_images[0].Rows), int(source_images[0].Columns)
    if labels.ndim != 3 or labels.shape != (len(source_images), rows, cols):
        raise ValueError(f"segmentation of shape {labels.shape} does not fit {len(source_images)} source image(s) of "
                         f"{rows}x{cols} pixels")
    binary = np.stack([labels == v for v in range(1, len(class_names))], axis=-1)  # (frames, rows, cols, segments)
    seg = hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=binary.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(class_names, algorithm, version),
        series_instance_uid=hd.UID(),
        series_number=int(getattr(source_images[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="transfuse-monai",
        manufacturer_model_name=algorithm,
        software_versions=version,
        device_serial_number="0",
        content_label=AI_CONTENT_LABEL,
        content_description=f"{algorithm}: {AI_NOTICE}",  # the version is in SoftwareVersions
        pixel_measures=_pixel_measures(source_images[0]) if len(source_images) == 1 else None,
        omit_empty_frames=False,
    )
    seg.SeriesDescription = f"{series_description[: 64 - len(AI_NOTICE) - 3]} - {AI_NOTICE}"
    return seg


def _with_type2(ds):
    missing = [k for k in _TYPE2 if k not in ds]
    if not missing:
        return ds
    import copy

    ds = copy.deepcopy(ds)
    for keyword in missing:
        setattr(ds, keyword, "")
    return ds

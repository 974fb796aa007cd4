"""DICOM SEG (highdicom) of a class-index mask on its source images, one segment per class with coded anatomy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ANATOMY", "segment_descriptions", "build_segmentation"]

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


def build_segmentation(
    source_images: Sequence, labels: np.ndarray, class_names: Sequence[str], algorithm: str, version: str,
    series_description: str,
):
    """A binary DICOM SEG of ``labels`` (``(frames, rows, columns)`` class indices, frame ``i`` on
    ``source_images[i]``), every frame kept (empty ones too) so that frame ``i`` stays on source image ``i``.

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
        omit_empty_frames=False,
    )
    seg.SeriesDescription = series_description[:64]
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

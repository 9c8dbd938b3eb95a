"""Segmentation masks of the synthetic studies, as real datasets store them.

Every NIfTI study gets an nnU-Net raw case, and some DICOM studies a DICOM SEG (written with highdicom) of
their first series, each mask rendered from the phantom (study.render_labels: lungs, liver, brain and the
lesions; classes in phantom.LABEL_CLASSES). Some masks are stored in another voxel order or orientation than
their image, so a reader must place them by world coordinates::

    nnunet/Dataset500_CTSSLSynth/dataset.json             labels (name -> id), channel_names {"0": "CT"}
    nnunet/Dataset500_CTSSLSynth/imagesTr/CASE_0000.nii.gz a byte copy of nifti/CASE.nii.gz (as nnU-Net wants it)
    nnunet/Dataset500_CTSSLSynth/labelsTr/CASE.nii.gz      uint8 label volume, voxel order ``MaskPlan.stored``
    dicom/CASE/series-100/SEG00001.dcm                     DICOM SEG (BINARY), orientation ``MaskPlan.stored``
    labels/masks.csv                                       which study has which mask, stored how

NIfTI voxel orders: ``image`` (the image's own, L-A-S or P-I-R), ``RAS``, ``LPS``, ``ILA`` (slices first).
SEG orientations: ``image`` (the CT's frames), ``flipped`` (rows and columns reversed, Image Orientation
-1,0,0,0,-1,0, frames superior first), ``transposed`` (Image Orientation 0,1,0,1,0,0). The catalogue studies
have fixed choices (``CATALOGUE_MASKS``); later studies draw theirs from their own generator
([seed, index, 0x5E6]), so adding masks changed no byte of an existing study. Everything is deterministic:
highdicom's time stamps and generated UIDs are replaced by the study's values.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ctssl.core.atomic import TMP_MARK, atomic_write_text
from ctssl.data.synth import phantom
from ctssl.data.synth.nifti import VARIANTS, canonical_affine
from ctssl.data.synth.study import CATALOGUE, SeriesPlan, StudyPlan, make_uid

NNUNET = "nnunet/Dataset500_CTSSLSynth"
SEG_SERIES_NUMBER = 100
NIFTI_ORDERS = {"image": None, "RAS": ("R", "A", "S"), "LPS": ("L", "P", "S"), "ILA": ("I", "L", "A")}
SEG_ORIENTATIONS = ("image", "flipped", "transposed")
# Catalogue study -> (kind, stored): every NIfTI study, three of the DICOM ones, several orders.
CATALOGUE_MASKS = {1: ("seg", "image"), 2: ("seg", "flipped"), 3: ("nifti", "image"), 4: ("seg", "transposed"),
                   6: ("nifti", "RAS")}
SEG_RATE = 0.2            # later DICOM studies with a SEG


@dataclass(frozen=True)
class MaskPlan:
    kind: str       # "nifti" (nnU-Net label volume) or "seg" (DICOM SEG)
    stored: str     # a NIFTI_ORDERS key or a SEG_ORIENTATIONS value
    path: str       # the mask file, relative to the corpus root
    image: str      # the image it belongs to: the nnU-Net image file, or the DICOM series folder


def mask_plan(plan: StudyPlan) -> MaskPlan | None:
    """The mask of study ``plan`` (module docstring), or None. Cheap and deterministic."""
    rng = np.random.default_rng([plan.seed, plan.index, 0x5E6])
    fits = "nifti" if plan.format == "nifti" else "seg"
    if plan.index in CATALOGUE_MASKS and CATALOGUE_MASKS[plan.index][0] == fits:
        kind, stored = CATALOGUE_MASKS[plan.index]
    elif plan.format == "nifti":
        kind, stored = "nifti", str(rng.choice(list(NIFTI_ORDERS)))
    elif plan.index >= len(CATALOGUE) and rng.random() < SEG_RATE:
        kind, stored = "seg", str(rng.choice(SEG_ORIENTATIONS))
    else:
        return None
    if kind == "nifti":
        return MaskPlan(kind, stored, f"{NNUNET}/labelsTr/{plan.case_id}.nii.gz",
                        f"{NNUNET}/imagesTr/{plan.case_id}_0000.nii.gz")
    return MaskPlan(kind, stored, f"{plan.relpath}/series-{SEG_SERIES_NUMBER}/SEG00001.dcm", plan.series[0].folder)


def _atomic_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + TMP_MARK + "partial")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def label_image(plan: StudyPlan, series: SeriesPlan, labels: np.ndarray, stored: str) -> nib.Nifti1Image:
    """The uint8 NIfTI label volume of ``labels`` ((n, H, W), inferior first) in voxel order ``stored``."""
    variant = next(q for q in plan.quirks if q in VARIANTS)
    axcodes = NIFTI_ORDERS[stored] or VARIANTS[variant][0]
    volume = labels.transpose(2, 1, 0)                                  # -> [x, y, z]
    affine = canonical_affine(series)
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(axcodes))
    img = nib.Nifti1Image(np.ascontiguousarray(apply_orientation(volume, transform), dtype=np.uint8),
                          affine @ inv_ornt_aff(transform, volume.shape))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    img.header["descrip"] = b"ctssl synthetic labels"
    return img


def write_nnunet_case(plan: StudyPlan, series: SeriesPlan, labels: np.ndarray, image: Path, root: Path,
                      mask: MaskPlan) -> None:
    """The study's nnU-Net label volume and a byte copy of its image (``image``, already written)."""
    target = root / mask.path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{plan.case_id}{TMP_MARK}partial.nii.gz")
    label_image(plan, series, labels, mask.stored).to_filename(str(tmp))
    os.replace(tmp, target)
    _atomic_copy(image, root / mask.image)


def write_dataset_json(root: Path, plans: list[StudyPlan]) -> int:
    """``dataset.json`` of the nnU-Net dataset (if any study has a label volume); returns its case count."""
    cases = sum(1 for p in plans if (m := mask_plan(p)) is not None and m.kind == "nifti")
    if cases:
        labels = {"background": 0, **{name: i for i, name in phantom.LABEL_CLASSES.items()}}
        atomic_write_text(root / NNUNET / "dataset.json", json.dumps(
            {"name": "CTSSLSynth", "description": "ctssl synthetic CT, phantom organs and lesions",
             "channel_names": {"0": "CT"}, "labels": labels, "numTraining": cases, "file_ending": ".nii.gz"},
            indent=2) + "\n")
    return cases


# --------------------------------------------------------------------------- DICOM SEG


def _segment(number: int, class_id: int):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    name = phantom.LABEL_CLASSES[class_id]
    organ = {"lung": codes.SCT.Lung, "liver": codes.SCT.Liver, "brain": codes.SCT.Brain}.get(name)
    kind = organ or hd.sr.CodedConcept(value=f"ctssl-{name}", scheme_designator="99CTSSL",
                                       meaning=name.replace("_", " ").capitalize())
    category = codes.SCT.Organ if organ else hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
    return hd.seg.SegmentDescription(segment_number=number, segment_label=name, segmented_property_category=category,
                                     segmented_property_type=kind,
                                     algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)


def _geometry(series: SeriesPlan, stored: str, segments: np.ndarray):
    """(pixel array, plane orientation, plane positions) of the SEG frames in orientation ``stored``."""
    import highdicom as hd

    if stored == "image":
        return segments, None, None
    ps, n, m = series.pixel_spacing, series.n_slices, series.matrix
    if stored == "flipped":         # rows and columns reversed, superior slice first
        array = segments[::-1, ::-1, ::-1]
        iop = [-1, 0, 0, 0, -1, 0]
        origin = [(series.x0 + (m - 1) * ps, series.y0 + (m - 1) * ps, float(series.z[n - 1 - f])) for f in range(n)]
    else:                           # transposed: rows along +x, columns along +y
        array = segments.transpose(0, 2, 1)
        iop = [0, 1, 0, 1, 0, 0]
        origin = [(series.x0, series.y0, float(series.z[f])) for f in range(n)]
    positions = [hd.PlanePositionSequence("PATIENT", [round(v, 4) for v in xyz]) for xyz in origin]
    return np.ascontiguousarray(array), hd.PlaneOrientationSequence("PATIENT", iop), positions


def _deterministic(seg, plan: StudyPlan) -> None:
    """Replace highdicom's time stamps and generated UIDs by the study's values."""
    date, time = plan.identity.study_date, plan.identity.study_time
    organisation = make_uid(plan.seed, plan.index, "seg-dimension-organisation")
    for element in seg.iterall():
        if element.VR == "DA":
            element.value = date if element.keyword != "PatientBirthDate" else element.value
        elif element.VR == "TM":
            element.value = time
        elif element.VR == "DT":
            element.value = date + time
        elif element.keyword == "DimensionOrganizationUID":
            element.value = organisation


def write_seg(plan: StudyPlan, series: SeriesPlan, labels: np.ndarray, images: list, folder: Path,
              stored: str) -> Path:
    """A BINARY DICOM SEG of ``labels`` ((n, H, W), inferior first) on the series whose data sets are ``images``
    (inferior first), in orientation ``stored``, as ``folder/SEG00001.dcm``."""
    import highdicom as hd

    present = [int(c) for c in np.unique(labels) if c]
    numbers = np.zeros(256, dtype=np.uint8)
    numbers[present] = np.arange(1, len(present) + 1)
    array, orientation, positions = _geometry(series, stored, numbers[labels])
    measures = hd.PixelMeasuresSequence([series.pixel_spacing] * 2, series.thickness, series.spacing) \
        if orientation is not None else None
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=array, segmentation_type="BINARY",
        segment_descriptions=[_segment(i + 1, c) for i, c in enumerate(present)],
        series_instance_uid=make_uid(plan.seed, plan.index, "seg-series"), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=make_uid(plan.seed, plan.index, "seg"), instance_number=1,
        manufacturer="ctssl", manufacturer_model_name="ctssl synth", software_versions="ctssl",
        device_serial_number=plan.identity.device_serial, content_creator_name=plan.identity.operator,
        plane_orientation=orientation, plane_positions=positions, pixel_measures=measures)
    _deterministic(seg, plan)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "SEG00001.dcm"
    seg.save_as(path)
    return path

"""DICOM images that are CT but not attenuation in HU are counted skips, by what the standard marks.

pydicom's eCT_Supplemental.dcm (an Enhanced CT perfusion map: Image Type DERIVED\\PRIMARY\\PERFUSION\\RCBF,
Rescale Type US, a Real World Value Mapping in ml/100ml/s with LUT Explanation "Regional Cerebral Blood Flow",
Pixel Presentation COLOR) is read from pydicom-data (a test extra; pydicom downloads it otherwise), and an
equivalent is built here with each mark alone. The CT that carries none of them, or carries the harmless ones
(US on an ORIGINAL image, virtual monoenergetic or non-contrast images, an HU mapping, research content), is kept.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from ctssl.data.ingest import IngestConfig, run_ingest
from tests.dicom_factory import ct_dataset, enhanced_ct, phantom_stored, save

LUT_TEXT = "Regional Cerebral Blood Flow"
FREE_TEXT = "JANE^DOE 19700101"


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("CTSSL_SALT", "values-test-salt-0123456789")


def _mapping(code: str, meaning: str) -> Dataset:
    units, item = Dataset(), Dataset()
    units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = code, "UCUM", meaning
    item.MeasurementUnitsCodeSequence = [units]
    item.LUTExplanation, item.LUTLabel = LUT_TEXT, "RCBF"
    item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped = 0, 4095
    item.RealWorldValueSlope, item.RealWorldValueIntercept = 1.0, -1024.0
    return item


def perfusion_map(rng, series_uid: str) -> Dataset:
    """An Enhanced CT with eCT_Supplemental.dcm's marks (module docstring), two frames."""
    frames = np.stack([phantom_stored(rng) for _ in range(2)])
    ds = enhanced_ct(frames, [0.0, 10.0], [1.0, 1.0], [-1024.0, -1024.0], series_uid=series_uid, patient_id="PAT-P")
    ds.ImageType = ["DERIVED", "PRIMARY", "PERFUSION", "RCBF"]
    ds.ContentQualification = "PRODUCT"
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.CTImageFrameTypeSequence[0].FrameType = ["DERIVED", "PRIMARY", "PERFUSION", "RCBF"]
        item.CTImageFrameTypeSequence[0].PixelPresentation = "COLOR"
        item.PixelValueTransformationSequence[0].RescaleType = "US"
    ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence = [_mapping("ml/100ml/s", "ml/100ml/s")]
    return ds


def _series(rng, src, name, n=2, **changes):
    """A classic CT series of ``n`` slices with ``changes`` applied to every image (None deletes)."""
    uid = f"1.2.826.0.1.3680043.9.7{abs(hash(name)) % 10**8}"
    for k in range(n):
        ds = ct_dataset(phantom_stored(rng), 3.0 * k, series_uid=uid, patient_id=f"PAT-{name}")
        for key, value in changes.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        save(ds, src / name / f"{k}.dcm")


def _ingest(src, out):
    report = run_ingest(IngestConfig(sources=[str(src)], out=str(out), image_size=0))
    return report, (out / "ingest-report.json").read_bytes()


def test_pydicoms_enhanced_ct_perfusion_map_is_a_counted_skip(tmp_path):
    path = get_testdata_file("eCT_Supplemental.dcm", download=False)
    if path is None:
        pytest.fail("eCT_Supplemental.dcm comes with pydicom-data, a test extra: pip install -e '.[test]'")
    ds = pydicom.dcmread(path)
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "PERFUSION", "RCBF"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "ect.dcm").write_bytes(open(path, "rb").read())
    report, raw = _ingest(src, tmp_path / "out")
    assert report["summary"]["slices_written"] == 0
    assert report["summary"]["skip_reasons"] == {"not attenuation: a derived parametric map (Image Type RCBF)": 1}
    (entry,) = report["skipped_files"]
    assert entry["images"] == 2                                     # both frames, one file
    assert LUT_TEXT.encode() not in raw and b"ml/100ml/s" not in raw


MARKS = {
    "map_alone": ({"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL", "MAT_SPECIFIC"]},
                  "not attenuation: a derived parametric map (Image Type MAT_SPECIFIC)"),
    "perfusion": ({"ImageType": ["DERIVED", "PRIMARY", "PERFUSION"]},
                  "not attenuation: a derived parametric map (Image Type PERFUSION)"),
    "subtraction": ({"ImageType": ["DERIVED", "PRIMARY", "AXIAL", "SUBTRACTION"]},
                    "not attenuation: pixel arithmetic, no absolute HU (Image Type SUBTRACTION)"),
    "us_on_derived": ({"ImageType": ["DERIVED", "PRIMARY", "AXIAL"], "RescaleType": "US"},
                      "not Hounsfield units (Rescale Type US, unspecified units, on a derived image)"),
    "rescale_mgml": ({"RescaleType": "MGML"}, "not Hounsfield units (Rescale Type MGML)"),
    "rescale_free_text": ({"RescaleType": FREE_TEXT}, "not Hounsfield units (Rescale Type another value)"),
    "mapping_other_units": ({"RealWorldValueMappingSequence": [_mapping("mg/mL", "milligram per milliliter")]},
                            "not Hounsfield units (its Real World Value Mapping gives units other than HU: a "
                            "parametric map)"),
    "modality_lut": ({"ModalityLUTSequence": [Dataset()]},
                     "not Hounsfield units (a Modality LUT Sequence instead of Rescale Slope and Intercept)"),
    "palette": ({"PixelPresentation": "MIXED"},
                "not Hounsfield units (Pixel Presentation MIXED: a supplemental palette makes part of the values "
                "colour codes)"),
    "service": ({"ContentQualification": "SERVICE"},
                "service image (Content Qualification SERVICE: calibration or quality control, not a patient scan)"),
    "modality_free_text": ({"Modality": "DOE"}, "not CT (modality another modality)"),
}
KEPT = {
    "plain": {},
    "us_on_original": {"RescaleType": "US"},
    "derived_primary_hu": {"ImageType": ["DERIVED", "PRIMARY", "AXIAL"], "RescaleType": "HU"},
    "monoenergetic": {"ImageType": ["DERIVED", "PRIMARY", "AXIAL", "VMI"]},
    "virtual_non_contrast": {"ImageType": ["DERIVED", "PRIMARY", "AXIAL", "MAT_REMOVED"]},
    "mapping_in_hu": {"RealWorldValueMappingSequence": [_mapping("[hnsf'U]", "Hounsfield unit")]},
    "research": {"ContentQualification": "RESEARCH", "PixelPresentation": "MONOCHROME"},
}


def test_each_mark_alone_is_its_counted_reason_and_plain_ct_is_kept(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "src"
    for name, (changes, _reason) in MARKS.items():
        _series(rng, src, name, **changes)
    for name, changes in KEPT.items():
        _series(rng, src, name, **changes)
    save(perfusion_map(rng, "1.2.826.0.1.3680043.9.7.5"), src / "enhanced" / "map.dcm")
    report, raw = _ingest(src, tmp_path / "out")
    expected = {reason: 2 for _changes, reason in MARKS.values()}
    expected["not attenuation: a derived parametric map (Image Type RCBF)"] = 1     # the enhanced map: one file
    assert report["summary"]["skip_reasons"] == expected
    assert report["summary"]["series_written"] == len(KEPT)
    assert report["summary"]["slices_written"] == 2 * len(KEPT)
    for text in (FREE_TEXT, "JANE", LUT_TEXT, "ml/100ml/s", "milligram", "DOE"):
        assert text.encode() not in raw, text
    # Rules, not damage: --strict does not stop at them.
    strict = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "strict"), image_size=0, strict=True))
    assert strict["summary"]["series_written"] == len(KEPT)


def test_the_equivalent_carries_the_real_files_marks(tmp_path):
    """The built map reads like the real file: the same marks on every frame (so the tests above stand for it)."""
    from ctssl.data.dicom_headers import read_records

    rng = np.random.default_rng(5)
    path = save(perfusion_map(rng, "1.2.826.0.1.3680043.9.7.6"), tmp_path / "map.dcm")
    records = read_records(path)
    assert [(r.image_type, r.rescale_type, r.real_world_units, r.pixel_presentation) for r in records] == \
        [(("DERIVED", "PRIMARY", "PERFUSION", "RCBF"), "US", "other", "COLOR")] * 2
    real = get_testdata_file("eCT_Supplemental.dcm", download=False)
    if real is not None:
        assert [(r.image_type, r.rescale_type, r.real_world_units, r.pixel_presentation)
                for r in read_records(real)] == [(("DERIVED", "PRIMARY", "PERFUSION", "RCBF"), "US", "other", "COLOR")] * 2

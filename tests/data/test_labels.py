"""Label join accounting (data.labels): exact matching, every row accounted for, no value in the report."""

from __future__ import annotations

from ctssl.data.labels import LabelTable
from ctssl.data.pseudonym import Keyer


def test_join_report_counts_unmatched_rows_with_a_case_hint(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("series_uid,nifti_path,z_mm,y\n1.2.3,,,1\n1.2.4,,,0\n,Case-7.nii.gz,,1\n,case-8.nii.gz,12.5,1\n")
    keyer = Keyer(b"a-salt-of-sixteen-chars")
    table = LabelTable([str(path)], keyer=keyer)
    assert table.lookup(series_uid=keyer("series-uid", "1.2.3")).common == {"y": 1}
    assert not table.lookup(series_uid="1.2.3")              # raw values never match: both sides are keyed
    labels = table.lookup(nifti_path="case-8.nii.gz")
    assert labels.slice_rows() == 1 and labels.for_slice(0, 40.0, 1.0, used := set()) == {} and not used
    table.see_folded("nifti_path", table.fold("nifti_path", "case-7.nii.gz"))
    join = table.join_report()
    assert (join["rows"], join["rows_matched"], join["rows_unmatched"]) == (4, 2, 2)
    assert [(g["key"], g["rows"], g["lines"], g["match_if_case_ignored"]) for g in join["unmatched"]] == \
        [("nifti_path", 1, [4], 1), ("series_uid", 1, [3], 0)]
    assert "1.2.4" not in str(join) and "Case-7" not in str(join) and "labels.csv" not in str(join)

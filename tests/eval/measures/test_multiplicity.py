"""Multiplicity adjustments (eval.measures.multiplicity) against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ctssl.eval.measures.multiplicity import adjust, benjamini_hochberg, format_p, holm


def test_holm_by_hand():
    # Sorted: 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, 1 x 0.04 = 0.04;
    # running maximum: 0.02, 0.03, 0.06, 0.06; back in input order.
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])               # capped at 1
    np.testing.assert_allclose(holm([0.2]), [0.2])                          # a family of one is unchanged
    assert len(holm([])) == 0


def test_benjamini_hochberg_by_hand():
    # Sorted: 0.005, 0.01, 0.03, 0.04 -> m/j p: 0.02, 0.02, 0.04, 0.04; running minimum from the top: the same.
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.04, 0.03, 0.005]), [0.02, 0.04, 0.04, 0.02])
    # 2/1 x 0.5 = 1.0, 2/2 x 0.6 = 0.6 -> running minimum from the top: 0.6, 0.6.
    np.testing.assert_allclose(benjamini_hochberg([0.5, 0.6]), [0.6, 0.6])
    # BH never exceeds Holm.
    p = np.random.default_rng(0).uniform(0, 0.2, 12)
    assert np.all(benjamini_hochberg(p) <= holm(p) + 1e-12)


def test_adjust_leaves_undefined_out_and_bounds_resampling_zeros():
    # An undefined test is not part of the family: the other two are adjusted as a family of two.
    out = adjust([0.01, None, 0.04], "holm")
    assert out[1] == (None, False)
    assert out[0][0] == pytest.approx(0.02) and out[2][0] == pytest.approx(0.04)
    # A bootstrap p of 0 from 500 resamples only says p < 1/500: its Holm value is a bound, 2 x 1/500.
    (p0, bound0), (p1, bound1) = adjust([0.0, 0.2], "holm", [500, 500])
    assert bound0 and p0 == pytest.approx(0.004) and not bound1 and p1 == pytest.approx(0.2)
    assert format_p(p0, None, bound0) == "< 0.004"
    with pytest.raises(ValueError, match="Valid adjustments are"):
        adjust([0.1], "bonferroni")


def test_format_p():
    assert format_p(0.0, 500) == "< 1/500"
    assert format_p(0.0312) == "0.031" and format_p(0.00042) == "4.2e-04" and format_p(None) == "n/a"

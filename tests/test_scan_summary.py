"""The scan pass's one-pass block summary against the NumPy it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em.checks import (
    FINITE,
    CountCheck,
    FiniteOrMissingCheck,
    OrMissingCheck,
)
from dask_em.data import scan_block
from dask_em.scan_summary import first_problem, summarize


def numpy_summary(X):
    """What the scan computed before, in NumPy: five passes over the block."""
    with np.errstate(invalid="ignore"):
        column_max = np.fmax.reduce(X, axis=0).astype(np.float64) if len(X) else None
        magnitude = np.fmax.reduce(np.abs(X), axis=0).astype(np.float64) if len(X) else None
    if column_max is None:
        column_max = magnitude = np.full(X.shape[1], -np.inf)
    nan = np.isnan(X) if X.dtype.kind == "f" else np.zeros(X.shape, bool)
    infinite = np.isinf(X) if X.dtype.kind == "f" else np.zeros(X.shape, bool)
    # a column of NaN only has no maximum: -inf, as for an empty block
    column_max = np.where(np.isnan(column_max), -np.inf, column_max)
    magnitude = np.where(np.isnan(magnitude), -np.inf, magnitude)
    return column_max, magnitude, int(nan.all(axis=1).sum()), int(nan.sum()), int(infinite.sum())


def blocks():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1000, 5)) * 10
    with_nan = X.copy()
    with_nan[rng.random(X.shape) < 0.2] = np.nan
    with_nan[7] = np.nan  # a row of NaN only
    with_nan[:, 3] = np.nan  # a column of NaN only
    with_inf = with_nan.copy()
    with_inf[12, 1], with_inf[400, 4] = np.inf, -np.inf
    negative = -np.abs(X)  # every maximum below 0: a start at 0 would be wrong
    return {
        "float64": X,
        "float32": X.astype(np.float32),
        "nan": with_nan,
        "nan float32": with_nan.astype(np.float32),
        "inf": with_inf,
        "negative": negative,
        "integers": rng.integers(0, 9, size=(300, 4)),
        "empty": X[:0],
        "one row of NaN": np.full((1, 3), np.nan),
    }


@pytest.mark.parametrize("name", list(blocks()))
def test_summary_is_what_numpy_gives(name):
    X = blocks()[name]
    ours = summarize(X)
    column_max, magnitude, n_all_missing, n_nan, n_inf = numpy_summary(X)
    np.testing.assert_array_equal(ours.column_max, column_max)
    np.testing.assert_array_equal(ours.magnitude, magnitude)
    assert (ours.n_all_missing, ours.n_nan, ours.n_inf) == (n_all_missing, n_nan, n_inf)


@pytest.mark.parametrize("name", list(blocks()))
@pytest.mark.parametrize(
    "check",
    [FINITE, FiniteOrMissingCheck(), CountCheck(), OrMissingCheck(CountCheck(), "counts")],
    ids=["finite", "finite or NaN", "counts", "counts or NaN"],
)
def test_first_problem_is_the_checks_own(name, check):
    X = blocks()[name]
    expected = check.first_problem(X, 100)
    ours = first_problem(check, X, summarize(X), 100)
    assert (ours is None) == (expected is None)
    if expected is not None:
        assert ours[:3] == expected[:3]
        assert np.array_equal(ours[3], expected[3], equal_nan=True)


def test_scan_block_reports_the_bad_value_and_no_maxima_for_a_bad_block():
    X = blocks()["inf"]
    scan = scan_block(FiniteOrMissingCheck(), X, None, 10, 0, 5000)
    assert scan["problem"][:3] == (2, 5012, 1)
    assert np.all(scan["column_max"] == -np.inf) and np.all(scan["magnitude"] == -np.inf)
    assert scan["n_all_missing"] == numpy_summary(X)[2] >= 1
    good = scan_block(FiniteOrMissingCheck(), blocks()["nan"], None, 10, 0, 0)
    assert good["problem"] is None and good["n_all_missing"] == numpy_summary(X)[2]
    np.testing.assert_array_equal(good["column_max"], numpy_summary(blocks()["nan"])[0])


@pytest.mark.parametrize("name", list(blocks()))
def test_the_numpy_fallback_gives_the_same_summary(name, monkeypatch):
    X = blocks()[name]
    compiled = summarize(X)
    monkeypatch.setattr("dask_em.scan_summary.HAVE_NUMBA", False)
    fallback = summarize(X)
    for ours, theirs in zip(fallback, compiled, strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_the_sample_is_the_drawn_rows_in_float32_for_float32_data(dtype):
    # float32 rows travel as float32 (half the bytes of the scan's result); every other
    # dtype as float64; the client widens them (exactly) before initialization
    X = (np.random.default_rng(2).normal(size=(500, 4)) * 100).astype(dtype)
    scan = scan_block(FINITE, X, None, 40, 7, 0)
    assert scan["sample"].dtype == (np.float32 if dtype == np.float32 else np.float64)
    rows = np.sort(np.random.default_rng(7).choice(500, size=40, replace=False))
    np.testing.assert_array_equal(scan["sample"], X[rows].astype(scan["sample"].dtype))

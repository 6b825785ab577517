"""The closed-form inverses of small SPD blocks, and the split of a block's rows with NaN
into frequent patterns (loops over their runs) and rare ones (row by row, row-major)."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em.families import gaussian_compiled
from dask_em.families.gaussian import GaussianFamily
from dask_em.families.gaussian_missing_compiled import (
    RUN_ROWS,
    SLICE_ROWS,
    pattern_order,
    rare_patterns,
)
from dask_em.families.gaussian_missing_runs import inverse_scratch, pattern_inverses
from dask_em.families.small_spd import LARGEST_CLOSED_FORM, small_inverses
from tests.helpers import random_gaussian_params
from tests.test_compiled_kernels import assert_same_stats

pytestmark = pytest.mark.skipif(
    not gaussian_compiled.COMPILED, reason="the compiled kernels are off"
)


def _precisions(rng, n_components, n_features, scales):
    A = rng.normal(size=(n_components, n_features, 2 * n_features))
    spd = A @ A.transpose(0, 2, 1) / (2 * n_features) + 0.1 * np.eye(n_features)
    return spd * np.asarray(scales)[:, None, None]


@pytest.mark.parametrize("q", range(1, LARGEST_CLOSED_FORM + 1))
def test_closed_form_inverses_match_numpy_for_every_small_q(q):
    # components of very different scales side by side, features in any order of the
    # precision (the pattern's indices ascend, as the sort gives them)
    rng = np.random.default_rng(q)
    n_features = 11
    precisions = _precisions(rng, 6, n_features, [1e-6, 1e-3, 1.0, 1.0, 1e3, 1e6])
    for _ in range(5):
        index = np.zeros(n_features, dtype=np.int64)
        index[:q] = np.sort(rng.choice(n_features, q, replace=False))
        inverse = np.full((6, n_features, n_features), np.nan)
        log_dets = np.full(6, np.nan)
        assert small_inverses(precisions, index, q, inverse, log_dets)
        block = precisions[:, index[:q]][:, :, index[:q]]
        sign, expected_log_det = np.linalg.slogdet(block)
        assert np.all(sign > 0)
        np.testing.assert_allclose(log_dets, expected_log_det, rtol=1e-12, atol=1e-12)
        for k in range(6):
            expected = np.linalg.inv(block[k])
            scale = np.abs(expected).max()
            assert np.abs(inverse[k, :q, :q] - expected).max() <= 1e-11 * scale


def test_closed_forms_leave_larger_blocks_and_extreme_determinants_to_cholesky():
    # q above the closed forms, or a determinant outside [1e-300, 1e300]: small_inverses
    # declines and pattern_inverses factors the blocks in lockstep, still exactly
    rng = np.random.default_rng(0)
    n_features = 9
    precisions = _precisions(rng, 3, n_features, [1e-70, 1.0, 1e70])
    for q in (LARGEST_CLOSED_FORM, LARGEST_CLOSED_FORM + 1):
        index = np.zeros(n_features, dtype=np.int64)
        index[:q] = np.arange(q)
        inverse = np.empty((3, n_features, n_features))
        assert not small_inverses(precisions, index, q, inverse, np.empty(3))
        cache = (np.full(n_features + 1, -1), np.empty((3, n_features, n_features)), np.empty(3))
        pattern_inverses(precisions, index, q, cache, inverse_scratch(n_features, 3))
        block = precisions[:, :q, :q]
        np.testing.assert_allclose(cache[2], np.linalg.slogdet(block)[1], rtol=1e-12)
        for k in range(3):
            np.testing.assert_allclose(cache[1][k, :q, :q], np.linalg.inv(block[k]), rtol=1e-9)


def test_rare_patterns_are_those_with_fewer_rows_than_a_run():
    keys = np.array([1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 5, 9, 9])
    expected = [True] * 3 + [False] * 8 + [True] * 3
    assert rare_patterns(keys, len(keys)).tolist() == expected
    assert RUN_ROWS == 8
    assert rare_patterns(np.empty(0, dtype=np.int64), 4).tolist() == [False] * 4


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_a_frequent_pattern_cut_by_a_slice_end_and_rare_patterns_match_the_reference(
    covariance_type,
):
    # pattern A fills a slice but for 3 rows, which go to pattern B (a short piece of a
    # frequent pattern, row by row inside the feature-major slice); B's other rows start
    # the next slice; rare patterns of q = 1..7 (row by row, row-major) and rows with
    # nothing observed come after them in the sort
    rng = np.random.default_rng(3)
    n_features = 8
    family = GaussianFamily(covariance_type=covariance_type)
    params = random_gaussian_params(family, 3, n_features, rng)
    n_a, n_b = SLICE_ROWS - 3, 20
    # rare patterns, each in one row: q = 1..7, all distinct and none is A's or B's
    rare = [np.arange(n_features - q, n_features) for q in range(1, 8)]
    rare += [np.arange(1, q + 2) for q in range(1, 6)]
    n_rows = n_a + n_b + len(rare) + 2 + 50
    X = rng.normal(size=(n_rows, n_features)) + params["means"][rng.integers(0, 3, n_rows)]
    X[:n_a, 0] = np.nan  # key 1
    X[n_a : n_a + n_b, 1] = np.nan  # key 2
    for i, features in enumerate(rare):
        X[n_a + n_b + i, features] = np.nan
    X[n_a + n_b + len(rare) : n_a + n_b + len(rare) + 2] = np.nan  # nothing observed
    order = rng.permutation(n_rows)
    X = X[order]
    rows, keys = pattern_order(X, np.flatnonzero(np.isnan(X).any(axis=1)))
    flagged = rare_patterns(keys, len(rows))
    assert flagged.sum() == len(rare) + 2  # and the rows with nothing observed
    assert not flagged[keys == 1].any() and not flagged[keys == 2].any()
    for w in (None, rng.random(n_rows) * 2.0):
        assert_same_stats(
            family.block_stats(params, X, w),
            family.reference_block_stats(params, X, w),
            ("weight", "loglik", "nk", "means", "scatter"),
        )

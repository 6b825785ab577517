"""The closed-form inverses of small SPD blocks, and the split of a block's rows with NaN
into frequent patterns (loops over their runs) and rare ones (row by row, the components
in lockstep)."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em.families import gaussian_compiled
from dask_em.families.gaussian import GaussianFamily
from dask_em.families.gaussian_missing_compiled import (
    RUN_ROWS,
    SLICE_ROWS,
)
from dask_em.families.gaussian_missing_lockstep import lockstep_inverses
from dask_em.families.gaussian_missing_patterns import pattern_groups, pattern_order
from dask_em.families.gaussian_missing_runs import (
    RESPONSIBILITY_FLOOR,
    floor_responsibilities,
    inverse_scratch,
    pattern_cache,
    pattern_inverses,
)
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
        cache = pattern_cache(n_features, 3)
        pattern_inverses(precisions, index, q, cache, inverse_scratch(n_features, 3))
        block = precisions[:, :q, :q]
        np.testing.assert_allclose(cache[2], np.linalg.slogdet(block)[1], rtol=1e-12)
        for k in range(3):
            np.testing.assert_allclose(cache[1][k, :q, :q], np.linalg.inv(block[k]), rtol=1e-9)


def test_lockstep_inverses_match_numpy_component_last_for_every_q():
    # the rare rows' inverses: all K blocks factored side by side, written (q, q, K); the
    # gathered blocks come from the component-last precisions; q from 1 to D - 1
    rng = np.random.default_rng(5)
    n_features, n_components = 9, 5
    precisions = _precisions(rng, n_components, n_features, [1e-70, 1e-3, 1.0, 1e3, 1e70])
    precisions_t = np.ascontiguousarray(precisions.transpose(1, 2, 0))
    a = np.empty((n_features, n_features, n_components))
    chol = inverse_scratch(n_features, n_components)[1]
    for q in range(1, n_features):
        index = np.zeros(n_features, dtype=np.int64)
        index[:q] = np.sort(rng.choice(n_features, q, replace=False))
        inverse_t = np.full((n_features, n_features, n_components), np.nan)
        log_dets = np.full(n_components, np.nan)
        lockstep_inverses(precisions_t, index, q, a, inverse_t, log_dets, chol)
        block = precisions[:, index[:q]][:, :, index[:q]]
        np.testing.assert_allclose(log_dets, np.linalg.slogdet(block)[1], rtol=1e-12)
        for k in range(n_components):
            expected = np.linalg.inv(block[k])
            scale = np.abs(expected).max()
            assert np.abs(inverse_t[:q, :q, k] - expected).max() <= 1e-11 * scale


@pytest.mark.parametrize("n_features", [16, 20, 64])
def test_rows_of_rare_patterns_come_after_the_others(n_features):
    # one counting sort for D <= 16, a radix sort and a split for 16 < D <= 63; no masks
    # (and no split: the runs compare rows) past 63 features
    rng = np.random.default_rng(n_features)
    counts = [RUN_ROWS - 1, RUN_ROWS, 1, 2, RUN_ROWS + 3]
    features = [[0], [3, n_features - 1], [1, 2], [5], [4, 7, n_features - 2]]
    X = rng.normal(size=(sum(counts) + 20, n_features))  # 20 complete rows
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    for row, label in enumerate(labels):
        X[row, features[label]] = np.nan
    rows = rng.permutation(np.flatnonzero(np.isnan(X).any(axis=1)))  # in any order
    ordered, keys, n_frequent = pattern_groups(X, rows, None, RUN_ROWS)
    if n_features > 63:
        assert ordered.tolist() == rows.tolist() and n_frequent == len(rows) and len(keys) == 0
        # the complete-row kernels hand over a nonzero key a row past 63 features
        given = pattern_groups(X, rows, np.ones(len(rows), dtype=np.int64), RUN_ROWS)
        assert given[0].tolist() == rows.tolist() and given[2] == len(rows)
        return
    bits = 2 ** np.arange(n_features, dtype=np.int64)
    masks = np.isnan(X[ordered]).astype(np.int64) @ bits
    assert keys.tolist() == masks.tolist()
    rare_labels = {label for label, count in enumerate(counts) if count < RUN_ROWS}
    assert n_frequent == sum(c for label, c in enumerate(counts) if label not in rare_labels)
    assert {labels[row] for row in ordered[:n_frequent]}.isdisjoint(rare_labels)
    assert {labels[row] for row in ordered[n_frequent:]} == rare_labels
    position = {row: i for i, row in enumerate(rows.tolist())}
    groups = ((ordered[:n_frequent], keys[:n_frequent]), (ordered[n_frequent:], keys[n_frequent:]))
    for part, part_keys in groups:
        assert (np.diff(part_keys) >= 0).all()  # pattern order within each group
        for key in set(part_keys.tolist()):  # a pattern's rows in the order they came in
            came = [position[row] for row in part[part_keys == key].tolist()]
            assert came == sorted(came)
    given = pattern_groups(X, rows, np.isnan(X[rows]).astype(np.int64) @ bits, RUN_ROWS)
    assert given[0].tolist() == ordered.tolist() and given[2] == n_frequent
    empty = pattern_groups(X, rows[:0], None, RUN_ROWS)
    assert len(empty[0]) == len(empty[1]) == empty[2] == 0
    # keys the compiled sort cannot take (it indexes its buckets by them, unchecked)
    for bad in (given[1][:-1], np.full(len(rows), 1 << n_features), -np.ones(len(rows))):
        with pytest.raises(ValueError, match="pattern keys"):
            pattern_groups(X, rows, bad, RUN_ROWS)


def test_closed_forms_keep_their_accuracy_on_badly_scaled_blocks():
    # features on scales from 1e-4 to 1e4 (condition numbers near 1e16 from the scaling
    # alone): compared in the scaled coordinates, where the block is well conditioned
    rng = np.random.default_rng(7)
    n_features = 6
    base = _precisions(rng, 4, n_features, [1.0, 1.0, 1.0, 1.0])
    scales = 10.0 ** rng.uniform(-4, 4, size=(4, n_features))
    precisions = base * scales[:, :, None] * scales[:, None, :]
    for q in range(1, LARGEST_CLOSED_FORM + 1):
        index = np.zeros(n_features, dtype=np.int64)
        index[:q] = np.sort(rng.choice(n_features, q, replace=False))
        inverse = np.empty((4, n_features, n_features))
        log_dets = np.empty(4)
        if not small_inverses(precisions, index, q, inverse, log_dets):
            continue  # a determinant out of range: the Cholesky path's (tested above)
        m = index[:q]
        for k in range(4):
            s = scales[k, m]
            expected = np.linalg.inv(base[k][np.ix_(m, m)])  # = s P^-1 s in scaled terms
            got = inverse[k, :q, :q] * s[:, None] * s[None, :]
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9 * abs(expected).max())
            expected_log_det = np.linalg.slogdet(base[k][np.ix_(m, m)])[1] + 2 * np.log(s).sum()
            assert log_dets[k] == pytest.approx(expected_log_det, rel=1e-12, abs=1e-10)


def test_the_floor_of_the_responsibilities_leaves_them_out_of_nk():
    # below 1e-200: 0 and out of nk; at the floor, NaN and columns past m: untouched
    floor = RESPONSIBILITY_FLOOR
    r = np.array(
        [[0.5, floor, floor / 2, -0.0, np.nan, 1e-300], [1e-250, 0.25, 0.0, 1.0, 0.5, 0.0]]
    )
    nk = np.zeros(2)
    before = r.copy()
    floor_responsibilities(r, 5, nk)
    np.testing.assert_array_equal(r[0, :5], [0.5, floor, 0.0, 0.0, np.nan])
    np.testing.assert_array_equal(r[1, :5], [0.0, 0.25, 0.0, 1.0, 0.5])
    assert r[0, 5] == before[0, 5]  # past m
    assert nk[0] == -floor / 2 and nk[1] == -1e-250


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_a_frequent_pattern_cut_by_a_slice_end_and_rare_patterns_match_the_reference(
    covariance_type,
):
    # full: pattern A fills a slice but for 3 rows, which go to pattern B (a short piece
    # of a frequent pattern, row by row inside the feature-major slice); B's other rows
    # start the next slice; more than a slice of rows of rare patterns, q = 2..7 (row by
    # row, components in lockstep, the last slice partial) and rows with nothing
    # observed come after them in the sort.  tied takes its own kernel, which has the
    # same layout of runs.
    rng = np.random.default_rng(3)
    n_features = 8
    family = GaussianFamily(covariance_type=covariance_type)
    params = random_gaussian_params(family, 3, n_features, rng)
    n_a, n_b = SLICE_ROWS - 3, 20
    # rare patterns: 300 rows of random subsets of q >= 2 features (so none is A's or
    # B's); 247 such patterns, so each has a few rows, fewer than a run's
    subsets = [
        np.flatnonzero(bits >> np.arange(n_features) & 1)
        for bits in range(1, 2**n_features - 1)
        if 2 <= bin(bits).count("1") <= n_features - 1
    ]
    rare = [subsets[i] for i in rng.integers(0, len(subsets), 300)]
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
    _, grouped_keys, n_frequent = pattern_groups(X, rows, None, RUN_ROWS)
    patterns, counts = np.unique(keys, return_counts=True)
    assert counts[patterns > 2].max() < RUN_ROWS  # every pattern but A's and B's is rare
    assert (
        len(rows) - n_frequent == len(rare) + 2 > SLICE_ROWS
    )  # and the rows with nothing observed
    assert set(grouped_keys[:n_frequent].tolist()) == {1, 2}
    for w in (None, rng.random(n_rows) * 2.0):
        assert_same_stats(
            family.block_stats(params, X, w),
            family.reference_block_stats(params, X, w),
            ("weight", "loglik", "nk", "means", "scatter"),
        )


@pytest.mark.parametrize("n_components", [1, 4])
def test_rare_patterns_of_float32_data_match_the_reference(n_components):
    # the rows of rare patterns (every row here has a pattern of its own, q = 1..D-1) of
    # float32 data, one component and several: the lockstep kernel's loops over K of
    # length 1, and its float32 version, against the NumPy reference in float64
    rng = np.random.default_rng(11)
    n_features = 7
    family = GaussianFamily(covariance_type="full")
    params = random_gaussian_params(family, n_components, n_features, rng)
    labels = rng.integers(0, n_components, 400)
    X = (rng.normal(size=(400, n_features)) + params["means"][labels]).astype(np.float32)
    X[rng.random(X.shape) < 0.4] = np.nan
    rows = np.flatnonzero(np.isnan(X).any(axis=1))
    n_frequent = pattern_groups(X, rows, None, RUN_ROWS)[2]
    assert n_frequent < 0.5 * len(rows)  # most rows take the lockstep path
    for w in (None, rng.random(len(X)) * 2.0):
        assert_same_stats(
            family.block_stats(params, X, w),
            family.reference_block_stats(params, X, w),
            ("weight", "loglik", "nk", "means", "scatter"),
        )

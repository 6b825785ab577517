"""Compiled fused kernels against the NumPy reference kernels, every mixture family.

``block_stats`` runs the compiled kernels (numba) where it can; ``reference_block_stats``
is the NumPy reference they must reproduce to 1e-12 relative.  With
``DASK_EM_DISABLE_JIT=1`` both are the reference, and these tests still run (the
fallback path); ``test_fallback_without_numba`` checks that path in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dask_em.families import discrete_compiled, gaussian_compiled
from dask_em.families.bernoulli import BernoulliFamily
from dask_em.families.categorical import CategoricalFamily
from dask_em.families.gaussian import COVARIANCE_TYPES, GaussianFamily
from dask_em.families.gaussian_missing_compiled import RUN_ROWS
from dask_em.families.gaussian_missing_patterns import pattern_order
from dask_em.families.gaussian_missing_runs import (
    inverse_scratch,
    pattern_cache,
    pattern_inverses,
    spd_inverse,
)
from dask_em.families.gaussian_slice_loops import SLICE_ROWS, pair_moments, slice_rows
from dask_em.families.poisson import PoissonFamily
from dask_em.families.vector_exp import exp_chunk_single, exp_slice
from dask_em.families.vector_log import log_chunk
from tests.helpers import random_gaussian_params

RTOL = 1e-12


def assert_same_stats(compiled, reference, keys, rtol=RTOL, floors=None):
    """Every field within ``rtol`` of the largest entry of the reference's (or its floor)."""
    assert compiled["n_rows"] == reference["n_rows"]
    for key in keys:
        expected = np.asarray(reference[key], dtype=np.float64)
        scale = max(float(np.max(np.abs(expected))), (floors or {}).get(key, 1e-300))
        error = float(np.max(np.abs(np.asarray(compiled[key]) - expected))) / scale
        assert error <= rtol, f"{key}: relative difference {error:.3g}"


def _through_compiled_caller(values):
    """exp_slice as the kernels call it: from compiled code, which picks the dtype's exp."""
    from dask_em.families.jit import jit

    @jit
    def apply(values, high_bits, low_bits):
        for start in range(0, len(values), 256):
            exp_slice(values[start : start + 256], high_bits, low_bits)

    apply(values, np.empty(256, dtype=np.int64), np.empty(256, dtype=np.int64))


@pytest.mark.skipif(not gaussian_compiled.COMPILED, reason="the compiled kernels are off")
def test_single_precision_exp_is_within_one_and_a_half_ulp_of_the_exact_value():
    # Bayes' rule's exp in float32 mode: normal results within 1.5 ulp (of float32) of the
    # exact value; below float32's normal range 0 (flushed: no subnormal comes out);
    # inf and NaN as NumPy's; from compiled code, float32 takes this exp, float64 the
    # double-precision one
    rng = np.random.default_rng(1)
    special = [-np.inf, np.inf, np.nan, 0.0, -0.0, 88.72, 88.73, 89.0, 1e4, -87.3, -87.4,
               -103.2, -103.3, -103.98, -104.0, -1e4]  # fmt: skip
    x = np.concatenate(
        [rng.uniform(-105, 90, 200_000), rng.uniform(-1, 1, 20_000), special]
    ).astype(np.float32)
    with np.errstate(over="ignore"):
        exact = np.exp(x.astype(np.float64))
        rounded = exact.astype(np.float32)
    y = x.copy()
    exp_chunk_single(y, np.empty(len(y), np.int32), np.empty(len(y), np.int32))
    assert y.dtype == np.float32
    tiny = float(np.finfo(np.float32).tiny)
    normal = np.isfinite(rounded) & (rounded >= tiny)
    ulps = np.abs(y[normal] - exact[normal]) / np.spacing(rounded[normal])
    assert ulps.max() <= 1.5
    assert np.all(y[exact < tiny] == 0.0) and (exact < tiny).sum() > 10_000
    np.testing.assert_array_equal(y[np.isinf(rounded)], rounded[np.isinf(rounded)])
    assert np.isnan(y[np.isnan(x)]).all()
    through_caller = x.copy()
    _through_compiled_caller(through_caller)
    np.testing.assert_array_equal(through_caller, y)  # the float32 exp, bit for bit
    wide = x.astype(np.float64)
    _through_compiled_caller(wide)  # float64 through the same call: the double-precision exp
    finite = np.isfinite(exact) & (exact > 1e-300)
    np.testing.assert_array_max_ulp(wide[finite], exact[finite], maxulp=1)
    assert not np.array_equal(wide.astype(np.float32), y)  # not the float32 exp


def test_vector_log_is_within_two_ulp_of_numpy():
    # Bayes' rule's log of each row's total: every binade, subnormals and near 1, where
    # log is small and the error of s = (m - 1)/(m + 1) counts most
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            np.exp(rng.uniform(-744.0, 709.7, 200_000)),
            rng.uniform(0.5, 2.0, 50_000),
            rng.uniform(1.0, 8.0, 50_000),
            [5e-324, 1e-310, 2.2250738585072014e-308, 0.5, 1.0, 2.0, 1.7976931348623157e308],
            [np.nextafter(1.0, 2.0), np.nextafter(1.0, 0.0), np.sqrt(0.5), np.sqrt(2.0)],
        ]
    )
    y = x.copy()
    log_chunk(y, np.empty(len(x), dtype=np.int64), np.empty(len(x)))
    expected = np.log(x)
    ulps = np.abs(y - expected) / np.spacing(np.abs(expected))
    assert ulps.max() <= 2.0
    special = np.array([0.0, -0.0, np.inf, np.nan, -1.0, -np.inf, -1e-310])
    y = special.copy()
    log_chunk(y, np.empty(len(y), dtype=np.int64), np.empty(len(y)))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_array_equal(y, np.log(special))


def gaussian_block(rng, n_rows, n_features, nan_share):
    X = rng.normal(size=(n_rows, n_features)) * 3.0 + 50.0
    if nan_share:
        X[rng.random(X.shape) < nan_share] = np.nan
        X[0] = np.nan  # a row with nothing observed
    return X


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("nan_share", [0.0, 0.1])
@pytest.mark.parametrize("n_rows", [1, 2500])
def test_gaussian_compiled_matches_reference(covariance_type, weighted, nan_share, n_rows):
    rng = np.random.default_rng(11)
    family = GaussianFamily(covariance_type=covariance_type)
    params = random_gaussian_params(family, 5, 7, rng)
    params["center"] = params["center"] + 50.0
    params["means"] = params["means"] + 50.0
    X = gaussian_block(rng, n_rows, 7, nan_share if n_rows > 1 else 0.0)
    w = rng.random(n_rows) * 2.0 if weighted else None
    # the scatter of one row is rounding noise: measure it against the second moments
    second_moments = float(np.nansum((X - params["center"]) ** 2))
    assert_same_stats(
        family.block_stats(params, X, w),
        family.reference_block_stats(params, X, w),
        ("weight", "loglik", "nk", "means", "scatter"),
        floors={"scatter": second_moments} if n_rows == 1 else None,
    )


@pytest.mark.skipif(not gaussian_compiled.COMPILED, reason="the compiled kernels are off")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_components", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("n_features", [1, 2, 6, 17])
def test_pair_moments_match_the_dense_products(dtype, n_components, n_features):
    # the moment product of the full and tied kernels: every pair of the upper triangle
    # (its count not a multiple of four for most n_features), every component (groups
    # of four and the rest one at a time), only the first m rows, out overwritten
    rng = np.random.default_rng(n_components * 100 + n_features)
    xt = np.ones((n_features + 1, 30), dtype=dtype)
    xt[:n_features] = rng.normal(size=(n_features, 30))
    r = rng.random((n_components, 37)).astype(dtype)  # wider than the slice, as in a kernel
    first, second = (i.astype(np.int64) for i in np.triu_indices(n_features + 1))
    for m in (0, 29):
        out = np.full((n_components, len(first)), np.nan, dtype=dtype)
        pair_moments(r, xt, m, first, second, out, dtype(0))
        wide = xt[:, :m].astype(np.float64)
        expected = np.einsum("ki,di,ei->kde", r[:, :m].astype(np.float64), wide, wide)
        expected = expected[:, first, second]
        rtol = 1e-13 if dtype == np.float64 else 1e-5
        atol = rtol * max(np.abs(expected).max(initial=0.0), 1.0)
        np.testing.assert_allclose(out, expected, rtol=rtol, atol=atol)


@pytest.mark.skipif(not gaussian_compiled.COMPILED, reason="the compiled kernels are off")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pairs_per_pass", [4, 2])
def test_both_pair_moment_passes_match_the_dense_products(dtype, pairs_per_pass):
    # pair_moments takes one of them by the host (PAIRS_PER_PASS): both are checked on
    # every host, over pair counts that are (28 for n_features 6: multiples of 4 and 2)
    # and are not multiples of the pass
    from dask_em.families import gaussian_slice_loops

    four_components = {
        4: gaussian_slice_loops._four_components,
        2: gaussian_slice_loops._four_components_two_pairs,
    }[pairs_per_pass]
    rng = np.random.default_rng(pairs_per_pass)
    for n_features in (1, 2, 5, 6, 16):
        xt = np.ones((n_features + 1, 40), dtype=dtype)
        xt[:n_features] = rng.normal(size=(n_features, 40))
        r = rng.random((6, 40)).astype(dtype)
        first, second = (i.astype(np.int64) for i in np.triu_indices(n_features + 1))
        out = np.full((6, len(first)), np.nan, dtype=dtype)
        four_components(r, np.int64(1), xt, 33, first, second, out, dtype(0))  # k = 1..4
        wide = xt[:, :33].astype(np.float64)
        expected = np.einsum("ki,di,ei->kde", r[1:5, :33].astype(np.float64), wide, wide)
        rtol = 1e-13 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(
            out[1:5], expected[:, first, second], rtol=rtol, atol=rtol * np.abs(expected).max()
        )
        assert np.isnan(out[[0, 5]]).all()  # the other components untouched


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_compiled_many_missing_values_match_reference(covariance_type):
    # 60 % missing: rows with every q from 0 to D, the q x q solves of every size
    rng = np.random.default_rng(5)
    family = GaussianFamily(covariance_type=covariance_type)
    params = random_gaussian_params(family, 4, 9, rng)
    X = rng.normal(size=(3000, 9)) + params["means"][rng.integers(0, 4, 3000)]
    gone = rng.random(X.shape) < 0.6
    gone[:40] = False  # some complete rows in the same block
    X[gone] = np.nan
    n_missing = np.isnan(X).sum(axis=1)
    assert {0, 1, 5, 8, 9} <= set(n_missing.tolist())
    w = rng.random(len(X)) * 2.0
    assert_same_stats(
        family.block_stats(params, X, w),
        family.reference_block_stats(params, X, w),
        ("weight", "loglik", "nk", "means", "scatter"),
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_compiled_missing_values_far_from_the_centre(covariance_type):
    # components about 300 apart with unit-scale spread: the rows lie far from the
    # centre (the mixture's mean), where an expanded quadratic form (tied: xt.Pxt -
    # 2 o_k.xt + mc_k.o_k) loses what its terms' size exceeds v^T P v by
    rng = np.random.default_rng(11)
    family = GaussianFamily(covariance_type=covariance_type)
    params = random_gaussian_params(family, 4, 6, rng, mean_scale=300.0)
    X = rng.normal(size=(2000, 6)) * 2.0 + params["means"][rng.integers(0, 4, 2000)]
    X[rng.random(X.shape) < 0.2] = np.nan
    compiled = family.block_stats(params, X)
    reference = family.reference_block_stats(params, X)
    assert_same_stats(compiled, reference, ("weight", "loglik", "nk", "means"))
    # the scatter about each mean is 1e-5 of the moments about the centre it comes from
    assert_same_stats(compiled, reference, ("scatter",), rtol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_features", [17, 70])
def test_gaussian_compiled_missing_values_in_runs_of_every_length(covariance_type, n_features):
    # rows with NaN are taken in runs of one pattern: long runs loop over their rows,
    # short ones (fewer than RUN_ROWS) row by row, in any order of the two within a slice
    # and across slice ends; rows with nothing observed among them; past 63 features the
    # rows are not sorted by pattern at all
    rng = np.random.default_rng(n_features)
    family = GaussianFamily(covariance_type=covariance_type)
    params = random_gaussian_params(family, 3, n_features, rng)
    X = rng.normal(size=(1500, n_features)) + params["means"][rng.integers(0, 3, 1500)]
    run_lengths = rng.choice([1, 2, RUN_ROWS - 1, RUN_ROWS, 40, 300], size=25)
    patterns = rng.random((len(run_lengths), n_features)) < 0.15
    patterns[3] = True  # a run of rows with nothing observed
    labels = np.repeat(np.arange(len(run_lengths)), run_lengths)[: len(X)]
    X[: len(labels)][patterns[labels]] = np.nan
    some_zero = rng.random(len(X)) * 2.0
    some_zero[::7] = 0.0  # rows of weight 0 within runs of either kind
    for w in (None, rng.random(len(X)) * 2.0, some_zero):
        assert_same_stats(
            family.block_stats(params, X, w),
            family.reference_block_stats(params, X, w),
            ("weight", "loglik", "nk", "means", "scatter"),
        )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_rows", [1, 2, 3])
def test_gaussian_compiled_blocks_with_fewer_rows_than_missing_values(covariance_type, n_rows):
    # a block whose rows with NaN are fewer than the features one of them misses
    rng = np.random.default_rng(n_rows)
    family = GaussianFamily(covariance_type=covariance_type)
    params = random_gaussian_params(family, 4, 7, rng)
    X = rng.normal(size=(n_rows, 7)) + params["means"][0]
    X[0, [0, 2, 3, 5, 6]] = np.nan
    for w in (None, rng.random(n_rows) + 0.5):
        assert_same_stats(
            family.block_stats(params, X, w),
            family.reference_block_stats(params, X, w),
            ("weight", "loglik", "nk", "means", "scatter"),
            floors={"scatter": 1.0} if n_rows == 1 else None,
        )


def test_pattern_order_of_no_rows_and_of_one_row():
    X = np.array([[1.0, np.nan, 3.0], [np.nan, 2.0, np.nan]])
    ordered, keys = pattern_order(X, np.empty(0, dtype=np.int64))
    assert len(ordered) == 0 and len(keys) == 0
    ordered, keys = pattern_order(X, np.array([1]))
    assert ordered.tolist() == [1] and keys.tolist() == [0b101]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_features", [3, 16, 63, 64])
def test_complete_row_kernels_hand_over_the_rows_with_nan_and_their_masks(n_features, dtype):
    # the complete-row kernels find the rows with NaN, and their patterns' bit masks, in
    # their copy of each slice; the missing-value E-step sorts by those masks, so they
    # must be the ones pattern_order would compute (past 63 features: any nonzero value)
    rng = np.random.default_rng(n_features)
    n_rows, n_components = 1500, 3
    X = rng.normal(size=(n_rows, n_features)).astype(dtype)
    gone = rng.random(X.shape) < 0.5 / n_features
    gone[:300] = False  # the first slice (256 rows) has no NaN: its fast copy
    gone[-1, -1] = True  # the last row, in the last (short) slice
    X[gone] = np.nan
    expected = np.flatnonzero(np.isnan(X).any(axis=1))
    assert expected[0] >= 256 and len(expected) > 100
    center = np.zeros(n_features)
    means_c = rng.normal(size=(n_components, n_features))
    const = np.zeros(n_components)
    w = np.empty(0)
    factors = np.broadcast_to(np.eye(n_features), (n_components, n_features, n_features))
    kernels = {
        "full": lambda: gaussian_compiled.full_block_moments(
            X, center, np.ascontiguousarray(factors), means_c, const, w, dtype
        ),
        "tied": lambda: gaussian_compiled.full_block_moments(
            X, center, np.eye(n_features), means_c, const, w, dtype
        ),
        "diag": lambda: gaussian_compiled.diag_block_moments(
            X, center, means_c, np.ones((n_components, n_features)), const, w, dtype
        ),
    }
    for name, kernel in kernels.items():
        _, incomplete, keys = kernel()
        np.testing.assert_array_equal(incomplete, expected, err_msg=name)
        if n_features <= 63:
            bits = 2 ** np.arange(n_features, dtype=np.int64)
            np.testing.assert_array_equal(keys, np.isnan(X[incomplete]).astype(np.int64) @ bits)
            _, masks = pattern_order(X, incomplete)  # masks computed from the rows
            ordered, handed = pattern_order(X, incomplete, keys)
            np.testing.assert_array_equal(handed, masks, err_msg=name)
            assert ordered.tolist() == pattern_order(X, incomplete)[0].tolist()
        else:
            assert (keys != 0).all()


@pytest.mark.parametrize("n_features", [5, 17, 50, 63, 64])
def test_pattern_order_puts_each_pattern_together_in_row_order(n_features):
    # a radix sort of the NaN bit masks, 16 bits a pass (up to 4 passes); past 63
    # features the rows stay as given
    rng = np.random.default_rng(n_features)
    X = rng.normal(size=(3000, n_features))
    patterns = rng.random((40, n_features)) < 0.3
    patterns[:, 0] = True  # every row has NaN
    X[patterns[rng.integers(0, 40, len(X))]] = np.nan
    rows = rng.permutation(len(X))[:2000]
    ordered, keys = pattern_order(X, rows)
    assert sorted(ordered.tolist()) == sorted(rows.tolist())
    if n_features > 63:
        np.testing.assert_array_equal(ordered, rows)
        assert len(keys) == 0  # runs are found by comparing the rows' masks
        return
    bits = 2 ** np.arange(n_features)
    assert keys.tolist() == [int(np.isnan(X[row]) @ bits) for row in ordered]
    masks = [np.isnan(X[row]).tobytes() for row in ordered]
    runs = [mask for i, mask in enumerate(masks) if i == 0 or mask != masks[i - 1]]
    assert len(runs) == len(set(masks))  # each pattern in one run
    position = {row: i for i, row in enumerate(rows.tolist())}
    for mask in set(masks):  # within a pattern, the rows keep the order they came in
        pairs = zip(ordered.tolist(), masks, strict=True)
        kept = [position[row] for row, m in pairs if m == mask]
        assert kept == sorted(kept)


@pytest.mark.parametrize("q", [1, 2, 3, 4, 7, 12])
def test_spd_inverse_of_one_pattern_equals_numpy(q):
    # the tied covariance's scalar inverse of P_mm, its scratch reused across patterns
    rng = np.random.default_rng(q)
    n_features = 12
    A = rng.normal(size=(n_features, n_features))
    precision = A @ A.T + n_features * np.eye(n_features)
    low = np.full((n_features, n_features), np.nan)
    inverse = np.full((n_features, n_features), np.nan)
    for _ in range(5):
        index = np.zeros(n_features, dtype=np.int64)
        index[:q] = rng.choice(n_features, q, replace=False)  # in any order
        log_det = spd_inverse(precision, index, q, inverse, low)
        block = precision[np.ix_(index[:q], index[:q])]
        np.testing.assert_allclose(inverse[:q, :q], np.linalg.inv(block), rtol=1e-11)
        assert log_det == pytest.approx(np.linalg.slogdet(block)[1], rel=1e-12)


def test_pattern_inverses_over_the_whole_range_of_determinants():
    # the K factorizations in lockstep; determinants far outside 1e+-200 take the
    # rescaled log, components of very different scales side by side
    rng = np.random.default_rng(4)
    n_features, q = 40, 30
    scales = np.array([1e-9, 1.0, 1e9])
    A = rng.normal(size=(3, n_features, n_features))
    precisions = (A @ A.transpose(0, 2, 1) + n_features * np.eye(n_features)) * scales[
        :, None, None
    ]
    index = np.zeros(n_features, dtype=np.int64)
    index[:q] = np.sort(rng.choice(n_features, q, replace=False))
    cache = pattern_cache(n_features, 3)
    pattern_inverses(precisions, index, q, cache, inverse_scratch(n_features, 3))
    block = precisions[:, index[:q]][:, :, index[:q]]
    sign, log_det = np.linalg.slogdet(block)
    assert np.all(sign > 0) and abs(log_det[0]) > 460 and abs(log_det[2]) > 460
    np.testing.assert_allclose(cache[2], log_det, rtol=1e-12)
    for k in range(3):
        expected = np.linalg.inv(block[k])
        np.testing.assert_allclose(cache[1][k, :q, :q], expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("layout", ["every row", "whole slices", "last rows", "float32"])
def test_gaussian_compiled_finds_the_rows_with_nan_in_any_layout(covariance_type, layout):
    # the kernels find rows with NaN while they copy each slice and leave them to the
    # missing-value E-step: a block of them only, whole slices of them, a few at the end
    # of the last (partial) slice, float32 data
    rng = np.random.default_rng(8)
    family = GaussianFamily(covariance_type=covariance_type)
    params = random_gaussian_params(family, 3, 5, rng)
    X = rng.normal(size=(1100, 5)) + params["means"][rng.integers(0, 3, 1100)]
    rows = {
        "every row": np.arange(1100),
        "whole slices": np.arange(256, 768),
        "last rows": np.arange(1090, 1100),
        "float32": rng.choice(1100, 50, replace=False),
    }[layout]
    X[rows, rng.integers(0, 5, len(rows))] = np.nan
    if layout == "float32":
        X = X.astype(np.float32)
    w = rng.random(len(X)) * 2.0
    for weights in (None, w):
        assert_same_stats(
            family.block_stats(params, X, weights),
            family.reference_block_stats(params, X, weights),
            ("weight", "loglik", "nk", "means", "scatter"),
        )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rows_with_nan_next_to_a_component_of_weight_zero(covariance_type, dtype):
    # a component of weight 0 has log-density -inf everywhere: the columns a slice's
    # rows with NaN leave empty must not carry it into the moments (0 * -inf = NaN)
    rng = np.random.default_rng(9)
    family = GaussianFamily(covariance_type=covariance_type, dtype=dtype)
    params = random_gaussian_params(family, 3, 4, rng)
    params["weights"] = np.array([0.0, 0.4, 0.6])
    X = rng.normal(size=(700, 4)) + params["means"][rng.integers(1, 3, 700)]
    X[rng.choice(700, 90, replace=False), rng.integers(0, 4, 90)] = np.nan
    X = X.astype(dtype)
    ours = family.block_stats(params, X)
    assert all(np.all(np.isfinite(np.asarray(ours[key]))) for key in ("nk", "loglik"))
    assert ours["nk"][0] == 0.0
    if dtype == "float64":
        reference = family.reference_block_stats(params, X)
        # the empty component's mean is a convention (the centre here, 0 there): compare
        # the components that have rows
        for stats in (ours, reference):
            stats["means"] = stats["means"][1:]
            if covariance_type != "tied":  # tied: one scatter for all
                stats["scatter"] = stats["scatter"][1:]
        assert_same_stats(ours, reference, ("weight", "loglik", "nk", "means", "scatter"))
    else:
        exact = GaussianFamily(covariance_type=covariance_type).block_stats(params, X)
        assert_same_stats(ours, exact, ("weight", "nk"), rtol=1e-5)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_compiled_float32_block_in_float64_mode(covariance_type):
    # float32 data in the default float64 mode: the same statistics as the reference
    rng = np.random.default_rng(3)
    family = GaussianFamily(covariance_type=covariance_type)
    params = random_gaussian_params(family, 3, 4, rng)
    X = gaussian_block(rng, 3000, 4, 0.0).astype(np.float32) - np.float32(50.0)
    assert_same_stats(
        family.block_stats(params, X),
        family.reference_block_stats(params, X),
        ("weight", "loglik", "nk", "means", "scatter"),
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_float32_mode_is_close_to_float64(covariance_type):
    rng = np.random.default_rng(5)
    family64 = GaussianFamily(covariance_type=covariance_type)
    family32 = GaussianFamily(covariance_type=covariance_type, dtype="float32")
    params = random_gaussian_params(family64, 4, 6, rng)
    X = rng.normal(size=(20000, 6)).astype(np.float32) * 3
    exact = family64.block_stats(params, X)
    for approximate in (family32.block_stats(params, X), family32.reference_block_stats(params, X)):
        assert_same_stats(approximate, exact, ("weight", "nk", "means", "scatter"), rtol=1e-5)
        assert abs(approximate["loglik"] - exact["loglik"]) <= 1e-6 * abs(exact["loglik"])


def test_float32_slices_are_longer_where_their_loop_rows_fit():
    # 256 rows a slice; 512 in float32 where a full/tied slice's D + 1 + K rows that its
    # pair sums read take at most 48 KiB (diag: always); never more than the block has
    assert slice_rows(10**6, np.float64, 16 + 1 + 4) == SLICE_ROWS == 256
    assert slice_rows(10**6, np.float64) == 256
    assert slice_rows(10**6, np.float32) == 512  # diag
    assert slice_rows(10**6, np.float32, 16 + 1 + 4) == 512  # 42 KiB
    assert slice_rows(10**6, np.float32, 16 + 1 + 8) == 256  # 50 KiB
    assert slice_rows(300, np.float32) == 300
    assert slice_rows(0, np.float64) == 1


def test_gaussian_dtype_is_checked():
    with pytest.raises(ValueError, match="dtype must be one of"):
        GaussianFamily(dtype="float16")


def discrete_cases(rng, n_rows, n_features, n_components):
    return [
        (
            PoissonFamily(),
            {"rates": rng.gamma(2.0, 3.0, (n_components, n_features))},
            rng.poisson(5.0, (n_rows, n_features)).astype(np.int32),
        ),
        (
            BernoulliFamily(),
            {"probabilities": rng.uniform(0.02, 0.98, (n_components, n_features))},
            rng.integers(0, 2, (n_rows, n_features)).astype(np.float64),
        ),
        (
            CategoricalFamily(n_symbols=4),
            {"probabilities": rng.dirichlet(np.ones(4), (n_components, n_features))},
            rng.integers(0, 4, (n_rows, n_features)),
        ),
    ]


@pytest.mark.parametrize("case", [0, 1, 2], ids=["poisson", "bernoulli", "categorical"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n_features", [1, 12])
def test_discrete_compiled_matches_reference(case, weighted, n_features):
    rng = np.random.default_rng(case)
    family, values, X = discrete_cases(rng, 4000, n_features, 5)[case]
    params = family.make_params(rng.dirichlet(np.ones(5)), **values)
    params["weights"][2] = 0.0  # an empty component: log 0 must be handled alike
    w = rng.random(len(X)) if weighted else None
    assert_same_stats(
        family.block_stats(params, X, w),
        family.reference_block_stats(params, X, w),
        ("weight", "loglik", "nk", "sums"),
    )


def test_fallback_without_numba():
    """``DASK_EM_DISABLE_JIT=1``: no compiled kernel runs; statistics are the reference's."""
    script = (
        "import numpy as np\n"
        "from dask_em.families import gaussian_compiled, discrete_compiled, jit\n"
        "from dask_em.families.gaussian import GaussianFamily\n"
        "assert not jit.HAVE_NUMBA and not gaussian_compiled.COMPILED\n"
        "assert not discrete_compiled.COMPILED\n"
        "f = GaussianFamily('diag')\n"
        "p = f.make_params(np.ones(2) / 2, np.array([[0.0, 0], [3, 3]]), np.ones((2, 2)))\n"
        "X = np.random.default_rng(0).normal(size=(500, 2))\n"
        "a, b = f.block_stats(p, X), f.reference_block_stats(p, X)\n"
        "assert all(np.array_equal(a[k], b[k]) for k in a)\n"
    )
    env = {**os.environ, "DASK_EM_DISABLE_JIT": "1"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)


def test_compiled_kernels_are_active_here():
    # The equivalence tests above compare two different code paths only when numba runs.
    if os.environ.get("DASK_EM_DISABLE_JIT"):
        pytest.skip("compiled kernels disabled in this run")
    assert gaussian_compiled.COMPILED and discrete_compiled.COMPILED


WARM_UP_SCRIPT = """
import json, logging, sys
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster
from dask_em import GaussianMixture

def worker_compilations():
    from dask_em.families import gaussian_compiled as g
    kernels = (g._full_block, g._diag_block)  # the compiled entry points of a block
    return {
        "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels),
        "hits": sum(sum(k.stats.cache_hits.values()) for k in kernels),
    }

if __name__ == "__main__":
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(0)
    X = da.from_array(rng.normal(size=(4000, 3)), chunks=1000)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            # diag: the same first-fit path as full, compiled in half the time
            GaussianMixture(2, covariance_type="diag", max_iter=2, random_state=0).fit(X)
            print(json.dumps(worker_compilations()))  # this process: the driver
            print(json.dumps(list(client.run(worker_compilations).values())))
"""


@pytest.mark.slow
def test_first_fit_compiles_once_on_one_worker_and_the_other_loads_the_cache(tmp_path):
    # an empty numba cache: the situation of a new user's first `dask-em demo`
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    script = tmp_path / "fit.py"
    script.write_text(WARM_UP_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert sum("compiled the E-step kernels" in line for line in lines) == 1
    driver, workers = json.loads(lines[-2]), json.loads(lines[-1])
    assert driver == {"misses": 0, "hits": 0}  # the driver neither compiles nor loads
    assert len(workers) == 2
    compiled, loaded = sorted(workers, key=lambda counts: counts["misses"], reverse=True)
    assert compiled["misses"] > 0 and compiled["hits"] == 0, workers
    assert loaded["misses"] == 0 and loaded["hits"] > 0, workers


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_compiled_init_pass_matches_the_numpy_path(covariance_type, dtype, monkeypatch):
    # nearest centres and each row in its own component's moments, in one compiled call,
    # against the NumPy path slice by slice: several slices, weights, NaN filled for the
    # start, a centre no row is nearest to (its component stays empty)
    from dask_em.initialization import init_block_stats

    rng = np.random.default_rng(21)
    family = GaussianFamily(covariance_type=covariance_type)
    X = rng.normal(size=(5000, 6)) * rng.uniform(0.5, 3.0, size=6) + 40.0
    X[rng.random(X.shape) < 0.03] = np.nan
    X = X.astype(dtype)
    fill = np.nanmean(X, axis=0, dtype=np.float64)
    centers = np.where(np.isnan(X[:4]), fill, X[:4]).astype(np.float64)
    centers = np.vstack([centers, np.full(6, 1e6)])  # nearest to no row
    shared = {"family": family, "centers": centers, "n_components": 5, "fill": fill}
    complete = np.where(np.isnan(X), fill, X).astype(dtype)
    cases = [(shared, X, None), (shared, X, rng.uniform(0.5, 2.0, size=len(X)))]
    cases.append(({**shared, "fill": None}, complete, None))  # no NaN, no fill
    for shared, X, weights in cases:
        compiled = init_block_stats(shared, X, weights, seed=0)
        monkeypatch.setattr(GaussianFamily, "compiled_label_stats", None)
        reference = init_block_stats(shared, X, weights, seed=0)
        monkeypatch.undo()
        assert compiled["nk"][4] == 0.0 and reference["nk"][4] == 0.0
        for stats in (compiled, reference):  # an empty component's moments are placeholders
            stats["means"] = stats["means"][:4]
            if covariance_type != "tied":
                stats["scatter"] = stats["scatter"][:4]
        assert_same_stats(compiled, reference, ("weight", "nk", "means", "scatter"))
    empty = init_block_stats(shared, X[:0], None, seed=0)
    assert empty["n_rows"] == 0 and empty["weight"] == 0.0 and not empty["nk"].any()

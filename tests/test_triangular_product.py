"""The grouped product of the triangular precision factors (gaussian_triangular)."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em.families import gaussian_compiled, gaussian_linalg
from dask_em.families.gaussian import GaussianFamily
from dask_em.families.gaussian_fused_product import product_distances, product_distances_by
from dask_em.families.gaussian_triangular import (
    GROUP_FEATURES,
    factor_groups,
    grouped_product_by,
    loop_product,
    packed_factors,
    product_rows,
)
from dask_em.families.jit import WIDE_VECTORS
from tests.helpers import random_gaussian_params
from tests.test_compiled_kernels import RTOL, assert_same_stats, gaussian_block


def _factors(rng, n_factors, n_features, shape):
    A = rng.normal(size=(n_factors, n_features, n_features))
    if shape == "upper":
        return np.triu(A) + 3 * np.eye(n_features)
    if shape == "lower":
        return np.tril(A) + 3 * np.eye(n_features)
    return A


@pytest.mark.skipif(not gaussian_compiled.COMPILED, reason="the compiled kernels are off")
@pytest.mark.parametrize("shape", ["upper", "lower", "dense"])
@pytest.mark.parametrize("n_features", [1, 3, 4, 5, 8, 16, 17, 33])
@pytest.mark.parametrize("n_factors", [1, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grouped_product_is_the_dense_product(shape, n_features, n_factors, dtype):
    rng = np.random.default_rng(n_features)
    factors = _factors(rng, n_factors, n_features, shape)
    m = 37
    xt = rng.normal(size=(n_features + 1, m)).astype(dtype)  # a row of ones under it
    n_components = n_factors if n_factors > 1 else 4
    groups = factor_groups(factors)
    packed, starts = packed_factors(factors, groups, dtype)
    rows = product_rows(n_factors, n_components, groups)
    # both ways by name: BLAS and compiled loops
    for product in (
        lambda *args: grouped_product_by(*args, True),
        lambda *args: grouped_product_by(*args, False),
    ):
        yt = np.full((n_factors * n_features, m), np.nan, dtype=dtype)
        product(packed, starts, groups, xt, yt)
        for k in range(n_components):
            factor = factors[k if n_factors > 1 else 0]
            expected = factor.T @ xt[:n_features].astype(np.float64)  # (L_k^T xc)_e
            tolerance = 1e-12 if dtype == np.float64 else 1e-5
            np.testing.assert_allclose(yt[rows[k]], expected, rtol=tolerance, atol=tolerance)
    # every row of the product is written, each once
    assert sorted(set(rows.ravel())) == list(range(n_factors * n_features))


@pytest.mark.skipif(not gaussian_compiled.COMPILED, reason="the compiled kernels are off")
@pytest.mark.parametrize("shape", ["upper", "lower", "dense"])
@pytest.mark.parametrize("n_features", [1, 3, 4, 6, 8, 16, 18])
@pytest.mark.parametrize(("n_factors", "n_components"), [(1, 4), (1, 1), (3, 3)])
@pytest.mark.parametrize("columns", [37, 41])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_product_distances_every_way_are_the_squared_distances(
    shape, n_features, n_factors, n_components, columns, dtype
):
    # |L_k^T xc_i - L_k^T mc_k|^2: the host's way, and by name fused (one factor per
    # component only), BLAS then squares, loops then squares; groups whose widths are
    # not multiples of four (D = 6, 18) take the fused kernel's product-then-squares
    # path, and so do lower factors with D = 6, 18, whose groups read a number of features
    # that is not; only the first m columns are written (the kernels
    # pass m equal to the columns); the host's way is exactly the way named for the host
    rng = np.random.default_rng(100 + n_features)
    factors = _factors(rng, n_factors, n_features, shape)
    m = 37
    xt = rng.normal(size=(n_features + 1, columns)).astype(dtype)
    groups = factor_groups(factors)
    packed, starts = packed_factors(factors, groups, dtype)
    product = (packed, starts, groups, product_rows(n_factors, n_components, groups))
    offsets = rng.normal(size=(n_components, n_features)).astype(dtype)
    expected = np.empty((n_components, m))
    for k in range(n_components):
        factor = factors[k if n_factors > 1 else 0]
        u = factor.T @ xt[:n_features, :m].astype(np.float64) - offsets[k, :, None]
        expected[k] = (u**2).sum(axis=0)
    ways = {
        "host": product_distances,
        "blas": lambda *args: product_distances_by(*args, False, True),
        "loops": lambda *args: product_distances_by(*args, False, False),
    }
    if n_factors == n_components:  # one factor per component: the fused loops
        ways["fused"] = lambda *args: product_distances_by(*args, True, False)
    results = {}
    for name, way in ways.items():
        out = np.full((n_components, columns), np.nan, dtype=dtype)
        scratch = np.empty((n_factors * n_features, columns), dtype=dtype)
        way(product, xt, offsets, m, out, scratch)
        tolerance = 1e-12 if dtype == np.float64 else 2e-5
        np.testing.assert_allclose(out[:, :m], expected, rtol=tolerance, atol=tolerance)
        assert np.isnan(out[:, m:]).all()
        results[name] = out
    host_way = "blas" if WIDE_VECTORS else "fused" if n_factors == n_components else "loops"
    np.testing.assert_array_equal(results["host"], results[host_way])


@pytest.mark.skipif(not gaussian_compiled.COMPILED, reason="the compiled kernels are off")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_loop_product_is_the_blas_product(dtype):
    # grouped_product_by takes BLAS or these loops (the kernels: by WIDE_VECTORS): the loops
    # are checked on every host, for heights and widths that are and are not multiples
    # of four, reading features from an offset, into an output of its own width
    rng = np.random.default_rng(7)
    for height in (1, 3, 4, 7, 16, 33):
        for width in (1, 3, 4, 6, 16):
            matrix = rng.normal(size=(height, width)).astype(dtype)
            xt = rng.normal(size=(width + 3, 41)).astype(dtype)
            out = np.full((height, 41), np.nan, dtype=dtype)
            loop_product(matrix, xt, 2, out)
            expected = matrix.astype(np.float64) @ xt[2 : 2 + width].astype(np.float64)
            tolerance = 1e-13 if dtype == np.float64 else 1e-5
            np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance * width)
    with pytest.raises(ValueError, match="loop_product"):  # out wider than xt
        loop_product(matrix, xt, 0, np.empty((height, 42), dtype=dtype))


def test_factor_groups_read_only_the_features_a_triangle_reaches():
    rng = np.random.default_rng(0)
    upper = factor_groups(_factors(rng, 2, 10, "upper"))
    lower = factor_groups(_factors(rng, 2, 10, "lower"))
    dense = factor_groups(_factors(rng, 2, 10, "dense"))
    assert upper.tolist() == [[0, 4, 0, 4], [4, 8, 0, 8], [8, 10, 0, 10]]
    assert lower.tolist() == [[0, 4, 0, 10], [4, 8, 4, 10], [8, 10, 8, 10]]
    assert dense.tolist() == [[0, 10, 0, 10]]
    assert factor_groups(np.eye(GROUP_FEATURES)[None]).tolist() == [[0, 4, 0, 4]]


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lower_factors_give_the_statistics_of_upper_ones(covariance_type, dtype):
    # a precision given by hand has a lower Cholesky factor, a fitted one an upper one:
    # the same precisions, the same statistics, and those of the reference
    rng = np.random.default_rng(4)
    family = GaussianFamily(covariance_type=covariance_type, dtype=dtype)
    params = random_gaussian_params(family, 3, 9, rng)
    precisions = gaussian_linalg.precisions_from_cholesky(
        params["precisions_cholesky"], covariance_type
    )
    lower = dict(params)
    lower["precisions_cholesky"] = gaussian_linalg.cholesky_from_precisions(
        precisions, covariance_type
    )
    assert not np.any(np.tril(params["precisions_cholesky"], -1))
    assert not np.any(np.triu(lower["precisions_cholesky"], 1))
    X = gaussian_block(rng, 3000, 9, 0.1) - 50.0
    keys = ("weight", "loglik", "nk", "means", "scatter")
    rtol = RTOL if dtype == "float64" else 1e-5
    upper_stats = family.block_stats(params, X)
    assert_same_stats(family.block_stats(lower, X), upper_stats, keys, rtol=rtol)
    assert_same_stats(upper_stats, family.reference_block_stats(params, X), keys, rtol=rtol)

"""The Gaussian family on its own: pure NumPy, no cluster."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em.families.gaussian import (
    COVARIANCE_TYPES,
    GaussianFamily,
    cholesky_from_precisions,
    compute_precision_cholesky,
    covariances_from_cholesky,
    precisions_from_cholesky,
)
from tests.helpers import random_gaussian_params


def assert_stats_close(a, b, rtol=1e-9):
    assert a["n_rows"] == b["n_rows"]
    for key in ("weight", "loglik", "nk", "means", "scatter"):
        scale = max(1.0, float(np.max(np.abs(b[key]))))
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=rtol * scale, err_msg=key)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_slicing_inside_a_block_does_not_change_statistics(covariance_type, monkeypatch):
    from dask_em.families import base

    rng = np.random.default_rng(1)
    family = GaussianFamily(covariance_type)
    params = random_gaussian_params(family, 3, 4, rng)
    X = rng.normal(size=(1000, 4))
    whole = family.block_stats(params, X)
    monkeypatch.setattr(base, "ROWS_PER_SLICE", 7)
    assert_stats_close(family.block_stats(params, X), whole)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_of_shifted_data_keep_full_precision(covariance_type):
    """Centred moments: data around 1e6 with unit spread gives the same scatter."""
    rng = np.random.default_rng(2)
    family = GaussianFamily(covariance_type)
    params = random_gaussian_params(family, 3, 4, rng)
    X = rng.normal(size=(2000, 4))
    shift = 1e6
    shifted_params = family.make_params(
        params["weights"], params["means"] + shift, covariances=params["covariances"]
    )
    a = family.merge(*(family.block_stats(params, X[i : i + 300]) for i in range(0, 2000, 300)))
    b = family.merge(
        *(family.block_stats(shifted_params, X[i : i + 300] + shift) for i in range(0, 2000, 300))
    )
    np.testing.assert_allclose(b["scatter"], a["scatter"], rtol=1e-6)
    np.testing.assert_allclose(b["means"] - shift, a["means"], atol=1e-8)
    np.testing.assert_allclose(b["loglik"], a["loglik"], rtol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precision_conversions_round_trip(covariance_type):
    rng = np.random.default_rng(3)
    family = GaussianFamily(covariance_type)
    params = random_gaussian_params(family, 3, 4, rng)
    cov = params["covariances"]
    chol = compute_precision_cholesky(cov, covariance_type)
    np.testing.assert_allclose(covariances_from_cholesky(chol, covariance_type), cov, rtol=1e-10)
    precisions = precisions_from_cholesky(chol, covariance_type)
    refactored = cholesky_from_precisions(precisions, covariance_type)
    np.testing.assert_allclose(
        precisions_from_cholesky(refactored, covariance_type), precisions, rtol=1e-10
    )
    np.testing.assert_allclose(
        covariances_from_cholesky(refactored, covariance_type), cov, rtol=1e-10
    )


def test_singular_covariance_gives_actionable_error():
    with pytest.raises(ValueError, match="increase reg_covar"):
        compute_precision_cholesky(np.zeros((1, 2, 2)), "full")
    with pytest.raises(ValueError, match="increase reg_covar"):
        compute_precision_cholesky(np.array([[0.0, 1.0]]), "diag")


def test_float32_block_matches_float64_block():
    rng = np.random.default_rng(4)
    family = GaussianFamily("full")
    params = random_gaussian_params(family, 3, 4, rng)
    X = rng.normal(size=(5000, 4)) + 100.0
    params = family.make_params(
        params["weights"], params["means"] + 100.0, covariances=params["covariances"]
    )
    a = family.block_stats(params, X)
    b = family.block_stats(params, X.astype(np.float32))
    assert b["means"].dtype == np.float64 and b["scatter"].dtype == np.float64
    exact = family.block_stats(params, X.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(b["loglik"], exact["loglik"], rtol=1e-5)
    np.testing.assert_allclose(b["nk"], a["nk"], rtol=1e-3)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_hard_assignments_give_the_one_hot_responsibilities_statistics(covariance_type, weighted):
    # the initialization pass from k-means centres: each row in its own component only
    rng = np.random.default_rng(2)
    family = GaussianFamily(covariance_type)
    X = rng.normal(size=(5000, 4)).astype(np.float32) + 100.0  # far from the origin
    labels = rng.integers(0, 3, size=len(X))  # component 3 of 4 stays empty
    w = rng.uniform(0.5, 2.0, size=len(X)) if weighted else None
    resp = np.zeros((len(X), 4))
    resp[np.arange(len(X)), labels] = 1.0
    by_labels = family.label_stats(X, labels, 4, w)
    reference = family.responsibility_stats(X, resp, w)
    assert by_labels["nk"][3] == 0.0 and np.all(np.isfinite(by_labels["means"]))
    for stats in (by_labels, reference):  # an empty component's mean is a placeholder
        stats["means"] = stats["means"][:3]
        if covariance_type != "tied":
            stats["scatter"] = stats["scatter"][:3]
    assert_stats_close(by_labels, reference, rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_the_init_pass_from_centres_gives_the_one_hot_statistics_across_slices(covariance_type):
    # several slices merged, weights, and NaN filled for the start only
    from dask_em.initialization import init_block_stats

    rng = np.random.default_rng(3)
    family = GaussianFamily(covariance_type)
    X = rng.normal(size=(10_000, 4)) * rng.uniform(0.5, 3.0, size=4) + 100.0
    X[rng.random(X.shape) < 0.02] = np.nan
    w = rng.uniform(0.5, 2.0, size=len(X))
    fill = np.nanmean(X, axis=0)
    filled = np.where(np.isnan(X), fill, X)
    centers = filled[rng.choice(len(X), 4, replace=False)]
    shared = {"family": family, "centers": centers, "n_components": 4, "fill": fill}
    labels = np.argmin(((filled[:, None, :] - centers[None]) ** 2).sum(axis=2), axis=1)
    resp = np.zeros((len(X), 4))
    resp[np.arange(len(X)), labels] = 1.0
    assert np.all(np.bincount(labels, minlength=4) > 0)
    assert_stats_close(
        init_block_stats(shared, X, w, seed=0),
        family.responsibility_stats(filled, resp, w),
        rtol=1e-10,
    )

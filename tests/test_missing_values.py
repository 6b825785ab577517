"""Exact EM for Gaussian mixtures with missing values (NaN)."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from dask_em import GaussianMixture
from dask_em.families.base import Workspace
from dask_em.families.gaussian import COVARIANCE_TYPES, GaussianFamily
from dask_em.families.gaussian_missing import SHARED_PATTERN_ROWS, _invert_spd
from tests.helpers import assert_monotone, make_blobs, random_gaussian_params


def dense_covariances(params, covariance_type, n_components, n_features):
    cov = params["covariances"]
    if covariance_type == "full":
        return cov
    if covariance_type == "tied":
        return np.stack([cov] * n_components)
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(n_features) for c in cov])


def brute_force_stats(params, X, w, covariance_type):
    """One row at a time, with explicit conditional Gaussians (no shared algebra)."""
    K, D = params["means"].shape
    covs = dense_covariances(params, covariance_type, K, D)
    nk, sx, sxx = np.zeros(K), np.zeros((K, D)), np.zeros((K, D, D))
    loglik = weight = 0.0
    for i in range(len(X)):
        o = ~np.isnan(X[i])
        m = ~o
        if not o.any():
            continue
        log_joint = np.array(
            [
                np.log(params["weights"][k])
                + multivariate_normal(params["means"][k][o], covs[k][np.ix_(o, o)]).logpdf(X[i][o])
                for k in range(K)
            ]
        )
        log_norm = np.logaddexp.reduce(log_joint)
        r = np.exp(log_joint - log_norm) * w[i]
        loglik += w[i] * log_norm
        weight += w[i]
        for k in range(K):
            S, mu = covs[k], params["means"][k]
            regression = S[np.ix_(m, o)] @ np.linalg.inv(S[np.ix_(o, o)])
            completed = X[i].copy()
            completed[m] = mu[m] + regression @ (X[i][o] - mu[o])
            conditional = np.zeros((D, D))
            conditional[np.ix_(m, m)] = S[np.ix_(m, m)] - regression @ S[np.ix_(o, m)]
            nk[k] += r[k]
            sx[k] += r[k] * completed
            sxx[k] += r[k] * (np.outer(completed, completed) + conditional)
    means = sx / nk[:, None]
    scatter = sxx - nk[:, None, None] * np.einsum("ki,kj->kij", means, means)
    scatter = {
        "full": scatter,
        "tied": scatter.sum(0),
        "diag": np.diagonal(scatter, axis1=1, axis2=2),
        "spherical": np.trace(scatter, axis1=1, axis2=2),
    }[covariance_type]
    return {"loglik": loglik, "weight": weight, "nk": nk, "means": means, "scatter": scatter}


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_equal_a_brute_force_reference(covariance_type):
    rng = np.random.default_rng(0)
    family = GaussianFamily(covariance_type)
    params = random_gaussian_params(family, 3, 5, rng, mean_scale=2.0)
    X = rng.normal(size=(300, 5)) * 2
    X[rng.random(X.shape) < 0.3] = np.nan
    X[7] = np.nan  # nothing observed: no contribution
    w = rng.uniform(0.5, 2.0, size=len(X))
    ours = family.block_stats(params, X, w)
    reference = brute_force_stats(params, X, w, covariance_type)
    for key, expected in reference.items():
        np.testing.assert_allclose(ours[key], expected, rtol=1e-10, atol=1e-10, err_msg=key)


def rows_with_every_number_of_missing_values(rng, n_features):
    """Rows with q = 0..D missing values (several of each, rare patterns), plus two
    patterns with more than 3 missing values held by SHARED_PATTERN_ROWS + 4 rows each
    (solved once per pattern), shuffled."""
    rows = []
    for q in range(n_features + 1):
        for _ in range(6):
            row = rng.normal(size=n_features) * 2
            row[rng.choice(n_features, q, replace=False)] = np.nan
            rows.append(row)
    for q in (4, 5):
        columns = rng.choice(n_features, q, replace=False)
        for _ in range(SHARED_PATTERN_ROWS + 4):
            row = rng.normal(size=n_features) * 2
            row[columns] = np.nan
            rows.append(row)
    return np.array(rows)[rng.permutation(len(rows))]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_equal_the_reference_for_every_number_of_missing_values(covariance_type):
    # closed forms (q <= 3), sweeps (q > 3), shared patterns, complete and empty rows
    rng = np.random.default_rng(5)
    family = GaussianFamily(covariance_type)
    params = random_gaussian_params(family, 3, 7, rng, mean_scale=2.0)
    X = rows_with_every_number_of_missing_values(rng, 7)
    w = rng.uniform(0.5, 2.0, size=len(X))
    ours = family.block_stats(params, X, w)
    reference = brute_force_stats(params, X, w, covariance_type)
    for key, expected in reference.items():
        np.testing.assert_allclose(ours[key], expected, rtol=1e-10, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_densities_of_rows_with_missing_values_stay_in_row_order(covariance_type):
    # the E-step sorts rows into batches; the log-densities come back in X's order
    rng = np.random.default_rng(6)
    family = GaussianFamily(covariance_type)
    params = random_gaussian_params(family, 3, 7, rng, mean_scale=2.0)
    X = rows_with_every_number_of_missing_values(rng, 7)
    covariances = dense_covariances(params, covariance_type, 3, 7)
    expected = np.zeros((len(X), 3))
    for i, row in enumerate(X):
        o = ~np.isnan(row)
        if o.any():
            expected[i] = [
                multivariate_normal(params["means"][k][o], covariances[k][np.ix_(o, o)]).logpdf(
                    row[o]
                )
                for k in range(3)
            ]
    expected += np.log(params["weights"])
    np.testing.assert_allclose(family.weighted_log_prob(params, X), expected, rtol=1e-10)


@pytest.mark.parametrize("q", range(1, 9))
def test_small_inverses_equal_lapack(q):
    # (q, q) blocks of P, batched (K, q, q, n): closed forms for q <= 3, sweeps above
    rng = np.random.default_rng(q)
    A = rng.normal(size=(4, 50, q, q))
    matrices = A @ A.transpose(0, 1, 3, 2) + 0.1 * np.eye(q)
    batch = matrices.transpose(0, 2, 3, 1).copy()
    log_det = _invert_spd(batch, Workspace())
    np.testing.assert_allclose(
        batch.transpose(0, 3, 1, 2), np.linalg.inv(matrices), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(log_det, np.linalg.slogdet(matrices)[1], rtol=1e-12)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_tiny_responsibilities_leave_the_statistics_as_the_reference_has_them(covariance_type):
    # rows between two components far apart: some responsibilities fall below the floor
    # (1e-200) where their products with the data would be subnormal numbers
    rng = np.random.default_rng(7)
    family = GaussianFamily(covariance_type)
    means = np.array([[0.0, 0.0, 0.0], [60.0, 0.0, 0.0]])
    covariances = np.stack([np.eye(3)] * 2) if covariance_type == "full" else np.eye(3)
    params = family.make_params(np.array([0.5, 0.5]), means, covariances=covariances)
    X = np.concatenate([rng.normal(size=(200, 3)), rng.normal(size=(200, 3)) + means[1]])
    X[:, 0] = rng.uniform(-20.0, 80.0, size=len(X))  # log r in (-745, -460) near 20 and 40
    X[rng.random(X.shape) < 0.2] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 1.0
    w = np.ones(len(X))
    resp = np.exp(family.weighted_log_prob(params, X))
    resp /= resp.sum(axis=1, keepdims=True)
    assert ((resp > 0) & (resp < 1e-200)).any()
    ours = family.block_stats(params, X, w)
    reference = brute_force_stats(params, X, w, covariance_type)
    for key, expected in reference.items():
        np.testing.assert_allclose(ours[key], expected, rtol=1e-10, atol=1e-10, err_msg=key)


def test_rows_without_nan_in_a_slice_with_nan_get_the_complete_data_statistics():
    # a slice with any NaN goes whole through the missing-value E-step
    rng = np.random.default_rng(8)
    family = GaussianFamily("full")
    params = random_gaussian_params(family, 3, 5, rng, mean_scale=2.0)
    complete = rng.normal(size=(400, 5)) * 2
    incomplete = rng.normal(size=(100, 5)) * 2
    incomplete[rng.random(incomplete.shape) < 0.3] = np.nan
    incomplete[np.isnan(incomplete).all(axis=1), 0] = 0.5
    incomplete[~np.isnan(incomplete).any(axis=1), 1] = np.nan
    X = np.concatenate([complete, incomplete])[rng.permutation(500)]
    together = family.block_stats(params, X)
    apart = family.merge(
        family.block_stats(params, complete), family.block_stats(params, incomplete)
    )
    for key in ("weight", "n_rows", "loglik", "nk", "means", "scatter"):
        np.testing.assert_allclose(together[key], apart[key], rtol=1e-10, err_msg=key)


@pytest.mark.slow
def test_without_nan_the_fit_equals_the_complete_data_path_exactly(client):
    X, _, _ = make_blobs(3000, 3, 3, seed=1)
    X_dask = da.from_array(X, chunks=(500, 3))
    a = GaussianMixture(3, random_state=0, missing="marginalize").fit(X_dask)
    b = GaussianMixture(3, random_state=0, missing="error").fit(X_dask)
    assert [h["objective"] for h in a.history_] == [h["objective"] for h in b.history_]
    for name in ("weights_", "means_", "covariances_"):
        assert np.array_equal(getattr(a, name), getattr(b, name))


def mar_mixture(seed, n=20000, missing_share=0.3):
    """A known 3-component mixture in 4-D; features 1-3 go missing at random (MAR):
    more often when the always-observed feature 0 is large, 30% of entries overall."""
    rng = np.random.default_rng(seed)
    means = np.array([[-3.0, 0.0, 2.0, -1.0], [3.0, 2.0, -2.0, 1.0], [0.0, -3.0, 0.0, 3.0]])
    weights = np.array([0.4, 0.35, 0.25])
    A = rng.normal(size=(3, 4, 4)) * 0.5 + np.eye(4)
    covariances = A @ A.transpose(0, 2, 1)
    labels = rng.choice(3, n, p=weights)
    noise = np.einsum(
        "nij,nj->ni", np.linalg.cholesky(covariances)[labels], rng.standard_normal((n, 4))
    )
    X = means[labels] + noise
    tendency = 1 / (1 + np.exp(-(X[:, 0] - 0.5)))
    probability = tendency[:, None] * (missing_share * 4 / 3) / tendency.mean()
    hidden = rng.random((n, 3)) < np.clip(probability, 0, 0.95)
    X[:, 1:][hidden] = np.nan
    return X, weights, means, covariances


def parameter_error(model, weights, means, covariances):
    match = np.argmin(((model.means_[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert sorted(match) == [0, 1, 2]
    return float(
        np.abs(model.weights_ - weights[match]).mean()
        + np.abs(model.means_ - means[match]).mean()
        + np.abs(model.covariances_ - covariances[match]).mean()
    )


@pytest.mark.slow
def test_thirty_percent_missing_fits_closer_to_the_truth_than_dropping_or_mean_imputing():
    # fitted in this process (in-memory input): the claim is the quality of exact EM;
    # test_rows_with_nothing_observed_are_left_out_with_a_warning fits NaN on the cluster
    X, weights, means, covariances = mar_mixture(seed=0)
    assert abs(np.isnan(X).mean() - 0.3) < 0.01
    kwargs = dict(random_state=0, tol=1e-6, max_iter=1000, n_init=2)
    exact = GaussianMixture(3, **kwargs).fit(X)
    with warnings.catch_warnings():  # the baselines a scikit-learn user has today
        warnings.simplefilter("ignore")
        dropped = SklearnGaussianMixture(3, **kwargs).fit(X[~np.isnan(X).any(axis=1)])
        imputed = SklearnGaussianMixture(3, **kwargs).fit(
            np.where(np.isnan(X), np.nanmean(X, axis=0), X)
        )
    errors = {
        "exact EM (dask_em)": parameter_error(exact, weights, means, covariances),
        "drop incomplete rows": parameter_error(dropped, weights, means, covariances),
        "mean imputation": parameter_error(imputed, weights, means, covariances),
    }
    print("\nmean absolute parameter error, 30% missing at random:")
    for name, error in errors.items():
        print(f"  {name:22s} {error:.4f}")
    assert errors["exact EM (dask_em)"] < 0.25 * errors["drop incomplete rows"]
    assert errors["exact EM (dask_em)"] < 0.25 * errors["mean imputation"]
    assert_monotone(exact.history_)


@pytest.mark.slow
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_every_covariance_type_fits_with_missing_values(covariance_type):
    X, _, means, _ = mar_mixture(seed=1, n=8000)  # in this process, as the test above
    model = GaussianMixture(
        3, covariance_type=covariance_type, random_state=0, tol=1e-6, max_iter=500
    ).fit(X)
    assert model.converged_
    assert_monotone(model.history_)
    match = np.argmin(((model.means_[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert np.abs(model.means_ - means[match]).max() < 0.5


def test_predictions_and_imputation_accept_rows_with_missing_values(client):
    X, _, _, _ = mar_mixture(seed=2, n=4000)
    model = GaussianMixture(3, random_state=0).fit(X)
    X_dask = da.from_array(X, chunks=(700, 4))
    proba = model.predict_proba(X_dask)
    scores = model.score_samples(X_dask)
    filled = model.impute(X_dask)
    assert isinstance(filled, da.Array) and filled.chunks == X_dask.chunks
    np.testing.assert_allclose(proba.compute(), model.predict_proba(X))
    np.testing.assert_allclose(scores.compute(), model.score_samples(X))
    filled = filled.compute()
    observed = ~np.isnan(X)
    assert not np.isnan(filled).any()
    np.testing.assert_array_equal(filled[observed], X[observed])
    # one row by hand: E[x_m | x_o] = sum_k P(k | x_o) (mu_km + S_mo S_oo^-1 (x_o - mu_ko))
    row = np.flatnonzero(np.isnan(X).sum(axis=1) == 2)[0]
    o, m = observed[row], ~observed[row]
    posterior = model.predict_proba(X[row : row + 1])[0]
    expected = sum(
        posterior[k]
        * (
            model.means_[k][m]
            + model.covariances_[k][np.ix_(m, o)]
            @ np.linalg.solve(model.covariances_[k][np.ix_(o, o)], X[row][o] - model.means_[k][o])
        )
        for k in range(3)
    )
    np.testing.assert_allclose(filled[row][m], expected, rtol=1e-9)


@pytest.mark.slow
def test_rows_with_nothing_observed_are_left_out_with_a_warning(client):
    X, _, _, _ = mar_mixture(seed=3, n=3000)
    holes = X.copy()
    holes[[10, 500, 2999]] = np.nan
    kept = np.delete(holes, [10, 500, 2999], axis=0)
    means_init = np.array([[-3.0, 0.0, 2.0, -1.0], [3.0, 2.0, -2.0, 1.0], [0.0, -3.0, 0.0, 3.0]])
    kwargs = dict(
        weights_init=[0.3, 0.3, 0.4],
        means_init=means_init,
        precisions_init=np.stack([np.eye(4)] * 3),
    )
    with pytest.warns(UserWarning, match="3 rows of X have every feature missing"):
        with_holes = GaussianMixture(3, **kwargs).fit(da.from_array(holes, chunks=(1000, 4)))
    without = GaussianMixture(3, **kwargs).fit(da.from_array(kept, chunks=(1000, 4)))
    np.testing.assert_allclose(with_holes.means_, without.means_, rtol=1e-10)
    np.testing.assert_allclose(with_holes.lower_bound_, without.lower_bound_, rtol=1e-10)
    proba = with_holes.predict_proba(holes[[10]])
    np.testing.assert_allclose(proba[0], with_holes.weights_)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_nan_the_initialization_sample_did_not_draw_are_filled_in_the_init_pass(
    covariance_type,
):
    # two NaN in 5,000 rows and a sample of 50: the scan counts them, so the init pass
    # fills them although the sample holds none (they made its moments NaN before)
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(2500, 3)), rng.normal(size=(2500, 3)) + 5.0])
    X[[10, 4000], [0, 1]] = np.nan
    model = GaussianMixture(
        2, covariance_type=covariance_type, init_sample_size=50, random_state=0, max_iter=50
    )
    model.fit(X)
    assert model.converged_
    means = model.means_[np.argsort(model.means_[:, 0])]
    np.testing.assert_allclose(means, [[0.0] * 3, [5.0] * 3], atol=0.1)

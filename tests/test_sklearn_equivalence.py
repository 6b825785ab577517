"""Same initial parameters -> the same fit as scikit-learn, at any chunking, on a cluster."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from dask_em import GaussianMixture
from dask_em.families.gaussian import COVARIANCE_TYPES
from tests.helpers import assert_monotone, make_blobs

RTOL = 1e-6


def datasets():
    rng = np.random.default_rng(11)
    blobs, _, _ = make_blobs(240, 3, 3, seed=5)
    heavy = rng.standard_t(df=3, size=(200, 2)) + np.where(rng.random((200, 1)) < 0.4, 4.0, -1.0)
    wide, _, _ = make_blobs(150, 6, 2, seed=9, spread=3.0)
    return {"blobs": blobs, "heavy_tailed": heavy, "wide": wide}


DATASETS = datasets()
# chunk rows: one row per chunk (small data only), an uneven last chunk, one chunk
CHUNKINGS = {"one_row": 1, "uneven": 37, "single": None}


def sklearn_start(X, n_components, covariance_type):
    """Initial parameters from one k-means-initialized scikit-learn step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = SklearnGaussianMixture(
            n_components, covariance_type=covariance_type, max_iter=1, random_state=0
        ).fit(X)
    return {
        "weights_init": start.weights_,
        "means_init": start.means_,
        "precisions_init": start.precisions_,
    }


def fit_both(X, chunk_rows, covariance_type, n_components=3, max_iter=25, tol=0.0, **extra):
    init = sklearn_start(X, n_components, covariance_type)
    # tol=0: both run exactly max_iter iterations (a tol near rounding noise would make
    # the stopping iteration a coin toss); convergence is compared in its own test.
    kwargs = dict(
        covariance_type=covariance_type, tol=tol, max_iter=max_iter, reg_covar=1e-6, **init
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = SklearnGaussianMixture(n_components, **kwargs).fit(X)
        chunks = (chunk_rows or len(X), X.shape[1])
        ours = GaussianMixture(n_components, **kwargs, **extra).fit(da.from_array(X, chunks=chunks))
    return ours, reference


def assert_same_fit(ours, reference):
    assert ours.n_iter_ == reference.n_iter_
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        expected = getattr(reference, name)
        np.testing.assert_allclose(
            getattr(ours, name),
            expected,
            rtol=RTOL,
            atol=RTOL * 1e-4 * np.abs(expected).max(),
            err_msg=name,
        )
    np.testing.assert_allclose(ours.lower_bound_, reference.lower_bound_, rtol=RTOL)


def dataset_chunkings():
    """(chunking, dataset) pairs, one row per chunk on the blobs only; all but the blobs
    in uneven chunks marked slow (the fast loop keeps those)."""
    return [
        (chunking, dataset)
        if (chunking, dataset) == ("uneven", "blobs")
        else pytest.param(chunking, dataset, marks=pytest.mark.slow)
        for chunking in sorted(CHUNKINGS)
        for dataset in sorted(DATASETS)
        if chunking != "one_row" or dataset == "blobs"
    ]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize(("chunking", "dataset"), dataset_chunkings())
def test_same_fit_as_sklearn(client, covariance_type, dataset, chunking):
    X = DATASETS[dataset]
    if chunking == "one_row":
        X = X[:30]  # one task per row: keep the graph small
    n_components = 2 if dataset == "wide" else 3
    ours, reference = fit_both(
        X,
        CHUNKINGS[chunking],
        covariance_type,
        n_components,
        max_iter=8 if chunking == "one_row" else 25,
    )
    assert_same_fit(ours, reference)
    assert_monotone(ours.history_)
    np.testing.assert_allclose(ours.lower_bounds_[-1], reference.lower_bound_, rtol=RTOL)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_stops_at_the_same_iteration_as_sklearn(client, covariance_type):
    ours, reference = fit_both(DATASETS["blobs"], 50, covariance_type, max_iter=200, tol=1e-3)
    assert reference.converged_ and ours.converged_
    assert_same_fit(ours, reference)


@pytest.mark.slow
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_predictions_match_sklearn(client, covariance_type):
    X = DATASETS["blobs"]
    ours, reference = fit_both(X, 50, covariance_type)
    X_dask = da.from_array(X, chunks=(50, 3))
    np.testing.assert_allclose(
        ours.predict_proba(X_dask).compute(), reference.predict_proba(X), rtol=1e-6, atol=1e-10
    )
    np.testing.assert_allclose(
        ours.score_samples(X_dask).compute(), reference.score_samples(X), rtol=1e-8
    )
    np.testing.assert_array_equal(ours.predict(X), reference.predict(X))
    refit = GaussianMixture(**ours.get_params())
    np.testing.assert_array_equal(refit.fit_predict(X_dask).compute(), reference.predict(X))
    np.testing.assert_allclose(ours.score(X), reference.score(X), rtol=1e-8)
    np.testing.assert_allclose(ours.bic(X), reference.bic(X), rtol=1e-8)
    np.testing.assert_allclose(ours.aic(X), reference.aic(X), rtol=1e-8)


@pytest.mark.slow
def test_same_seed_same_chunking_is_bitwise_identical(client):
    X, _, _ = make_blobs(3000, 4, 4, seed=21)
    X_dask = da.from_array(X, chunks=(400, 4))
    fits = [GaussianMixture(4, random_state=7, tol=1e-9, max_iter=40).fit(X_dask) for _ in range(2)]
    for name in ("weights_", "means_", "covariances_"):
        assert np.array_equal(getattr(fits[0], name), getattr(fits[1], name)), name
    assert fits[0].lower_bound_ == fits[1].lower_bound_
    assert [h["objective"] for h in fits[0].history_] == [h["objective"] for h in fits[1].history_]


@pytest.mark.slow
def test_other_chunking_gives_the_same_fit(client):
    X, _, _ = make_blobs(3000, 4, 4, seed=22)
    init = sklearn_start(X, 4, "full")
    fits = [
        GaussianMixture(4, tol=1e-9, max_iter=25, **init).fit(da.from_array(X, chunks=(rows, 4)))
        for rows in (3000, 401, 97)
    ]
    for other in fits[1:]:
        for name in ("weights_", "means_", "covariances_"):
            np.testing.assert_allclose(
                getattr(other, name), getattr(fits[0], name), rtol=1e-9, atol=1e-12
            )
        np.testing.assert_allclose(other.lower_bound_, fits[0].lower_bound_, rtol=1e-9)

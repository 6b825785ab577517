"""The scan pass run with the first EM pass where every start is given
(:mod:`dask_em.estimators.first_pass`).

A fit whose starts need no data reads the data once less: the same result bit for bit
as the scan pass run alone, one pass and its bytes fewer, on a real cluster as in this
process, for plain and accelerated EM; bad data is refused with the same error; models
whose E-step depends on the scan, and starts that need the data, keep the scan alone.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import dask.array as da
import numpy as np
import pytest

from dask_em import (
    BernoulliMixture,
    CategoricalMixture,
    GaussianHMM,
    GaussianMixture,
    PoissonHMM,
    PoissonMixture,
    em,
)
from dask_em.estimators import first_pass
from dask_em.families.gaussian import GaussianFamily
from tests.test_accelerated_fits import overlapping_data
from tests.test_checkpoint import Stop, stop_after
from tests.test_hmm import gaussian_sequences

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")


def gaussian_start(K=2, D=2, covariance_type="full"):
    precisions = {"full": np.stack([np.eye(D)] * K), "diag": np.ones((K, D))}
    return dict(
        weights_init=np.full(K, 1 / K),
        means_init=np.arange(K * D, dtype=float).reshape(K, D) / (K * D),
        precisions_init=precisions[covariance_type],
    )


def fit_both(monkeypatch, make, fit):
    """``(merged, alone)``: the fit with its scan in the first EM pass, and with the scan
    pass run alone (the merge turned off)."""
    merged = fit(make())
    with monkeypatch.context() as patch:
        patch.setattr(first_pass, "plan", lambda *args: None)
        alone = fit(make())
    return merged, alone


def assert_same_fit(merged, alone, fitted):
    assert merged.lower_bound_ == alone.lower_bound_
    assert merged.n_iter_ == alone.n_iter_
    for name in fitted:
        np.testing.assert_array_equal(getattr(merged, name), getattr(alone, name))
    assert [h["objective"] for h in merged.history_] == [h["objective"] for h in alone.history_]
    assert merged.n_passes_ == alone.n_passes_ - 1
    bytes_per_pass, rest = divmod(alone.bytes_read_, alone.n_passes_)
    assert rest == 0 and merged.bytes_read_ == alone.bytes_read_ - bytes_per_pass


@pytest.mark.parametrize("accelerate", [None, "squarem", "newton"])
def test_a_gaussian_mixture_from_given_starts_reads_the_data_once_less(monkeypatch, accelerate):
    # missing values, weights and the default priors learned from the scan
    X, w = overlapping_data(3, n=500)
    params = dict(tol=1e-7, max_iter=2000, accelerate=accelerate, mean_pseudocount=0.5)

    def make():
        return GaussianMixture(2, covariance_type="full", **params, **gaussian_start())

    merged, alone = fit_both(monkeypatch, make, lambda m: m.fit(X, sample_weight=w))
    assert merged.converged_
    assert_same_fit(merged, alone, ("weights_", "means_", "covariances_"))
    # plain EM: the scan and pass 1 together, then one pass per iteration
    if accelerate is None:
        assert merged.n_passes_ == merged.n_iter_


def test_a_fit_on_the_cluster_merges_its_scan_too(monkeypatch, client):
    X, _ = overlapping_data(4, n=3000)
    X = np.nan_to_num(X)

    def make():
        start = gaussian_start(covariance_type="diag")
        return GaussianMixture(
            2, covariance_type="diag", tol=1e-8, max_iter=60, client=client, **start
        )

    merged, alone = fit_both(monkeypatch, make, lambda m: m.fit(X))
    assert_same_fit(merged, alone, ("weights_", "means_", "covariances_"))


@pytest.mark.parametrize("accelerate", [None, "newton"])
def test_hmms_from_given_parameters_read_the_data_once_less(monkeypatch, accelerate):
    X, lengths, _ = gaussian_sequences(30, seed=5)
    start = dict(
        startprob_init=np.full(3, 1 / 3),
        transmat_init=np.full((3, 3), 0.1) + 0.7 * np.eye(3),
        means_init=np.array([[-1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])[:, : X.shape[1]],
        covars_init=np.ones((3, X.shape[1])),
    )

    def make():
        return GaussianHMM(
            3, covariance_type="diag", tol=1e-8, max_iter=300, accelerate=accelerate, **start
        )

    merged, alone = fit_both(monkeypatch, make, lambda m: m.fit(X, lengths))
    assert_same_fit(merged, alone, ("startprob_", "transmat_", "means_", "covars_"))

    counts = np.random.default_rng(1).poisson(3.0, size=(400, 1))

    def make_poisson():
        return PoissonHMM(
            2,
            tol=1e-8,
            max_iter=300,
            startprob_init=[0.5, 0.5],
            transmat_init=[[0.9, 0.1], [0.1, 0.9]],
            lambdas_init=[[2.0], [4.0]],
        )

    merged, alone = fit_both(monkeypatch, make_poisson, lambda m: m.fit(counts, [200, 200]))
    assert_same_fit(merged, alone, ("startprob_", "transmat_", "lambdas_"))


def test_poisson_and_bernoulli_mixtures_and_restarts_and_warm_starts(monkeypatch):
    rng = np.random.default_rng(2)
    counts = rng.poisson(np.where(rng.random((600, 1)) < 0.4, 1.0, 5.0)).astype(float)

    def make():
        return PoissonMixture(
            2, tol=1e-9, max_iter=500, n_init=3, weights_init=[0.5, 0.5], rates_init=[[1], [3]]
        )

    merged, alone = fit_both(monkeypatch, make, lambda m: m.fit(counts))
    assert_same_fit(merged, alone, ("weights_", "rates_"))

    bits = (rng.random((500, 4)) < np.where(rng.random((500, 1)) < 0.5, 0.2, 0.7)).astype(float)

    def make_bernoulli():
        return BernoulliMixture(
            2,
            tol=1e-9,
            max_iter=500,
            weights_init=[0.5, 0.5],
            probabilities_init=np.array([[0.3] * 4, [0.6] * 4]),
        )

    merged, alone = fit_both(monkeypatch, make_bernoulli, lambda m: m.fit(bits))
    assert_same_fit(merged, alone, ("weights_", "probabilities_"))

    # a warm start takes the fitted parameters: its scan needs no pass of its own either
    def make_warm():
        model = GaussianMixture(
            2, covariance_type="tied", tol=1e-9, max_iter=3, warm_start=True, random_state=0
        )
        return model.fit(counts)

    merged, alone = fit_both(
        monkeypatch, make_warm, lambda m: m.set_params(max_iter=50).fit(counts)
    )
    assert_same_fit(merged, alone, ("weights_", "means_", "covariances_"))


def test_starts_that_need_the_data_and_symbol_counts_keep_the_scan_alone():
    X, _ = overlapping_data(5, n=300)
    X = np.nan_to_num(X)
    drawn = GaussianMixture(2, tol=1e-6, max_iter=200, random_state=0).fit(X)
    assert drawn.n_passes_ == 1 + 1 + drawn.n_iter_  # scan, init pass, EM passes
    # means given, precisions not: the init pass (and the scan before it) are needed
    partly = GaussianMixture(2, tol=1e-6, max_iter=200, means_init=[[0, 0], [1, 1]]).fit(X)
    assert partly.n_passes_ == 1 + 1 + partly.n_iter_
    symbols = np.random.default_rng(0).integers(0, 3, size=(300, 2))
    categorical = CategoricalMixture(
        2,
        tol=1e-6,
        max_iter=200,
        weights_init=[0.5, 0.5],
        probabilities_init=np.full((2, 2, 3), 1 / 3)
        + np.array([[[0.1, -0.1, 0]], [[-0.1, 0.1, 0]]]),
    ).fit(symbols)
    assert categorical.n_passes_ == 1 + categorical.n_iter_  # its own scan, then EM


@pytest.mark.parametrize(
    "damage, message",
    [
        (("X", 7, 1, np.inf), "row 7"),
        (("X", 11, 0, np.nan), "row 11"),
        (("w", 9, None, -1.0), "the first is at row 9"),
    ],
)
def test_bad_data_is_refused_as_by_the_scan_alone(monkeypatch, damage, message):
    X, w = overlapping_data(6, n=200)
    X = np.nan_to_num(X)
    where, row, column, value = damage
    if where == "X":
        X[row, column] = value
    else:
        w[row] = value

    def make():
        return GaussianMixture(2, tol=1e-6, missing="error", **gaussian_start())

    # dask arrays: their values are checked by the scan (NumPy input is checked at once)
    X, w = da.from_array(X, chunks=50), da.from_array(w, chunks=50)
    errors = []
    for merge in (True, False):
        with monkeypatch.context() as patch:
            if not merge:
                patch.setattr(first_pass, "plan", lambda *args: None)
            with pytest.raises(ValueError, match=message) as raised:
                make().fit(X, sample_weight=w)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]


def test_lockstep_makes_the_first_pass_when_the_given_points_differ(monkeypatch):
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(50, 2)) for _ in range(3)]
    family = GaussianFamily("diag")
    start = family.make_params(np.array([0.5, 0.5]), np.array([[-1.0, 0], [1, 0]]), np.ones((2, 2)))
    other = family.make_params(np.array([0.5, 0.5]), np.array([[-1.0, 0], [2, 0]]), np.ones((2, 2)))
    calls = []

    def map_reduce(block_func, merge, shared, *, stage):
        calls.append(stage)
        return merge(*(block_func(shared, block, None) for block in blocks))

    def one_run():
        return em.EMRun(family, start, max_iter=5, tol=0.0)

    reference = em.lockstep(map_reduce, [one_run()])[0]
    assert len(calls) == 5
    at_start = map_reduce(family.block_stats, family.merge, start, stage="estep")
    at_other = map_reduce(family.block_stats, family.merge, other, stage="estep")
    calls.clear()
    # the first record counts its seconds from the start of the pass that was made: a
    # clock that stands still at 1000 s, that pass started at 900 s
    monkeypatch.setattr(em, "time", SimpleNamespace(perf_counter=lambda: 1000.0))
    evaluated = em.Evaluated([([start], [at_start])], 900.0)
    (given,) = em.lockstep(map_reduce, [one_run()], first=evaluated)
    assert len(calls) == 4 and given.lower_bound == reference.lower_bound
    assert [record.seconds for record in given.history] == [100.0, 0.0, 0.0, 0.0, 0.0]
    calls.clear()
    wrong = em.Evaluated([([other], [at_other])], 900.0)
    (wrong,) = em.lockstep(map_reduce, [one_run()], first=wrong)
    assert len(calls) == 5 and wrong.lower_bound == reference.lower_bound
    assert wrong.history[0].seconds == 0.0


def test_values_too_large_skip_the_e_step_of_their_block():
    # the magnitude check refuses them after the pass; no kernel computes on them first
    X, lengths, _ = gaussian_sequences(30, seed=5)
    X = X.copy()
    X[3] = 1e200
    start = dict(
        startprob_init=np.full(3, 1 / 3),
        transmat_init=np.full((3, 3), 1 / 3),
        means_init=np.zeros((3, X.shape[1])),
        covars_init=np.ones((3, X.shape[1])),
    )
    model = GaussianHMM(3, covariance_type="diag", **start)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match="X holds values up to 1e"):
            model.fit(X, lengths)
    with pytest.raises(ValueError, match="X holds values up to 1e"):
        GaussianMixture(2, **gaussian_start(D=X.shape[1])).fit(da.from_array(X, chunks=100))


@pytest.mark.parametrize("accelerate", [None, "newton"])
def test_a_resumed_fit_reads_no_more_passes_than_the_uninterrupted_one(tmp_path, accelerate):
    # k-means starts (a scan and an init pass); resuming redoes the scan with its next pass
    X, w = overlapping_data(7, n=400)
    params = dict(tol=1e-6, max_iter=2000, random_state=3, accelerate=accelerate)
    reference = GaussianMixture(2, **params).fit(X, sample_weight=w)
    assert reference.converged_ and reference.n_passes_ == 2 + reference.history_[-1]["passes"]
    for stop in (1, 3):
        path = tmp_path / f"stop-{stop}.zarr"
        with pytest.raises(Stop):
            GaussianMixture(2, **params).fit(
                X, sample_weight=w, checkpoint=path, callbacks=[stop_after(stop)]
            )
        resumed = GaussianMixture(2, **params).fit(X, sample_weight=w, checkpoint=path, resume=True)
        for name in ("weights_", "means_", "covariances_"):
            np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name))
        assert resumed.lower_bounds_ == reference.lower_bounds_
        assert resumed.n_passes_ == reference.n_passes_
        assert resumed.bytes_read_ == reference.bytes_read_

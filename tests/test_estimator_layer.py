"""The estimator layer: the EM loop without Dask, the siblings' surfaces (HMM
``fit_predict``, ``score``), and GaussianHMM's priors with GaussianMixture's defaults."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dask_em import GaussianHMM, GaussianMixture, em
from dask_em.families.gaussian import GaussianFamily
from tests.test_hmm import gaussian_sequences

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")


def test_the_em_loop_runs_over_a_plain_map_reduce_without_dask():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-3, 1, (300, 2)), rng.normal(3, 1, (200, 2))])
    blocks = np.array_split(X, 7)
    stages = []

    def map_reduce(block_func, merge, shared, *, stage):
        stages.append(stage)
        return merge(*(block_func(shared, block, None) for block in blocks))

    family = GaussianFamily("diag")
    start = family.make_params(
        np.array([0.5, 0.5]), np.array([[-1.0, 0.0], [1.0, 0.0]]), covariances=np.ones((2, 2))
    )
    seen = []
    result = em.run(map_reduce, family, start, max_iter=200, tol=1e-8, observe=seen.append)
    assert result.converged and stages == ["estep"] * result.n_iter
    assert [r.iteration for r in seen] == list(range(1, result.n_iter + 1))
    objectives = [r.objective for r in result.history]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(objectives))
    means = np.sort(result.params["means"][:, 0])
    np.testing.assert_allclose(means, [-3, 3], atol=0.3)


def test_an_iteration_counts_its_passes_not_the_set_up_before_the_loop(monkeypatch):
    """The driver compiles the kernels between making the runs and the first pass (up to
    seconds on a first run): not part of iteration 1's seconds.  A clock the test moves
    by hand: 100 "seconds" of set-up, then 1 per pass."""
    clock = [0.0]
    monkeypatch.setattr(em.time, "perf_counter", lambda: clock[0])
    X = np.random.default_rng(1).normal(size=(200, 2))

    def map_reduce(block_func, merge, shared, *, stage):
        clock[0] += 1.0
        return merge(block_func(shared, X, None))

    family = GaussianFamily("diag")
    start = family.make_params(
        np.array([0.5, 0.5]), np.array([[-1.0, 0.0], [1.0, 0.0]]), covariances=np.ones((2, 2))
    )
    run = em.EMRun(family, start, max_iter=3, tol=0.0)
    clock[0] += 100.0  # the set-up
    (result,) = em.lockstep(map_reduce, [run])
    assert [record.seconds for record in result.history] == [1.0, 1.0, 1.0]


def test_hmm_fit_predict_is_fit_then_predict():
    values, lengths, _ = gaussian_sequences(40, seed=3)
    labels = GaussianHMM(3, random_state=0, max_iter=20).fit_predict(values, lengths)
    model = GaussianHMM(3, random_state=0, max_iter=20).fit(values, lengths)
    assert labels.shape == (len(values),) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, model.predict(values, lengths))


def test_hmm_score_is_a_total_and_mixture_score_a_mean():
    values, lengths, _ = gaussian_sequences(20, seed=4)
    hmm = GaussianHMM(2, random_state=0, max_iter=5).fit(values, lengths)
    per_sequence = hmm.score_sequences(values, lengths)
    assert hmm.score(values, lengths) == pytest.approx(per_sequence.sum())
    gmm = GaussianMixture(2, random_state=0).fit(values)
    assert gmm.score(values) == pytest.approx(gmm.score_samples(values).mean())


def test_gaussian_hmm_priors_default_to_the_data_like_the_mixture():
    values, lengths, _ = gaussian_sequences(60, seed=5)
    options = {"mean_pseudocount": 1.0, "covariance_pseudocount": 2.0, "random_state": 0}
    hmm = GaussianHMM(3, covariance_type="full", max_iter=10, **options).fit(values, lengths)
    gmm = GaussianMixture(3, max_iter=10, **options).fit(values)
    # the whole data is the initialization sample here: its mean and covariance
    np.testing.assert_allclose(hmm.mean_prior_, values.mean(axis=0))
    np.testing.assert_allclose(hmm.covariance_prior_, np.cov(values.T, bias=True))
    np.testing.assert_allclose(hmm.mean_prior_, gmm.mean_prior_)
    np.testing.assert_allclose(hmm.covariance_prior_, gmm.covariance_prior_)
    emission, mixture = hmm._emission_family(), gmm._family()
    np.testing.assert_allclose(emission.mean_prior, mixture.mean_prior)
    np.testing.assert_allclose(emission.covariance_prior, mixture.covariance_prior)


def test_a_strong_default_mean_prior_pulls_every_state_to_the_data_mean():
    values, lengths, _ = gaussian_sequences(60, seed=6)
    model = GaussianHMM(3, mean_pseudocount=1e9, random_state=0, max_iter=5)
    model.fit(values, lengths)
    np.testing.assert_allclose(
        model.means_, np.broadcast_to(values.mean(axis=0), (3, 2)), atol=1e-3
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"covariance_prior": -np.eye(2)}, "positive semi-definite"),
        ({"mean_pseudocount": -1.0}, "mean_pseudocount must be >= 0"),
        ({"mean_prior": np.zeros(3)}, r"mean_prior must have shape \(2,\)"),
    ],
)
def test_gaussian_hmm_checks_its_priors_as_the_mixture_does(params, message):
    values, lengths, _ = gaussian_sequences(10, seed=7)
    for estimator in (GaussianHMM, GaussianMixture):
        with pytest.raises(ValueError, match=message):
            if estimator is GaussianHMM:
                estimator(2, **params).fit(values, lengths)
            else:
                estimator(2, **params).fit(values)

"""Same initial parameters -> same parameters, log-likelihood and Viterbi paths as hmmlearn.

hmmlearn's priors are set to their flat values (covars_prior=0) and ours likewise
(reg_covar=0); both run a fixed number of Baum-Welch iterations (tol disabled).
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from hmmlearn import hmm

import dask_em
from dask_em import Sequences

N_ITER = 15
RTOL = 1e-6


def sequences_from(model, seed, n_sequences=60, max_length=80):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length, size=n_sequences)
    lengths[:3] = [1, 1, 2]  # length-1 sequences are legal and must not produce NaN
    X = np.concatenate(
        [model.sample(int(n), random_state=int(rng.integers(2**31)))[0] for n in lengths]
    )
    return X, lengths


def gaussian_truth(covariance_type):
    truth = hmm.GaussianHMM(3, covariance_type=covariance_type, init_params="")
    truth.startprob_ = np.array([0.6, 0.3, 0.1])
    truth.transmat_ = np.array([[0.8, 0.1, 0.1], [0.15, 0.8, 0.05], [0.2, 0.2, 0.6]])
    truth.means_ = np.array([[0.0, 0.0], [2.5, 2.0], [-2.0, 2.5]])
    if covariance_type == "diag":
        truth.covars_ = np.array([[1.0, 0.6], [0.5, 0.7], [1.2, 2.0]])
    else:
        truth.covars_ = np.array(
            [[[1.0, 0.3], [0.3, 0.6]], [[0.5, -0.2], [-0.2, 0.7]], [[1.2, 0.0], [0.0, 2.0]]]
        )
    return truth


def chunkings(X, lengths):
    """The same data as NumPy (fitted in-process), and as dask blocks of several sizes
    (fitted on the cluster)."""
    yield "numpy", (X, lengths)
    for block_bytes in (2_000, 40_000):
        yield f"blocks-{block_bytes}", (Sequences(X, lengths, block_bytes=block_bytes),)
    rows = da.from_array(X, chunks=(len(X) // 3 + 1, -1))
    yield "dask-rechunked", (Sequences(rows, lengths, block_bytes=10_000),)


def assert_same(ours, ref, X, lengths, names):
    for ours_name, ref_name in names:
        np.testing.assert_allclose(
            getattr(ours, ours_name), getattr(ref, ref_name), rtol=RTOL, atol=1e-10
        )
    assert ours.score(X, lengths) == pytest.approx(ref.score(X, lengths), rel=1e-10)
    ours_logprob, ours_states = ours.decode(X, lengths)
    ref_logprob, ref_states = ref.decode(X, lengths)
    assert ours_logprob == pytest.approx(ref_logprob, rel=1e-10)
    np.testing.assert_array_equal(ours_states, ref_states)
    np.testing.assert_allclose(
        ours.predict_proba(X, lengths), ref.predict_proba(X, lengths), atol=1e-9
    )
    # hmmlearn's last monitored log-likelihood is at the parameters before the last M-step
    assert ours.lower_bound_ * len(X) == pytest.approx(ref.monitor_.history[-1], rel=1e-10)


@pytest.mark.parametrize("covariance_type", ["diag", pytest.param("full", marks=pytest.mark.slow)])
def test_gaussian_hmm_equals_hmmlearn(client, covariance_type):
    truth = gaussian_truth(covariance_type)
    X, lengths = sequences_from(truth, seed=1)
    rng = np.random.default_rng(2)
    init = {
        "startprob": np.full(3, 1 / 3),
        "transmat": rng.dirichlet(np.full(3, 4.0), size=3),
        "means": X[rng.choice(len(X), 3, replace=False)],
        "covars": np.ones((3, 2)) if covariance_type == "diag" else np.stack([np.eye(2)] * 3),
    }
    refs = []
    for implementation in ("log", "scaling"):
        ref = hmm.GaussianHMM(
            3,
            covariance_type=covariance_type,
            init_params="",
            n_iter=N_ITER,
            tol=-np.inf,
            covars_prior=0.0,
            implementation=implementation,
        )
        ref.startprob_, ref.transmat_ = init["startprob"], init["transmat"]
        ref.means_, ref.covars_ = init["means"], init["covars"]
        refs.append(ref.fit(X, lengths))
    # each of our fits once, compared with both of hmmlearn's implementations
    for label, args in chunkings(X, lengths):
        ours = dask_em.GaussianHMM(
            3,
            covariance_type=covariance_type,
            reg_covar=0.0,
            max_iter=N_ITER,
            tol=0.0,
            startprob_init=init["startprob"],
            transmat_init=init["transmat"],
            means_init=init["means"],
            covars_init=init["covars"],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dask_em.ConvergenceWarning)
            ours.fit(*args)
        assert ours.n_iter_ == N_ITER, label
        for ref in refs:
            assert_same(
                ours,
                ref,
                X,
                lengths,
                [
                    ("startprob_", "startprob_"),
                    ("transmat_", "transmat_"),
                    ("means_", "means_"),
                    ("covars_", "covars_"),
                ],
            )


def test_poisson_hmm_equals_hmmlearn(client):
    truth = hmm.PoissonHMM(3, init_params="")
    truth.startprob_ = np.array([0.5, 0.3, 0.2])
    truth.transmat_ = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    truth.lambdas_ = np.array([[1.0, 8.0], [5.0, 2.0], [12.0, 12.0]])
    X, lengths = sequences_from(truth, seed=3)
    rng = np.random.default_rng(4)
    transmat = rng.dirichlet(np.full(3, 4.0), size=3)
    lambdas = rng.uniform(1, 10, size=(3, 2))
    ref = hmm.PoissonHMM(3, init_params="", n_iter=N_ITER, tol=-np.inf)
    ref.startprob_, ref.transmat_, ref.lambdas_ = np.full(3, 1 / 3), transmat, lambdas
    ref.fit(X, lengths)
    for label, args in chunkings(X, lengths):
        ours = dask_em.PoissonHMM(
            3,
            max_iter=N_ITER,
            tol=0.0,
            startprob_init=np.full(3, 1 / 3),
            transmat_init=transmat,
            lambdas_init=lambdas,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dask_em.ConvergenceWarning)
            ours.fit(*args)
        assert ours.n_iter_ == N_ITER, label
        assert_same(
            ours,
            ref,
            X,
            lengths,
            [("startprob_", "startprob_"), ("transmat_", "transmat_"), ("lambdas_", "lambdas_")],
        )


def test_categorical_hmm_with_priors_equals_hmmlearn(client):
    """Also the MAP path: Dirichlet priors on start, transitions and emissions."""
    truth = hmm.CategoricalHMM(3, init_params="")
    truth.startprob_ = np.array([0.5, 0.3, 0.2])
    truth.transmat_ = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    truth.emissionprob_ = np.array(
        [[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.25, 0.05], [0.05, 0.05, 0.2, 0.7]]
    )
    X, lengths = sequences_from(truth, seed=5)
    rng = np.random.default_rng(6)
    transmat = rng.dirichlet(np.full(3, 4.0), size=3)
    emission = rng.dirichlet(np.full(4, 4.0), size=3)
    ref = hmm.CategoricalHMM(
        3,
        init_params="",
        n_iter=N_ITER,
        tol=-np.inf,
        startprob_prior=2.0,
        transmat_prior=1.5,
        emissionprob_prior=1.25,
    )
    ref.startprob_, ref.transmat_, ref.emissionprob_ = np.full(3, 1 / 3), transmat, emission
    ref.fit(X, lengths)
    for label, args in chunkings(X, lengths):
        ours = dask_em.CategoricalHMM(
            3,
            max_iter=N_ITER,
            tol=0.0,
            startprob_prior=2.0,
            transmat_prior=1.5,
            pseudocount=0.25,  # Dirichlet(1 + a): hmmlearn's emissionprob_prior = 1.25
            startprob_init=np.full(3, 1 / 3),
            transmat_init=transmat,
            emissionprob_init=emission,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dask_em.ConvergenceWarning)
            ours.fit(*args)
        assert ours.n_iter_ == N_ITER, label
        for ours_name in ("startprob_", "transmat_", "emissionprob_"):
            np.testing.assert_allclose(
                getattr(ours, ours_name), getattr(ref, ours_name), rtol=RTOL, atol=1e-10
            )
        np.testing.assert_array_equal(ours.predict(X, lengths), ref.predict(X, lengths))
        assert ours.score(X, lengths) == pytest.approx(ref.score(X, lengths), rel=1e-10)

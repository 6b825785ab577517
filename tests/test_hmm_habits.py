"""hmmlearn's habits on dask_em's HMMs (issue #13, item 2).

Assigned parameters predict without a fit, exactly as hmmlearn; ``params`` letters hold
parameters bitwise and the others update as hmmlearn's; ``init_params`` letters; zeros of
a left-right topology survive; integer sequence weights equal repeated sequences.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hmmlearn import hmm

import dask_em
from dask_em import Sequences
from tests.test_hmm_hmmlearn import gaussian_truth, sequences_from

N_ITER = 10


def quiet_fit(model, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dask_em.ConvergenceWarning)
        return model.fit(*args, **kwargs)


def poisson_truth():
    truth = hmm.PoissonHMM(3, init_params="")
    truth.startprob_ = np.array([0.5, 0.3, 0.2])
    truth.transmat_ = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    truth.lambdas_ = np.array([[1.0, 8.0], [5.0, 2.0], [12.0, 12.0]])
    return truth


def categorical_truth():
    truth = hmm.CategoricalHMM(3, init_params="")
    truth.startprob_ = np.array([0.47, 0.31, 0.22])
    # no two paths equally likely (exact ties would let Viterbi pick either)
    truth.transmat_ = np.array([[0.83, 0.11, 0.06], [0.12, 0.79, 0.09], [0.04, 0.17, 0.79]])
    truth.emissionprob_ = np.array(
        [[0.69, 0.13, 0.11, 0.07], [0.1, 0.61, 0.21, 0.08], [0.05, 0.06, 0.19, 0.7]]
    )
    return truth


#: name -> (the hmmlearn model with set parameters, our model, emission attributes)
CASES = {
    "gaussian-diag": (lambda: gaussian_truth("diag"), dask_em.GaussianHMM, ["means_", "covars_"]),
    "gaussian-full": (lambda: gaussian_truth("full"), dask_em.GaussianHMM, ["means_", "covars_"]),
    "poisson": (poisson_truth, dask_em.PoissonHMM, ["lambdas_"]),
    "categorical": (categorical_truth, dask_em.CategoricalHMM, ["emissionprob_"]),
}


def assigned_copy(ref, ours_class):
    """Our model with every parameter assigned from hmmlearn's ``ref`` (no fit)."""
    kwargs = {"covariance_type": ref.covariance_type} if hasattr(ref, "covariance_type") else {}
    ours = ours_class(ref.n_components, **kwargs)
    ours.startprob_, ours.transmat_ = ref.startprob_, ref.transmat_
    if isinstance(ours, dask_em.GaussianHMM):
        ours.means_, ours.covars_ = ref.means_, ref._covars_  # the covariance type's shape
    elif isinstance(ours, dask_em.PoissonHMM):
        ours.lambdas_ = ref.lambdas_
    else:
        ours.emissionprob_ = ref.emissionprob_
    return ours


def assert_predicts_as(ours, ref, X, lengths):
    ours_logprob, ours_states = ours.decode(X, lengths)
    ref_logprob, ref_states = ref.decode(X, lengths)
    np.testing.assert_array_equal(ours_states, ref_states)
    assert ours_logprob == pytest.approx(ref_logprob, rel=1e-12)
    assert ours.score(X, lengths) == pytest.approx(ref.score(X, lengths), rel=1e-12)
    np.testing.assert_allclose(
        ours.predict_proba(X, lengths), ref.predict_proba(X, lengths), rtol=0, atol=1e-12
    )
    np.testing.assert_array_equal(ours.predict(X, lengths), ref.predict(X, lengths))


@pytest.mark.parametrize("case", sorted(CASES))
def test_assigned_parameters_predict_as_hmmlearn_without_fit(case):
    make_ref, ours_class, _ = CASES[case]
    ref = make_ref()
    X, lengths = sequences_from(ref, seed=11, n_sequences=20)
    ours = assigned_copy(ref, ours_class)
    assert not hasattr(ours, "converged_")
    assert_predicts_as(ours, ref, X, lengths)
    assert ours.n_features == X.shape[1]
    sample, states = ours.sample(50, random_state=0)
    assert sample.shape == (50, X.shape[1]) and states.shape == (50,)


@pytest.mark.parametrize("case", ["gaussian-full", "categorical"])
def test_init_values_predict_as_hmmlearn_without_fit(case):
    make_ref, ours_class, _ = CASES[case]
    ref = make_ref()
    X, lengths = sequences_from(ref, seed=12, n_sequences=15)
    init = {"startprob_init": ref.startprob_, "transmat_init": ref.transmat_}
    if ours_class is dask_em.GaussianHMM:
        init.update(covariance_type="full", means_init=ref.means_, covars_init=ref.covars_)
    else:
        init.update(emissionprob_init=ref.emissionprob_)
    assert_predicts_as(ours_class(3, **init), ref, X, lengths)


def test_unset_parameters_still_mean_not_fitted():
    model = dask_em.GaussianHMM(2)
    model.startprob_ = np.array([0.5, 0.5])
    with pytest.raises(ValueError, match="not fitted"):
        model.predict(np.zeros((4, 1)))


@pytest.mark.parametrize(
    "covariance_type, shape",
    [("spherical", (3,)), ("diag", (3, 2)), ("full", (3, 2, 2)), ("tied", (2, 2))],
)
def test_covars_setter_takes_hmmlearn_shapes(covariance_type, shape):
    ours = dask_em.GaussianHMM(3, covariance_type=covariance_type)
    ref = hmm.GaussianHMM(3, covariance_type=covariance_type)
    value = np.ones(shape) if len(shape) < 2 or covariance_type == "diag" else np.eye(2)
    if covariance_type == "full":
        value = np.stack([np.eye(2)] * 3)
    ours.means_ = ref.means_ = np.zeros((3, 2))
    ref.n_features = 2
    ours.covars_ = ref.covars_ = value
    np.testing.assert_array_equal(ours.covariances_, value)
    np.testing.assert_array_equal(ours.covars_, ref.covars_)
    with pytest.raises(ValueError, match="covars_ must have shape"):
        ours.covars_ = np.ones((4, 2, 2, 1))


def test_covars_setter_refuses_a_matrix_that_is_not_positive_definite():
    ours = dask_em.GaussianHMM(1, covariance_type="full")
    with pytest.raises(ValueError, match="positive-definite"):
        ours.covars_ = np.array([[[1.0, 2.0], [2.0, 1.0]]])


def start_values(ref, rng):
    """A start for both libraries: hmmlearn's truth, perturbed."""
    transmat = rng.dirichlet(np.full(ref.n_components, 4.0), size=ref.n_components)
    return np.full(ref.n_components, 1 / ref.n_components), transmat


@pytest.mark.parametrize("case", sorted(CASES))
def test_params_st_holds_emissions_and_updates_transitions_as_hmmlearn(case):
    make_ref, ours_class, emission_attributes = CASES[case]
    truth = make_ref()
    X, lengths = sequences_from(truth, seed=13, n_sequences=30)
    startprob, transmat = start_values(truth, np.random.default_rng(5))
    # a new hmmlearn model: its monitor keeps the n_iter and tol it was built with
    kwargs = {"covariance_type": truth.covariance_type} if hasattr(truth, "covariance_type") else {}
    ref = type(truth)(3, params="st", init_params="", n_iter=N_ITER, tol=-np.inf, **kwargs)
    for name in emission_attributes:
        setattr(ref, name, getattr(truth, "_covars_" if name == "covars_" else name))
    ref.startprob_, ref.transmat_ = startprob, transmat
    ref.fit(X, lengths)
    ours = assigned_copy(truth, ours_class)
    ours.set_params(params="st", init_params="", max_iter=N_ITER, tol=0.0)
    ours.startprob_, ours.transmat_ = startprob, transmat
    before = {name: np.array(getattr(ours, name)) for name in emission_attributes}
    quiet_fit(ours, X, lengths)
    assert ours.n_iter_ == N_ITER
    for name in emission_attributes:
        np.testing.assert_array_equal(getattr(ours, name), before[name])  # bitwise
    np.testing.assert_allclose(ours.transmat_, ref.transmat_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.startprob_, ref.startprob_, rtol=1e-9, atol=1e-12)
    assert ours.lower_bound_ * len(X) == pytest.approx(ref.monitor_.history[-1], rel=1e-10)


@pytest.mark.slow
def test_params_without_c_holds_covariances_and_updates_means_as_hmmlearn():
    truth = gaussian_truth("full")
    X, lengths = sequences_from(truth, seed=14, n_sequences=30)
    startprob, transmat = start_values(truth, np.random.default_rng(6))
    means = truth.means_ + 0.5
    ref = hmm.GaussianHMM(
        3, covariance_type="full", params="stm", init_params="", n_iter=N_ITER, tol=-np.inf
    )
    ref.startprob_, ref.transmat_ = startprob, transmat
    ref.means_, ref.covars_ = means, truth.covars_
    ref.fit(X, lengths)
    ours = dask_em.GaussianHMM(
        3,
        covariance_type="full",
        params="stm",
        init_params="",
        max_iter=N_ITER,
        tol=0.0,
        startprob_init=startprob,
        transmat_init=transmat,
        means_init=means,
        covars_init=truth.covars_,
    )
    quiet_fit(ours, X, lengths)
    np.testing.assert_array_equal(ours.covariances_, truth.covars_)
    for name in ("startprob_", "transmat_", "means_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("covariance_type", ["diag", "full", "tied", "spherical"])
def test_covariances_updated_about_held_means(covariance_type):
    """hmmlearn 0.3.3 cannot be the reference here: with 'c' but not 'm' in params it
    accumulates no first moments and its covariances blow up.  One iteration from a known
    start against the definition: sum_t gamma_tk (x_t - mu_k)(x_t - mu_k)^T / sum_t gamma_tk."""
    truth = gaussian_truth("full")
    X, lengths = sequences_from(truth, seed=15, n_sequences=20)
    start = dask_em.GaussianHMM(3, covariance_type="full")
    start.startprob_, start.transmat_ = truth.startprob_, truth.transmat_
    start.means_, start.covars_ = truth.means_ + 0.3, truth.covars_
    gamma = start.predict_proba(X, lengths)
    delta = X[:, None, :] - start.means_[None]  # (T, K, D)
    full = np.einsum("tk,tki,tkj->kij", gamma, delta, delta) / gamma.sum(0)[:, None, None]
    expected = {
        "full": full,
        "diag": np.diagonal(full, axis1=1, axis2=2),
        "tied": np.einsum("tk,tki,tkj->ij", gamma, delta, delta) / len(X),
        "spherical": np.einsum("tk,tki->k", gamma, delta**2) / gamma.sum(0) / X.shape[1],
    }[covariance_type]
    covars = {
        "full": truth.covars_,
        "diag": np.ones((3, 2)),
        "tied": np.eye(2),
        "spherical": np.ones(3),
    }[covariance_type]
    ours = dask_em.GaussianHMM(
        3,
        covariance_type=covariance_type,
        params="c",
        init_params="",
        reg_covar=0.0,
        max_iter=1,
        tol=0.0,
        startprob_init=truth.startprob_,
        transmat_init=truth.transmat_,
        means_init=start.means_,
        covars_init=covars,
    )
    if covariance_type == "full":
        quiet_fit(ours, X, lengths)
        np.testing.assert_allclose(ours.covariances_, expected, rtol=1e-10)
    ours.set_params(max_iter=8)
    quiet_fit(ours, X, lengths)  # the objective never falls (checked by conftest)
    np.testing.assert_array_equal(ours.means_, start.means_)
    np.testing.assert_array_equal(ours.transmat_, truth.transmat_)
    objectives = [h["objective"] for h in ours.history_]
    assert np.all(np.diff(objectives) >= -1e-12 * np.abs(objectives[:-1]))


def test_init_params_letters_take_assigned_attributes():
    truth = gaussian_truth("diag")
    X, lengths = sequences_from(truth, seed=16, n_sequences=10)
    given = dask_em.GaussianHMM(3, init_params="st", max_iter=5, tol=0.0, random_state=0)
    given.set_params(means_init=truth.means_ + 0.2, covars_init=truth._covars_)
    assigned = dask_em.GaussianHMM(3, init_params="st", max_iter=5, tol=0.0, random_state=0)
    assigned.means_, assigned.covars_ = truth.means_ + 0.2, truth._covars_
    quiet_fit(given, X, lengths)
    quiet_fit(assigned, X, lengths)
    for name in ("startprob_", "transmat_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(given, name), getattr(assigned, name))
    missing = dask_em.GaussianHMM(3, init_params="stm")
    with pytest.raises(ValueError, match=r"leaves covariances_ \(letter 'c'\) uninitialized"):
        missing.fit(X, lengths)


@pytest.mark.parametrize("value, message", [("stx", "init_params"), (3, "init_params")])
def test_bad_init_params_is_named(value, message):
    with pytest.raises(ValueError, match=message):
        dask_em.PoissonHMM(2, init_params=value).fit(np.ones((10, 1)))


def test_bad_params_letter_is_named():
    with pytest.raises(ValueError, match=r"params must be a string of the letters 'ste'"):
        dask_em.CategoricalHMM(2, params="stm").fit(np.zeros((10, 1), dtype=int))


@pytest.mark.parametrize("transmat_prior", [1.0, 2.0])
def test_left_right_topology_keeps_its_zeros(transmat_prior):
    truth = gaussian_truth("diag")
    truth.startprob_ = np.array([1.0, 0.0, 0.0])
    truth.transmat_ = np.array([[0.8, 0.2, 0.0], [0.0, 0.7, 0.3], [0.0, 0.0, 1.0]])
    X, lengths = sequences_from(truth, seed=17, n_sequences=25)
    transmat_init = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    startprob_init = np.array([1.0, 0.0, 0.0])
    ours = dask_em.GaussianHMM(
        3,
        transmat_prior=transmat_prior,
        startprob_prior=transmat_prior,
        transmat_init=transmat_init,
        startprob_init=startprob_init,
        max_iter=30,
        random_state=1,
    )
    quiet_fit(ours, X, lengths)
    assert np.all(ours.transmat_[transmat_init == 0] == 0.0)
    assert np.all(ours.startprob_[startprob_init == 0] == 0.0)
    assert np.all(ours.transmat_[transmat_init > 0] > 0)
    np.testing.assert_allclose(ours.transmat_.sum(axis=1), 1.0, rtol=1e-14)


def weighted_case():
    truth = poisson_truth()
    X, lengths = sequences_from(truth, seed=18, n_sequences=12)
    sequences = np.split(X, np.cumsum(lengths)[:-1])
    weights = np.array([1, 3, 0, 2, 1, 1, 4, 1, 2, 0, 1, 5])
    repeated = [s for s, w in zip(sequences, weights, strict=True) for _ in range(w)]
    kwargs = dict(
        max_iter=N_ITER,
        tol=0.0,
        init_params="",
        startprob_init=np.full(3, 1 / 3),
        transmat_init=np.random.default_rng(7).dirichlet(np.full(3, 4.0), size=3),
        lambdas_init=truth.lambdas_ * 1.5,
    )
    return X, lengths, sequences, weights, repeated, kwargs


def assert_same_fit(a, b):
    for name in ("startprob_", "transmat_", "lambdas_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-10, atol=1e-12)
    assert a.lower_bound_ == pytest.approx(b.lower_bound_, rel=1e-10)


def test_integer_sequence_weights_equal_repeated_sequences():
    X, lengths, sequences, weights, repeated, kwargs = weighted_case()
    copies = quiet_fit(dask_em.PoissonHMM(3, **kwargs), repeated)
    for args, fit_kwargs in (
        ((sequences,), {"sample_weight": weights}),
        ((X, lengths), {"sample_weight": weights}),
        ((X, lengths, weights), {}),
    ):
        weighted = quiet_fit(dask_em.PoissonHMM(3, **kwargs), *args, **fit_kwargs)
        assert_same_fit(weighted, copies)


def test_integer_sequence_weights_on_the_cluster(client):
    X, lengths, _, weights, repeated, kwargs = weighted_case()
    copies = quiet_fit(dask_em.PoissonHMM(3, **kwargs), repeated)
    data = Sequences(X, lengths, block_bytes=400)
    assert data.n_blocks > 2
    weighted = quiet_fit(dask_em.PoissonHMM(3, **kwargs), data, sample_weight=weights)
    assert weighted.data_placement_ != "local"
    assert_same_fit(weighted, copies)


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0, 2.0], r"one weight per sequence, shape \(3,\)"),
        ([1.0, np.nan, 1.0], "NaN or infinite values; first at sequence 1"),
        ([1.0, 1.0, -1.0], "non-negative; first negative at sequence 2"),
        ([0.0, 0.0, 0.0], "sums to zero"),
    ],
)
def test_sequence_weights_are_checked(weights, message):
    X = np.arange(12.0).reshape(-1, 1) % 3
    with pytest.raises(ValueError, match=message):
        dask_em.PoissonHMM(2).fit(X, [4, 4, 4], sample_weight=weights)


def test_mixture_params_hold_the_others_bitwise():
    rng = np.random.default_rng(8)
    X = np.concatenate([rng.normal(-3, 1, (300, 2)), rng.normal(3, 2, (200, 2))])
    weights, means = np.array([0.5, 0.5]), np.array([[-1.0, 0.0], [1.0, 0.0]])
    precisions = np.stack([np.eye(2), np.eye(2)])
    model = dask_em.GaussianMixture(
        2,
        covariance_type="full",
        params=("means",),
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        max_iter=20,
        tol=0.0,
    )
    quiet_fit(model, X)
    np.testing.assert_array_equal(model.weights_, weights)
    np.testing.assert_array_equal(model.covariances_, np.linalg.inv(precisions))
    assert not np.allclose(model.means_, means)
    counts = rng.poisson(np.where(rng.random((400, 1)) < 0.3, 2.0, 9.0), size=(400, 3))
    poisson = dask_em.PoissonMixture(2, params="weights", rates_init=[[1.0] * 3, [10.0] * 3])
    quiet_fit(poisson, counts)
    np.testing.assert_array_equal(poisson.rates_, [[1.0] * 3, [10.0] * 3])
    with pytest.raises(ValueError, match="params must name parameters among"):
        dask_em.PoissonMixture(2, params=("means",)).fit(counts)


def test_mixture_covariances_updated_about_held_means():
    """One EM step of GaussianMixture(params="covariances") against the definition:
    sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T / sum_i r_ik + reg_covar I, r at the start."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(9)
    X = np.concatenate([rng.normal(-2, 1, (200, 2)), rng.normal(2, 1.5, (150, 2))])
    weights, means = np.array([0.4, 0.6]), np.array([[-1.0, 0.5], [1.5, -0.5]])
    densities = np.stack(
        [w * multivariate_normal(m, np.eye(2)).pdf(X) for w, m in zip(weights, means, strict=True)],
        axis=1,
    )
    resp = densities / densities.sum(axis=1, keepdims=True)
    delta = X[:, None, :] - means[None]
    expected = np.einsum("ik,ika,ikb->kab", resp, delta, delta) / resp.sum(0)[:, None, None]
    model = dask_em.GaussianMixture(
        2,
        covariance_type="full",
        params="covariances",
        weights_init=weights,
        means_init=means,
        precisions_init=np.stack([np.eye(2)] * 2),
        reg_covar=1e-6,
        max_iter=1,
        tol=0.0,
    )
    quiet_fit(model, X)
    np.testing.assert_allclose(model.covariances_, expected + 1e-6 * np.eye(2), rtol=1e-10)
    np.testing.assert_array_equal(model.means_, means)
    np.testing.assert_array_equal(model.weights_, weights)

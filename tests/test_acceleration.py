"""SQUAREM-accelerated EM (dask_em.acceleration): parameter maps, passes, monotonicity,
resume, re-seeding; in process (one pass = block_stats + objective + m_step on a NumPy
array), and once on the cluster through EMEngine.map_reduce."""

from __future__ import annotations

import copy
import functools
import itertools

import dask.array as da
import numpy as np
import pytest

from dask_em import em
from dask_em.acceleration import (
    InfeasiblePoint,
    PlainEM,
    Squarem,
    family_evaluate,
    parameter_map,
    run_em,
)
from dask_em.acceleration.coordinates import (
    CholeskyStack,
    PositiveArray,
    SimplexRows,
    UnitIntervalArray,
)
from dask_em.engine import EMEngine
from dask_em.families.bernoulli import BernoulliFamily
from dask_em.families.categorical import CategoricalFamily
from dask_em.families.gaussian import COVARIANCE_TYPES, GaussianFamily
from dask_em.families.hmm import HMMFamily
from dask_em.families.poisson import PoissonFamily
from tests.helpers import random_gaussian_params

DEATHS = np.arange(10.0)[:, None]
DAYS = np.array([162, 267, 271, 185, 111, 61, 27, 8, 3, 1], dtype=np.float64)


# --------------------------------------------------------------------------- helpers
def squarem(family, start, **kwargs):
    return Squarem(start, functools.partial(parameter_map, family), **kwargs)


def fit(driver, family, pass_stats, max_passes=100_000):
    return run_em(driver, family_evaluate(family, pass_stats), max_passes=max_passes)


def moved_arrays(params, prefix=""):
    """Every array of a parameter dict, nested dicts flattened (the seed left out)."""
    out = {}
    for name, value in params.items():
        if isinstance(value, dict):
            out.update(moved_arrays(value, f"{prefix}{name}."))
        elif name != "seed":
            out[prefix + name] = np.asarray(value, dtype=np.float64)
    return out


def assert_params_close(actual, expected, rtol):
    """Each array agrees to ``rtol`` relative to its largest entry."""
    actual, expected = moved_arrays(actual), moved_arrays(expected)
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        scale = max(1.0, float(np.max(np.abs(value))))
        np.testing.assert_allclose(actual[name], value, rtol=0, atol=rtol * scale, err_msg=name)


def assert_accepted_never_decrease(history, rtol=1e-12):
    """Extrapolated points never fall below the point before them (exactly); EM steps
    by no more than rounding; a step after a re-seeding is exempt."""
    for before, after in itertools.pairwise(history):
        if before.reseeded:
            continue
        if after.kind == "extrapolated":
            assert after.objective >= before.objective
        else:
            assert after.objective >= before.objective - rtol * max(1.0, abs(before.objective))


def hmm_sequences(rng, emission_kind, n_sequences=8, length=120):
    """Sticky 3-state chains and their observations (one block, lengths)."""
    transmat = np.full((3, 3), 0.03) + 0.91 * np.eye(3)
    states = []
    for _ in range(n_sequences):
        state = rng.choice(3)
        for _ in range(length):
            states.append(state)
            state = rng.choice(3, p=transmat[state])
    states = np.array(states)
    if emission_kind == "poisson":
        X = rng.poisson(np.array([1.0, 3.0, 6.0])[states])[:, None].astype(float)
    elif emission_kind == "categorical":
        table = np.array([[0.6, 0.2, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.1, 0.1, 0.3, 0.5]])
        X = np.array([rng.choice(4, p=table[s]) for s in states], dtype=float)[:, None]
    else:
        X = np.array([0.0, 0.6, 1.2])[states][:, None] + 0.7 * rng.normal(size=(len(states), 2))
    return X, np.full(n_sequences, length)


def emission_case(kind, rng, K=3, D=2):
    """An emission family and parameters (mixing weights unused by the HMM)."""
    weights = np.full(K, 1.0 / K)
    if kind == "poisson":
        family = PoissonFamily(rate_alpha=1.5, rate_beta=0.1)
        return family, family.make_params(weights, rates=rng.uniform(0.5, 7, (K, 1)))
    if kind == "categorical":
        family = CategoricalFamily(n_symbols=4)
        return family, family.make_params(weights, probabilities=rng.dirichlet(np.ones(4), (K, 1)))
    if kind == "bernoulli":
        family = BernoulliFamily()
        return family, family.make_params(weights, probabilities=rng.uniform(0.1, 0.9, (K, D)))
    family = GaussianFamily(kind, reg_covar=0.0, covariance_prior=0.5, covariance_pseudocount=1.0)
    return family, random_gaussian_params(family, K, D, rng, mean_scale=1.0)


def hmm_start(family, emission_params, zeros=False):
    transmat = np.full((3, 3), 0.1) + 0.7 * np.eye(3)
    startprob = np.full(3, 1.0 / 3)
    if zeros:  # a left-to-right chain: these zeros stay zero under EM
        transmat = np.array([[0.8, 0.2, 0.0], [0.0, 0.7, 0.3], [0.0, 0.0, 1.0]])
        startprob = np.array([1.0, 0.0, 0.0])
    return family.make_params(startprob, transmat, emission_params, seed=7)


# --------------------------------------------------------------------------- maps
EMISSIONS = [*COVARIANCE_TYPES, "poisson", "categorical", "bernoulli"]


def mixture_params(kind, rng):
    family, params = emission_case(kind, rng)
    params = family.make_params(rng.dirichlet(np.ones(3)), **_arrays(family, params))
    return family, params


def _arrays(family, params):
    if isinstance(family, GaussianFamily):
        return {"means": params["means"], "covariances": params["covariances"]}
    return {family.parameter: params[family.parameter]}


@pytest.mark.parametrize("kind", EMISSIONS)
def test_the_map_of_every_mixture_round_trips(kind):
    family, params = mixture_params(kind, np.random.default_rng(0))
    mapping = parameter_map(family, [params])
    vector = mapping.to_vector(params)
    assert vector.shape == (mapping.size,)
    assert np.all(np.isfinite(vector))
    assert_params_close(mapping.to_params(vector), params, rtol=1e-12)


@pytest.mark.parametrize("kind", EMISSIONS)
def test_the_map_of_the_hmm_round_trips_over_every_emission_and_keeps_zeros(kind):
    rng = np.random.default_rng(1)
    emission, emission_params = emission_case(kind, rng)
    family = HMMFamily(emission)
    params = hmm_start(family, emission_params, zeros=True)
    mapping = parameter_map(family, [params])
    vector = mapping.to_vector(params)
    back = mapping.to_params(vector)
    assert_params_close(back, params, rtol=1e-12)
    assert back["seed"] == 7
    moved = mapping.to_params(vector + rng.normal(size=vector.shape))
    zeros = params["transmat"] == 0.0
    assert np.all(moved["transmat"][zeros] == 0.0) and np.all(moved["transmat"][~zeros] > 0)
    assert np.all(moved["startprob"][1:] == 0.0) and moved["startprob"][0] == 1.0
    np.testing.assert_allclose(moved["transmat"].sum(axis=1), 1.0, rtol=1e-14)


def test_exact_zeros_of_ml_probabilities_stay_exactly_zero_and_rows_sum_to_one():
    rng = np.random.default_rng(2)
    family = CategoricalFamily(n_symbols=4)
    probabilities = rng.dirichlet(np.ones(4), size=(3, 2))
    probabilities[:, 0, 3] = 0.0  # a symbol never seen at feature 0
    probabilities[:, 0] /= probabilities[:, 0].sum(axis=1, keepdims=True)
    later = probabilities.copy()
    later[1, 1, 2] = 0.0  # a zero in a later point only: held at the last point's value
    later[1, 1] /= later[1, 1].sum()
    points = [
        family.make_params(np.full(3, 1 / 3), probabilities=p) for p in (probabilities, later)
    ]
    mapping = parameter_map(family, points)
    moved = mapping.to_params(mapping.to_vector(points[0]) * 3.0 + 1.0)["probabilities"]
    assert np.all(moved[:, 0, 3] == 0.0) and moved[1, 1, 2] == 0.0
    np.testing.assert_allclose(moved.sum(axis=2), 1.0, rtol=1e-14)
    assert np.all(moved[probabilities * later > 0] > 0)


def test_bernoulli_and_poisson_hold_exact_zeros_and_ones():
    probabilities = np.array([[0.0, 0.3, 1.0], [0.5, 0.2, 0.9]])
    bernoulli = UnitIntervalArray.build([probabilities])
    moved = bernoulli.inverse(bernoulli.forward(probabilities) - 2.0)
    assert moved[0, 0] == 0.0 and moved[0, 2] == 1.0 and np.all(moved[moved % 1 != 0] < 0.9)
    rates = np.array([[0.0, 2.0], [3.0, 4.0]])
    poisson = PositiveArray.build([rates])
    assert poisson.size == 3
    assert poisson.inverse(poisson.forward(rates) + 1.0)[0, 0] == 0.0


def test_an_overflowing_vector_is_an_infeasible_point():
    weights = SimplexRows.build([np.array([0.5, 0.5])])
    with pytest.raises(InfeasiblePoint):
        weights.inverse(np.array([0.0, -1e6]))  # the second weight underflows to zero
    with pytest.raises(InfeasiblePoint):
        PositiveArray.build([np.ones(2)]).inverse(np.array([0.0, 1e4]))


def test_a_covariance_too_close_to_singular_for_float64_is_an_infeasible_point():
    """A Cholesky factor with positive diagonal gives a positive-definite C C^T, but not
    in float64 when two features' correlation is within rounding of 1: the product
    rounds to a singular or indefinite matrix.  Features on very different scales are kept."""
    covariances = CholeskyStack.build([np.stack([np.eye(3)] * 2)])
    vector = covariances.forward(np.stack([np.eye(3)] * 2))
    vector[1] = np.log(1e-9)  # the first matrix: the second feature's scale 1e-9
    kept = covariances.inverse(vector)[0]
    np.testing.assert_allclose(kept, np.diag([1.0, 1e-18, 1.0]), rtol=1e-12, atol=0)
    vector[3] = 1.0  # C[1, 0]: the second feature is the first plus 1e-9 of its own
    factor = np.array([[1.0, 0.0, 0.0], [1.0, 1e-9, 0.0], [0.0, 0.0, 1.0]])
    assert np.min(np.linalg.eigvalsh(factor @ factor.T)) <= 0  # what float64 makes of it
    with pytest.raises(InfeasiblePoint, match="too close to singular"):
        covariances.inverse(vector)
    vector = covariances.forward(np.stack([np.eye(3)] * 2))
    vector[1] = -380.0  # exp(-380) > 0, but its square (a variance) underflows to 0
    with pytest.raises(InfeasiblePoint, match="variance"):
        covariances.inverse(vector)
    vector[3] = 1e-170  # C[1, 0] too: a row whose norm would underflow, cond(C) huge
    with pytest.raises(InfeasiblePoint):
        covariances.inverse(vector)


def test_the_sampling_e_step_is_refused():
    emission, params = emission_case("poisson", np.random.default_rng(3))
    family = HMMFamily(emission, estep="sample")
    start = hmm_start(family, params)
    with pytest.raises(ValueError, match="exact E-step"):
        parameter_map(family, [start])
    with pytest.raises(ValueError, match="exact E-step"):
        squarem(family, start, tol=1e-8)  # at once, not at the first extrapolation


# --------------------------------------------------------------------------- passes
def hasselblad():
    family = PoissonFamily()
    start = family.make_params(np.array([0.3, 0.7]), rates=np.array([[1.0], [2.5]]))
    return family, (lambda p: family.block_stats(p, DEATHS, DAYS)), start


def overlapping_gmm(n=500, seed=0):
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [1.5, 0.5], [0.5, 2.0]])
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    X = means[labels] + rng.standard_normal((n, 2)) @ np.array([[1.0, 0.3], [0.0, 0.8]])
    family = GaussianFamily("full")
    start = family.make_params(
        np.full(3, 1 / 3),
        means + np.array([[0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]),
        covariances=np.stack([np.eye(2)] * 3),
    )
    return family, (lambda p: family.block_stats(p, X)), start


def sticky_hmm(seed=4):
    rng = np.random.default_rng(seed)
    X, lengths = hmm_sequences(rng, "diag")
    emission = GaussianFamily("diag")
    family = HMMFamily(emission)
    emission_params = emission.make_params(
        np.full(3, 1 / 3),
        np.array([[-0.5, 0.5], [1.0, -0.5], [2.0, 1.0]]),
        covariances=np.ones((3, 2)),
    )
    return family, (lambda p: family.block_stats(p, X, lengths)), hmm_start(family, emission_params)


def categorical_mixture(n=1500, seed=3):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(4, 2.0), size=(3, 6))
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    cumulative = np.cumsum(probabilities[labels], axis=2)
    X = (rng.random((n, 6, 1)) > cumulative).sum(axis=2).clip(0, 3).astype(float)
    family = CategoricalFamily(n_symbols=4)
    start = family.make_params(
        np.full(3, 1 / 3), probabilities=rng.dirichlet(np.full(4, 5.0), size=(3, 6))
    )
    return family, (lambda p: family.block_stats(p, X)), start


def separated_gmm(n=1000, seed=1):
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    X = means[rng.choice(3, size=n)] + rng.standard_normal((n, 2))
    family = GaussianFamily("full")
    start = family.make_params(
        np.full(3, 1 / 3), means + 1.0, covariances=2.0 * np.stack([np.eye(2)] * 3)
    )
    return family, (lambda p: family.block_stats(p, X)), start


def test_hasselblad_squarem_reaches_the_published_optimum_in_a_tenth_of_the_passes():
    """Varadhan and Roland (2008), Table 2: pi = 0.6401146, lambda = (2.6634044,
    1.2560951), log-likelihood -1989.9459.  At tol 1e-8 on the mean objective plain EM
    stops ~1e-2 away from it (its steps are tiny long before it arrives); at 1e-14 it
    gets there, in about 2000 passes."""
    family, pass_stats, start = hasselblad()
    for tol in (1e-8, 1e-14):
        plain = fit(PlainEM(start, tol=tol), family, pass_stats)
        fast = fit(squarem(family, start, tol=tol), family, pass_stats)
        assert plain.converged and fast.converged
        assert fast.passes <= plain.passes / 10
        assert fast.lower_bound >= plain.lower_bound
        assert_accepted_never_decrease(fast.history)
    assert_params_close(fast.params, plain.params, rtol=1e-5 * 2.7)  # 1e-5 of each rate
    np.testing.assert_allclose(fast.params["weights"][1], 0.6401146, rtol=1e-5)
    np.testing.assert_allclose(fast.params["rates"][:, 0], [1.2560951, 2.6634044], rtol=1e-5)
    np.testing.assert_allclose(fast.lower_bound * DAYS.sum(), -1989.9459, atol=1e-4)


@pytest.mark.parametrize(
    ("problem", "largest_ratio"),
    [(overlapping_gmm, 0.25), (sticky_hmm, 0.6), (categorical_mixture, 0.35)],
    ids=["overlapping-gmm", "sticky-gaussian-hmm", "categorical"],
)
def test_slow_problems_reach_the_same_optimum_in_far_fewer_passes(problem, largest_ratio):
    family, pass_stats, start = problem()
    plain = fit(PlainEM(start, tol=1e-11), family, pass_stats)
    fast = fit(squarem(family, start, tol=1e-11), family, pass_stats)
    assert plain.converged and fast.converged
    assert fast.passes <= largest_ratio * plain.passes
    assert_params_close(fast.params, plain.params, rtol=1e-4)
    assert fast.lower_bound >= plain.lower_bound - 1e-12
    assert_accepted_never_decrease(fast.history)


def test_a_fast_problem_costs_at_most_a_fifth_more_passes():
    family, pass_stats, start = separated_gmm()
    for tol, rtol in ((1e-8, 1e-4), (1e-12, 1e-5)):
        plain = fit(PlainEM(start, tol=tol), family, pass_stats)
        fast = fit(squarem(family, start, tol=tol), family, pass_stats)
        assert fast.passes <= 1.2 * plain.passes
        assert_params_close(fast.params, plain.params, rtol=rtol)


# --------------------------------------------------------------------------- monotone
def gaussian_with_missing(covariance_type, rng, n=400):
    """Three overlapping blobs in 3-D with 10% of the entries missing, row weights and
    priors on every parameter (reg_covar 0, so the penalized objective is exact)."""
    means = np.array([[0.0, 0.0, 0.0], [1.5, 0.5, -0.5], [0.5, 1.5, 1.0]])
    X = means[rng.choice(3, size=n)] + rng.normal(size=(n, 3))
    X[rng.random(X.shape) < 0.1] = np.nan
    weights = rng.uniform(0.5, 2.0, size=n)
    family = GaussianFamily(
        covariance_type,
        reg_covar=0.0,
        weight_concentration=2.0,
        mean_prior=np.zeros(3),
        mean_pseudocount=0.5,
        covariance_prior=1.0,
        covariance_pseudocount=2.0,
    )
    start = random_gaussian_params(family, 3, 3, rng, mean_scale=1.0)
    return family, (lambda p: family.block_stats(p, X, weights)), start


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_accepted_objectives_never_decrease_gaussian_with_priors_weights_and_missing_values(
    covariance_type,
):
    family, pass_stats, start = gaussian_with_missing(covariance_type, np.random.default_rng(5))
    fast = fit(squarem(family, start, tol=1e-12), family, pass_stats, max_passes=300)
    assert sum(point.kind == "extrapolated" for point in fast.history) >= 5
    assert fast.passes > len(fast.history) or fast.converged  # rejections cost passes
    assert_accepted_never_decrease(fast.history)


@pytest.mark.parametrize("kind", ["poisson", "categorical", "bernoulli"])
def test_accepted_objectives_never_decrease_discrete_mixtures_with_priors(kind):
    rng = np.random.default_rng(6)
    family, params = mixture_params(kind, rng)
    family = type(family)(
        **{"weight_concentration": 1.5, **({"pseudocount": 0.3} if kind != "poisson" else {})},
        **({"n_symbols": 4} if kind == "categorical" else {}),
    )
    X = np.stack([family.sample_component(params, k, 200, rng) for k in range(3)])
    X = X.reshape(600, -1).astype(float)
    weights = rng.integers(1, 4, size=len(X)).astype(float)
    fast = fit(
        squarem(family, params, tol=1e-13),
        family,
        lambda p: family.block_stats(p, X, weights),
        max_passes=400,
    )
    assert any(point.kind == "extrapolated" for point in fast.history)
    assert_accepted_never_decrease(fast.history)


def hmm_with_priors(kind, rng):
    """A sticky 3-state HMM with ``kind`` emissions and Dirichlet priors on its chain:
    the family, its start, and 5 sequences of 80 steps (X, lengths)."""
    emission, emission_params = emission_case(kind, rng)
    family = HMMFamily(emission, startprob_concentration=1.5, transmat_concentration=2.0)
    data_kind = {"poisson": "poisson", "categorical": "categorical"}.get(kind, "gaussian")
    X, lengths = hmm_sequences(rng, data_kind, n_sequences=5, length=80)
    if kind == "bernoulli":
        X = (X > 1.0).astype(float)
    return family, hmm_start(family, emission_params), X, lengths


@pytest.mark.parametrize("kind", EMISSIONS)
def test_accepted_objectives_never_decrease_hmm_over_every_emission(kind):
    rng = np.random.default_rng(7)
    family, start, X, lengths = hmm_with_priors(kind, rng)
    if kind in COVARIANCE_TYPES:
        X[rng.random(X.shape) < 0.05] = np.nan
    fast = fit(
        squarem(family, start, tol=1e-13),
        family,
        lambda p: family.block_stats(p, X, lengths),
        max_passes=200,
    )
    assert any(point.kind == "extrapolated" for point in fast.history)
    assert_accepted_never_decrease(fast.history)


# --------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


def stopping_checkpoint(stop_at: int, error: type[Exception]):
    """A checkpoint callback that raises ``error`` at its ``stop_at``-th call, and the
    list that then holds a deep copy of the state it was given there (what a checkpoint
    file would hold; only that one is copied)."""
    saved, calls = [], []

    def checkpoint(point, state):
        calls.append(point)
        if len(calls) == stop_at:
            saved.append(copy.deepcopy(state))
            raise error

    return checkpoint, saved


@pytest.mark.parametrize("driver", ["squarem", pytest.param("plain", marks=pytest.mark.slow)])
def test_resuming_from_a_saved_state_equals_the_uninterrupted_run(driver):
    family, pass_stats, start = categorical_mixture(n=600)

    def make(resume=None):
        if driver == "plain":
            return PlainEM(start, tol=1e-12, resume=resume)
        return squarem(family, start, tol=1e-12, resume=resume)

    whole = fit(make(), family, pass_stats)
    assert whole.converged
    kinds_seen = set()
    n = len(whole.history)
    for stop_after in sorted({1, 2, 3, 4, 5, 6, n // 2, n - 2}):
        checkpoint, saved = stopping_checkpoint(stop_after, Killed)
        with pytest.raises(Killed):
            run_em(
                make(),
                family_evaluate(family, pass_stats),
                max_passes=10**5,
                callbacks=[checkpoint],
            )
        kinds_seen.add((saved[-1].history[-1].kind, len(saved[-1].chain)))
        resumed = fit(make(resume=saved[-1]), family, pass_stats)
        assert resumed.history == whole.history
        assert resumed.passes == whole.passes
        assert_params_close(resumed.params, whole.params, rtol=1e-12)
    if driver == "squarem":  # interrupted after each kind of point, with each chain length
        assert {("em", 1), ("em", 2), ("extrapolated", 0)} <= kinds_seen


# --------------------------------------------------------------------------- re-seeding
def test_a_reseeded_component_restarts_the_cycle_with_plain_em_steps():
    """A component that starts far from every row empties at once; the repair hook moves
    it, the next pass evaluates exactly the repaired parameters, and no extrapolation
    uses points from before the repair."""
    rng = np.random.default_rng(8)
    family = PoissonFamily()
    X = np.concatenate([rng.poisson(2.0, 300), rng.poisson(9.0, 200)])[:, None].astype(float)
    start = family.make_params(np.array([0.45, 0.45, 0.1]), rates=np.array([[1.0], [5.0], [900.0]]))
    repairs = []

    def repair(params, stats):
        empty = family.empty_components(stats)
        if empty.size == 0:
            return params, ()
        repaired = family.reseed(params, empty, X[::10])
        repairs.append(repaired)
        return repaired, tuple(int(k) for k in empty)

    evaluated = []

    def pass_stats(params):
        evaluated.append(params)
        return family.block_stats(params, X)

    fast = fit(squarem(family, start, tol=1e-12, repair=repair), family, pass_stats)
    assert fast.converged and len(repairs) >= 1
    position = next(i for i, point in enumerate(fast.history) if point.reseeded)
    assert evaluated[fast.history[position].passes] is repairs[0]
    # two plain EM points (the repaired one, its image) come before any extrapolation
    assert [point.kind for point in fast.history[position + 1 : position + 3]] == ["em", "em"]
    assert_accepted_never_decrease(fast.history)


# --------------------------------------------------------------------------- cluster
@pytest.mark.slow
def test_on_the_cluster_squarem_through_map_reduce_equals_the_local_run_and_plain_em(client):
    """Passes through EMEngine.map_reduce on a LocalCluster (4 blocks, a fixed tree) give
    the run of the same engine in this process; SQUAREM and the engine's own plain EM
    loop reach the same optimum, with at most 1.2x its passes."""
    rng = np.random.default_rng(1)
    means = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    X = means[rng.choice(3, size=800)] + rng.standard_normal((800, 2))
    family = GaussianFamily("full")
    start = family.make_params(
        np.full(3, 1 / 3), means + 1.0, covariances=2.0 * np.stack([np.eye(2)] * 3)
    )
    X_dask = da.from_array(X, chunks=(200, 2))
    runs = {}
    for where, local in (("cluster", False), ("local", True)):
        engine = EMEngine(X_dask, model="gmm", cache="memory", local=local)
        assert (engine.client is None) == local
        runs[where] = fit(
            squarem(family, start, tol=1e-10),
            family,
            lambda p, engine=engine: engine.map_reduce(family.block_stats, family.merge, p),
        )
    assert runs["cluster"].history == runs["local"].history
    assert_params_close(runs["cluster"].params, runs["local"].params, rtol=1e-12)
    engine = EMEngine(X_dask, model="gmm", cache="memory")
    plain = em.run(engine.map_reduce, family, start, max_iter=10_000, tol=1e-10)
    assert plain.converged and runs["cluster"].converged
    assert runs["cluster"].passes <= 1.2 * plain.n_iter
    assert_params_close(runs["cluster"].params, plain.params, rtol=1e-4)
    assert runs["cluster"].lower_bound >= plain.lower_bound - 1e-12


@pytest.mark.parametrize("accelerate", [None, "squarem", "daarem", "newton"])
def test_every_driver_checks_monotony_at_its_familys_tolerance(accelerate):
    """make_driver hands each driver the family's monotone tolerance (float32: 1e-5)."""
    from dask_em.acceleration import make_driver

    params = separated_gmm()[2]
    for dtype, tolerance in (("float64", 1e-10), ("float32", 1e-5)):
        family = GaussianFamily("full", dtype=dtype)
        driver = make_driver(accelerate, family, params, tol=0.0)
        assert driver.monotone_tolerance == tolerance


@pytest.mark.allow_objective_decrease
def test_a_driver_reports_a_fall_beyond_its_tolerance_only(caplog):
    params = separated_gmm()[2]
    driver = PlainEM(params, tol=0.0, monotone_tolerance=1e-5)
    with caplog.at_level("WARNING"):
        driver.tell(-2.0, params, {})
        driver.tell(-2.0 - 1e-6, params, {})  # within 1e-5 of 2: not reported
        assert not caplog.records
        driver.tell(-2.1, params, {})  # 5% lower: reported
    assert [r.getMessage()[:30] for r in caplog.records] == ["objective decreased after 3 pa"]

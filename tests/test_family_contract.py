"""One contract test for every family (dask_em.families.protocols), no cluster.

Each case below builds a family, valid random parameters and a block of data.  Every case
must satisfy its Protocol and the behaviour the EM loop relies on:

- additivity: the merged statistics of any split of a block equal the block's statistics
  (any row split for mixtures; any split on sequence boundaries for HMMs);
- merge order: merging in another order or grouping changes only rounding;
- a finite M-step and objective, also from a block too small to feed every component;
- integer row weights act as repeated rows (mixtures);
- missing values: a family that ``handles_missing`` gives finite statistics with NaN in
  the block; one that does not leaves rows with NaN out of ``posterior_stats``;
- ``sample_component`` returns (n, D) rows.

A new family gets a case here (``MIXTURE_CASES`` or ``EMISSION_CASES``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_em.families.bernoulli import BernoulliFamily
from dask_em.families.categorical import CategoricalFamily
from dask_em.families.gaussian import COVARIANCE_TYPES, GaussianFamily
from dask_em.families.hmm import HMMFamily
from dask_em.families.poisson import PoissonFamily
from dask_em.families.protocols import EmissionFamily, MixtureFamily
from tests.helpers import random_gaussian_params


@dataclass
class Case:
    """A family, parameters for K components on D features, and a data maker."""

    family: object
    params: dict
    draw: Callable[[np.random.Generator, int], np.ndarray]  # (rng, n_rows) -> (n_rows, D)


def gaussian_case(covariance_type: str, K: int, D: int, rng) -> Case:
    family = GaussianFamily(covariance_type, reg_covar=1e-6)
    params = random_gaussian_params(family, K, D, rng)
    offset = rng.normal(size=D) * 5
    return Case(family, params, lambda r, n: r.normal(size=(n, D)) * 2 + offset)


def poisson_case(K: int, D: int, rng) -> Case:
    family = PoissonFamily(weight_concentration=2.0, rate_alpha=1.5, rate_beta=0.1)
    params = family.make_params(rng.dirichlet(np.ones(K)), rates=rng.uniform(0.5, 8, (K, D)))
    return Case(family, params, lambda r, n: r.poisson(3.0, size=(n, D)).astype(float))


def categorical_case(K: int, D: int, rng) -> Case:
    family = CategoricalFamily(n_symbols=4, pseudocount=0.5)
    probabilities = rng.dirichlet(np.ones(4), size=(K, D))
    params = family.make_params(rng.dirichlet(np.ones(K)), probabilities=probabilities)
    return Case(family, params, lambda r, n: r.integers(0, 4, size=(n, D)).astype(float))


def bernoulli_case(K: int, D: int, rng) -> Case:
    family = BernoulliFamily(pseudocount=1.0)
    params = family.make_params(
        rng.dirichlet(np.ones(K)), probabilities=rng.uniform(0.1, 0.9, (K, D))
    )
    return Case(family, params, lambda r, n: r.integers(0, 2, size=(n, D)).astype(float))


MIXTURE_CASES = {
    **{
        f"gaussian-{cov}": (lambda K, D, rng, cov=cov: gaussian_case(cov, K, D, rng))
        for cov in COVARIANCE_TYPES
    },
    "poisson": poisson_case,
    "categorical": categorical_case,
    "bernoulli": bernoulli_case,
}
#: Every mixture family is an emission family of the hidden Markov models.
EMISSION_CASES = MIXTURE_CASES


def hmm_case(emission_kind: str, K: int, D: int, rng) -> Case:
    emission = EMISSION_CASES[emission_kind](K, D, rng)
    family = HMMFamily(emission.family)
    params = family.make_params(
        rng.dirichlet(np.ones(K)), rng.dirichlet(np.ones(K), size=K), emission.params
    )
    return Case(family, params, emission.draw)


def assert_stats_close(a, b, rtol: float, path: str = "stats") -> None:
    """Every field of two statistics dicts agrees (nested dicts: the HMM's emission)."""
    assert a.keys() == b.keys(), path
    for key in a:
        if isinstance(a[key], dict):
            assert_stats_close(a[key], b[key], rtol, f"{path}.{key}")
            continue
        expected = np.asarray(b[key], dtype=float)
        scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
        np.testing.assert_allclose(
            np.asarray(a[key], dtype=float),
            expected,
            rtol=rtol,
            atol=rtol * scale,
            err_msg=f"{path}.{key}",
        )


def assert_all_finite(tree, path: str = "params") -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            assert_all_finite(value, f"{path}.{key}")
        else:
            assert np.all(np.isfinite(np.asarray(value, dtype=float))), f"{path}.{key}"


def split_points(data, n: int, max_cuts: int = 6) -> list[int]:
    return [0, *sorted(data.draw(st.lists(st.integers(0, n), max_size=max_cuts))), n]


# -- mixtures -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", MIXTURE_CASES)
def test_mixture_family_satisfies_its_protocol(kind):
    case = MIXTURE_CASES[kind](3, 2, np.random.default_rng(0))
    assert isinstance(case.family, MixtureFamily)
    assert isinstance(case.family, EmissionFamily)
    assert isinstance(case.family.handles_missing, bool)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(list(MIXTURE_CASES)),
    n_rows=st.integers(1, 300),
    n_features=st.integers(1, 4),
    n_components=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    weighted=st.booleans(),
    data=st.data(),
)
def test_mixture_statistics_are_additive_over_any_partition(
    kind, n_rows, n_features, n_components, seed, weighted, data
):
    """merge(stats(A_1), ..., stats(A_m)) == stats(A_1 ∪ ... ∪ A_m) for any row partition."""
    rng = np.random.default_rng(seed)
    case = MIXTURE_CASES[kind](n_components, n_features, rng)
    X = case.draw(rng, n_rows)
    w = rng.uniform(0, 3, size=n_rows) if weighted else None
    parts = [
        case.family.block_stats(case.params, X[a:b], None if w is None else w[a:b])
        for a, b in itertools.pairwise(split_points(data, n_rows))
    ]
    whole = case.family.block_stats(case.params, X, w)
    assert_stats_close(case.family.merge(*parts), whole, rtol=1e-9)


@pytest.mark.parametrize("kind", MIXTURE_CASES)
def test_mixture_merge_order_changes_only_rounding(kind):
    rng = np.random.default_rng(1)
    case = MIXTURE_CASES[kind](3, 3, rng)
    a, b, c = (case.family.block_stats(case.params, case.draw(rng, n)) for n in (50, 1, 200))
    merge = case.family.merge
    reference = merge(a, b, c)
    for other in (merge(c, b, a), merge(merge(a, b), c), merge(a, merge(c, b))):
        assert_stats_close(other, reference, rtol=1e-12)


@pytest.mark.parametrize("kind", MIXTURE_CASES)
@pytest.mark.parametrize("n_rows", [1, 400])
def test_mixture_m_step_and_objective_are_finite(kind, n_rows):
    """Also from one row for three components: empty components keep finite placeholders."""
    rng = np.random.default_rng(2)
    case = MIXTURE_CASES[kind](3, 2, rng)
    stats = case.family.block_stats(case.params, case.draw(rng, n_rows))
    new_params = case.family.m_step(stats)
    assert_all_finite(new_params)
    assert np.isclose(new_params["weights"].sum(), 1.0)
    assert np.isfinite(case.family.objective(stats, case.params))
    assert np.isfinite(case.family.log_prior(new_params))


@pytest.mark.parametrize("kind", MIXTURE_CASES)
def test_integer_row_weights_act_as_repeated_rows(kind):
    rng = np.random.default_rng(3)
    case = MIXTURE_CASES[kind](3, 2, rng)
    X = case.draw(rng, 120)
    counts = rng.integers(0, 4, size=len(X))
    weighted = case.family.block_stats(case.params, X, counts.astype(float))
    repeated = case.family.block_stats(case.params, np.repeat(X, counts, axis=0))
    weighted.pop("n_rows"), repeated.pop("n_rows")  # rows read, not rows counted
    assert_stats_close(weighted, repeated, rtol=1e-10)


@pytest.mark.parametrize("kind", MIXTURE_CASES)
def test_sampled_rows_have_the_data_shape(kind):
    rng = np.random.default_rng(4)
    case = MIXTURE_CASES[kind](3, 5, rng)
    for component, n in ((0, 7), (2, 1), (1, 0)):
        rows = case.family.sample_component(case.params, component, n, rng)
        assert np.shape(rows) == (n, 5)
    assert case.family.init_features(case.draw(rng, 9)).shape[0] == 9


@pytest.mark.parametrize("kind", MIXTURE_CASES)
def test_missing_values_follow_the_handles_missing_flag(kind):
    """NaN rows: marginalized by a family that handles them, left out by one that does not."""
    rng = np.random.default_rng(5)
    case = MIXTURE_CASES[kind](3, 3, rng)
    X = case.draw(rng, 200)
    X[::7, 1] = np.nan
    X[5] = np.nan
    resp = rng.dirichlet(np.ones(3), size=len(X))
    stats = case.family.posterior_stats(case.params, X, resp)
    if case.family.handles_missing:
        assert_all_finite(stats, "posterior_stats")
        assert_all_finite(case.family.block_stats(case.params, X), "block_stats")
        log_prob = case.family.log_component_prob(case.params, X)
        assert log_prob.shape == (len(X), 3) and np.all(np.isfinite(log_prob))
    else:
        observed = ~np.isnan(X).any(axis=1)
        expected = case.family.posterior_stats(case.params, X[observed], resp[observed])
        assert_stats_close(stats, expected, rtol=1e-12)


# -- hidden Markov models over every emission family ------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    emission=st.sampled_from(list(EMISSION_CASES)),
    n_sequences=st.integers(1, 25),
    n_components=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_hmm_statistics_are_additive_over_any_split_on_sequence_boundaries(
    emission, n_sequences, n_components, seed, data
):
    rng = np.random.default_rng(seed)
    case = hmm_case(emission, n_components, 2, rng)
    lengths = rng.integers(1, 30, size=n_sequences)
    X = case.draw(rng, int(lengths.sum()))
    row_starts = np.concatenate([[0], np.cumsum(lengths)])
    cuts = split_points(data, n_sequences)
    parts = [
        case.family.block_stats(case.params, X[row_starts[s] : row_starts[e]], lengths[s:e])
        for s, e in itertools.pairwise(cuts)
        if e > s
    ]
    whole = case.family.block_stats(case.params, X, lengths)
    assert_stats_close(case.family.merge(*parts), whole, rtol=1e-10)


@pytest.mark.parametrize("emission", EMISSION_CASES)
def test_hmm_merge_order_m_step_and_missing_steps(emission):
    rng = np.random.default_rng(6)
    case = hmm_case(emission, 3, 2, rng)
    assert isinstance(case.family.emission, EmissionFamily)
    lengths = np.array([12, 1, 30, 7])
    X = case.draw(rng, int(lengths.sum()))
    X[[0, 13, 20, 49]] = np.nan  # missing steps, at a sequence start and in the middle
    row_starts = np.concatenate([[0], np.cumsum(lengths)])
    a, b, c = (
        case.family.block_stats(case.params, X[row_starts[s] : row_starts[e]], lengths[s:e])
        for s, e in ((0, 1), (1, 3), (3, 4))
    )
    merge = case.family.merge
    reference = merge(a, b, c)
    for other in (merge(c, b, a), merge(merge(a, b), c), merge(a, merge(c, b))):
        assert_stats_close(other, reference, rtol=1e-12)
    assert_all_finite({k: v for k, v in reference.items() if k != "seed"}, "stats")
    new_params = case.family.m_step(reference)
    assert_all_finite(new_params)
    np.testing.assert_allclose(new_params["transmat"].sum(axis=1), 1.0)
    assert np.isfinite(case.family.objective(reference, case.params))

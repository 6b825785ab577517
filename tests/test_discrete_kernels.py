"""The discrete families on their own: additivity and the distinct-row compression."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em.families import discrete
from dask_em.families.bernoulli import BernoulliFamily
from dask_em.families.categorical import CategoricalFamily
from dask_em.families.poisson import PoissonFamily


def family_and_data(kind, n_rows, n_features, n_components, rng):
    weights = rng.dirichlet(np.ones(n_components))
    if kind == "poisson":
        family = PoissonFamily(weight_concentration=2.0, rate_alpha=1.5, rate_beta=0.1)
        params = family.make_params(weights, rates=rng.uniform(0.5, 8, (n_components, n_features)))
        X = rng.poisson(3.0, size=(n_rows, n_features))
    elif kind == "categorical":
        family = CategoricalFamily(n_symbols=4, pseudocount=0.5)
        probabilities = rng.dirichlet(np.ones(4), size=(n_components, n_features))
        params = family.make_params(weights, probabilities=probabilities)
        X = rng.integers(0, 4, size=(n_rows, n_features))
    else:
        family = BernoulliFamily(pseudocount=1.0)
        params = family.make_params(
            weights, probabilities=rng.uniform(0.1, 0.9, (n_components, n_features))
        )
        X = rng.integers(0, 2, size=(n_rows, n_features))
    return family, params, X


def assert_stats_close(a, b, rtol=1e-10):
    assert a["n_rows"] == b["n_rows"]
    for key in ("weight", "loglik", "nk", "sums"):
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-9, err_msg=key)


@pytest.mark.parametrize("kind", ["poisson", "categorical", "bernoulli"])
@pytest.mark.parametrize("weighted", [False, True])
def test_distinct_row_compression_changes_nothing_but_rounding(kind, weighted, monkeypatch):
    rng = np.random.default_rng(3)
    family, params, X = family_and_data(kind, 5000, 3, 3, rng)
    w = rng.uniform(0, 2, size=len(X)) if weighted else None
    assert discrete.distinct_rows(X, w) is not None  # the compressed path is taken
    compressed = family.block_stats(params, X, w)
    monkeypatch.setattr(discrete, "MAX_DISTINCT_KEYS", 0)
    assert discrete.distinct_rows(X, w) is None
    assert_stats_close(compressed, family.block_stats(params, X, w))


def test_compression_is_skipped_when_rows_are_mostly_distinct():
    X = np.random.default_rng(4).poisson(1000.0, size=(100, 3))
    assert discrete.distinct_rows(X, None) is None

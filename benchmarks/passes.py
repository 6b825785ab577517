"""Passes over the data: plain EM against SQUAREM, to the same tolerance, from the same start.

    python benchmarks/passes.py                     # tol 1e-8
    python benchmarks/passes.py --tol 1e-8 1e-12    # several tolerances

Problems (issue #12's acceptance list, plus a fast one): the Hasselblad (1969) Poisson
mixture (1096 days, as ``sample_weight``), a 2-D Gaussian mixture with overlapping
components, a Gaussian HMM with sticky, overlapping states, a categorical mixture, and a
well-separated Gaussian mixture (fast: plain EM needs few passes).  Both methods stop
when a plain EM step changes the mean objective by less than ``tol`` (the loop's rule).

Each problem is fitted by the real estimator (``accelerate=None`` and ``"squarem"``),
from the same start (every ``*_init`` given, so there is no init pass), on in-memory
data (the fit runs in this process, block by block; the count of passes does not
depend on where a pass runs).

Columns: ``n_passes_`` of each method (every pass: the scan pass included) and their
ratio; ``diff``: the largest relative difference between the two results (per fitted
array, ``max|a - b| / max|b|``); ``err plain`` / ``err sq``: the same against the
optimum (SQUAREM run to tol 0 for 1500 passes); the objective is ``lower_bound_`` (mean
penalized log-likelihood per row, per step for the HMM).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def hasselblad():
    from dask_em import PoissonMixture

    X = np.arange(10.0)[:, None]
    days = np.array([162, 267, 271, 185, 111, 61, 27, 8, 3, 1], dtype=np.float64)
    params = dict(n_components=2, weights_init=[0.3, 0.7], rates_init=[[1.0], [2.5]])
    return PoissonMixture, params, (X,), {"sample_weight": days}


def overlapping_gmm(seed=0, n=1000):
    from dask_em import GaussianMixture

    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [1.5, 0.5], [0.5, 2.0]])
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    X = means[labels] + rng.standard_normal((n, 2)) @ np.array([[1.0, 0.3], [0.0, 0.8]])
    params = dict(
        n_components=3,
        weights_init=np.full(3, 1 / 3),
        means_init=means + np.array([[0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]),
        precisions_init=np.stack([np.eye(2)] * 3),
    )
    return GaussianMixture, params, (X,), {}


def separated_gmm(seed=1, n=3000):
    from dask_em import GaussianMixture

    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    labels = rng.choice(3, size=n, p=[0.4, 0.3, 0.3])
    X = means[labels] + rng.standard_normal((n, 2))
    params = dict(
        n_components=3,
        weights_init=np.full(3, 1 / 3),
        means_init=means + 1.0,
        precisions_init=np.stack([0.5 * np.eye(2)] * 3),
    )
    return GaussianMixture, params, (X,), {}


def sticky_gaussian_hmm(seed=2, n_sequences=20, length=250):
    from dask_em import GaussianHMM

    rng = np.random.default_rng(seed)
    transmat = np.array([[0.95, 0.03, 0.02], [0.02, 0.95, 0.03], [0.03, 0.02, 0.95]])
    means = np.array([[0.0], [0.6], [1.2]])
    rows = []
    for _ in range(n_sequences):
        state = rng.choice(3)
        for _ in range(length):
            rows.append(means[state] + 0.7 * rng.standard_normal(1))
            state = rng.choice(3, p=transmat[state])
    X = np.array(rows)
    lengths = np.full(n_sequences, length)
    params = dict(
        n_components=3,
        covariance_type="diag",
        startprob_init=np.full(3, 1 / 3),
        transmat_init=np.full((3, 3), 0.15) + 0.55 * np.eye(3),
        means_init=means * 1.4 - 0.5,
        covars_init=np.ones((3, 1)),
    )
    return GaussianHMM, params, (X, lengths), {}


def categorical_mixture(seed=3, n=3000):
    from dask_em import CategoricalMixture

    rng = np.random.default_rng(seed)
    K, D, M = 3, 6, 4
    probabilities = rng.dirichlet(np.full(M, 2.0), size=(K, D))
    labels = rng.choice(K, size=n, p=[0.5, 0.3, 0.2])
    cumulative = np.cumsum(probabilities[labels], axis=2)
    X = (rng.random((n, D, 1)) > cumulative).sum(axis=2).clip(0, M - 1)
    params = dict(
        n_components=K,
        n_symbols=M,
        weights_init=np.full(K, 1 / K),
        probabilities_init=rng.dirichlet(np.full(M, 5.0), size=(K, D)),
    )
    return CategoricalMixture, params, (X,), {}


PROBLEMS = {
    "hasselblad poisson": hasselblad,
    "overlapping 2-D gmm": overlapping_gmm,
    "sticky gaussian hmm": sticky_gaussian_hmm,
    "categorical mixture": categorical_mixture,
    "separated gmm (fast)": separated_gmm,
}

#: Fitted attributes compared between the two methods, per estimator.
FITTED = {
    "PoissonMixture": ("weights_", "rates_"),
    "GaussianMixture": ("weights_", "means_", "covariances_"),
    "CategoricalMixture": ("weights_", "probabilities_"),
    "GaussianHMM": ("startprob_", "transmat_", "means_", "covars_"),
}


def relative_difference(a, b) -> float:
    """The largest, over fitted arrays, of ``max|a - b| / max|b|``."""
    names = FITTED[type(b).__name__]
    return max(
        float(np.max(np.abs(getattr(a, n) - getattr(b, n))) / np.max(np.abs(getattr(b, n))))
        for n in names
    )


def fit(make, accelerate, tol, max_iter):
    estimator, params, args, keywords = make()
    model = estimator(**params, tol=tol, max_iter=max_iter, accelerate=accelerate)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(*args, **keywords)
    return model, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, nargs="*", default=[1e-8])
    parser.add_argument("--max-iter", type=int, default=100_000)
    args = parser.parse_args()
    header = (
        f"{'problem':<22} {'tol':>7} {'plain':>6} {'squarem':>7} {'ratio':>6} {'diff':>8} "
        f"{'err plain':>9} {'err sq':>8} {'objective plain':>16} {'objective sq':>16}"
    )
    print(header)
    print("-" * len(header))
    for name, make in PROBLEMS.items():
        optimum, _ = fit(make, "squarem", 0.0, 1500)
        for tol in args.tol:
            plain, _ = fit(make, None, tol, args.max_iter)
            squarem, _ = fit(make, "squarem", tol, args.max_iter)
            print(
                f"{name:<22} {tol:>7.0e} {plain.n_passes_:>6d} {squarem.n_passes_:>7d} "
                f"{squarem.n_passes_ / plain.n_passes_:>6.3f} "
                f"{relative_difference(squarem, plain):>8.1e} "
                f"{relative_difference(plain, optimum):>9.1e} "
                f"{relative_difference(squarem, optimum):>8.1e} "
                f"{plain.lower_bound_:>16.10f} {squarem.lower_bound_:>16.10f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

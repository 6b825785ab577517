"""Passes over the data: plain EM against SQUAREM, to the same tolerance, from the same start.

    python benchmarks/passes.py                 # tol 1e-8 and 1e-12
    python benchmarks/passes.py --tol 1e-8      # one tolerance

Problems (issue #12's acceptance list, plus a fast one): the Hasselblad (1969) Poisson
mixture (1096 days, as ``sample_weight``), a 2-D Gaussian mixture with overlapping
components, a Gaussian HMM with sticky, overlapping states, a categorical mixture, and a
well-separated Gaussian mixture (fast: plain EM needs few passes).  Both methods stop
when a plain EM step changes the mean objective by less than ``tol`` (the loop's rule).

Each pass runs in this process on a NumPy array (``family.block_stats``, ``objective``,
``m_step``): the count of passes does not depend on where a pass runs.  Once the
estimators take ``accelerate=``, this script should fit them instead and read
``n_passes_``.

Columns: passes of each method and their ratio; ``diff``: the largest relative
difference between the two results (per parameter array, ``max|a - b| / max|b|``);
``err plain`` / ``err sq``: the same against the optimum (SQUAREM run to tol 0 for 1500
passes); the objective is the total (not mean) penalized log-likelihood.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np


def hasselblad():
    from dask_em.families.poisson import PoissonFamily

    family = PoissonFamily()
    X = np.arange(10.0)[:, None]
    days = np.array([162, 267, 271, 185, 111, 61, 27, 8, 3, 1], dtype=np.float64)
    start = family.make_params(np.array([0.3, 0.7]), rates=np.array([[1.0], [2.5]]))
    return family, lambda p: family.block_stats(p, X, days), start


def overlapping_gmm(seed=0, n=1000):
    from dask_em.families.gaussian import GaussianFamily

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
    return family, lambda p: family.block_stats(p, X), start


def separated_gmm(seed=1, n=3000):
    from dask_em.families.gaussian import GaussianFamily

    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    labels = rng.choice(3, size=n, p=[0.4, 0.3, 0.3])
    X = means[labels] + rng.standard_normal((n, 2))
    family = GaussianFamily("full")
    start = family.make_params(
        np.full(3, 1 / 3), means + 1.0, covariances=np.stack([2.0 * np.eye(2)] * 3)
    )
    return family, lambda p: family.block_stats(p, X), start


def sticky_gaussian_hmm(seed=2, n_sequences=20, length=250):
    from dask_em.families.gaussian import GaussianFamily
    from dask_em.families.hmm import HMMFamily

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
    emission = GaussianFamily("diag")
    family = HMMFamily(emission)
    start = family.make_params(
        np.full(3, 1 / 3),
        np.full((3, 3), 0.1) + 0.6 * np.eye(3),
        emission.make_params(np.full(3, 1 / 3), means * 1.4 - 0.5, covariances=np.ones((3, 1))),
    )
    return family, lambda p: family.block_stats(p, X, lengths), start


def categorical_mixture(seed=3, n=3000):
    from dask_em.families.categorical import CategoricalFamily

    rng = np.random.default_rng(seed)
    K, D, M = 3, 6, 4
    probabilities = rng.dirichlet(np.full(M, 2.0), size=(K, D))
    labels = rng.choice(K, size=n, p=[0.5, 0.3, 0.2])
    cumulative = np.cumsum(probabilities[labels], axis=2)
    X = (rng.random((n, D, 1)) > cumulative).sum(axis=2).clip(0, M - 1)
    family = CategoricalFamily(n_symbols=M)
    start = family.make_params(
        np.full(K, 1 / K), probabilities=rng.dirichlet(np.full(M, 5.0), size=(K, D))
    )
    return family, lambda p: family.block_stats(p, X), start


PROBLEMS = {
    "hasselblad poisson": hasselblad,
    "overlapping 2-D gmm": overlapping_gmm,
    "sticky gaussian hmm": sticky_gaussian_hmm,
    "categorical mixture": categorical_mixture,
    "separated gmm (fast)": separated_gmm,
}


def moved_arrays(params, prefix=""):
    """The arrays an EM step moves, by name (nested dicts flattened)."""
    out = {}
    for name, value in params.items():
        if isinstance(value, dict):
            out.update(moved_arrays(value, f"{prefix}{name}."))
        elif name in (
            "weights",
            "means",
            "covariances",
            "rates",
            "probabilities",
            "startprob",
            "transmat",
        ):
            out[prefix + name] = np.asarray(value, dtype=np.float64)
    return out


def relative_difference(a, b) -> float:
    a, b = moved_arrays(a), moved_arrays(b)
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in b)


def fit(driver, evaluate, max_passes):
    from dask_em.acceleration import run_em

    started = time.perf_counter()
    run_em(driver, evaluate, max_passes=max_passes)
    return driver, time.perf_counter() - started


def main() -> None:
    from dask_em.acceleration import PlainEM, Squarem, family_evaluate, parameter_map

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, nargs="*", default=[1e-8, 1e-12])
    parser.add_argument("--max-passes", type=int, default=100_000)
    args = parser.parse_args()
    header = (
        f"{'problem':<22} {'tol':>7} {'plain':>6} {'squarem':>7} {'ratio':>6} {'diff':>8} "
        f"{'err plain':>9} {'err sq':>8} {'objective plain':>16} {'objective sq':>16}"
    )
    print(header)
    print("-" * len(header))
    for name, make in PROBLEMS.items():
        family, pass_stats, start = make()
        evaluate = family_evaluate(family, pass_stats)
        mapping = functools.partial(parameter_map, family)
        total = pass_stats(start)["weight"]
        optimum, _ = fit(Squarem(start, mapping, tol=0.0), evaluate, 1500)
        for tol in args.tol:
            plain, _ = fit(PlainEM(start, tol=tol), evaluate, args.max_passes)
            squarem, _ = fit(Squarem(start, mapping, tol=tol), evaluate, args.max_passes)
            print(
                f"{name:<22} {tol:>7.0e} {plain.passes:>6d} {squarem.passes:>7d} "
                f"{squarem.passes / plain.passes:>6.3f} "
                f"{relative_difference(squarem.params, plain.params):>8.1e} "
                f"{relative_difference(plain.params, optimum.params):>9.1e} "
                f"{relative_difference(squarem.params, optimum.params):>8.1e} "
                f"{plain.lower_bound * total:>16.6f} {squarem.lower_bound * total:>16.6f}"
            )


if __name__ == "__main__":
    main()

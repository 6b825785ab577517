"""Which optimum: plain EM, SQUAREM, DAAREM and Newton from the same starts, many draws.

    python benchmarks/optima.py               # 15 draws x 4 covariance types
    python benchmarks/optima.py --draws 5

An accelerated run takes other steps than plain EM, so on a likelihood with several
local optima it may end at another one than plain EM from the same start.  This script
counts how often, on a problem with several: three overlapping blobs in 3-D (400 rows,
10 % of the entries missing, row weights, priors on every parameter, ``reg_covar=0``),
each draw its own rows and its own random start, every covariance type.  Plain EM
(``tol=1e-11``, at most 20,000 passes) is the reference; each accelerated run
(``tol=1e-11``, at most 5,000) is "same" when its parameters are within 1e-2
(relative, per array, for the best matching of components) of plain EM's, else
"higher" or "lower" by its objective (mean penalized log-likelihood per row; "equal"
when within 1e-8); "not converged" counts the runs that stopped at their pass limit.
The runs use the drivers of :mod:`dask_em.acceleration` on the family's own E-step in
this process (what the estimators run, without a cluster); passes are the runs' own.
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import numpy as np

from dask_em.acceleration import family_evaluate, make_driver, run_em
from dask_em.families.gaussian import COVARIANCE_TYPES, GaussianFamily

METHODS = ("squarem", "daarem", "newton")


def draw(covariance_type: str, rng: np.random.Generator, n: int = 400):
    """The family, its E-step over the draw's rows, and a random start."""
    centres = np.array([[0.0, 0.0, 0.0], [1.5, 0.5, -0.5], [0.5, 1.5, 1.0]])
    X = centres[rng.choice(3, size=n)] + rng.normal(size=(n, 3))
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
    A = rng.normal(size=(3, 3, 3))
    full = A @ A.transpose(0, 2, 1) + np.eye(3)
    covariances = {
        "full": full,
        "tied": full[0],
        "diag": np.stack([np.diag(c) for c in full]),
        "spherical": np.array([np.trace(c) / 3 for c in full]),
    }[covariance_type]
    start = family.make_params(rng.dirichlet(np.ones(3)), rng.normal(size=(3, 3)), covariances)
    return family, (lambda p: family.block_stats(p, X, weights)), start


def distance(a: dict, b: dict, covariance_type: str) -> float:
    """The largest of ``max|a - b| / max|b|`` over weights, means and covariances, for
    the best matching of components (a run may end with them in another order)."""
    per_component = ("weights", "means") + (() if covariance_type == "tied" else ("covariances",))
    best = np.inf
    for order in itertools.permutations(range(len(b["weights"]))):
        worst = 0.0
        for name in ("weights", "means", "covariances"):
            x, y = np.asarray(a[name]), np.asarray(b[name])
            if name in per_component:
                x = x[list(order)]
            worst = max(worst, float(np.max(np.abs(x - y)) / np.max(np.abs(y))))
        best = min(best, worst)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=15)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    outcomes = {
        m: {"same": 0, "higher": 0, "equal": 0, "lower": 0, "not converged": 0} for m in METHODS
    }
    passes: dict[str | None, list[int]] = {m: [] for m in (None, *METHODS)}
    plain_unconverged = 0
    for index, covariance_type in itertools.product(range(args.draws), COVARIANCE_TYPES):
        family, pass_stats, start = draw(covariance_type, np.random.default_rng(args.seed + index))
        evaluate = family_evaluate(family, pass_stats)
        plain = run_em(make_driver(None, family, start, tol=1e-11), evaluate, max_passes=20_000)
        passes[None].append(plain.passes)
        plain_unconverged += not plain.converged
        line = f"{index:3d} {covariance_type:<10} plain {plain.passes:6d}"
        for method in METHODS:
            run = run_em(make_driver(method, family, start, tol=1e-11), evaluate, max_passes=5000)
            passes[method].append(run.passes)
            apart = distance(run.params, plain.params, covariance_type)
            change = run.lower_bound - plain.lower_bound
            if apart <= 1e-2:
                outcome = "same"
            elif abs(change) <= 1e-8:
                outcome = "equal"
            else:
                outcome = "higher" if change > 0 else "lower"
            outcomes[method][outcome] += 1
            outcomes[method]["not converged"] += not run.converged
            line += f"  {method} {run.passes:5d} {apart:8.1e} {change:+9.1e}"
        print(line, flush=True)
    total = args.draws * len(COVARIANCE_TYPES)
    print()
    print(
        f"{total} draws; plain EM: median {int(np.median(passes[None]))} passes, "
        f"{plain_unconverged} not converged"
    )
    columns = ("same", "higher", "equal", "lower", "not converged", "median passes")
    print(f"{'method':<8} " + " ".join(f"{c:>{max(6, len(c))}}" for c in columns))
    for method in METHODS:
        o = outcomes[method]
        counts = [o[c] for c in columns[:5]] + [int(np.median(passes[method]))]
        print(
            f"{method:<8} "
            + " ".join(f"{n:>{max(6, len(c))}}" for n, c in zip(counts, columns, strict=True))
        )


if __name__ == "__main__":
    main()

"""Seconds per EM iteration with 10% of values missing, against the complete data.

    python benchmarks/missing.py                     # N=1,000,000, D=16, K=8, full
    python benchmarks/missing.py --n-samples 200000  # quicker
    python benchmarks/missing.py --covariance-type diag

Three datasets of the same N, D, K, each persisted on a LocalCluster of 2 workers x 1
thread and fitted from the same initial parameters for a fixed number of iterations:
- complete: no missing values;
- few patterns: 10% of the values missing, in 4 missingness patterns (e.g. a sensor
  group that drops out together), 40% of the rows complete;
- many patterns: 10% of the values missing independently at random, so nearly every
  incomplete row has its own pattern.
The fits take turns, one fit per dataset in each of ``--rounds`` rounds, so that a
change in the machine's load during the run falls on all three alike.  Seconds per
iteration are the median of the ``history_`` entries of all rounds (wall clock); the
ratio against complete data is the median over rounds of the ratio within a round,
whose fits ran minutes apart at most; "best" is the fastest iteration of each dataset,
the least disturbed by other processes.  Beside them, the workers' CPU seconds per
iteration: the CPU time of both worker processes over a fit of ``--iterations``
iterations less that over a fit of one, divided by the difference in iterations.  CPU
time does not count the time other processes take the cores, so it is the steadier
figure on a shared machine.

``--held-by user`` (the default) persists each dataset first, as a user who calls
``client.persist`` does: dask_em fits those blocks as they are.  ``--held-by dask_em``
holds each dataset as a fit given the lazy array holds it (an ``EMEngine`` with the
estimator's row order persists it: each block's complete rows first, then its rows with
NaN by pattern, :mod:`dask_em.engine.row_order`, for full and tied covariances), once
for the whole run, and every fit then gets those blocks: a fit of the lazy array would
send its data again (not in its iterations' seconds, but the workers' memory churns).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from gmm import make_data


def few_patterns(X: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    n_features = X.shape[1]
    blocks = np.array_split(rng.permutation(n_features), 4)
    patterns = np.zeros((5, n_features), dtype=bool)
    for p, block in enumerate(blocks, start=1):
        patterns[p, block] = True
    # rows with pattern p (p >= 1) miss ~D/4 values; choose how many rows get one
    per_row = n_features / 4
    incomplete = min(1.0, share * n_features / per_row)
    labels = np.where(rng.random(len(X)) < incomplete, rng.integers(1, 5, len(X)), 0)
    out = X.copy()
    out[patterns[labels]] = np.nan
    return out


def many_patterns(X: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    out = X.copy()
    out[rng.random(X.shape) < share] = np.nan
    return out


def fit(X_dask, init, n_components, n_iter, covariance_type="full") -> list[float]:
    """Fit ``n_iter`` iterations; the wall-clock seconds of each."""
    from dask_em import GaussianMixture

    model = GaussianMixture(
        n_components,
        covariance_type=covariance_type,
        tol=0.0,
        max_iter=n_iter,
        cache="memory",
        **init,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X_dask)
    return [h["seconds"] for h in model.history_]


def held_by_dask_em(lazy: dict, covariance_type: str) -> dict:
    """Each lazy dataset persisted as a fit of it holds it (the engines keep it)."""
    from dask_em import GaussianMixture
    from dask_em.engine import EMEngine

    order = GaussianMixture(covariance_type=covariance_type)._row_order()
    return {
        name: EMEngine(data, model="held", cache="memory", row_order=order)
        for name, data in lazy.items()
    }


def worker_cpu_seconds(client) -> float:
    return sum(client.run(time.process_time).values())


def one_round(
    client, X_dask, init, n_components, n_iter, covariance_type
) -> tuple[list[float], float]:
    """Wall-clock seconds of each iteration, and worker CPU seconds per iteration."""
    before = worker_cpu_seconds(client)
    fit(X_dask, init, n_components, 1, covariance_type)
    middle = worker_cpu_seconds(client)
    seconds = fit(X_dask, init, n_components, n_iter, covariance_type)
    after = worker_cpu_seconds(client)
    return seconds, ((after - middle) - (middle - before)) / (n_iter - 1)


def main() -> None:
    import dask.array as da
    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=5, help="at least 2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--missing", type=float, default=0.10)
    parser.add_argument("--chunk-rows", type=int, default=62_500)
    parser.add_argument("--covariance-type", default="full")
    parser.add_argument("--held-by", choices=("user", "dask_em"), default="user")
    args = parser.parse_args()
    N, D, K = args.n_samples, args.n_features, args.components
    X, init = make_data(N, D, K)
    rng = np.random.default_rng(1)
    datasets = {
        "complete": X,
        "few patterns": few_patterns(X, args.missing, rng),
        "many patterns": many_patterns(X, args.missing, rng),
    }
    print(
        f"N={N:,} D={D} K={K} {args.covariance_type} covariance, {args.rounds} rounds of "
        f"{args.iterations} iterations each, data held by {args.held_by}, blocks of "
        f"{args.chunk_rows:,} rows"
    )
    seconds = {name: [] for name in datasets}
    cpu = {name: [] for name in datasets}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sending large graph")
            persisted = {
                name: da.from_array(data, chunks=(args.chunk_rows, D))
                for name, data in datasets.items()
            }
            if args.held_by == "user":
                persisted = {name: client.persist(data) for name, data in persisted.items()}
            else:
                holders = held_by_dask_em(persisted, args.covariance_type)
                persisted = {name: engine.X for name, engine in holders.items()}
        for X_dask in persisted.values():  # warm up: first-use costs in the workers
            fit(X_dask, init, K, 1, args.covariance_type)
        for _ in range(args.rounds):
            for name, X_dask in persisted.items():
                wall, cpu_seconds = one_round(
                    client, X_dask, init, K, args.iterations, args.covariance_type
                )
                seconds[name].append(wall)
                cpu[name].append(cpu_seconds)
    best_complete = min(s for run in seconds["complete"] for s in run)
    baseline = [statistics.median(run) for run in seconds["complete"]]
    cpu_complete = statistics.median(cpu["complete"])
    for name, data in datasets.items():
        missing = np.isnan(data)
        patterns = len(np.unique(missing[missing.any(axis=1)], axis=0))
        rounds = [statistics.median(run) for run in seconds[name]]
        wall = statistics.median([s for run in seconds[name] for s in run])
        best = min(s for run in seconds[name] for s in run)
        print(
            f"{name:14s} {100 * missing.mean():5.1f}% missing, {patterns:7,d} patterns: "
            f"{wall:6.3f} s/iteration, best {best:.3f} "
            f"(rounds: {', '.join(f'{r:.3f}' for r in rounds)})"
        )
        if name == "complete":
            print(f"{'':16s}worker CPU {cpu_complete:.3f} s/iteration")
            continue
        ratios = [r / b for r, b in zip(rounds, baseline, strict=True)]
        print(
            f"{'':16s}against complete: {statistics.median(ratios):.2f}x "
            f"(rounds: {', '.join(f'{r:.2f}x' for r in ratios)}), "
            f"best {best / best_complete:.2f}x; "
            f"worker CPU {statistics.median(cpu[name]):.3f} s/iteration = "
            f"{statistics.median(cpu[name]) / cpu_complete:.2f}x"
        )


if __name__ == "__main__":
    main()

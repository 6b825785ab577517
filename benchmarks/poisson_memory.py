"""Seconds per EM iteration of a Poisson mixture held in memory, dask_em against a
vectorized NumPy EM on 2 threads, in one run.

    python benchmarks/poisson_memory.py                     # N=5,000,000 counts, K=4
    python benchmarks/poisson_memory.py --n-counts 1000000  # quicker

What a user waits for: ``fit()`` wall time divided by the iterations, set-up included,
20 iterations from the same start (``tol=0``).  dask_em: ``PoissonMixture(4)`` on a
LocalCluster of 2 workers x 1 thread, the counts (int32) an in-memory dask array
persisted on the cluster beforehand (as a user's ``client.persist`` would), after a
one-iteration warm-up fit that loads the compiled kernels.  The peer: the same EM
written with NumPy's vectorized operations (the (n, K) log-densities, log-sum-exp, the
responsibilities and their weighted sums), over slices of 2^18 counts that a pool of 2
threads shares (NumPy's ufuncs release the GIL), ``log x!`` computed once before the
iterations; its time includes that.  Both must end at the same parameters (checked).

Each environment runs in its own process, started from this one: once as given, once
with ``OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2`` exported.  Issue
#11's target: dask_em at least 2x faster per iteration than the NumPy EM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from environments import environments, run_child

RATES = np.array([0.5, 3.0, 12.0, 40.0])
WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
RATES_INIT = np.array([1.0, 2.0, 10.0, 30.0])
SLICE_ROWS = 2**18


def draw_counts(n_counts: int, seed: int = 0) -> np.ndarray:
    """(n_counts,) int32 counts from the mixture of :data:`RATES` and :data:`WEIGHTS`."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(WEIGHTS), size=n_counts, p=WEIGHTS)
    return rng.poisson(RATES[labels]).astype(np.int32)


def numpy_em(counts: np.ndarray, n_iter: int, threads: int = 2) -> tuple:
    """EM for a Poisson mixture from (:data:`RATES_INIT`, equal weights), NumPy only.

    Returns (rates (K,), weights (K,), the log-likelihood of the last E-step).  Each
    E-step runs over slices of :data:`SLICE_ROWS` counts in a pool of ``threads``."""
    from scipy.special import gammaln

    x = counts.astype(np.float64)
    log_factorials = gammaln(x + 1.0)  # log x!, the same in every iteration
    slices = [slice(s, s + SLICE_ROWS) for s in range(0, len(x), SLICE_ROWS)]
    rates = RATES_INIT.copy()
    weights = np.full(len(rates), 1.0 / len(rates))

    def statistics(part: slice, log_rates, log_weights, rates) -> tuple:
        values = x[part]
        log_p = values[:, None] * log_rates - rates + log_weights  # (n, K), log x! apart
        peak = log_p.max(axis=1, keepdims=True)
        r = np.exp(log_p - peak)
        total = r.sum(axis=1, keepdims=True)
        r /= total
        loglik = float(np.sum(peak[:, 0] + np.log(total[:, 0]) - log_factorials[part]))
        return r.sum(axis=0), values @ r, loglik

    loglik = -np.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(n_iter):
            n = len(slices)
            parts = list(
                pool.map(
                    statistics, slices, [np.log(rates)] * n, [np.log(weights)] * n, [rates] * n
                )
            )
            nk = sum(p[0] for p in parts)
            weights = nk / len(x)
            rates = sum(p[1] for p in parts) / nk
            loglik = sum(p[2] for p in parts)
    return rates, weights, loglik


def model(n_iter: int):
    """``PoissonMixture(4)`` from the benchmark's start, ``n_iter`` iterations (tol 0)."""
    from dask_em import PoissonMixture

    return PoissonMixture(
        len(RATES_INIT),
        tol=0.0,
        max_iter=n_iter,
        rates_init=RATES_INIT[:, None],
        weights_init=np.full(len(RATES_INIT), 1.0 / len(RATES_INIT)),
    )


def child(args: argparse.Namespace) -> dict:
    """One environment: both fits, in this process and its LocalCluster."""
    import dask.array as da
    from distributed import Client, LocalCluster

    counts = draw_counts(args.n_counts)
    started = time.perf_counter()
    rates, weights, _ = numpy_em(counts, args.iterations)
    numpy_seconds = (time.perf_counter() - started) / args.iterations

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        X = client.persist(da.from_array(counts[:, None], chunks=(args.chunk_rows, 1)))
        model(1).fit(X)  # warm-up: the workers load the compiled kernels
        fitted = model(args.iterations)
        started = time.perf_counter()
        fitted.fit(X)
        dask_seconds = (time.perf_counter() - started) / args.iterations
        history = [h["seconds"] for h in fitted.history_]
    return {
        "numpy": numpy_seconds,
        "dask_em": dask_seconds,
        "dask_em_median_iteration": float(np.median(history)),
        "iterations": len(history),
        "rates_difference": float(np.max(np.abs(fitted.rates_[:, 0] - rates) / rates)),
        "weights_difference": float(np.max(np.abs(fitted.weights_ - weights))),
        "rates": [round(float(r), 3) for r in fitted.rates_[:, 0]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-counts", type=int, default=5_000_000)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--chunk-rows", type=int, default=625_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(
        f"PoissonMixture(4), {args.n_counts:,} int32 counts in memory, "
        f"{args.iterations} iterations from the same start; fit() seconds / iteration"
    )
    for label, env in environments():
        result = run_child(__file__, sys.argv[1:], env)
        print(
            f"{label:21s} dask_em {result['dask_em']:.4f} s (iterations: median "
            f"{result['dask_em_median_iteration']:.4f} s), NumPy EM on 2 threads "
            f"{result['numpy']:.4f} s: {result['numpy'] / result['dask_em']:.2f}x "
            f"(target >= 2x); parameters within {result['rates_difference']:.1e} (rates, "
            f"relative) and {result['weights_difference']:.1e} (weights); rates "
            f"{result['rates']}"
        )


if __name__ == "__main__":
    main()

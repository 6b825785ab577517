"""Seconds per EM iteration: dask_em on a LocalCluster against scikit-learn, in one run.

    python benchmarks/gmm.py                       # N=1,000,000, D=16, K=8, full
    python benchmarks/gmm.py --n-samples 200000    # quicker

Both start from the same parameters and run a fixed number of iterations on the same
in-memory data.  dask_em runs on a LocalCluster of 2 workers x 1 thread with the data
persisted; scikit-learn runs in this process with NumPy's default threads (all cores).
Seconds per iteration: dask_em's median ``history_`` entry; scikit-learn's
``(t(n_iter=1+m) - t(n_iter=1)) / m``, which removes its set-up and final E-step.

GFLOP/s counts the arithmetic of one iteration in a "full" mixture, 4 N K D^2 floating
point operations (the Mahalanobis products of the E-step, 2 N K D^2, and the scatter
matrices of the M-step statistics, 2 N K D^2), shown beside the GFLOP/s of a large
float64 NumPy matmul on this machine (all cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).normal(size=(size, size))
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(func) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def make_data(n_samples: int, n_features: int, n_components: int, seed: int = 0):
    from dask_em.synthetic import random_gaussian_mixture

    truth = random_gaussian_mixture(n_components, n_features, seed)
    rng = np.random.default_rng(seed)
    labels = rng.choice(n_components, size=n_samples, p=truth.weights)
    chol = np.linalg.cholesky(truth.covariances)
    X = truth.means[labels] + np.einsum(
        "nij,nj->ni", chol[labels], rng.standard_normal((n_samples, n_features))
    )
    init = {
        "weights_init": np.full(n_components, 1.0 / n_components),
        "means_init": X[rng.choice(n_samples, n_components, replace=False)],
        "precisions_init": np.stack([np.eye(n_features)] * n_components),
    }
    return X, init


def time_sklearn(X, init, n_components, n_iter) -> float:
    from sklearn.mixture import GaussianMixture

    def fit(max_iter):
        model = GaussianMixture(
            n_components, tol=0.0, max_iter=max_iter, init_params="random_from_data", **init
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _timed(lambda: model.fit(X))

    base = min(fit(1) for _ in range(2))
    return (fit(1 + n_iter) - base) / n_iter


def time_dask_em(X, init, n_components, n_iter, n_workers, chunk_rows) -> tuple[float, float]:
    import dask.array as da
    from distributed import Client, LocalCluster

    from dask_em import GaussianMixture

    with (
        LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        X_dask = client.persist(da.from_array(X, chunks=(chunk_rows, X.shape[1])))
        client.rebalance()
        model = GaussianMixture(n_components, tol=0.0, max_iter=n_iter, cache="memory", **init)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X_dask)
        seconds = [h["seconds"] for h in model.history_]
    return statistics.median(seconds), min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=62_500)
    args = parser.parse_args()
    N, D, K = args.n_samples, args.n_features, args.components
    print(f"machine: {os.cpu_count()} cores; N={N:,} D={D} K={K} full covariance")
    X, init = make_data(N, D, K)
    peak = matmul_gflops()
    flops = 4.0 * N * K * D * D
    ours, ours_best = time_dask_em(X, init, K, args.iterations, args.n_workers, args.chunk_rows)
    theirs = time_sklearn(X, init, K, args.iterations)
    print(f"numpy matmul (float64, all cores): {peak:8.1f} GFLOP/s")
    print(
        f"dask_em   ({args.n_workers} workers x 1 thread): {ours:7.3f} s/iteration "
        f"(best {ours_best:.3f})  {flops / ours / 1e9:6.1f} GFLOP/s "
        f"= {100 * flops / ours / 1e9 / peak:4.1f}% of matmul"
    )
    print(
        f"scikit-learn (in process)     : {theirs:7.3f} s/iteration"
        f"          {flops / theirs / 1e9:6.1f} GFLOP/s "
        f"= {100 * flops / theirs / 1e9 / peak:4.1f}% of matmul"
    )
    print(f"speed-up: dask_em is {theirs / ours:.2f}x faster than scikit-learn per iteration")


if __name__ == "__main__":
    main()

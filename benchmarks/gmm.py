"""Seconds per EM iteration of a Gaussian mixture, dask_em against scikit-learn, in one run.

    python benchmarks/gmm.py                       # N=1,000,000, D=16, K=8, full and diag
    python benchmarks/gmm.py --n-samples 200000    # quicker
    python benchmarks/gmm.py --rounds 1            # one fit of each kind

What a user waits for: ``fit()`` wall time divided by the iterations, set-up included
(for dask_em: the data scan, the engine, the passes; the data is an in-memory dask array
persisted on the cluster beforehand, as a user's ``client.persist`` would), 20
iterations from the same start (``tol=0``), for "full" and "diag" covariances, float64
and float32 (``dtype="float32"`` on float32 data), each with dask_em's passes run as
graphs (the default) and as direct passes (Dask config ``dask_em.direct-passes``: a
worker runs its blocks, no scheduling; :mod:`dask_em.engine.direct`).  dask_em runs on a
LocalCluster of 2 workers x 1 thread; scikit-learn in process with NumPy's threads.

Each environment has its own process (:class:`environments.Served`), started from this
one: once as given, once with ``OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
MKL_NUM_THREADS=2`` exported (as SLURM job scripts and HPC profiles do), so that its
LocalCluster's workers inherit them.  Each fit runs in one environment and right after
in the other, which goes first alternating from round to round
(:func:`environments.paired_round`), so that the two sides of a thread variables' ratio
run seconds apart: scikit-learn's fit alone, dask_em's four of a covariance type on a
LocalCluster started for them (the data persisted, the kernels loaded by one-iteration
warm-up fits on two blocks) and stopped after, so that no other cluster is up, idle,
during a fit.  Until the twenty-sixth session each environment was a process per round
with one cluster for all its fits, the environments one after the other, which put
minutes between the two sides of their ratio on a host whose pace moves by a fifth from
minute to minute.

Every fit runs ``--rounds`` times (3 by default); within a round, per covariance type,
dask_em's fits and scikit-learn's take turns (scikit-learn first in even rounds).  A
speed-up is the ratio of the two sides' medians, printed with the range of the rounds'
own ratios; so is each fit's time with the thread variables against as given, with the
median of the rounds' ratios beside it.

Share of GEMM: 4 N K D^2 flops per "full" iteration (the Mahalanobis products and the
scatter matrices, as dense products compute them) over the seconds per iteration,
against a 2048^2 float64 NumPy matmul on all cores in the same process.  dask_em's full
kernel sums each pair of features once (about 3 N K D^2 flops executed), so the share
is the rate of an equivalent dense computation; 3/4 of it is the share of the flops
executed.  The GEMM rate is measured with no cluster up: once as each environment's
process starts, then once a round.  First-call compilation of the numba kernels is
measured apart, in a fresh process with an empty cache (``NUMBA_CACHE_DIR``), then with
the cache filled; it is not in the iterations: the workers load the cached kernels
in a one-iteration warm-up fit per configuration on two blocks, reported apart.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
from environments import (
    THREAD_VARIABLES,
    environments_compared,
    merged_rounds,
    paired_round,
    serve_commands,
    served_environments,
)

#: How dask_em runs its passes: as graphs (the default) and, with the Dask config
#: ``dask_em.direct-passes``, each worker running its blocks (dask_em.engine.direct).
PASSES = ("graph", "direct")

COMPILE_PROBE = """
import time, numpy as np
started = time.perf_counter()
from dask_em.families.gaussian import GaussianFamily
from dask_em.families.poisson import PoissonFamily
imported = time.perf_counter()
for covariance_type in ("full", "tied", "diag", "spherical"):
    f = GaussianFamily(covariance_type)
    p = f.make_params(np.ones(2) / 2, np.zeros((2, 3)), covariances=f.make_params(
        np.ones(2) / 2, np.zeros((2, 3)),
        covariances={"full": np.stack([np.eye(3)] * 2), "tied": np.eye(3),
                     "diag": np.ones((2, 3)), "spherical": np.ones(2)}[covariance_type]
    )["covariances"])
    f.block_stats(p, np.ones((10, 3)))
PoissonFamily().block_stats({"weights": np.ones(2) / 2, "rates": np.ones((2, 3))}, np.ones((10, 3)))
print(time.perf_counter() - imported)
"""


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
    start = {
        "weights_init": np.full(n_components, 1.0 / n_components),
        "means_init": X[rng.choice(n_samples, n_components, replace=False)],
    }
    return X, start


def precisions_init(covariance_type: str, n_components: int, n_features: int) -> np.ndarray:
    if covariance_type == "full":
        return np.stack([np.eye(n_features)] * n_components)
    return np.ones((n_components, n_features))


def sklearn_seconds(X, start, covariance_type, n_iter) -> float:
    from sklearn.mixture import GaussianMixture

    K, D = start["means_init"].shape
    model = GaussianMixture(
        K,
        covariance_type=covariance_type,
        tol=0.0,
        max_iter=n_iter,
        precisions_init=precisions_init(covariance_type, K, D),
        **start,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _timed(lambda: model.fit(X)) / n_iter


def dask_em_seconds(client, X_dask, start, covariance_type, dtype, n_iter) -> dict:
    from dask_em import GaussianMixture

    K, D = start["means_init"].shape
    model = GaussianMixture(
        K,
        covariance_type=covariance_type,
        tol=0.0,
        max_iter=n_iter,
        cache="memory",
        dtype=dtype,
        precisions_init=precisions_init(covariance_type, K, D),
        **start,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds = _timed(lambda: model.fit(X_dask))
    passes = sorted(h["seconds"] for h in model.history_)
    return {
        "per_iteration": seconds / n_iter,
        "median_pass": passes[len(passes) // 2],
        "means": model.means_.tolist(),
    }


def serve(args) -> None:
    """One environment's process (``--serve``): its data, then what the parent asks for,
    one command at a time (:class:`environments.Served`), until it closes stdin: start a
    LocalCluster (the data persisted, the kernels loaded in the workers), a dask_em fit
    on it, stop it, a scikit-learn fit, a GEMM rate.  What it reports once set up: BLAS,
    environment, the GEMM rate with no cluster up."""
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster
    from threadpoolctl import threadpool_info

    N, D, K = args.n_samples, args.n_features, args.components
    X, start = make_data(N, D, K)
    for covariance_type in ("full", "diag"):  # scikit-learn's first-call costs, untimed
        sklearn_seconds(X[: 10 * K], start, covariance_type, 1)
    ready = {
        "blas": sorted({(p["internal_api"], p.get("architecture")) for p in threadpool_info()}),
        "environment": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        "gemm_gflops": matmul_gflops(),
    }
    up: dict = {}  # the cluster, its client and the persisted data, while started

    def start_cluster(covariance_type: str) -> float:
        """A LocalCluster with the data persisted and the workers' kernels loaded (or,
        on a first run, compiled); the seconds of the one-iteration warm-up fits."""
        cluster = LocalCluster(
            n_workers=args.n_workers, threads_per_worker=1, dashboard_address=":0"
        )
        client = Client(cluster)
        up.update(cluster=cluster, client=client, data={})
        warm_up = 0.0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sending large graph")
            for dtype in ("float64", "float32"):
                up["data"][dtype] = client.persist(
                    da.from_array(X.astype(dtype), chunks=(args.chunk_rows, D))
                )
                client.rebalance()
                warm_up += dask_em_seconds(
                    client, up["data"][dtype][: 2 * args.chunk_rows], start, covariance_type,
                    dtype, 1,
                )["per_iteration"]  # fmt: skip
        return warm_up

    def stop_cluster() -> None:
        up["data"].clear()  # the persisted data released before the cluster closes
        up["client"].close()
        up["cluster"].close()
        up.clear()

    def answer(command: dict):
        kind = command["fit"]
        if kind == "start":
            return start_cluster(command["covariance"])
        if kind == "stop":
            return stop_cluster()
        if kind == "gemm":
            return matmul_gflops()
        if kind == "sklearn":
            return sklearn_seconds(X, start, command["covariance"], args.iterations)
        dtype = command["dtype"]
        with dask.config.set({"dask_em.direct-passes": command["passes"] == "direct"}):
            return dask_em_seconds(
                up["client"], up["data"][dtype], start, command["covariance"], dtype,
                args.iterations,
            )  # fmt: skip

    serve_commands(ready, answer)
    if up:
        stop_cluster()


def round_of_fits(servers: dict, round_: int) -> dict:
    """Every fit once in each environment, as ``{label: {key: [result]}}``.

    Per covariance type, scikit-learn's fit and dask_em's four (float64 and float32,
    graph and direct passes) take turns (scikit-learn first in even rounds, last in odd
    ones), so that a slow stretch of the host falls on both sides of a speed-up.  Each
    runs in one environment and right after in the other
    (:func:`environments.paired_round`): dask_em's four on a cluster started for them
    and stopped after, so that no cluster is up while scikit-learn runs, nor an idle one
    beside dask_em's.
    """
    blocks = [("gemm", [("gemm_gflops", {"fit": "gemm"})])]
    for covariance_type in ("full", "diag"):
        ours = [
            (f"dask_em {covariance_type} {dtype} {passes}",
             {"fit": "dask_em", "covariance": covariance_type, "dtype": dtype, "passes": passes})
            for dtype in ("float64", "float32")
            for passes in PASSES
        ]  # fmt: skip
        ours_block = (
            f"dask_em {covariance_type}",
            [(f"warm-up {covariance_type}", {"fit": "start", "covariance": covariance_type}),
             *ours, (None, {"fit": "stop"})],
        )  # fmt: skip
        theirs = (
            f"sklearn {covariance_type}",
            [(f"sklearn {covariance_type}", {"fit": "sklearn", "covariance": covariance_type})],
        )
        blocks += [theirs, ours_block] if round_ % 2 == 0 else [ours_block, theirs]
    return paired_round(servers, blocks, round_)


def compile_seconds() -> tuple[float, float]:
    """First-call seconds of the kernels: empty numba cache, then the filled one."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = [
            float(
                subprocess.run(
                    [sys.executable, "-c", COMPILE_PROBE],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            for _ in range(2)
        ]
    return runs[0], runs[1]


def median(values) -> float:
    return float(np.median(values))


def with_ready(ready: dict, answers: dict) -> dict:
    """One environment's results: what its process reported once set up (BLAS,
    environment, GEMM rate) and each measurement's list over the rounds
    (:func:`environments.merged_rounds`), the set-up GEMM rate first in its list."""
    merged = {key: value for key, value in ready.items() if key != "gemm_gflops"}
    merged.update(answers)
    merged["gemm_gflops"] = [ready["gemm_gflops"], *answers["gemm_gflops"]]
    return merged


def report(results: dict, args) -> None:
    N, D, K = args.n_samples, args.n_features, args.components
    flops = 4.0 * N * K * D * D
    print(
        f"N={N:,} D={D} K={K}, {args.iterations} iterations, fit() wall time / iterations, "
        f"{args.rounds} rounds (medians; per round: the range of the rounds' speed-ups)"
    )
    for label, out in results.items():
        gemm = median(out["gemm_gflops"])
        print(f"\n## {label}: {out['environment']}, BLAS {out['blas']}, GEMM {gemm:.1f} GFLOP/s")
        warm = {k: round(median(v), 2) for k, v in out.items() if k.startswith("warm-up")}
        print(
            "one-iteration warm-up fits on each new cluster (the workers load the kernels), "
            f"seconds, median: {warm}"
        )
        print(
            "| covariance | dtype | passes | dask_em s/iter | median pass | scikit-learn s/iter "
            "| speed-up | per round | share of GEMM |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for covariance_type in ("full", "diag"):
            theirs = out[f"sklearn {covariance_type}"]
            for dtype in ("float64", "float32"):
                for passes in PASSES:
                    fits = out[f"dask_em {covariance_type} {dtype} {passes}"]
                    ours = [fit["per_iteration"] for fit in fits]
                    rounds = [t / o for t, o in zip(theirs, ours, strict=True)]
                    share = ""
                    if covariance_type == "full":
                        share = f"{100 * flops / median(ours) / 1e9 / gemm:.1f}%"
                    print(
                        f"| {covariance_type} | {dtype} | {passes} | {median(ours):.3f} "
                        f"| {median([fit['median_pass'] for fit in fits]):.3f} "
                        f"| {median(theirs):.3f} | {median(theirs) / median(ours):.2f}x "
                        f"| {min(rounds):.2f}-{max(rounds):.2f}x | {share} |"
                    )
        for covariance_type in ("full", "diag"):
            means = {
                (dtype, passes): [
                    np.array(fit["means"])
                    for fit in out[f"dask_em {covariance_type} {dtype} {passes}"]
                ]
                for dtype in ("float64", "float32")
                for passes in PASSES
            }
            a, b = means["float64", "graph"][0], means["float32", "graph"][0]
            direct = means["float64", "direct"][0]
            same = all(np.array_equal(fits[0], other) for fits in means.values() for other in fits)
            print(
                f"{covariance_type}: every round's means bitwise equal to the first's: {same}; "
                "direct passes' means vs graph passes', float64: "
                f"{'bitwise equal' if np.array_equal(a, direct) else 'DIFFERENT'}"
            )
            print(
                f"{covariance_type}: float32 means vs float64, max relative "
                f"{np.max(np.abs(a - b)) / np.max(np.abs(a)):.2e}"
            )
    environments_compared(
        {
            label: {
                key: [fit["per_iteration"] if isinstance(fit, dict) else fit for fit in values]
                for key, values in out.items()
                if key.startswith(("dask_em ", "sklearn "))
            }
            for label, out in results.items()
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=62_500)
    parser.add_argument("--rounds", type=int, default=3, help="fits of each kind, in turns")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.serve:
        serve(args)
        return
    cold, warm = compile_seconds()
    print(f"first call of the kernels: {cold:.1f} s compiling, {warm:.2f} s from the disk cache")
    # both environments' processes set up first (each its data), then every fit run in
    # one and right after in the other (round_of_fits)
    with served_environments(__file__, sys.argv[1:]) as servers:
        rounds = [round_of_fits(servers, round_) for round_ in range(args.rounds)]
        ready = {label: server.ready for label, server in servers.items()}
    answers = merged_rounds(rounds)
    results = {label: with_ready(ready[label], answers[label]) for label in ready}
    report(results, args)


if __name__ == "__main__":
    main()

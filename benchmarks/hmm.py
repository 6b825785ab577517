"""Seconds per Baum-Welch iteration: dask_em on a LocalCluster against hmmlearn, in one run.

    python benchmarks/hmm.py                          # 10,000 sequences x 200 steps
    python benchmarks/hmm.py --n-sequences 2000       # quicker

A diagonal Gaussian HMM (K=6 states, D=4 features).  All fits start from the same
parameters and run a fixed number of iterations on the same in-memory data:

- dask_em: a LocalCluster of 2 workers x 1 thread, the sequences persisted in blocks of
  whole sequences; seconds per iteration = the median ``history_`` entry;
- hmmlearn, with both of its implementations, ``log`` (its default) and ``scaling``, in
  this process: ``(t(n_iter=1+m) - t(n_iter=1)) / m``, which removes its set-up.

The script checks that the parameters agree before printing the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np


def make_data(n_sequences: int, length: int, n_states: int, n_features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    transmat = rng.dirichlet(np.ones(n_states), size=n_states) + 4 * np.eye(n_states)
    transmat /= transmat.sum(axis=1, keepdims=True)
    startprob = rng.dirichlet(np.ones(n_states))
    means = rng.uniform(-4, 4, size=(n_states, n_features))
    variances = rng.uniform(0.5, 2.0, size=(n_states, n_features))
    total = n_sequences * length
    states = np.empty((n_sequences, length), dtype=np.int64)
    states[:, 0] = rng.choice(n_states, size=n_sequences, p=startprob)
    cumulative = np.cumsum(transmat, axis=1)
    u = rng.random((n_sequences, length))
    for t in range(1, length):
        states[:, t] = (u[:, t, None] > cumulative[states[:, t - 1]]).sum(axis=1)
    states = states.ravel()
    X = means[states] + rng.standard_normal((total, n_features)) * np.sqrt(variances[states])
    lengths = np.full(n_sequences, length)
    init = {
        "startprob": np.full(n_states, 1.0 / n_states),
        "transmat": np.full((n_states, n_states), 1.0 / n_states) * 0.5 + 0.5 * np.eye(n_states),
        "means": X[rng.choice(total, n_states, replace=False)],
        "covars": np.ones((n_states, n_features)),
    }
    return X, lengths, init


def _timed(func) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def time_hmmlearn(X, lengths, init, n_iter, implementation):
    from hmmlearn.hmm import GaussianHMM

    def fit(iterations):
        model = GaussianHMM(
            len(init["startprob"]),
            covariance_type="diag",
            init_params="",
            n_iter=iterations,
            tol=-np.inf,
            covars_prior=0.0,
            implementation=implementation,
        )
        model.startprob_, model.transmat_ = init["startprob"], init["transmat"]
        model.means_, model.covars_ = init["means"], init["covars"]
        seconds = _timed(lambda: model.fit(X, lengths))
        return seconds, model

    base, _ = fit(1)
    total, model = fit(1 + n_iter)
    return (total - base) / n_iter, model


def time_dask_em(X, lengths, init, n_iter, n_workers):
    from distributed import Client, LocalCluster

    from dask_em import GaussianHMM, Sequences

    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster),
    ):
        model = GaussianHMM(
            len(init["startprob"]),
            covariance_type="diag",
            reg_covar=0.0,
            max_iter=1 + n_iter,
            tol=0.0,
            cache="memory",
            startprob_init=init["startprob"],
            transmat_init=init["transmat"],
            means_init=init["means"],
            covars_init=init["covars"],
        )
        sequences = Sequences(X, lengths)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(sequences)
        seconds = statistics.median(h["seconds"] for h in model.history_[1:])
        return seconds, model, sequences.n_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-sequences", type=int, default=10_000)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--n-states", type=int, default=6)
    parser.add_argument("--n-features", type=int, default=4)
    parser.add_argument("--n-iter", type=int, default=5)
    parser.add_argument("--n-workers", type=int, default=2)
    args = parser.parse_args()

    X, lengths, init = make_data(args.n_sequences, args.length, args.n_states, args.n_features)
    print(
        f"{args.n_sequences} sequences x {args.length} steps, K={args.n_states}, "
        f"D={args.n_features}, diagonal; {args.n_iter} iterations; {os.cpu_count()} cores"
    )
    ours, model, n_blocks = time_dask_em(X, lengths, init, args.n_iter, args.n_workers)
    print(
        f"dask_em  ({args.n_workers} workers x 1 thread, {n_blocks} blocks): "
        f"{ours:8.3f} s/iteration"
    )
    results = {}
    for implementation in ("log", "scaling"):
        seconds, reference = time_hmmlearn(X, lengths, init, args.n_iter, implementation)
        results[implementation] = seconds
        print(
            f"hmmlearn ({implementation:7s}, 1 process):               {seconds:8.3f} s/iteration"
        )
        deviation = max(
            np.abs(model.transmat_ - reference.transmat_).max(),
            np.abs(model.means_ - reference.means_).max() / np.abs(reference.means_).max(),
        )
        print(f"  largest parameter deviation from dask_em: {deviation:.1e}")
    fastest = min(results.values())
    print(f"speed-up vs hmmlearn log:     {results['log'] / ours:6.2f}x")
    print(f"speed-up vs hmmlearn scaling: {results['scaling'] / ours:6.2f}x")
    print(f"speed-up vs the faster:       {fastest / ours:6.2f}x")


if __name__ == "__main__":
    main()

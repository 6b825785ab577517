"""Seconds per Baum-Welch iteration: dask_em on a LocalCluster against hmmlearn, in one run.

    python benchmarks/hmm.py                          # 10,000 sequences x 200 steps
    python benchmarks/hmm.py --n-sequences 2000       # quicker

A diagonal Gaussian HMM (K=6 states, D=4 features).  Both fits start from the same
parameters and run the same fixed number of iterations (20) on the same in-memory data;
seconds per iteration = ``fit()`` wall time / iterations, set-up included (for dask_em:
checking the data, laying out and persisting the blocks, every pass; for hmmlearn its
own checks):

- dask_em: a LocalCluster of 2 workers x 1 thread, started before the clock, whose
  workers have loaded the compiled kernels once (numba's on-disk cache); once with the
  passes run as graphs (the default), once as direct passes (Dask config
  ``dask_em.direct-passes``, :mod:`dask_em.engine.direct`), the two taking turns, the
  faster of two fits each;
- hmmlearn ``implementation="scaling"`` (its fastest) in one process (``--with-log``
  adds its default, ``"log"``), the faster of two fits.

Each measurement runs twice, in fresh processes: with the environment as it is, and with
``OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2`` exported, as SLURM job
scripts and many HPC profiles do.  The script also reports the first-call compilation
time of the kernels (fresh cache directory) and the time to load them from the cache,
and checks that the fitted parameters agree before it prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings

import numpy as np
from environments import environments, run_child


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


def warm_up_kernels() -> None:
    """Run the fit path's compiled kernels once on a tiny diagonal Gaussian HMM."""
    from dask_em.families.gaussian import GaussianFamily
    from dask_em.families.hmm import HMMFamily

    rng = np.random.default_rng(0)
    family = HMMFamily(GaussianFamily("diag", reg_covar=0.0))
    emission = family.emission.make_params(
        np.full(2, 0.5), rng.normal(size=(2, 2)), covariances=np.ones((2, 2))
    )
    params = family.make_params(np.full(2, 0.5), np.full((2, 2), 0.5), emission)
    family.block_stats(params, rng.normal(size=(7, 2)), np.array([4, 3]))


def time_hmmlearn(X, lengths, init, n_iter, implementation):
    from hmmlearn.hmm import GaussianHMM

    model = GaussianHMM(
        len(init["startprob"]),
        covariance_type="diag",
        init_params="",
        n_iter=n_iter,
        tol=-np.inf,
        covars_prior=0.0,
        implementation=implementation,
    )
    model.startprob_, model.transmat_ = init["startprob"], init["transmat"]
    model.means_, model.covars_ = init["means"], init["covars"]
    started = time.perf_counter()
    model.fit(X, lengths)
    return (time.perf_counter() - started) / n_iter, model


def time_dask_em(X, lengths, init, n_iter, n_workers, passes=("graph", "direct"), repeats=2):
    """``({passes: seconds per iteration}, the last model, blocks)``: for each way of
    running the passes (graphs, the default; direct passes, :mod:`dask_em.engine.direct`)
    the faster of ``repeats`` fits, the ways taking turns, on one cluster."""
    import dask
    from distributed import Client, LocalCluster

    from dask_em import GaussianHMM, Sequences

    seconds = {}
    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(warm_up_kernels)  # numba's cache, loaded once per worker process
        for way in [way for _ in range(repeats) for way in passes]:
            model = GaussianHMM(
                len(init["startprob"]),
                covariance_type="diag",
                reg_covar=0.0,
                max_iter=n_iter,
                tol=0.0,
                cache="memory",
                startprob_init=init["startprob"],
                transmat_init=init["transmat"],
                means_init=init["means"],
                covars_init=init["covars"],
            )
            with (
                warnings.catch_warnings(),
                dask.config.set({"dask_em.direct-passes": way == "direct"}),
            ):
                warnings.simplefilter("ignore")
                started = time.perf_counter()
                sequences = Sequences(X, lengths)
                model.fit(sequences)
                elapsed = (time.perf_counter() - started) / n_iter
                seconds[way] = min(elapsed, seconds.get(way, elapsed))
        return seconds, model, sequences.n_blocks


def one_environment(args) -> dict:
    """Both fits in this process's environment (run in a fresh process per environment)."""
    X, lengths, init = make_data(args.n_sequences, args.length, args.n_states, args.n_features)
    ours, model, n_blocks = time_dask_em(X, lengths, init, args.n_iter, args.n_workers)
    result = {
        "dask_em": ours["graph"],
        "dask_em_direct": ours["direct"],
        "n_blocks": n_blocks,
        "n_iter_dask_em": int(model.n_iter_),
    }
    for implementation in ("scaling", "log") if args.with_log else ("scaling",):
        # the faster of two fits, as for dask_em
        seconds, reference = min(
            (time_hmmlearn(X, lengths, init, args.n_iter, implementation) for _ in range(2)),
            key=lambda timed: timed[0],
        )
        result[implementation] = seconds
        result[f"deviation_{implementation}"] = float(
            max(
                np.abs(model.transmat_ - reference.transmat_).max(),
                np.abs(model.means_ - reference.means_).max() / np.abs(reference.means_).max(),
                np.abs(model.covars_ - reference.covars_).max() / reference.covars_.max(),
            )
        )
    return result


def cpu_per_step(args, n_sequences: int = 1310, repeats: int = 5) -> tuple[float, float]:
    """CPU nanoseconds per step, in this process: one block's compiled statistics
    (``HMMFamily.block_stats``, no Dask) and one hmmlearn ``scaling`` iteration (fit with
    n_iter=1, its set-up included), best of ``repeats``.  CPU time, so less sensitive
    than wall time to other processes on the machine."""
    from hmmlearn.hmm import GaussianHMM

    from dask_em.families.gaussian import GaussianFamily
    from dask_em.families.hmm import HMMFamily

    X, lengths, init = make_data(n_sequences, args.length, args.n_states, args.n_features)
    family = HMMFamily(GaussianFamily("diag", reg_covar=0.0))
    n_states = args.n_states
    emission = family.emission.make_params(
        np.full(n_states, 1.0 / n_states), init["means"], covariances=init["covars"]
    )
    params = family.make_params(init["startprob"], init["transmat"], emission)
    family.block_stats(params, X, lengths)  # compiled or loaded before the clock
    ours, theirs = [], []
    for _ in range(repeats):
        started = time.process_time()
        family.block_stats(params, X, lengths)
        ours.append(time.process_time() - started)
        model = GaussianHMM(
            n_states,
            covariance_type="diag",
            init_params="",
            n_iter=1,
            tol=-np.inf,
            covars_prior=0.0,
            implementation="scaling",
        )
        model.startprob_, model.transmat_ = init["startprob"], init["transmat"]
        model.means_, model.covars_ = init["means"], init["covars"]
        started = time.process_time()
        model.fit(X, lengths)
        theirs.append(time.process_time() - started)
    return min(ours) / len(X) * 1e9, min(theirs) / len(X) * 1e9


def _run_child(flag: str, env: dict, args) -> dict:
    return run_child(__file__, _forwarded(args), env, flag)


def _forwarded(args) -> list[str]:
    out = [
        f"--n-sequences={args.n_sequences}",
        f"--length={args.length}",
        f"--n-states={args.n_states}",
        f"--n-features={args.n_features}",
        f"--n-iter={args.n_iter}",
        f"--n-workers={args.n_workers}",
    ]
    return [*out, "--with-log"] if args.with_log else out


def compile_times(args) -> tuple[float, float]:
    """Seconds for the first call of the fit kernels with an empty cache, and with the
    cache that call wrote (each in a fresh process)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        first = _run_child("--warm-up", env, args)["seconds"]
        cached = _run_child("--warm-up", env, args)["seconds"]
    return first, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-sequences", type=int, default=10_000)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--n-states", type=int, default=6)
    parser.add_argument("--n-features", type=int, default=4)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--with-log", action="store_true", help="also time hmmlearn 'log'")
    parser.add_argument(
        "--per-core", action="store_true", help="also CPU ns per step of one block, no Dask"
    )
    parser.add_argument("--one-environment", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warm-up", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.warm_up:
        import dask_em.families.hmm  # noqa: F401  (imports are not compilation)

        started = time.perf_counter()
        warm_up_kernels()
        print(json.dumps({"seconds": time.perf_counter() - started}))
        return
    if args.one_environment:
        print(json.dumps(one_environment(args)))
        return

    print(
        f"{args.n_sequences} sequences x {args.length} steps, K={args.n_states}, "
        f"D={args.n_features}, diagonal; {args.n_iter} iterations; {os.cpu_count()} cores"
    )
    first, cached = compile_times(args)
    print(f"compiled kernels: first call {first:.1f} s (empty cache), {cached:.2f} s cached")
    for label, env in environments():
        result = _run_child("--one-environment", env, args)
        print(f"-- environment: {label}")
        print(
            f"dask_em  ({args.n_workers} workers x 1 thread, {result['n_blocks']} blocks): "
            f"{result['dask_em']:8.3f} s/iteration (fit wall time / {args.n_iter})"
        )
        print(
            f"dask_em, direct passes (dask_em.direct-passes): {result['dask_em_direct']:8.3f} "
            "s/iteration"
        )
        for implementation in ("scaling", "log"):
            if implementation not in result:
                continue
            seconds = result[implementation]
            print(
                f"hmmlearn ({implementation:7s}, 1 process):{' ' * 15}{seconds:8.3f} s/iteration"
                f"   dask_em is {seconds / result['dask_em']:5.2f}x faster "
                f"({seconds / result['dask_em_direct']:5.2f}x with direct passes)"
            )
            deviation = result[f"deviation_{implementation}"]
            print(f"  largest parameter deviation from dask_em: {deviation:.1e}")
    if args.per_core:
        ours, theirs = cpu_per_step(args)
        print(
            f"per core, CPU time: dask_em block statistics {ours:.0f} ns/step, hmmlearn "
            f"scaling {theirs:.0f} ns/step ({theirs / ours:.2f}x)"
        )


if __name__ == "__main__":
    main()

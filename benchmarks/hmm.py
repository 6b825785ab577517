"""Seconds per Baum-Welch iteration: dask_em on a LocalCluster against hmmlearn, in one run.

    python benchmarks/hmm.py                          # 10,000 sequences x 200 steps
    python benchmarks/hmm.py --n-sequences 2000       # quicker

A diagonal Gaussian HMM (K=6 states, D=4 features).  Both fits start from the same
parameters and run the same fixed number of iterations (20) on the same in-memory data;
seconds per iteration = ``fit()`` wall time / iterations, set-up included (for dask_em:
checking the data, laying out and persisting the blocks, every pass; for hmmlearn its
own checks):

- dask_em: a LocalCluster of 2 workers x 1 thread, started before the clock, whose
  workers have loaded the compiled kernels (numba's on-disk cache) and run an untimed
  one-iteration fit of each kind on 1/20 of the sequences; with the passes
  run as graphs (the default) and as direct passes (Dask config
  ``dask_em.direct-passes``, :mod:`dask_em.engine.direct`);
- hmmlearn ``implementation="scaling"`` (its fastest) in the same process
  (``--with-log`` adds its default, ``"log"``).

Two environments, each one process set up once (its data and cluster): the environment
as it is, and with ``OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2``
exported, as SLURM job scripts and many HPC profiles do.  Every fit runs ``--rounds``
times (3 by default), dask_em's and hmmlearn's in turns, and each in one environment and
right after in the other, which goes first alternating from round to round
(:func:`environments.paired_round`; dask_em's on a LocalCluster started for them and
stopped after, so that no cluster is up while hmmlearn runs, nor an idle one beside
dask_em's); seconds per iteration are the medians of the rounds (until the
twenty-sixth session: the faster of two fits, an environment's process after the
other's).  The script also reports the first-call
compilation time of the kernels (fresh cache directory) and the time to load them from
the cache, and the largest difference between dask_em's and hmmlearn's parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings

import numpy as np
from environments import (
    environments_compared,
    merged_rounds,
    paired_round,
    run_child,
    serve_commands,
    served_environments,
)

#: How dask_em runs its passes: as graphs (the default) and, with the Dask config
#: ``dask_em.direct-passes``, each worker running its blocks (dask_em.engine.direct).
PASSES = ("graph", "direct")


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


def fitted(model) -> dict:
    """A fitted HMM's parameters, as lists (they travel as JSON)."""
    return {name: getattr(model, name).tolist() for name in ("transmat_", "means_", "covars_")}


def fit_hmmlearn(X, lengths, init, n_iter, implementation) -> dict:
    """One hmmlearn fit: seconds per iteration (``fit()`` wall time / n_iter) and its
    parameters."""
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
    return {"seconds": (time.perf_counter() - started) / n_iter, "params": fitted(model)}


def fit_dask_em(X, lengths, init, n_iter, passes) -> dict:
    """One dask_em fit on the current client's cluster, its passes as graphs or direct passes
    (``passes``): seconds per iteration (``fit()`` wall time / n_iter, the data's
    checks, layout and persisting included), blocks, iterations and parameters."""
    import dask

    from dask_em import GaussianHMM, Sequences

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
    with warnings.catch_warnings(), dask.config.set({"dask_em.direct-passes": passes == "direct"}):
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        sequences = Sequences(X, lengths)
        model.fit(sequences)
        seconds = (time.perf_counter() - started) / n_iter
    return {
        "seconds": seconds,
        "n_blocks": sequences.n_blocks,
        "n_iter": int(model.n_iter_),
        "params": fitted(model),
    }


def serve(args) -> None:
    """One environment's process (``--serve``): the data, then what the parent asks for
    (:class:`environments.Served`) until it closes stdin: start a LocalCluster whose
    workers load the compiled kernels (numba's on-disk cache) and run one-iteration
    warm-up fits, a dask_em fit on it, stop it, an hmmlearn fit."""
    from distributed import Client, LocalCluster

    X, lengths, init = make_data(args.n_sequences, args.length, args.n_states, args.n_features)
    # hmmlearn's first-call costs, untimed
    fit_hmmlearn(X[: 10 * args.length], lengths[:10], init, 1, "scaling")
    up: dict = {}

    def answer(command: dict):
        kind = command["fit"]
        if kind == "start":
            up["cluster"] = LocalCluster(
                n_workers=args.n_workers, threads_per_worker=1, processes=True,
                dashboard_address=":0",
            )  # fmt: skip
            up["client"] = Client(up["cluster"])
            up["client"].run(warm_up_kernels)
            # a one-iteration fit of each kind on 1/20 of the sequences, untimed: what a
            # fit does the first time in the workers (as gmm.py's warm-up fits)
            part = len(lengths) // 20
            for passes in PASSES:
                fit_dask_em(X[: part * args.length], lengths[:part], init, 1, passes)
            return None
        if kind == "stop":
            up.pop("client").close()
            up.pop("cluster").close()
            return None
        if kind == "dask_em":
            return fit_dask_em(X, lengths, init, args.n_iter, command["passes"])
        return fit_hmmlearn(X, lengths, init, args.n_iter, command["implementation"])

    serve_commands({}, answer)
    if up:
        answer({"fit": "stop"})


def round_of_fits(servers: dict, round_: int, implementations: tuple[str, ...]) -> dict:
    """Every fit once in each environment (``{label: {key: [answer]}}``): dask_em's (graph
    and direct passes, on a cluster started for them and stopped after) and hmmlearn's
    (no cluster up) in turns, hmmlearn first in even rounds; each in one environment and
    right after in the other (:func:`environments.paired_round`)."""
    ours = (
        "dask_em",
        [(None, {"fit": "start"}),
         *[(f"dask_em {passes}", {"fit": "dask_em", "passes": passes}) for passes in PASSES],
         (None, {"fit": "stop"})],
    )  # fmt: skip
    theirs = (
        "hmmlearn",
        [(f"hmmlearn {implementation}", {"fit": "hmmlearn", "implementation": implementation})
         for implementation in implementations],
    )  # fmt: skip
    return paired_round(servers, [theirs, ours] if round_ % 2 == 0 else [ours, theirs], round_)


def deviation(ours: dict, reference: dict) -> float:
    """The largest difference between two fits' parameters: transition probabilities
    absolute, means and variances relative to their largest magnitude."""
    a = {name: np.array(value) for name, value in ours.items()}
    b = {name: np.array(value) for name, value in reference.items()}
    return float(
        max(
            np.abs(a["transmat_"] - b["transmat_"]).max(),
            np.abs(a["means_"] - b["means_"]).max() / np.abs(b["means_"]).max(),
            np.abs(a["covars_"] - b["covars_"]).max() / b["covars_"].max(),
        )
    )


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
    parser.add_argument("--rounds", type=int, default=3, help="fits of each kind, in turns")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warm-up", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    if args.warm_up:
        import dask_em.families.hmm  # noqa: F401  (imports are not compilation)

        started = time.perf_counter()
        warm_up_kernels()
        print(json.dumps({"seconds": time.perf_counter() - started}))
        return
    if args.serve:
        serve(args)
        return

    print(
        f"{args.n_sequences} sequences x {args.length} steps, K={args.n_states}, "
        f"D={args.n_features}, diagonal; {args.n_iter} iterations; {os.cpu_count()} cores"
    )
    first, cached = compile_times(args)
    print(f"compiled kernels: first call {first:.1f} s (empty cache), {cached:.2f} s cached")
    implementations = ("scaling", "log") if args.with_log else ("scaling",)
    with served_environments(__file__, _forwarded(args)) as servers:
        rounds = [round_of_fits(servers, round_, implementations) for round_ in range(args.rounds)]
    answers = merged_rounds(rounds)
    seconds = {
        label: {key: [a["seconds"] for a in fits] for key, fits in out.items()}
        for label, out in answers.items()
    }
    print(f"medians of {args.rounds} rounds; per round: the range of the rounds' ratios")
    for label, out in answers.items():
        ours = seconds[label]
        graph = out["dask_em graph"][0]
        print(f"-- environment: {label}")
        print(
            f"dask_em  ({args.n_workers} workers x 1 thread, {graph['n_blocks']} blocks, "
            f"{graph['n_iter']} iterations): {np.median(ours['dask_em graph']):8.3f} "
            f"s/iteration (fit wall time / {args.n_iter}); direct passes "
            f"(dask_em.direct-passes): {np.median(ours['dask_em direct']):8.3f}"
        )
        for implementation in implementations:
            theirs = ours[f"hmmlearn {implementation}"]
            line = f"hmmlearn ({implementation}, 1 process): {np.median(theirs):8.3f} s/iteration;"
            for passes in PASSES:
                mine = ours[f"dask_em {passes}"]
                per_round = [t / m for t, m in zip(theirs, mine, strict=True)]
                line += (
                    f" dask_em {passes} {np.median(theirs) / np.median(mine):5.2f}x faster"
                    f" ({min(per_round):.2f}-{max(per_round):.2f}x)"
                )
            print(line)
            largest = max(
                deviation(ours_fit["params"], their_fit["params"])
                for ours_fit, their_fit in zip(
                    out["dask_em graph"], out[f"hmmlearn {implementation}"], strict=True
                )
            )
            print(f"  largest parameter deviation from dask_em (graph passes): {largest:.1e}")
    environments_compared(seconds)
    if args.per_core:
        ours, theirs = cpu_per_step(args)
        print(
            f"per core, CPU time: dask_em block statistics {ours:.0f} ns/step, hmmlearn "
            f"scaling {theirs:.0f} ns/step ({theirs / ours:.2f}x)"
        )


if __name__ == "__main__":
    main()

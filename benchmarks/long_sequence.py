"""One Gaussian HMM sequence far longer than a worker's memory, streamed from Zarr.

    python benchmarks/long_sequence.py                    # 5e7 steps, D=4, K=6
    python benchmarks/long_sequence.py --steps 2000000    # quicker

The sequence is written once to a Zarr store (``--store``; kept for the next run), a
diagonal Gaussian HMM chain with sticky transitions.  Then, on a LocalCluster of
``--n-workers`` workers x 1 thread limited to ``--worker-memory`` each:

- the time to read the store once (every chunk, on the cluster);
- ``GaussianHMM.fit`` for ``--n-iter`` iterations (``tol=0``, initial parameters given,
  ``cache="stream"``): its wall time, each iteration's seconds (from ``history_``), its
  passes over the data; each iteration is two passes (the summaries of the pieces, then
  the statistics), see :mod:`dask_em.families.hmm_split`;
- the workers' peak memory (sampled every 0.5 s), whether any paused, and whether any
  was restarted (its process id changed);
- hmmlearn (``implementation="scaling"``, in this process) on the first
  ``--hmmlearn-steps`` steps of the same sequence (by default the most it can hold: its
  peak bytes per step are measured on 10^6 steps, and it gets 80 % of the memory
  available), ``--hmmlearn-iter`` iterations from the same parameters: its seconds per
  iteration, per million steps, against dask_em's.

Results are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import warnings

import numpy as np

CHUNK_ROWS = 2**18


def _truth(n_states: int, n_features: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    transmat = 0.05 * rng.dirichlet(np.ones(n_states), size=n_states) + 0.95 * np.eye(n_states)
    return {
        "startprob": np.full(n_states, 1.0 / n_states),
        "transmat": transmat / transmat.sum(axis=1, keepdims=True),
        "means": rng.uniform(-3, 3, size=(n_states, n_features)),
        "variances": rng.uniform(0.5, 1.5, size=(n_states, n_features)),
    }


def _chain(cumulative: np.ndarray, first: int, u: np.ndarray) -> np.ndarray:
    import numba

    @numba.njit(cache=False)
    def walk(cumulative, first, u, out):
        state = first
        for t in range(len(u)):
            k = 0
            while k < cumulative.shape[1] - 1 and u[t] > cumulative[state, k]:
                k += 1
            state = k
            out[t] = state

    out = np.empty(len(u), dtype=np.int64)
    walk(cumulative, first, u, out)
    return out


def write_store(path: str, steps: int, truth: dict, seed: int = 1) -> float:
    """Write the sequence chunk by chunk (the chain carried across chunks); seconds."""
    import zarr

    from dask_em.zarr_source import create_complete_array

    started = time.perf_counter()
    n_features = truth["means"].shape[1]
    group = zarr.open_group(path, mode="w-")
    values = create_complete_array(
        group,
        name="values",
        shape=(steps, n_features),
        dtype=np.float64,
        chunks=(CHUNK_ROWS, n_features),
    )
    lengths = create_complete_array(group, name="lengths", shape=(1,), dtype=np.int64, chunks=(1,))
    lengths[...] = steps
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(truth["transmat"], axis=1)
    state = 0
    for start in range(0, steps, CHUNK_ROWS):
        n = min(CHUNK_ROWS, steps - start)
        states = _chain(cumulative, state, rng.random(n))
        state = int(states[-1])
        noise = rng.standard_normal((n, n_features))
        values[start : start + n] = (
            truth["means"][states] + np.sqrt(truth["variances"][states]) * noise
        )
    return time.perf_counter() - started


def _initial(truth: dict) -> dict:
    K = len(truth["startprob"])
    return {
        "startprob": truth["startprob"],
        "transmat": np.full((K, K), 0.5 / K) + 0.5 * np.eye(K),
        "means": truth["means"] + 0.5,
        "covars": np.ones_like(truth["variances"]),
    }


def _sample(dask_worker=None):
    import psutil

    return psutil.Process().memory_info().rss, str(dask_worker.status)


class MemoryWatch:
    """Samples every worker's memory and status in a thread while it runs."""

    def __init__(self, client, every: float = 0.5):
        self.client, self.every = client, every
        self.peak: dict[str, int] = {}
        self.paused = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                for address, (rss, status) in self.client.run(_sample).items():
                    self.peak[address] = max(self.peak.get(address, 0), rss)
                    self.paused |= "paused" in status
            except Exception:  # a worker going away shows in the pids
                pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _warm_up() -> None:
    """Load dask_em and the piece kernels (numba's on-disk cache) in a worker."""
    from dask_em.families import hmm_pieces_compiled

    hmm_pieces_compiled.sum_product_summary(np.zeros((2, 2)), np.eye(2), False)


def _pids(client) -> dict:
    return client.run(os.getpid)


def time_dask_em(args, truth: dict) -> dict:
    from distributed import Client, LocalCluster

    import dask_em
    from dask_em import Sequences

    init = _initial(truth)
    with (
        LocalCluster(
            n_workers=args.n_workers,
            threads_per_worker=1,
            memory_limit=args.worker_memory,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_warm_up)  # imports and numba's cache, once per worker, before the clock
        data = Sequences.from_zarr(args.store)
        data.values[:1].sum().compute()  # the store opened once on the workers
        started = time.perf_counter()
        data.values.sum(axis=0).compute()
        read_seconds = time.perf_counter() - started
        pids = _pids(client)
        model = dask_em.GaussianHMM(
            len(truth["startprob"]),
            covariance_type="diag",
            max_iter=args.n_iter,
            tol=0.0,
            cache="stream",
            startprob_init=init["startprob"],
            transmat_init=init["transmat"],
            means_init=init["means"],
            covars_init=init["covars"],
        )
        with MemoryWatch(client) as watch, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            model.fit(data)
            fit_seconds = time.perf_counter() - started
        restarted = _pids(client) != pids
    seconds = [record["seconds"] for record in model.history_]
    return {
        "steps": data.n_steps,
        "store_MB": round(data.values.nbytes / 1e6, 1),
        "blocks": data.n_blocks,
        "read_store_s": round(read_seconds, 2),
        "fit_s": round(fit_seconds, 2),
        "iteration_s": [round(s, 2) for s in seconds],
        "s_per_iteration": round(float(np.median(seconds)), 2),
        "iteration_over_read": round(float(np.median(seconds)) / read_seconds, 2),
        "n_passes": model.n_passes_,
        "worker_peak_MB": {a: round(v / 1e6) for a, v in watch.peak.items()},
        "worker_memory_limit": args.worker_memory,
        "any_worker_paused": watch.paused,
        "any_worker_restarted": restarted,
        "lower_bound": model.lower_bound_,
    }


def _hmmlearn_model(truth: dict, n_iter: int):
    from hmmlearn import hmm

    init = _initial(truth)
    model = hmm.GaussianHMM(
        len(truth["startprob"]),
        covariance_type="diag",
        n_iter=n_iter,
        tol=-np.inf,
        init_params="",
        implementation="scaling",
        min_covar=0.0,
    )
    model.startprob_, model.transmat_ = init["startprob"], init["transmat"]
    model.means_, model.covars_ = init["means"], init["covars"]
    return model


def hmmlearn_bytes_per_step(args, truth: dict, steps: int = 1_000_000) -> float:
    """Peak bytes hmmlearn allocates per step of one sequence (its data included), from
    one iteration on the first ``steps`` steps (tracemalloc sees NumPy's allocations)."""
    import tracemalloc

    import zarr

    tracemalloc.start()
    X = np.asarray(zarr.open_group(args.store, mode="r")["values"][:steps])
    _hmmlearn_model(truth, 1).fit(X)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / len(X)


def largest_for_hmmlearn(args, truth: dict) -> dict:
    """The longest prefix of the sequence hmmlearn can fit in this machine's available
    memory (80 % of it, from its measured bytes per step), at most the whole sequence."""
    import psutil

    per_step = hmmlearn_bytes_per_step(args, truth)
    available = psutil.virtual_memory().available
    steps = min(args.steps, int(0.8 * available / per_step) // 1_000_000 * 1_000_000)
    return {"bytes_per_step": round(per_step), "available_GB": available / 1e9, "steps": steps}


def time_hmmlearn(args, truth: dict) -> dict:
    import zarr

    X = np.asarray(zarr.open_group(args.store, mode="r")["values"][: args.hmmlearn_steps])
    model = _hmmlearn_model(truth, args.hmmlearn_iter)
    started = time.perf_counter()
    model.fit(X)
    seconds = (time.perf_counter() - started) / args.hmmlearn_iter
    return {"steps": len(X), "iterations": args.hmmlearn_iter, "s_per_iteration": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50_000_000)
    parser.add_argument("--n-states", type=int, default=6)
    parser.add_argument("--n-features", type=int, default=4)
    parser.add_argument("--n-iter", type=int, default=3)
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--worker-memory", default="1GiB")
    parser.add_argument(
        "--hmmlearn-steps",
        default="largest",
        help="steps for hmmlearn: a number, or 'largest' (what fits in 80%% of the "
        "available memory, from its bytes per step measured on 10^6 steps)",
    )
    parser.add_argument("--hmmlearn-iter", type=int, default=None, help="default: --n-iter")
    parser.add_argument("--store", default=None, help="Zarr store (default: in /tmp)")
    parser.add_argument("--skip-hmmlearn", action="store_true")
    args = parser.parse_args()
    args.store = args.store or f"/tmp/dask_em_long_sequence_{args.steps}.zarr"
    truth = _truth(args.n_states, args.n_features)
    result: dict = {"store": args.store}
    if not os.path.exists(args.store):
        result["write_store_s"] = round(write_store(args.store, args.steps, truth), 1)
    result["dask_em"] = time_dask_em(args, truth)
    if not args.skip_hmmlearn:
        args.hmmlearn_iter = args.hmmlearn_iter or args.n_iter
        if args.hmmlearn_steps == "largest":
            result["hmmlearn_largest"] = largest_for_hmmlearn(args, truth)
            args.hmmlearn_steps = result["hmmlearn_largest"]["steps"]
        args.hmmlearn_steps = min(int(args.hmmlearn_steps), args.steps)
        result["hmmlearn"] = time_hmmlearn(args, truth)
        per_million = {
            "dask_em": result["dask_em"]["s_per_iteration"] / (args.steps / 1e6),
            "hmmlearn": result["hmmlearn"]["s_per_iteration"] / (args.hmmlearn_steps / 1e6),
        }
        result["s_per_iteration_per_million_steps"] = {
            k: round(v, 3) for k, v in per_million.items()
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

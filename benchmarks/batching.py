"""Seconds per pass with distributed's message batching against 1 ms during a fit.

    python benchmarks/batching.py                # 6 rounds
    python benchmarks/batching.py --rounds 10

dask_em keeps distributed's message batching within 1 ms while a fit over data in the
workers' memory runs (:mod:`dask_em.engine.messages`, Dask config
``dask_em.prompt-messages``).  On a LocalCluster of 2 workers x 1 thread, in one
process, the two settings take turns, each first in every other round (so that the
host's load falls on both alike):

* engine passes inside a fit's span over 10, 100 and 1,000 one-row blocks whose block
  function does no arithmetic (``overhead.py``'s), one task per worker thread (the
  default), the median of 7 passes a round;
* the same over 100 blocks, one task per block (``dask_em.grouped-passes`` False; the
  engine itself keeps distributed's intervals for such passes, forced here);
* ``PoissonMixture(4)`` on 5,000,000 int32 counts persisted on the cluster, 20
  iterations from one start: the median iteration of each fit (``history_``), on a
  cluster that also holds the blocks above (not comparable with
  ``poisson_memory.py``'s figures, which have the cluster to themselves).

Printed: each setting's median over rounds and the median over rounds of the ratio
within a round (1 ms against distributed's).
"""

from __future__ import annotations

import argparse
import statistics
import warnings

from overhead import median_pass_seconds, statistics_of_size
from poisson_memory import draw_counts, model


def engine_pass_seconds(engine, prompt: bool, forced: bool) -> float:
    """Median seconds of 7 passes inside a fit's span, ``prompt`` on or off."""
    import dask

    from dask_em.engine.messages import prompt_messages_during

    shared = statistics_of_size(8, 16)
    with dask.config.set({"dask_em.prompt-messages": prompt}), engine.fit_span():
        # a pass of a task per block: the engine leaves the intervals; set them here
        with prompt_messages_during(engine.client if forced and prompt else None):
            return median_pass_seconds(engine, shared, 7)


def poisson_iteration_seconds(X, prompt: bool) -> float:
    import dask

    fitted = model(20)
    with dask.config.set({"dask_em.prompt-messages": prompt}):
        fitted.fit(X)
    return statistics.median(h["seconds"] for h in fitted.history_)


def main() -> None:
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    from dask_em.engine import EMEngine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        cases = {}
        for n_blocks in (10, 100, 1000):
            engine = EMEngine(da.zeros((n_blocks, 1), chunks=(1, 1)), model="b", cache="memory")
            cases[f"{n_blocks:,} blocks, a task per worker thread"] = (engine, False)
        with dask.config.set({"dask_em.grouped-passes": False}):
            engine = EMEngine(da.zeros((100, 1), chunks=(1, 1)), model="b", cache="memory")
        cases["100 blocks, a task per block"] = (engine, True)
        counts = client.persist(da.from_array(draw_counts(5_000_000)[:, None], chunks=625_000))
        poisson_iteration_seconds(counts, True)  # the workers load the kernels
        results: dict[str, dict[bool, list[float]]] = {}
        for round_ in range(args.rounds):
            order = (False, True) if round_ % 2 == 0 else (True, False)  # first in turn too
            for name, (engine, forced) in cases.items():
                for prompt in order:
                    config = {"dask_em.grouped-passes": not forced}
                    with dask.config.set(config):
                        seconds = engine_pass_seconds(engine, prompt, forced)
                    results.setdefault(name, {}).setdefault(prompt, []).append(seconds)
            for prompt in order:
                seconds = poisson_iteration_seconds(counts, prompt)
                name = "PoissonMixture(4), 5,000,000 counts, an iteration"
                results.setdefault(name, {}).setdefault(prompt, []).append(seconds)
    print(f"{args.rounds} rounds, each setting in turn; ms (median over rounds)")
    print("| pass | distributed's intervals | 1 ms | ratio (median of rounds) |")
    print("|---|---|---|---|")
    for name, by_setting in results.items():
        ratios = [a / b for a, b in zip(by_setting[True], by_setting[False], strict=True)]
        print(
            f"| {name} | {1000 * statistics.median(by_setting[False]):.1f} "
            f"| {1000 * statistics.median(by_setting[True]):.1f} "
            f"| {statistics.median(ratios):.2f} |"
        )


if __name__ == "__main__":
    main()

"""Per-pass overhead of the EM engine against the number of blocks and the statistics' size.

    python benchmarks/overhead.py                  # 10 .. 10,000 blocks
    python benchmarks/overhead.py --max-blocks 1000

One pass is what every EM iteration costs besides the kernels: building the graph,
sending the parameters once, scheduling the tasks, the tree reduction of the
statistics and gathering the result.  Here every block is tiny (one row) and the block
function does no arithmetic, so the wall time of ``EMEngine.map_reduce`` is all
overhead.  It is measured on a LocalCluster of 2 workers x 1 thread:

* against the number of blocks B (statistics of a Gaussian mixture with K=8, D=16,
  full covariance: 8.3 KiB);
* against the statistics' size at 100 blocks (the parameters sent have the same size);

as graphs, both ways: one task per block (Dask config ``dask_em.grouped-passes``
False) and one task per worker thread over the blocks it holds (the default,
:mod:`dask_em.engine.grouped`), or, with ``--direct``, as direct passes (each worker
runs the blocks it holds and merges what it can of the tree, no graph,
:mod:`dask_em.engine.direct`).  The passes run inside a fit's span, as a fit runs them
(for a task per worker thread, distributed's message batching kept to 1 ms,
:mod:`dask_em.engine.messages`); ``--distributed-batching`` keeps distributed's own
intervals there too.

A least-squares line ``a + b B`` through each series gives the fixed cost per pass
``a`` and the cost per block ``b``; the table that projects a pass over 1 TB is
printed from the last series, plus, for one task per worker thread, the per-block
series' ``b`` (the scheduler's cost of one task) for each worker (see the README for
how to read it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def statistics_of_size(n_components: int, n_features: int) -> dict:
    """A Gaussian-mixture-shaped statistics dict (full covariance)."""
    return {
        "weight": 1.0,
        "n_rows": 1,
        "loglik": 0.0,
        "nk": np.zeros(n_components),
        "means": np.zeros((n_components, n_features)),
        "scatter": np.zeros((n_components, n_features, n_features)),
    }


def block_nothing(shared, X, w):
    """A block function without arithmetic: returns statistics of the parameters' shapes."""
    return {
        key: (value.copy() if isinstance(value, np.ndarray) else value)
        for key, value in shared.items()
    }


def merge_sum(*parts):
    return {key: sum(part[key] for part in parts) for key in parts[0]}


def seconds_per_pass(n_blocks: int, shared: dict, repeats: int) -> float:
    import dask.array as da

    from dask_em.engine import EMEngine

    X = da.zeros((n_blocks, 1), chunks=(1, 1))
    engine = EMEngine(X, model="overhead", cache="memory")
    with engine.fit_span():  # as a fit runs its passes (message batching, malloc settings)
        seconds = median_pass_seconds(engine, shared, repeats)
    engine.release()
    return seconds


def median_pass_seconds(engine, shared: dict, repeats: int) -> float:
    """Median seconds of ``repeats`` passes of :func:`block_nothing` after one warm-up."""
    engine.map_reduce(block_nothing, merge_sum, shared)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.map_reduce(block_nothing, merge_sum, shared)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def projection(
    fixed: float, per_block: float, workers: int, block_mb: float, kernel_mb_per_s: float
) -> tuple[int, float, float]:
    """Blocks, scheduler seconds and kernel seconds of one pass over 1 TB."""
    n_blocks = int(1e12 / (block_mb * 1e6))
    overhead = fixed + per_block * n_blocks
    compute = 1e12 / (kernel_mb_per_s * 1e6) / workers
    return n_blocks, overhead, compute


def main() -> None:
    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-blocks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--direct",
        action="store_true",
        help="direct passes (Dask config dask_em.direct-passes: no graph per pass)",
    )
    parser.add_argument(
        "--kernel-mb-per-s",
        type=float,
        default=400.0,
        help="MB one worker thread's kernel consumes per second; 35 is the full-covariance "
        "GMM (K=8, D=16) of benchmarks/gmm.py: 128 MB per 1.8 s pass on 2 workers",
    )
    parser.add_argument(
        "--distributed-batching",
        action="store_true",
        help="keep distributed's message batching intervals (Dask config "
        "dask_em.prompt-messages False)",
    )
    args = parser.parse_args()
    counts = [b for b in (10, 30, 100, 300, 1000, 3000, 10_000) if b <= args.max_blocks]
    import dask

    if args.direct:
        modes = [("direct passes (no graphs)", {"dask_em.direct-passes": True})]
    else:  # the per-block series also gives the scheduler's cost of one task
        modes = [
            ("graph passes, one task per block", {"dask_em.grouped-passes": False}),
            ("graph passes, one task per worker thread (the default)", {}),
        ]
    if args.distributed_batching:
        modes = [(title, {**config, "dask_em.prompt-messages": False}) for title, config in modes]
    fits = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        for title, config in modes:
            with dask.config.set(config):
                fits.append(measure(title, counts, args.repeats, args.max_blocks))
    (fixed, per_block), per_task = fits[-1], (fits[0][1] if len(fits) > 1 else 0.0)
    print(f"\nprojection, 1 TB in 128 MB blocks, kernel {args.kernel_mb_per_s:.0f} MB/s per thread")
    if per_task:
        print(f"(one task per worker thread, {per_task * 1000:.2f} ms each, as one per block cost)")
    print(
        "| workers (1 thread) | blocks | scheduling s / pass | kernel s / pass | overhead share |"
    )
    print("|---|---|---|---|---|")
    for workers in (100, 1000):
        n_blocks, overhead, compute = projection(
            fixed, per_block, workers, 128.0, args.kernel_mb_per_s
        )
        overhead += per_task * workers
        share = overhead / (overhead + compute)
        print(
            f"| {workers:,} | {n_blocks:,} | {overhead:.1f} | {compute:.1f} | {100 * share:.0f}% |"
        )


def measure(title: str, counts: list[int], repeats: int, max_blocks: int) -> tuple[float, float]:
    """Print one series (seconds per pass against blocks, and against the statistics'
    size at 100 blocks); returns the least-squares ``(fixed, per block)`` seconds."""
    print(f"\n{title}")
    print("| blocks | s / pass | ms / block |")
    print("|---|---|---|")
    gmm = statistics_of_size(8, 16)
    series = []
    for n_blocks in counts:
        seconds = seconds_per_pass(n_blocks, gmm, repeats)
        series.append(seconds)
        print(f"| {n_blocks:,} | {seconds:.3f} | {1000 * seconds / n_blocks:.2f} |")
    per_block, fixed = np.polyfit(counts, series, 1)
    print(f"\nfit: {fixed * 1000:.1f} ms per pass + {per_block * 1000:.3f} ms per block")
    print("\n| statistics (K, D) | KiB | s / pass at 100 blocks |")
    print("|---|---|---|")
    for K, D in ((2, 4), (8, 16), (32, 64), (64, 128)):
        stats = statistics_of_size(K, D)
        kib = sum(np.asarray(v).nbytes for v in stats.values()) / 1024
        seconds = seconds_per_pass(min(100, max_blocks), stats, repeats)
        print(f"| ({K}, {D}) | {kib:,.0f} | {seconds:.3f} |")
    return fixed, per_block


if __name__ == "__main__":
    main()

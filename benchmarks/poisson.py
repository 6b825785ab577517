"""Seconds per EM iteration of a Poisson mixture streamed from Zarr, against a plain read.

    python benchmarks/poisson.py                      # 10^8 counts, K=4
    python benchmarks/poisson.py --n-counts 20000000  # quicker

Writes 10^8 counts drawn from a 4-component Poisson mixture to a Zarr store (int32,
Zarr's default compression) in a temporary directory.  On a LocalCluster of 2 workers x
1 thread it then measures:
- the time to only read the store with dask, ``da.from_zarr(path).sum()``;
- dask_em's seconds per EM iteration, with the data streamed from the store on every
  iteration (``cache="stream"``), as the median of ``history_``.
Both are measured in the same run.  The ratio is the cost of EM on top of the I/O.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings

import numpy as np


def draw_counts(block, rates, weights, seeds, block_info=None):
    index = block_info[None]["chunk-location"][0]
    rng = np.random.default_rng(seeds[index])
    labels = rng.choice(len(weights), size=block.shape[0], p=weights)
    return rng.poisson(rates[labels])[:, None].astype(np.int32)


def main() -> None:
    import dask.array as da
    from distributed import Client, LocalCluster

    from dask_em import PoissonMixture
    from dask_em.engine import blockwise_seeds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-counts", type=int, default=100_000_000)
    parser.add_argument("--chunk-rows", type=int, default=4_000_000)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--n-workers", type=int, default=2)
    args = parser.parse_args()
    rates = np.array([0.5, 3.0, 12.0, 40.0])
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    scratch = tempfile.mkdtemp(prefix="dask-em-poisson-")
    path = os.path.join(scratch, "counts.zarr")
    try:
        with (
            LocalCluster(
                n_workers=args.n_workers, threads_per_worker=1, dashboard_address=":0"
            ) as cluster,
            Client(cluster),
        ):
            template = da.empty((args.n_counts, 1), chunks=(args.chunk_rows, 1), dtype=np.int32)
            seeds = blockwise_seeds(0, template.numblocks[0])
            counts = template.map_blocks(draw_counts, rates, weights, seeds, dtype=np.int32)
            started = time.perf_counter()
            counts.to_zarr(path)
            on_disk = sum(
                os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
            )
            print(
                f"wrote {args.n_counts:,} counts ({on_disk / 1e6:.0f} MB on disk, "
                f"{args.n_counts * 4 / 1e6:.0f} MB as int32) "
                f"in {time.perf_counter() - started:.1f} s"
            )
            reads = []
            for _ in range(3):
                started = time.perf_counter()
                da.from_zarr(path).sum().compute()
                reads.append(time.perf_counter() - started)
            read = min(reads)
            model = PoissonMixture(
                4,
                tol=0.0,
                max_iter=args.iterations,
                cache="stream",
                random_state=0,
                rates_init=[[1.0], [2.0], [10.0], [30.0]],
                weights_init=np.full(4, 0.25),
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(path)
            per_iteration = statistics.median(h["seconds"] for h in model.history_)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"read only, da.from_zarr(...).sum(): {read:7.3f} s (best of 3)")
    print(
        f"dask_em PoissonMixture(4), streamed: {per_iteration:7.3f} s/iteration "
        f"(median of {args.iterations}; data in {model.data_placement_})"
    )
    print(f"ratio: {per_iteration / read:.2f}x the pure read time (issue #11: <= 1.2x)")
    order = np.argsort(model.rates_[:, 0])
    print(
        f"after {args.iterations} iterations: weights {np.round(model.weights_[order], 3)}, "
        f"rates {np.round(model.rates_[order, 0], 2)} (true {weights}, {rates})"
    )


if __name__ == "__main__":
    main()

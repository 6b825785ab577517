"""``dask-em demo``: a synthetic Gaussian mixture written to Zarr, fitted on a
LocalCluster, compared with the truth."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from dask_em.cli.common import UsageError, positive_int
from dask_em.engine import CACHE_MODES, connect
from dask_em.mixture import GaussianMixture
from dask_em.synthetic import random_gaussian_mixture, write_gaussian_mixture


def add_parser(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="write a synthetic Gaussian mixture to Zarr, fit it on a LocalCluster, compare",
        description=(
            "Writes a synthetic dataset drawn from a known Gaussian mixture to a local Zarr "
            "store, starts a LocalCluster (printing its dashboard address), fits a "
            "GaussianMixture with one line per iteration, and compares the fitted "
            "parameters with the true ones."
        ),
    )
    demo.add_argument("--n-samples", type=positive_int, default=4_000_000)
    demo.add_argument("--n-features", type=positive_int, default=4)
    demo.add_argument("--components", type=positive_int, default=5)
    demo.add_argument("--chunk-rows", type=positive_int, default=250_000)
    demo.add_argument(
        "--store", help="Zarr store to write (must not exist; default: a temporary directory)"
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary store")
    demo.add_argument("--out", help="also save the fitted model to this path (Zarr)")
    demo.add_argument("--n-workers", type=positive_int, default=2)
    demo.add_argument("--threads-per-worker", type=positive_int, default=1)
    demo.add_argument("--memory-limit", default="auto", help="per worker, e.g. 4GiB")
    demo.add_argument("--max-iter", type=positive_int, default=200)
    demo.add_argument("--tol", type=float, default=1e-6)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--cache",
        choices=CACHE_MODES,
        default="auto",
        help="keep the data in cluster memory, or stream it from Zarr every iteration",
    )
    demo.set_defaults(run=run)


def print_logs_to_stdout() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("dask_em")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    from scipy.optimize import linear_sum_assignment

    if args.store and os.path.exists(args.store):
        raise UsageError(f"--store {args.store} exists; dask-em demo never writes over a path")
    if args.out and os.path.exists(args.out):
        raise UsageError(f"--out {args.out} exists; choose a new path")
    if args.components > args.n_samples:
        raise UsageError("--components must not exceed --n-samples")
    scratch = None
    store = args.store
    if store is None:
        scratch = tempfile.mkdtemp(prefix="dask-em-demo-")
        store = os.path.join(scratch, "gmm.zarr")
    print_logs_to_stdout()
    truth = random_gaussian_mixture(args.components, args.n_features, args.seed)
    try:
        with connect(
            n_workers=args.n_workers,
            threads_per_worker=args.threads_per_worker,
            memory_limit=args.memory_limit,
        ):
            started = time.perf_counter()
            X = write_gaussian_mixture(
                store, args.n_samples, truth, seed=args.seed, chunk_rows=args.chunk_rows
            )
            print(
                f"wrote {args.n_samples:,} rows x {args.n_features} features "
                f"({X.nbytes / 1e6:,.0f} MB) from a {args.components}-component mixture "
                f"to {store} in {time.perf_counter() - started:.1f} s"
            )
            model = GaussianMixture(
                args.components,
                max_iter=args.max_iter,
                tol=args.tol,
                random_state=args.seed,
                cache=args.cache,
            )
            started = time.perf_counter()
            model.fit(store)
            seconds = time.perf_counter() - started
            print(
                f"fitted in {seconds:.1f} s: {model.n_iter_} iterations, "
                f"converged={model.converged_}, data in {model.data_placement_}, "
                f"mean log-likelihood {model.lower_bound_:.6f}"
            )
            if args.out:
                model.save(args.out)
                print(f"saved the model to {args.out}")
    finally:
        if scratch and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        elif scratch:
            print(f"kept the data at {store}")
    distances = ((model.means_[:, None, :] - truth.means[None]) ** 2).sum(axis=2)
    fitted_idx, true_idx = linear_sum_assignment(distances)
    print("component  true weight  fitted weight  max |mean error|  max |cov error|")
    for f, t in zip(fitted_idx, true_idx, strict=True):
        mean_error = np.abs(model.means_[f] - truth.means[t]).max()
        cov_error = np.abs(model.covariances_[f] - truth.covariances[t]).max()
        print(
            f"{t:9d}  {truth.weights[t]:11.4f}  {model.weights_[f]:13.4f}  "
            f"{mean_error:16.4f}  {cov_error:15.4f}"
        )
    return 0

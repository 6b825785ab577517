"""Batch jobs for the deployment recipes: write synthetic data, fit a model on a cluster.

    python deployment/job.py make-data DATA.zarr --samples 1000000 --components 3
    python deployment/job.py fit gmm DATA.zarr --components 3 --out MODEL.zarr

Both connect to ``--scheduler ADDRESS``.  Without it they connect where Dask's
configuration points (``DASK_SCHEDULER_ADDRESS``, which the Kubernetes operator sets in
a DaskJob's pod), or else start a LocalCluster.  TLS certificates come from Dask's
configuration as well (``DASK_DISTRIBUTED__COMM__TLS__...``, see deployment/README.md).

This file stands in for the ``dask-em make-data`` and ``dask-em fit`` commands that are
on their way; every recipe calls it on one marked line that then becomes ``dask-em ...``.
Exit status: 0 on success, 2 on bad usage or bad input, 1 on any other failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

#: Model names on the command line -> estimator classes of dask_em.
MODELS = {
    "gmm": "GaussianMixture",
    "poisson": "PoissonMixture",
    "categorical": "CategoricalMixture",
    "bernoulli": "BernoulliMixture",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="job.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    make = commands.add_parser("make-data", help="draw a known Gaussian mixture into Zarr")
    make.add_argument("out", metavar="DATA", help="Zarr store to write (local path)")
    make.add_argument("--samples", type=int, default=1_000_000)
    make.add_argument("--features", type=int, default=3)
    make.add_argument("--components", type=int, default=3)
    make.add_argument("--chunk-rows", type=int, default=100_000)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument(
        "--if-missing", action="store_true", help="do nothing when DATA already exists"
    )
    make.set_defaults(run=make_data)

    fit = commands.add_parser("fit", help="fit a mixture to a Zarr array, save the model")
    fit.add_argument("model", choices=sorted(MODELS))
    fit.add_argument("data", metavar="DATA", help="Zarr array: a path or URL (s3://...)")
    fit.add_argument("--components", type=int, required=True)
    fit.add_argument("--out", required=True, help="where to save the model (Zarr, local)")
    fit.add_argument("--covariance-type", default="full", help="gmm only")
    fit.add_argument("--max-iter", type=int, default=100)
    fit.add_argument("--tol", type=float, default=1e-3)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--cache", choices=("auto", "memory", "stream"), default="auto")
    fit.add_argument(
        "--storage-options",
        type=json.loads,
        default=None,
        help='fsspec options for DATA as JSON, e.g. \'{"endpoint_url": "http://minio:9000"}\'',
    )
    fit.set_defaults(run=fit_model)

    for command in (make, fit):
        command.add_argument("--scheduler", help="scheduler address, e.g. tcp://host:8786")
        command.add_argument(
            "--min-workers", type=int, default=1, help="wait for this many workers first"
        )
        command.add_argument("--timeout", type=float, default=300, help="seconds to wait")
    return parser


def connect(args: argparse.Namespace):
    from distributed import Client

    client = Client(args.scheduler, timeout=args.timeout) if args.scheduler else Client()
    client.wait_for_workers(args.min_workers, timeout=args.timeout)
    print(f"scheduler {client.scheduler.address}, dashboard {client.dashboard_link}")
    return client


def make_data(args: argparse.Namespace) -> int:
    import os

    from dask_em.synthetic import random_gaussian_mixture, write_gaussian_mixture

    if args.if_missing and os.path.exists(args.out):
        print(f"{args.out} exists; nothing to do")
        return 0
    truth = random_gaussian_mixture(args.components, args.features, args.seed)
    with connect(args):
        started = time.perf_counter()
        X = write_gaussian_mixture(
            args.out, args.samples, truth, seed=args.seed, chunk_rows=args.chunk_rows
        )
    print(
        f"wrote {X.shape[0]:,} rows x {X.shape[1]} features ({X.nbytes / 1e6:,.0f} MB) "
        f"to {args.out} in {time.perf_counter() - started:.1f} s"
    )
    return 0


def fit_model(args: argparse.Namespace) -> int:
    import dask_em

    options = {"max_iter": args.max_iter, "tol": args.tol, "random_state": args.seed}
    if args.model == "gmm":
        options["covariance_type"] = args.covariance_type
    model = getattr(dask_em, MODELS[args.model])(
        args.components, cache=args.cache, verbose=1, **options
    )
    with connect(args):
        started = time.perf_counter()
        model.fit(args.data, storage_options=args.storage_options)
    print(
        f"fitted in {time.perf_counter() - started:.1f} s: {model.n_iter_} iterations, "
        f"converged={model.converged_}, data in {model.data_placement_}, "
        f"mean log-likelihood {model.lower_bound_:.6f}"
    )
    model.save(args.out)
    print(f"saved the model to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"job.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

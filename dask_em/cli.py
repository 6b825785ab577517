"""The ``dask-em`` command line.

    dask-em fit MODEL INPUT --components K --out MODEL.zarr [--checkpoint C [--resume]]
    dask-em predict MODEL.zarr INPUT --out LABELS.zarr
    dask-em score MODEL.zarr INPUT
    dask-em info MODEL.zarr
    dask-em make-data MODEL OUT.zarr
    dask-em demo

Exit status: 0 on success; 2 on bad usage or bad input, with a one-line message on
stderr; 3 when the cluster fails (no scheduler at the address, workers lost); 1 on
any other failure; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from dask_em.cli_support import ClusterError, UsageError, add_cluster_arguments

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CLUSTER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

__all__ = ["UsageError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line: ``dask-em fit: error: ...``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="Zarr array or group, or netCDF file: a local path or an fsspec URL (s3://...)",
    )
    parser.add_argument(
        "--variable",
        metavar="NAME",
        help="the array of a Zarr group (or the variable of an xarray Dataset) to use",
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="fsspec storage option for a URL INPUT (repeatable; VALUE is JSON or text), "
        "e.g. anon=true",
    )


def build_parser() -> argparse.ArgumentParser:
    from dask_em.cli_support import model_kinds
    from dask_em.synthetic import SYNTHETIC_HMMS, SYNTHETIC_MODELS

    parser = _Parser(
        prog="dask-em",
        description="Fit latent-variable models with EM on data larger than memory, on Dask.",
        epilog="Exit status: 0 success, 2 bad usage or input, 3 cluster failure, 1 other.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser(
        "fit",
        help="fit a model to INPUT and save it",
        description=(
            "Fits MODEL to INPUT on a Dask cluster and saves it to --out (a Zarr store), "
            "with a convergence plot and an HTML report next to it. One line per "
            "iteration on stdout; a progress bar on stderr when it is a terminal. With "
            "--checkpoint the fit's state is saved after every iteration; run the same "
            "command with --resume after a crash to continue where it stopped."
        ),
    )
    fit.add_argument(
        "model", metavar="MODEL", choices=sorted(model_kinds()), help=", ".join(model_kinds())
    )
    _add_input_arguments(fit)
    fit.add_argument("--components", "-k", type=_positive_int, required=True, metavar="K")
    fit.add_argument("--out", required=True, metavar="MODEL.zarr", help="where to save the model")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    fit.add_argument("--max-iter", type=_positive_int, default=100)
    fit.add_argument("--tol", type=_non_negative_float, help="on the mean objective (default 1e-3)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument("--n-init", type=_positive_int, help="initializations (default 1)")
    fit.add_argument("--init-params", choices=("kmeans", "k-means++", "random", "random_from_data"))
    fit.add_argument("--covariance-type", choices=("full", "tied", "diag", "spherical"))
    fit.add_argument("--cache", choices=("auto", "memory", "stream"))
    fit.add_argument(
        "--checkpoint", metavar="PATH", help="save the fit's state here after every iteration"
    )
    fit.add_argument(
        "--resume", action="store_true", help="continue from --checkpoint (if it exists)"
    )
    fit.add_argument("--no-report", action="store_true", help="no plot and HTML report")
    fit.add_argument("--quiet", "-q", action="store_true", help="no per-iteration lines")
    add_cluster_arguments(fit)
    fit.set_defaults(run=_command("run_fit"))

    predict = commands.add_parser(
        "predict",
        help="label INPUT's rows with a saved model",
        description="Writes the most likely component of every row (or, with --proba, the "
        "posterior probabilities) to a new Zarr array.",
    )
    predict.add_argument("model", metavar="MODEL", help="a model saved by dask-em fit")
    _add_input_arguments(predict)
    predict.add_argument("--out", required=True, metavar="LABELS.zarr")
    predict.add_argument("--proba", action="store_true", help="write probabilities (n, K)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_cluster_arguments(predict)
    predict.set_defaults(run=_command("run_predict"))

    score = commands.add_parser(
        "score",
        help="mean log-likelihood per row of INPUT under a saved model, BIC and AIC",
    )
    score.add_argument("model", metavar="MODEL", help="a model saved by dask-em fit")
    _add_input_arguments(score)
    add_cluster_arguments(score)
    score.set_defaults(run=_command("run_score"))

    info = commands.add_parser("info", help="describe a saved model (or a checkpoint)")
    info.add_argument("model", metavar="MODEL", help="a model file or checkpoint")
    info.set_defaults(run=_command("run_info"))

    make_data = commands.add_parser(
        "make-data",
        help="write synthetic data from a random model of a kind to a new Zarr array",
        description="Draws rows from a random mixture (its parameters are kept in the "
        "array's 'truth' attribute) into a new Zarr array, block by block.",
    )
    make_data.add_argument(
        "model",
        metavar="MODEL",
        choices=sorted([*SYNTHETIC_MODELS, *SYNTHETIC_HMMS]),
        help=", ".join([*SYNTHETIC_MODELS, *SYNTHETIC_HMMS]),
    )
    make_data.add_argument("out", metavar="OUT.zarr")
    make_data.add_argument("--n-samples", type=_positive_int, default=100_000)
    make_data.add_argument("--n-features", type=_positive_int, default=4)
    make_data.add_argument("--components", "-k", type=_positive_int, default=3)
    make_data.add_argument("--n-symbols", type=_positive_int, default=4, help="categorical")
    make_data.add_argument("--chunk-rows", type=_positive_int, default=50_000)
    make_data.add_argument("--seed", type=int, default=0)
    make_data.add_argument(
        "--sequence-length", type=_positive_int, default=200, help="HMMs: steps per sequence"
    )
    make_data.set_defaults(run=_command("run_make_data"))

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
    demo.add_argument("--n-samples", type=_positive_int, default=4_000_000)
    demo.add_argument("--n-features", type=_positive_int, default=4)
    demo.add_argument("--components", type=_positive_int, default=5)
    demo.add_argument("--chunk-rows", type=_positive_int, default=250_000)
    demo.add_argument(
        "--store", help="Zarr store to write (must not exist; default: a temporary directory)"
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary store")
    demo.add_argument("--out", help="also save the fitted model to this path (Zarr)")
    demo.add_argument("--n-workers", type=_positive_int, default=2)
    demo.add_argument("--threads-per-worker", type=_positive_int, default=1)
    demo.add_argument("--memory-limit", default="auto", help="per worker, e.g. 4GiB")
    demo.add_argument("--max-iter", type=_positive_int, default=200)
    demo.add_argument("--tol", type=float, default=1e-6)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--cache",
        choices=("auto", "memory", "stream"),
        default="auto",
        help="keep the data in cluster memory, or stream it from Zarr every iteration",
    )
    demo.set_defaults(run=run_demo)
    return parser


def _command(name: str):
    """The command ``name`` of :mod:`dask_em.cli_commands`, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        from dask_em import cli_commands

        return getattr(cli_commands, name)(args)

    return run


def _print_logs_to_stdout() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("dask_em")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)


def run_demo(args: argparse.Namespace) -> int:
    from distributed import Client, LocalCluster
    from scipy.optimize import linear_sum_assignment

    from dask_em import GaussianMixture
    from dask_em.synthetic import random_gaussian_mixture, write_gaussian_mixture

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
    _print_logs_to_stdout()
    truth = random_gaussian_mixture(args.components, args.n_features, args.seed)
    try:
        with (
            LocalCluster(
                n_workers=args.n_workers,
                threads_per_worker=args.threads_per_worker,
                memory_limit=args.memory_limit,
            ) as cluster,
            Client(cluster) as client,
        ):
            print(f"Dask dashboard: {client.dashboard_link}")
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


def _cluster_errors() -> tuple[type[BaseException], ...]:
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return (
        ClusterError,
        CommClosedError,
        FutureCancelledError,
        KilledWorker,
        TimeoutError,
        asyncio.TimeoutError,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed
        return exit_request.code
    try:
        return args.run(args)
    except (
        UsageError,
        ValueError,
        FloatingPointError,
        FileExistsError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
    ) as error:
        print(f"dask-em: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dask-em: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (``dask-em ... | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except _cluster_errors() as error:
        print(f"dask-em: cluster error: {_one_line(error)}", file=sys.stderr)
        return EXIT_CLUSTER
    except OSError as error:
        print(f"dask-em: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())

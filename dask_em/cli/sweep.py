"""``dask-em sweep MODEL INPUT -k 1:10 --out DIR``: fit every model size sharing each
pass over the data, write the table, the models, the BIC-vs-K plot and a report."""

from __future__ import annotations

import argparse
import os
import time

from dask_em.acceleration import ACCELERATE_METHODS
from dask_em.cli.common import (
    UsageError,
    add_cluster_arguments,
    add_direct_passes_argument,
    add_input_arguments,
    build_estimator,
    connect,
    local_path,
    model_kinds,
    non_negative_float,
    positive_int,
    read_input,
    refuse_existing,
)
from dask_em.cli.inputs import check_input_location, check_input_shape
from dask_em.cli.outputs import check_outputs
from dask_em.engine import CACHE_MODES
from dask_em.families.gaussian import COVARIANCE_TYPES
from dask_em.sweep import CRITERIA


def component_range(text: str) -> list[int]:
    """``"1:10"`` (both ends included), ``"2,4,8"`` or ``"4"`` -> the K values."""
    try:
        if ":" in text:
            first, last = (int(part) for part in text.split(":"))
            values = list(range(first, last + 1))
        else:
            values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected FIRST:LAST, a comma-separated list or one number, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"K must be whole numbers >= 1, got {text!r}")
    return values


def covariance_types(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    wrong = [value for value in values if value not in COVARIANCE_TYPES]
    if not values or wrong:
        raise argparse.ArgumentTypeError(
            f"covariance types are among {', '.join(COVARIANCE_TYPES)}, got {text!r}"
        )
    return values


def add_parser(commands) -> None:
    kinds = model_kinds()
    sweep = commands.add_parser(
        "sweep",
        help="fit MODEL for every K (and covariance type), pick one by BIC",
        description=(
            "Fits MODEL to INPUT for every number of components in -k (and every "
            "--covariance-types for gmm), all candidates sharing each pass over the data, "
            "and writes to --out DIR: results.csv (one row per candidate: log-likelihood, "
            "BIC, AIC, passes, converged), models/ (every fitted candidate), bic.png (BIC "
            "against K) and report.html."
        ),
    )
    sweep.add_argument("model", metavar="MODEL", choices=sorted(kinds), help=", ".join(kinds))
    add_input_arguments(sweep)
    sweep.add_argument(
        "--components", "-k", type=component_range, required=True, metavar="K",
        help="FIRST:LAST (e.g. 1:10), a list (2,4,8) or one number",
    )  # fmt: skip
    sweep.add_argument(
        "--covariance-types", type=covariance_types, metavar="TYPES",
        help=f"gmm only: comma-separated, among {','.join(COVARIANCE_TYPES)} (default full)",
    )  # fmt: skip
    sweep.add_argument("--criterion", choices=CRITERIA, default="bic")
    sweep.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    sweep.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sweep.add_argument("--max-iter", type=positive_int, default=100)
    sweep.add_argument("--tol", type=non_negative_float, help="as dask-em fit --tol")
    sweep.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sweep.add_argument("--n-init", type=positive_int, help="initializations per candidate")
    sweep.add_argument("--cache", choices=CACHE_MODES)
    sweep.add_argument(
        "--accelerate",
        choices=[method for method in ACCELERATE_METHODS if method is not None],
        help="accelerated EM (fewer passes over the data; default: plain EM)",
    )
    add_cluster_arguments(sweep)
    add_direct_passes_argument(sweep)
    sweep.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dask_em.files import write_aside
    from dask_em.report.sweep import write_sweep
    from dask_em.sweep import ModelSweep

    kind = model_kinds()[args.model]
    out = local_path(args.out, "--out")
    check_outputs({"INPUT": args.input}, {"--out": out})
    refuse_existing([out], args.overwrite)
    estimator = build_estimator(
        kind,
        {
            "n_components": args.components[0],
            "max_iter": args.max_iter,
            "tol": args.tol,
            "random_state": args.seed,
            "n_init": args.n_init,
            "cache": args.cache,
            "accelerate": args.accelerate,
        },
    )
    grid: dict[str, list] = {"n_components": args.components}
    if args.covariance_types is not None:
        if "covariance_type" not in estimator.get_params():
            raise UsageError(f"--covariance-types does not apply to {kind.name} models")
        grid["covariance_type"] = args.covariance_types
    check_input_location(args.input)
    X, lengths = read_input(args, kind.sequences)
    check_input_shape(X, lengths, max(args.components), args.input)
    data = (X,) if lengths is None else (X, lengths)
    search = ModelSweep(estimator, grid, criterion=args.criterion)
    with connect(args):
        started = time.perf_counter()
        search.fit(*data)
        seconds = time.perf_counter() - started
    print(search.results_.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    best = ", ".join(f"{k}={v}" for k, v in search.best_params_.items())
    print(
        f"swept {len(search.estimators_)} {kind.name} candidates in {seconds:.1f} s, "
        f"{search.n_passes_} passes over the data ({search.bytes_read_ / 1e6:,.1f} MB read); "
        f"lowest {args.criterion.upper()}: {best}"
    )
    details = {"input": args.input, "wall-clock seconds": f"{seconds:.1f}"}
    notices = write_aside(out, lambda staging: write_sweep(search, staging, details))
    for notice in notices:
        print(f"dask-em: {notice}", flush=True)
    print(f"wrote {out}{os.sep} (results.csv, models/, report.html)")
    return 0

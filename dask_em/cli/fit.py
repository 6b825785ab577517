"""``dask-em fit MODEL INPUT --components K --out MODEL.zarr``: fit, save, report."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import time
from collections.abc import Iterator

from dask_em.acceleration import ACCELERATE_METHODS
from dask_em.cli.common import (
    UsageError,
    add_cluster_arguments,
    add_direct_passes_argument,
    add_input_arguments,
    build_estimator,
    connect,
    default_of,
    fit_keywords,
    local_path,
    model_kinds,
    non_negative_float,
    positive_int,
    read_input,
    refuse_existing,
)
from dask_em.cli.inputs import check_input_location, check_input_shape
from dask_em.cli.locks import holding
from dask_em.cli.outputs import check_outputs
from dask_em.engine import CACHE_MODES
from dask_em.families.gaussian import COVARIANCE_TYPES
from dask_em.initialization import INIT_METHODS


def _tol_help() -> str:
    defaults = ", ".join(
        f"{name} {default_of(kind, 'tol'):g}" for name, kind in model_kinds().items()
    )
    return (
        "stop when the mean objective per row (per step for sequence models) changes by "
        f"less than this (default: the model's; {defaults})"
    )


def add_parser(commands) -> None:
    kinds = model_kinds()
    fit = commands.add_parser(
        "fit",
        help="fit a model to INPUT and save it",
        description=(
            "Fits MODEL to INPUT on a Dask cluster and saves it to --out (a Zarr store), "
            "with a convergence plot and an HTML report next to it. One line per "
            "iteration on stdout; a progress bar on stderr when it is a terminal. With "
            "--checkpoint the fit's state is saved after every iteration; run the same "
            "command with --resume after a crash to continue where it stopped. Another "
            "dask-em run writing the same --out or --checkpoint is refused; with "
            "--overwrite, the previous report and plot are removed before the new model "
            "replaces the old one, so a report never sits beside a model it does not describe."
        ),
    )
    fit.add_argument("model", metavar="MODEL", choices=sorted(kinds), help=", ".join(kinds))
    add_input_arguments(fit)
    fit.add_argument("--components", "-k", type=positive_int, required=True, metavar="K")
    fit.add_argument("--out", required=True, metavar="MODEL.zarr", help="where to save the model")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    fit.add_argument("--max-iter", type=positive_int, default=100)
    fit.add_argument("--tol", type=non_negative_float, help=_tol_help())
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument("--n-init", type=positive_int, help="initializations (default 1)")
    fit.add_argument("--init-params", choices=INIT_METHODS)
    fit.add_argument("--covariance-type", choices=COVARIANCE_TYPES)
    fit.add_argument("--cache", choices=CACHE_MODES)
    fit.add_argument(
        "--accelerate",
        choices=[method for method in ACCELERATE_METHODS if method is not None],
        help="accelerated EM (fewer passes over the data; default: plain EM)",
    )
    fit.add_argument(
        "--checkpoint", metavar="PATH", help="save the fit's state here after every iteration"
    )
    fit.add_argument(
        "--resume", action="store_true", help="continue from --checkpoint (if it exists)"
    )
    fit.add_argument("--no-report", action="store_true", help="no plot and HTML report")
    fit.add_argument("--quiet", "-q", action="store_true", help="no per-iteration lines")
    add_cluster_arguments(fit)
    add_direct_passes_argument(fit)
    fit.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dask_em.report import report_paths

    out = local_path(args.out, "--out")
    checkpoint = local_path(args.checkpoint, "--checkpoint") if args.checkpoint else None
    outputs = {"--out": out} | ({"--checkpoint": checkpoint} if checkpoint else {})
    if not args.no_report:
        outputs |= dict(zip(("the plot", "the report"), report_paths(out), strict=True))
    check_outputs({"INPUT": args.input}, outputs)
    # held from before the cluster starts until the last file is written, and taken before
    # the existing outputs are looked at: a run that finished meanwhile counts as existing
    with holding({"--out": out} | ({"--checkpoint": checkpoint} if checkpoint else {})):
        return _fit(args, out, checkpoint)


def _fit(args: argparse.Namespace, out: str, checkpoint: str | None) -> int:
    """``run`` once its outputs are checked and locked."""
    from dask_em.console import Console
    from dask_em.report import data_sample, report_paths, write_report

    kind = model_kinds()[args.model]
    refuse_existing([out] + ([] if args.no_report else list(report_paths(out))), args.overwrite)
    if args.resume and checkpoint is None:
        raise UsageError("--resume needs --checkpoint PATH")
    if checkpoint is not None:
        if checkpoint == out:
            raise UsageError("--checkpoint and --out must be different paths")
        if os.path.exists(checkpoint) and not args.resume:
            raise UsageError(
                f"the checkpoint {checkpoint} exists; add --resume to continue from it, "
                "or remove it"
            )
    estimator = build_estimator(
        kind,
        {
            "n_components": args.components,
            "max_iter": args.max_iter,
            "tol": args.tol,
            "random_state": args.seed,
            "n_init": args.n_init,
            "init_params": args.init_params,
            "covariance_type": args.covariance_type,
            "cache": args.cache,
            "accelerate": args.accelerate,
        },
    )
    check_input_location(args.input)
    X, lengths = read_input(args, kind.sequences)
    check_input_shape(X, lengths, args.components, args.input)
    data = (X,) if lengths is None else (X, lengths)
    if checkpoint is not None and args.resume and not os.path.exists(checkpoint):
        print(f"no checkpoint at {checkpoint} yet: starting afresh", flush=True)
    console = Console(f"fit {kind.name}", args.max_iter, quiet=args.quiet)
    keywords = fit_keywords(
        estimator, {"callbacks": [console.iteration]}, checkpoint=checkpoint, resume=args.resume
    )
    with connect(args), console, _said_of_a_full_disk(checkpoint, "the checkpoint"):
        started = time.perf_counter()
        estimator.fit(*data, **keywords)
        seconds = time.perf_counter() - started
        sample = None if args.no_report else data_sample(X, lengths)  # first rows, bounded
    if args.overwrite and not args.no_report:  # never beside a model they do not describe
        for previous in report_paths(out):
            with contextlib.suppress(FileNotFoundError):
                os.remove(previous)
    with _said_of_a_full_disk(out, "the model"):
        estimator.save(out, overwrite=args.overwrite)
    placement = getattr(estimator, "data_placement_", "?")
    print(
        f"fitted {kind.name} in {seconds:.1f} s: converged={estimator.converged_} after "
        f"{estimator.n_iter_} iterations, objective {estimator.lower_bound_:.10g} "
        f"(mean per row), data in {placement}"
    )
    print(f"saved the model to {out}")
    if not args.no_report:
        details = {"input": args.input, "wall-clock seconds of the fit": f"{seconds:.1f}"}
        for notice in write_report(estimator, out, details, sample=sample):
            print(f"dask-em: {notice}", flush=True)
        png, report = report_paths(out)
        shown = [report] + ([png] if os.path.exists(png) else [])
        print(f"wrote {' and '.join(shown)}")
    return 0


#: The errors of a write that found no room: a full disk, a quota, a file size limit.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def _said_of_a_full_disk(path: str | None, what: str) -> Iterator[None]:
    """A write to ``path`` that finds no room becomes one line saying what is kept."""
    try:
        yield
    except OSError as error:
        if path is None or error.errno not in _NO_ROOM:
            raise
        kept = (
            f"the previous {what.removeprefix('the ')} there is intact"
            if os.path.exists(path)
            else "nothing was left there"
        )
        hint = "; free some space, then run the command again" + (
            " with --resume" if what == "the checkpoint" else ""
        )
        raise OSError(f"no room to write {what} {path} ({error.strerror}): {kept}{hint}") from None

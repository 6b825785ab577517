"""The ``dask-em`` commands ``fit``, ``predict``, ``score``, ``info`` and ``make-data``.

Each takes the parsed arguments, raises :class:`~dask_em.cli_support.UsageError` (or
ValueError, FileExistsError, ...) for bad usage or input, and returns the exit status.
What can be checked without a cluster (paths, options, INPUT's metadata) is checked
before one is started.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
import uuid
import warnings

from dask_em.cli_support import (
    UsageError,
    build_estimator,
    connect,
    fit_keywords,
    kind_of_estimator,
    model_kinds,
    open_input,
    parse_storage_options,
)


def _local(path: str, flag: str) -> str:
    """``path`` made absolute; outputs are renamed into place, so they must be local."""
    if "://" in path:
        raise UsageError(f"{flag} must be a local path (it is renamed into place), got {path}")
    return os.path.abspath(path)


def _refuse_existing(paths: list[str], overwrite: bool) -> None:
    for path in paths:
        if os.path.lexists(path) and not overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace it")


def _read_input(args: argparse.Namespace, sequences: bool):
    options = parse_storage_options(args.storage_option, args.input)
    return open_input(args.input, args.variable, options, sequences=sequences)


def _load_model(path: str):
    from dask_em import load

    if not os.path.exists(path):
        raise UsageError(f"MODEL {path} does not exist")
    return load(path)


# -- fit -------------------------------------------------------------------------------
def run_fit(args: argparse.Namespace) -> int:
    from dask_em.console import Console
    from dask_em.report import report_paths, write_report

    kind = model_kinds()[args.model]
    out = _local(args.out, "--out")
    _refuse_existing([out] + ([] if args.no_report else list(report_paths(out))), args.overwrite)
    checkpoint = _local(args.checkpoint, "--checkpoint") if args.checkpoint else None
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
        },
    )
    X, lengths = _read_input(args, kind.sequences)
    data = (X,) if lengths is None else (X, lengths)
    if checkpoint is not None and args.resume and not os.path.exists(checkpoint):
        print(f"no checkpoint at {checkpoint} yet: starting afresh", flush=True)
    console = Console(f"fit {kind.name}", args.max_iter, quiet=args.quiet)
    keywords = fit_keywords(
        estimator, {"callbacks": [console.iteration]}, checkpoint=checkpoint, resume=args.resume
    )
    with connect(args), console:
        started = time.perf_counter()
        estimator.fit(*data, **keywords)
        seconds = time.perf_counter() - started
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
        for notice in write_report(estimator, out, details):
            print(f"dask-em: {notice}", flush=True)
        png, report = report_paths(out)
        shown = [report] + ([png] if os.path.exists(png) else [])
        print(f"wrote {' and '.join(shown)}")
    return 0


# -- predict and score -------------------------------------------------------------------
def run_predict(args: argparse.Namespace) -> int:
    import dask.array as da
    import numpy as np

    from dask_em.model_io import replace_path

    out = _local(args.out, "--out")
    _refuse_existing([out], args.overwrite)
    model = _load_model(args.model)
    kind = kind_of_estimator(model)
    X, lengths = _read_input(args, kind.sequences)
    data = (X,) if lengths is None else (X, lengths)
    what = "probabilities" if args.proba else "labels"
    with connect(args):
        result = model.predict_proba(*data) if args.proba else model.predict(*data)
        if not isinstance(result, da.Array):
            result = da.from_array(np.asarray(result))
        staging = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            result.to_zarr(staging)
            import zarr

            zarr.open_array(staging, mode="r+").attrs.update(
                {"dask_em_predictions": what, "model": os.path.abspath(args.model)}
            )
            replace_path(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {what} of {result.shape[0]:,} rows to {out}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    import dask.array as da

    model = _load_model(args.model)
    kind = kind_of_estimator(model)
    X, lengths = _read_input(args, kind.sequences)
    with connect(args):
        if kind.sequences:
            print(f"score {model.score(X, lengths)!r}")
            return 0
        scores = model.score_samples(X)
        mean = float(scores.mean().compute() if isinstance(scores, da.Array) else scores.mean())
    n_rows = int(X.shape[0])
    n_parameters = model._n_parameters()
    print(f"score {mean!r}  (mean log-likelihood per row, nats)")
    print(f"rows {n_rows}")
    print(f"bic {-2.0 * mean * n_rows + n_parameters * math.log(n_rows)!r}")
    print(f"aic {-2.0 * mean * n_rows + 2.0 * n_parameters!r}")
    return 0


# -- info -------------------------------------------------------------------------------
def run_info(args: argparse.Namespace) -> int:
    import json

    import xarray as xr

    from dask_em import checkpoint as checkpoint_io
    from dask_em import model_io

    path = args.model
    if not os.path.exists(path):
        raise UsageError(f"MODEL {path} does not exist")
    try:
        with xr.open_zarr(path, consolidated=False) as ds:
            ds = ds.load()
    except Exception:  # zarr/xarray raise several types for what they cannot read
        raise UsageError(f"{path} is not a dask_em model file or checkpoint") from None
    fmt = ds.attrs.get("dask_em_format")
    attrs = ds.attrs
    if fmt == model_io.FORMAT_NAME:
        print(f"model {attrs['model']}  ({fmt} version {attrs['dask_em_format_version']})")
        print(f"written by dask_em {attrs.get('dask_em_version', '?')}")
        params = json.loads(attrs["params"])
        print("parameters " + ", ".join(f"{k}={v!r}" for k, v in params.items() if v is not None))
        print(f"features {attrs['n_features_in']}")
        print(f"converged {attrs['converged']} after {attrs['n_iter']} iterations")
        print(f"objective {attrs['lower_bound']!r}  (mean per row)")
        for name, variable in ds.data_vars.items():
            if not name.startswith("history_"):
                shape = ", ".join(
                    f"{d}={n}" for d, n in zip(variable.dims, variable.shape, strict=True)
                )
                print(f"array {name} ({shape})")
        if "weights" in ds:
            print("weights " + " ".join(f"{w:.4f}" for w in ds["weights"].values))
    elif fmt == checkpoint_io.FORMAT_NAME:
        found = json.loads(attrs["fingerprint"])
        history = ds["current_history"].values
        version = attrs["dask_em_format_version"]
        print(f"checkpoint of a {attrs['model']} fit  ({fmt} version {version})")
        print(f"data shape {found['shape']}, {len(found['row_chunks'])} blocks, {found['dtype']}")
        print(f"initialization {int(attrs['attempt']) + 1} of {found['params'].get('n_init', 1)}")
        if len(history):
            print(f"iteration {int(history[-1, 0])}, objective {float(history[-1, 1])!r}")
    else:
        raise UsageError(f"{path} is not a dask_em model file or checkpoint")
    return 0


# -- make-data --------------------------------------------------------------------------
def run_make_data(args: argparse.Namespace) -> int:
    from dask_em.synthetic import SYNTHETIC_HMMS, SYNTHETIC_MODELS, write_synthetic

    out = _local(args.out, "OUT")
    if os.path.lexists(out):
        raise UsageError(f"{out} exists; make-data never writes over a path")
    if args.components > args.n_samples:
        raise UsageError("--components must not exceed --n-samples")
    if args.model in SYNTHETIC_HMMS:
        return _make_sequences(args, out)
    random_truth = SYNTHETIC_MODELS[args.model][0]
    if args.model == "categorical":
        truth = random_truth(args.components, args.n_features, args.seed, args.n_symbols)
    else:
        truth = random_truth(args.components, args.n_features, args.seed)
    nbytes = _write_aside(
        out,
        lambda staging: (
            write_synthetic(
                staging,
                args.model,
                args.n_samples,
                truth,
                seed=args.seed,
                chunk_rows=args.chunk_rows,
            ).nbytes
        ),
    )
    print(
        f"wrote {args.n_samples:,} rows x {args.n_features} features ({nbytes / 1e6:,.1f} MB) "
        f"from a {args.components}-component {args.model} mixture to {out}"
    )
    return 0


def _make_sequences(args: argparse.Namespace, out: str) -> int:
    """make-data for an HMM: ``--n-samples`` steps in sequences of ``--sequence-length``."""
    from dask_em.synthetic import random_hmm, write_synthetic_sequences

    n_sequences = max(1, args.n_samples // args.sequence_length)
    truth = random_hmm(args.model, args.components, args.n_features, args.seed, args.n_symbols)
    nbytes = _write_aside(
        out,
        lambda staging: write_synthetic_sequences(
            staging,
            args.model,
            n_sequences,
            args.sequence_length,
            truth,
            seed=args.seed,
            sequences_per_chunk=max(1, args.chunk_rows // args.sequence_length),
        ),
    )
    print(
        f"wrote {n_sequences:,} sequences x {args.sequence_length} steps ({nbytes / 1e6:,.1f} MB) "
        f"from a {args.components}-state {args.model} to {out}"
    )
    return 0


def _write_aside(out: str, write) -> int:
    """``write(staging)`` into a path beside ``out`` (its warnings silenced), then rename
    it into place; nothing is left at either path if it fails.  Returns what ``write``
    returns (the bytes written)."""
    from dask_em.model_io import replace_path

    staging = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = write(staging)
        replace_path(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result

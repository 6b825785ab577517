"""``dask-em make-data MODEL OUT.zarr``: synthetic data from a random model of a kind."""

from __future__ import annotations

import argparse
import os

from dask_em.cli.common import UsageError, local_path, positive_int
from dask_em.files import write_aside
from dask_em.synthetic import (
    SYNTHETIC_HMMS,
    SYNTHETIC_MODELS,
    random_hmm,
    write_synthetic,
    write_synthetic_sequences,
)


def add_parser(commands) -> None:
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
    make_data.add_argument("--n-samples", type=positive_int, default=100_000)
    make_data.add_argument("--n-features", type=positive_int, default=4)
    make_data.add_argument("--components", "-k", type=positive_int, default=3)
    make_data.add_argument("--n-symbols", type=positive_int, default=4, help="categorical")
    make_data.add_argument("--chunk-rows", type=positive_int, default=50_000)
    make_data.add_argument("--seed", type=int, default=0)
    make_data.add_argument(
        "--sequence-length", type=positive_int, default=200, help="HMMs: steps per sequence"
    )
    make_data.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = local_path(args.out, "OUT")
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
    nbytes = write_aside(
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
        quiet=True,
    )
    print(
        f"wrote {args.n_samples:,} rows x {args.n_features} features ({nbytes / 1e6:,.1f} MB) "
        f"from a {args.components}-component {args.model} mixture to {out}"
    )
    return 0


def _make_sequences(args: argparse.Namespace, out: str) -> int:
    """make-data for an HMM: ``--n-samples`` steps in sequences of ``--sequence-length``."""
    n_sequences = max(1, args.n_samples // args.sequence_length)
    truth = random_hmm(args.model, args.components, args.n_features, args.seed, args.n_symbols)
    nbytes = write_aside(
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
        quiet=True,
    )
    print(
        f"wrote {n_sequences:,} sequences x {args.sequence_length} steps ({nbytes / 1e6:,.1f} MB) "
        f"from a {args.components}-state {args.model} to {out}"
    )
    return 0

"""``dask-em predict MODEL.zarr INPUT --out LABELS.zarr``: label INPUT with a saved model."""

from __future__ import annotations

import argparse
import os

from dask_em import registry, stores
from dask_em.cli.common import (
    add_cluster_arguments,
    add_input_arguments,
    connect,
    load_model,
    local_path,
    read_input,
    refuse_existing,
)
from dask_em.cli.inputs import check_first_rows, check_input_location, check_input_shape
from dask_em.cli.locks import holding
from dask_em.cli.outputs import check_outputs


def add_parser(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="label INPUT's rows with a saved model",
        description="Writes the most likely component of every row (or, with --proba, the "
        "posterior probabilities) to a new Zarr array.",
    )
    predict.add_argument("model", metavar="MODEL", help="a model saved by dask-em fit")
    add_input_arguments(predict)
    predict.add_argument("--out", required=True, metavar="LABELS.zarr")
    predict.add_argument("--proba", action="store_true", help="write probabilities (n, K)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_cluster_arguments(predict)
    predict.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = local_path(args.out, "--out")
    check_outputs({"INPUT": args.input, "MODEL": args.model}, {"--out": out})
    with holding({"--out": out}):  # one run at a time writes --out
        return _predict(args, out)


def _predict(args: argparse.Namespace, out: str) -> int:
    refuse_existing([out], args.overwrite)
    model = load_model(args.model)
    kind = registry.kind_of(model)
    check_input_location(args.input)
    X, lengths = read_input(args, kind.sequences)
    check_input_shape(X, lengths, None, args.input)
    check_first_rows(model, X, args.input)
    data = (X,) if lengths is None else (X, lengths)
    what = "probabilities" if args.proba else "labels"
    with connect(args):
        result = model.predict_proba(*data) if args.proba else model.predict(*data)
        rows = stores.write_array(
            result, out, {"dask_em_predictions": what, "model": os.path.abspath(args.model)}
        )
    print(f"wrote {what} of {rows:,} rows to {out}")
    return 0

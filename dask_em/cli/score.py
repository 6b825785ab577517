"""``dask-em score MODEL.zarr INPUT``: log-likelihood of INPUT under a saved model."""

from __future__ import annotations

import argparse

from dask_em import registry
from dask_em.cli.common import (
    add_cluster_arguments,
    add_input_arguments,
    connect,
    load_model,
    read_input,
)


def add_parser(commands) -> None:
    score = commands.add_parser(
        "score",
        help="mean log-likelihood per row of INPUT under a saved model, BIC and AIC",
    )
    score.add_argument("model", metavar="MODEL", help="a model saved by dask-em fit")
    add_input_arguments(score)
    add_cluster_arguments(score)
    score.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    kind = registry.kind_of(model)
    X, lengths = read_input(args, kind.sequences)
    with connect(args):
        if kind.sequences:
            print(f"score {model.score(X, lengths)!r}")
            return 0
        mean = model.score(X)
    n_rows = int(X.shape[0])
    bic, aic = model.information_criteria(mean, n_rows)
    print(f"score {mean!r}  (mean log-likelihood per row, nats)")
    print(f"rows {n_rows}")
    print(f"bic {bic!r}")
    print(f"aic {aic!r}")
    return 0

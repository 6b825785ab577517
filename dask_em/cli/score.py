"""``dask-em score MODEL.zarr INPUT``: log-likelihood of INPUT under a saved model,
with BIC and AIC, one labelled figure a line."""

from __future__ import annotations

import argparse
import math

from dask_em import registry
from dask_em.cli.common import (
    add_cluster_arguments,
    add_input_arguments,
    connect,
    load_model,
    read_input,
)
from dask_em.cli.inputs import check_first_rows


def add_parser(commands) -> None:
    score = commands.add_parser(
        "score",
        help="log-likelihood of INPUT under a saved model, BIC and AIC",
        description=(
            "Prints, one labelled line each: the score as the model's score() returns "
            "it (mixtures: mean log-likelihood per row; hidden Markov models: total "
            "log-likelihood of all the sequences, as hmmlearn), the mean per row or "
            "step, the rows (or sequences and steps), the number of free parameters, "
            "BIC and AIC (lower is better; n = rows or steps)."
        ),
    )
    score.add_argument("model", metavar="MODEL", help="a model saved by dask-em fit")
    add_input_arguments(score)
    add_cluster_arguments(score)
    score.set_defaults(run=run)


def information_criteria(total: float, n: int, n_parameters: int) -> tuple[float, float]:
    """``(BIC, AIC)`` of a total log-likelihood ``total`` over ``n`` rows (steps)."""
    return -2.0 * total + n_parameters * math.log(n), -2.0 * total + 2.0 * n_parameters


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    kind = registry.kind_of(model)
    X, lengths = read_input(args, kind.sequences)
    check_first_rows(model, X, args.input)
    n_parameters = model._n_parameters()  # the count the estimators' bic() and aic() use
    with connect(args):
        score = model.score(X, lengths) if kind.sequences else model.score(X)
    if kind.sequences:
        n_steps = int(X.n_steps) if hasattr(X, "n_steps") else int(X.shape[0])
        n_sequences = int(X.n_sequences) if hasattr(X, "n_sequences") else len(lengths)
        total, n = score, n_steps
        lines = [
            ("score", score, "total log-likelihood of all the sequences, nats"),
            ("mean-per-step", total / n_steps, "nats"),
            ("sequences", n_sequences, None),
            ("steps", n_steps, None),
        ]
    else:
        n = int(X.shape[0])
        total = score * n
        lines = [
            ("score", score, "mean log-likelihood per row, nats"),
            ("rows", n, None),
        ]
    bic, aic = information_criteria(total, n, n_parameters)
    lines += [
        ("parameters", n_parameters, "free parameters"),
        ("bic", bic, "lower is better"),
        ("aic", aic, "lower is better"),
    ]
    for label, value, note in lines:
        shown = repr(value) if isinstance(value, float) else str(value)
        print(f"{label} {shown}" + (f"  ({note})" if note else ""))
    return 0

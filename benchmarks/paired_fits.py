"""One dask_em fit configuration many times in both environments, paired in time.

    python benchmarks/paired_fits.py                          # diag float32, graph, 24 pairs
    python benchmarks/paired_fits.py --covariance-type full --pairs 12

``gmm.py``'s 3 rounds give each thread variables' ratio from three pairs of fits; on
this host two fits seconds apart differ by a fifth or more, so its ratio can pass 1.1x
by chance.  This script sets up both environments' processes as ``gmm.py`` does
(:func:`environments.served_environments`, its ``--serve`` mode, the same data and
start), starts both clusters (the other environment's idle beside each fit, for both
alike), and runs one configuration ``--pairs`` times in each, the first of a pair
alternating.  It prints the medians of fit wall time / iterations (set-up included) and
of each fit's median pass, and the median and quartiles of the paired ratios (thread
variables against as given).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from environments import merged_rounds, paired_round, served_environments

GMM = str(Path(__file__).with_name("gmm.py"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--covariance-type", default="diag", choices=("full", "diag"))
    parser.add_argument("--dtype", default="float32", choices=("float64", "float32"))
    parser.add_argument("--passes", default="graph", choices=("graph", "direct"))
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    fit = {
        "fit": "dask_em", "covariance": args.covariance_type, "dtype": args.dtype,
        "passes": args.passes,
    }  # fmt: skip
    with served_environments(GMM, ["--n-samples", str(args.n_samples)]) as servers:
        labels = list(servers)
        for label in labels:
            servers[label].ask({"fit": "start", "covariance": args.covariance_type})
        # each pair a round of one block, so its first environment alternates
        pairs = [paired_round(servers, [("fit", [("fit", fit)])], i) for i in range(args.pairs)]
        fits = {label: answers["fit"] for label, answers in merged_rounds(pairs).items()}
        for label in labels:
            servers[label].ask({"fit": "stop"})
    print(f"{args.covariance_type} {args.dtype} {args.passes}, {args.pairs} pairs")
    for measure in ("per_iteration", "median_pass"):
        plain, exported = ([f[measure] for f in fits[label]] for label in labels)
        ratios = [b / a for a, b in zip(plain, exported, strict=True)]
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(
            f"{measure}: {labels[0]} {statistics.median(plain):.4f} s, {labels[1]} "
            f"{statistics.median(exported):.4f} s; paired ratios median "
            f"{statistics.median(ratios):.3f}x (quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}x)"
        )


if __name__ == "__main__":
    main()

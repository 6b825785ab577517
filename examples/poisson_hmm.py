"""Poisson HMM of event counts per minute: fitted rates of the decoded states.

python examples/poisson_hmm.py                 # 1,000 sequences of 500 steps
python examples/poisson_hmm.py --scale 100
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import cluster_and_store, parse_args, save_figure, sizes

from dask_em import PoissonHMM, Sequences


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rng = np.random.default_rng(args.seed)
    rates = np.array([1.0, 6.0, 18.0])
    transmat = np.array([[0.97, 0.02, 0.01], [0.04, 0.93, 0.03], [0.05, 0.05, 0.90]])
    n_sequences, length = sizes(1_000, args.scale), 500
    states = np.empty((n_sequences, length), dtype=int)
    states[:, 0] = rng.integers(3, size=n_sequences)
    cumulative = np.cumsum(transmat, axis=1)
    for t in range(1, length):
        states[:, t] = (rng.random((n_sequences, 1)) > cumulative[states[:, t - 1]]).sum(axis=1)
    counts = rng.poisson(rates[states]).reshape(-1, 1)

    with cluster_and_store(args) as (_client, folder):
        Sequences(counts, np.full(n_sequences, length)).to_zarr(folder / "counts.zarr")
        model = PoissonHMM(3, random_state=args.seed, verbose=1).fit(str(folder / "counts.zarr"))
        decoded = model.predict(counts[:length])

    print("fitted rates:", np.round(np.sort(model.lambdas_[:, 0]), 3))
    figure, axes = plt.subplots(figsize=(9, 3.5))
    axes.bar(np.arange(length), counts[:length, 0], color="0.75", width=1.0, label="counts")
    axes.step(
        np.arange(length),
        model.lambdas_[decoded, 0],
        where="mid",
        color="C3",
        label="rate of decoded state",
    )
    axes.set_xlabel("minute")
    axes.legend(loc="upper right")
    axes.set_title(f"PoissonHMM on {n_sequences:,} sequences x {length} steps")
    save_figure(figure, args.out / "poisson_hmm.png")


if __name__ == "__main__":
    main()

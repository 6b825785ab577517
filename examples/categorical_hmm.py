"""Categorical HMM, the occasionally dishonest casino: P(loaded die) along a game.

python examples/categorical_hmm.py             # 500 games of 300 rolls
python examples/categorical_hmm.py --scale 100
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import cluster_and_store, parse_args, save_figure, sizes

from dask_em import CategoricalHMM, Sequences


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rng = np.random.default_rng(args.seed)
    transmat = np.array([[0.95, 0.05], [0.10, 0.90]])  # fair <-> loaded
    emission = np.array([[1 / 6] * 6, [0.1] * 5 + [0.5]])  # the loaded die favours a six
    n_games, length = sizes(500, args.scale), 300
    dice = np.empty((n_games, length), dtype=int)
    dice[:, 0] = 0
    cumulative = np.cumsum(transmat, axis=1)
    for t in range(1, length):
        dice[:, t] = (rng.random((n_games, 1)) > cumulative[dice[:, t - 1]]).sum(axis=1)
    rolls = (rng.random((n_games, length, 1)) > np.cumsum(emission[dice], axis=2)).sum(axis=2)

    with cluster_and_store(args) as (_client, folder):
        Sequences(rolls.reshape(-1, 1), np.full(n_games, length)).to_zarr(folder / "rolls.zarr")
        model = CategoricalHMM(
            2, tol=1e-7, max_iter=500, random_state=args.seed, accelerate="squarem", verbose=1
        )
        model.fit(str(folder / "rolls.zarr"))
        posteriors = model.predict_proba(rolls[0].reshape(-1, 1))

    loaded = int(np.argmax(model.emissionprob_[:, 5]))
    print("fitted emission probabilities:\n", np.round(model.emissionprob_, 3))
    figure, axes = plt.subplots(figsize=(9, 3.2))
    axes.fill_between(np.arange(length), dice[0], step="mid", color="0.85", label="loaded (truth)")
    axes.plot(posteriors[:, loaded], color="C3", label="P(loaded | rolls)")
    axes.set_ylim(-0.05, 1.05)
    axes.set_xlabel("roll")
    axes.legend(loc="upper right")
    axes.set_title(f"CategoricalHMM on {n_games:,} games")
    save_figure(figure, args.out / "categorical_hmm.png")


if __name__ == "__main__":
    main()

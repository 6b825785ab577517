"""Poisson mixture of counts: fitted rates over the count histogram.

python examples/poisson_mixture.py               # 500,000 counts, seconds
python examples/poisson_mixture.py --scale 100
"""

import dask.array as da
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import cluster_and_store, parse_args, save_figure, sizes
from scipy.stats import poisson

from dask_em import PoissonMixture


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rng = np.random.default_rng(args.seed)
    rates, weights = np.array([2.0, 9.0, 20.0]), np.array([0.5, 0.3, 0.2])
    n_rows = sizes(500_000, args.scale)
    counts = rng.poisson(rates[rng.choice(3, size=n_rows, p=weights)])[:, None]

    with cluster_and_store(args) as (_client, folder):
        da.from_array(counts.astype(np.int32), chunks=(100_000, 1)).to_zarr(
            str(folder / "counts.zarr")
        )
        model = PoissonMixture(3, random_state=args.seed, verbose=1).fit(
            str(folder / "counts.zarr")
        )

    order = np.argsort(model.rates_[:, 0])
    print(
        "fitted rates:",
        np.round(model.rates_[order, 0], 3),
        "weights:",
        np.round(model.weights_[order], 3),
    )
    grid = np.arange(counts.max() + 1)
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.bar(grid, np.bincount(counts[:, 0]) / n_rows, color="0.8", label="data")
    total = np.zeros(len(grid))
    for k in order:
        part = model.weights_[k] * poisson.pmf(grid, model.rates_[k, 0])
        total += part
        axes.plot(grid, part, lw=1.5, label=f"rate {model.rates_[k, 0]:.2f}")
    axes.plot(grid, total, "k--", lw=1.5, label="mixture")
    axes.set_xlabel("count")
    axes.legend()
    axes.set_title(f"PoissonMixture: {n_rows:,} counts")
    save_figure(figure, args.out / "poisson_mixture.png")


if __name__ == "__main__":
    main()

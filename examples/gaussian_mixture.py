"""Gaussian mixture on 2-D data in a Zarr store: clusters and their fitted ellipses.

python examples/gaussian_mixture.py               # 200,000 rows, seconds
python examples/gaussian_mixture.py --scale 100   # 20 million rows, streamed
"""

import dask.array as da
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import cluster_and_store, parse_args, save_figure, sizes
from matplotlib.patches import Ellipse

from dask_em import GaussianMixture


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rng = np.random.default_rng(args.seed)
    means = np.array([[0.0, 0.0], [5.0, 1.0], [1.5, 5.0], [-4.0, 3.0]])
    covariances = np.array(
        [
            [[1.0, 0.6], [0.6, 1.0]],
            [[0.6, -0.3], [-0.3, 1.2]],
            [[2.0, 0.0], [0.0, 0.4]],
            [[0.5, 0.0], [0.0, 0.5]],
        ]
    )
    weights = np.array([0.4, 0.25, 0.2, 0.15])
    n_rows = sizes(200_000, args.scale)
    labels = rng.choice(4, size=n_rows, p=weights)
    X = means[labels] + np.einsum(
        "nij,nj->ni", np.linalg.cholesky(covariances)[labels], rng.standard_normal((n_rows, 2))
    )

    with cluster_and_store(args) as (_client, folder):
        da.from_array(X, chunks=(50_000, 2)).to_zarr(str(folder / "points.zarr"))
        model = GaussianMixture(4, covariance_type="full", random_state=args.seed, verbose=1)
        model.fit(str(folder / "points.zarr"))
        predicted = model.predict(da.from_zarr(str(folder / "points.zarr")))[:5000].compute()

    print("fitted weights:", np.round(model.weights_, 3))
    figure, axes = plt.subplots(figsize=(6, 5))
    axes.scatter(X[:5000, 0], X[:5000, 1], c=predicted, s=3, cmap="tab10", alpha=0.5)
    for mean, cov in zip(model.means_, model.covariances_, strict=True):
        values, vectors = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
        for n_std in (1, 2):
            width, height = 2 * n_std * np.sqrt(values[::-1])
            axes.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, lw=1.5, color="k"))
    axes.set_title(f"GaussianMixture: {n_rows:,} rows, {model.n_iter_} iterations")
    save_figure(figure, args.out / "gaussian_mixture.png")


if __name__ == "__main__":
    main()

"""Bernoulli mixture of 8x8 binary images: the fitted pixel probabilities of each cluster.

python examples/bernoulli_mixture.py               # 100,000 images, seconds
python examples/bernoulli_mixture.py --scale 100
"""

import dask.array as da
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import cluster_and_store, parse_args, save_figure, sizes

from dask_em import BernoulliMixture


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rng = np.random.default_rng(args.seed)
    shapes = np.zeros((4, 8, 8))
    shapes[0, 1:7, 3:5] = 1  # vertical bar
    shapes[1, 3:5, 1:7] = 1  # horizontal bar
    shapes[2][np.eye(8, dtype=bool)] = 1  # diagonal
    shapes[3, 1:7, 1:7] = 1
    shapes[3, 2:6, 2:6] = 0  # square
    probabilities = 0.05 + 0.85 * shapes.reshape(4, 64)
    n_rows = sizes(100_000, args.scale)
    labels = rng.choice(4, size=n_rows)
    images = (rng.random((n_rows, 64)) < probabilities[labels]).astype(np.uint8)

    with cluster_and_store(args) as (_client, folder):
        da.from_array(images, chunks=(25_000, 64)).to_zarr(str(folder / "images.zarr"))
        model = BernoulliMixture(4, n_init=2, random_state=args.seed, verbose=1)
        model.fit(str(folder / "images.zarr"))

    figure, axes = plt.subplots(1, 4, figsize=(9, 2.6))
    for k in range(4):
        axes[k].imshow(model.probabilities_[k].reshape(8, 8), vmin=0, vmax=1, cmap="gray_r")
        axes[k].set_title(f"weight {model.weights_[k]:.2f}")
        axes[k].axis("off")
    figure.suptitle("BernoulliMixture: fitted pixel probabilities")
    save_figure(figure, args.out / "bernoulli_mixture.png")


if __name__ == "__main__":
    main()

"""Categorical mixture of survey answers: fitted answer probabilities per group.

python examples/categorical_mixture.py             # 200,000 respondents x 8 questions
python examples/categorical_mixture.py --scale 50
"""

import dask.array as da
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import cluster_and_store, parse_args, save_figure, sizes

from dask_em import CategoricalMixture


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rng = np.random.default_rng(args.seed)
    K, D, M = 3, 8, 4
    truth = rng.dirichlet(np.full(M, 0.5), size=(K, D))
    weights = np.array([0.5, 0.3, 0.2])
    n_rows = sizes(200_000, args.scale)
    groups = rng.choice(K, size=n_rows, p=weights)
    cumulative = np.cumsum(truth[groups], axis=2)
    answers = (rng.random((n_rows, D, 1)) > cumulative).sum(axis=2).astype(np.int8)

    with cluster_and_store(args) as (_client, folder):
        da.from_array(answers, chunks=(50_000, D)).to_zarr(str(folder / "answers.zarr"))
        model = CategoricalMixture(K, n_init=3, random_state=args.seed, verbose=1)
        model.fit(str(folder / "answers.zarr"))

    figure, axes = plt.subplots(1, K, figsize=(10, 3.5), sharey=True)
    for k in range(K):
        axes[k].imshow(model.probabilities_[k].T, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        axes[k].set_title(f"group {k}: weight {model.weights_[k]:.2f}")
        axes[k].set_xlabel("question")
    axes[0].set_ylabel("answer")
    figure.suptitle("CategoricalMixture: P(answer | question, group)")
    save_figure(figure, args.out / "categorical_mixture.png")


if __name__ == "__main__":
    main()

"""Accelerated EM: passes, reads and time of plain EM, SQUAREM, DAAREM and Newton.

python examples/accelerated_em.py                # 100,000 rows, under a minute
python examples/accelerated_em.py --scale 10
python examples/accelerated_em.py --max-iter 40   # every fit stopped after 40 iterations

The same Gaussian mixture (three overlapping 2-D components, the same start) is fitted
four ways from a Zarr store streamed every pass (``cache="stream"``), to ``tol=1e-8``
(plain EM stopped after 300 passes: it needs about 1,800 here).  The printed table
shows each fit's passes over the store, bytes read, wall time and objective, and the
plot how far each fit's objective is from the best one reached, pass by pass.  Which
is fastest depends on what a pass costs: on a small store a pass is mostly the
scheduler's round trip and Newton's few passes win; on a large store on a local disk
its many E-steps a pass cost more than the reads they save, and DAAREM wins (README,
Benchmarks: Passes).
"""

import time
import warnings

import dask.array as da
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import argument_parser, cluster_and_store, parsed, save_figure, sizes

from dask_em import GaussianMixture

METHODS = (None, "squarem", "daarem", "newton")


def main() -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--max-iter",
        type=int,
        default=None,
        help="stop every fit after this many iterations (default: plain EM 300, the others 5000)",
    )
    args = parsed(parser)
    rng = np.random.default_rng(args.seed)
    means = np.array([[0.0, 0.0], [1.5, 0.5], [0.5, 2.0]])
    n_rows = sizes(100_000, args.scale)
    labels = rng.choice(3, size=n_rows, p=[0.5, 0.3, 0.2])
    X = means[labels] + rng.standard_normal((n_rows, 2)) @ np.array([[1.0, 0.3], [0.0, 0.8]])
    start = dict(
        weights_init=np.full(3, 1 / 3),
        means_init=means + np.array([[0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]),
        precisions_init=np.stack([np.eye(2)] * 3),
    )

    fits = {}
    with cluster_and_store(args) as (_client, folder):
        store = str(folder / "rows.zarr")
        da.from_array(X, chunks=(max(1, n_rows // 8), 2)).to_zarr(store)
        for method in METHODS:
            max_iter = args.max_iter or (300 if method is None else 5000)
            model = GaussianMixture(
                3, **start, tol=1e-8, max_iter=max_iter, cache="stream", accelerate=method
            )
            started = time.perf_counter()
            # plain EM stops before it converges, and so may any fit under --max-iter
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(store)
            fits[method] = (model, time.perf_counter() - started)

    best = max(model.lower_bound_ for model, _ in fits.values())
    print(f"{'method':<8} {'passes':>6} {'read':>9} {'seconds':>8} {'lower bound':>16} converged")
    for method, (model, seconds) in fits.items():
        print(
            f"{method or 'plain':<8} {model.n_passes_:>6d} {model.bytes_read_ / 1e6:>7.0f} MB "
            f"{seconds:>8.1f} {model.lower_bound_:>16.10f} {model.converged_}"
        )
    figure, axes = plt.subplots(figsize=(7, 4))
    for method, (model, _) in fits.items():
        passes = [h["passes"] for h in model.history_]
        gap = [max(best - h["objective"], 1e-16) for h in model.history_]
        axes.semilogy(passes, gap, lw=1.5, label=f"{method or 'plain EM'} ({model.n_passes_})")
    axes.set_xscale("log")
    axes.set_xlabel("passes over the store")
    axes.set_ylabel("best objective − objective (mean per row)")
    axes.legend(title="accelerate (passes)")
    axes.set_title(f"GaussianMixture(3) to tol=1e-8, {n_rows:,} rows streamed from Zarr")
    save_figure(figure, args.out / "accelerated_em.png")


if __name__ == "__main__":
    main()

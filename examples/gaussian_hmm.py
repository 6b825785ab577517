"""Gaussian HMM over many sensor traces in Zarr: decoded states over one sequence.

python examples/gaussian_hmm.py                # 2,000 sequences, seconds
python examples/gaussian_hmm.py --scale 100    # 200,000 sequences
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import cluster_and_store, parse_args, save_figure, sizes

from dask_em import GaussianHMM, Sequences


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rng = np.random.default_rng(args.seed)
    transmat = np.array([[0.95, 0.04, 0.01], [0.03, 0.94, 0.03], [0.02, 0.03, 0.95]])
    means = np.array([[0.0, 1.0], [3.0, -1.0], [-2.0, -2.0]])
    scales = np.array([[0.7, 0.5], [0.8, 0.8], [0.5, 1.0]])

    lengths = rng.integers(50, 300, size=sizes(2_000, args.scale))
    longest = int(lengths.max())
    states = np.empty((len(lengths), longest), dtype=int)
    states[:, 0] = rng.integers(3, size=len(lengths))
    cumulative = np.cumsum(transmat, axis=1)
    for t in range(1, longest):  # all sequences in lockstep
        states[:, t] = (rng.random((len(lengths), 1)) > cumulative[states[:, t - 1]]).sum(axis=1)
    traces = []
    for s, n in zip(states, lengths, strict=True):
        noise = rng.standard_normal((n, 2))
        traces.append((means[s[:n]] + scales[s[:n]] * noise, s[:n]))
    with cluster_and_store(args) as (_client, folder):
        Sequences.from_arrays([v for v, _ in traces]).to_zarr(folder / "traces.zarr")
        model = GaussianHMM(3, covariance_type="diag", random_state=args.seed, verbose=1)
        model.fit(str(folder / "traces.zarr"))
        values, true_states = traces[0]
        decoded = model.predict(values)

    print("fitted transition matrix:\n", np.round(model.transmat_, 3))
    # name fitted states after the true ones (nearest means) for the plot
    mapping = np.array([np.argmin(np.abs(means - m).sum(axis=1)) for m in model.means_])
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4.5), sharex=True)
    top.plot(values[:, 0], lw=0.8, label="feature 0")
    top.plot(values[:, 1], lw=0.8, label="feature 1")
    top.legend(loc="upper right")
    bottom.step(np.arange(len(values)), true_states, where="mid", lw=2, alpha=0.5, label="true")
    bottom.step(
        np.arange(len(values)), mapping[decoded], where="mid", lw=1, color="k", label="Viterbi"
    )
    bottom.set_yticks(range(3))
    bottom.set_ylabel("state")
    bottom.legend(loc="upper right")
    top.set_title(f"GaussianHMM on {len(traces):,} sequences: decoded states of sequence 0")
    save_figure(figure, args.out / "gaussian_hmm.png")


if __name__ == "__main__":
    main()

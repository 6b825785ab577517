"""Pictures of a hidden Markov model: its transition matrix, how much time the data
spends in each state, and a decoded stretch of one sequence."""

from __future__ import annotations

import numpy as np

from dask_em.report.png import ReportFigure, heatmap, new_figure, to_png

#: Steps of the decoded stretch at most.
STRETCH_STEPS = 400


def transition_figure(transmat: np.ndarray, startprob: np.ndarray) -> ReportFigure:
    """The transition matrix (K, K) as a heatmap, the start probabilities beside it."""
    K = transmat.shape[0]
    figure = new_figure(min(12, 5 + 0.5 * K), min(10, 2 + 0.45 * K))
    left, right = figure.subplots(1, 2, width_ratios=[K, 1.5])
    heatmap(
        left,
        transmat,
        row_label="from state",
        column_label="to state",
        colorbar_label="P(to | from)",
        vmin=0.0,
        vmax=1.0,
    )
    left.set_title("Transition matrix")
    heatmap(
        right,
        np.asarray(startprob)[:, None],
        row_label="state",
        column_label="",
        colorbar_label="P(first state)",
        column_ticks=["start"],
        vmin=0.0,
        vmax=1.0,
    )
    right.set_title("Start")
    caption = (
        f"probability of moving from each of the {K} states (rows) to each state "
        "(columns) in one step; the start probabilities on the right"
    )
    return ReportFigure("Transition matrix", caption, to_png(figure))


def occupancy_figure(
    posteriors: np.ndarray, states: np.ndarray, stationary: np.ndarray | None
) -> ReportFigure:
    """Share of the sample's steps in each state: posterior mean (from
    ``posteriors`` (T, K)) and Viterbi path (``states`` (T,)), with the transition
    matrix's stationary distribution when it has one."""
    K = posteriors.shape[1]
    occupancy = posteriors.mean(axis=0)
    decoded = np.bincount(states, minlength=K) / max(len(states), 1)
    figure = new_figure(6, 3.2)
    axes = figure.subplots()
    positions = np.arange(K)
    width = 0.28 if stationary is not None else 0.4
    axes.bar(positions - width, occupancy, width, label="posterior mean")
    axes.bar(positions, decoded, width, label="Viterbi path")
    if stationary is not None:
        axes.bar(positions + width, stationary, width, label="stationary")
    axes.set_xlabel("state")
    axes.set_ylabel("share of steps")
    if K <= 30:
        axes.set_xticks(positions)
    axes.set_title("State occupancy")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3, axis="y")
    caption = (
        f"share of the {len(states):,} sampled steps spent in each state: the mean of "
        "the state posteriors, and the most likely path (Viterbi)"
        + (
            "; the stationary distribution of the transition matrix"
            if stationary is not None
            else ""
        )
    )
    return ReportFigure("State occupancy", caption, to_png(figure))


def stationary_distribution(transmat: np.ndarray) -> np.ndarray | None:
    """The left eigenvector of ``transmat`` for eigenvalue 1, normalized; None when
    it is not unique (a reducible chain) or not a distribution."""
    values, vectors = np.linalg.eig(np.asarray(transmat, dtype=np.float64).T)
    ones = np.flatnonzero(np.isclose(values, 1.0, atol=1e-8))
    if ones.size != 1:
        return None
    vector = np.real(vectors[:, ones[0]])
    vector = vector / vector.sum()
    return vector if np.all(vector >= -1e-12) else None


def decoded_stretch_figure(values: np.ndarray, states: np.ndarray, K: int) -> ReportFigure:
    """The first steps of one sequence (its first features as lines) above the most
    likely state of each step (Viterbi)."""
    T = min(len(states), STRETCH_STEPS)
    values, states = values[:T], states[:T]
    shown = min(values.shape[1], 4)
    figure = new_figure(9, 4.5)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    steps = np.arange(T)
    for d in range(shown):
        top.plot(steps, values[:, d], lw=0.8, label=f"feature {d}")
    top.set_ylabel("value")
    top.set_title("A decoded stretch of the first sequence")
    top.legend(fontsize=8, loc="upper right")
    for k in range(K):  # shade the steps of each state in both panels
        where = states == k
        if where.any():
            top.fill_between(
                steps,
                0,
                1,
                where=where,
                step="mid",
                color=f"C{k % 10}",
                alpha=0.12,
                transform=top.get_xaxis_transform(),
                linewidth=0,
            )
    bottom.step(steps, states, where="mid", color="black", lw=1)
    bottom.set_ylabel("state")
    if K <= 10:
        bottom.set_yticks(range(K))
    bottom.set_xlabel("step")
    caption = (
        f"the first {T} steps of the first sequence of the sample"
        + (f" (features 0-{shown - 1} of {values.shape[1]})" if values.shape[1] > shown else "")
        + ", shaded by the state of the most likely path (Viterbi), shown below"
    )
    return ReportFigure("Decoded stretch", caption, to_png(figure))

"""The convergence figure: objective per pass, its change, seconds and MB read."""

from __future__ import annotations

import math

from dask_em.report.png import ReportFigure, new_figure, to_png


def convergence_figure(history: list[dict], title: str) -> ReportFigure:
    """Objective per EM iteration (one pass over the data each), the size of its change
    (log scale), and the seconds and MB of data each iteration took, from ``history_``."""
    from matplotlib.ticker import MaxNLocator

    iterations = [h["iteration"] for h in history]
    objective = [h["objective"] for h in history]
    changes = [(h["iteration"], abs(h["change"])) for h in history]
    changes = [(i, c) for i, c in changes if math.isfinite(c) and c > 0]
    figure = new_figure(7, 7)
    top, middle, bottom = figure.subplots(3, 1, sharex=True)
    top.plot(iterations, objective, marker="o", markersize=3)
    top.set_ylabel("objective (mean per row)")
    top.set_title(title)
    top.grid(alpha=0.3)
    if changes:
        middle.semilogy(*zip(*changes, strict=True), marker="o", markersize=3, color="C1")
    middle.set_ylabel("|change|")
    middle.grid(alpha=0.3, which="both")
    bottom.bar(iterations, [h["seconds"] for h in history], color="C2", alpha=0.7)
    bottom.set_ylabel("seconds", color="C2")
    read = bottom.twinx()
    read.plot(
        iterations,
        [h.get("bytes_read", 0) / 1e6 for h in history],
        marker="s",
        markersize=3,
        color="C3",
    )
    read.set_ylabel("MB read", color="C3")
    read.set_ylim(bottom=0)
    bottom.set_xlabel("iteration (one pass over the data each)")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.grid(alpha=0.3)
    caption = (
        f"{len(history)} iterations: the objective (mean log-likelihood, with the log "
        "prior), the size of its change per iteration, and per iteration the seconds it "
        "took and the MB of data its pass read"
    )
    return ReportFigure("Convergence", caption, to_png(figure))

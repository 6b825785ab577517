"""Heatmaps of count and symbol parameters: Poisson rates, Bernoulli and categorical
probabilities (of mixture components or of HMM states)."""

from __future__ import annotations

import numpy as np

from dask_em.report.png import ReportFigure, heatmap, new_figure, to_png


def rates_figure(rates: np.ndarray, unit: str = "component") -> ReportFigure:
    """Poisson rates (K, D) as a heatmap: one row per component (state)."""
    K, D = rates.shape
    figure = new_figure(min(12, 3 + 0.5 * D), min(10, 1.5 + 0.4 * K))
    axes = figure.subplots()
    heatmap(axes, rates, row_label=unit, column_label="feature", colorbar_label="rate")
    axes.set_title(f"Poisson rates per {unit}")
    caption = f"mean count of each of the {D} features in each {unit}"
    return ReportFigure(f"Poisson rates per {unit}", caption, to_png(figure))


def bernoulli_figure(probabilities: np.ndarray) -> ReportFigure:
    """Bernoulli probabilities (K, D) as a heatmap on [0, 1]."""
    K, D = probabilities.shape
    figure = new_figure(min(12, 3 + 0.5 * D), min(10, 1.5 + 0.4 * K))
    axes = figure.subplots()
    heatmap(
        axes,
        probabilities,
        row_label="component",
        column_label="feature",
        colorbar_label="P(feature = 1)",
        vmin=0.0,
        vmax=1.0,
    )
    axes.set_title("Bernoulli probabilities per component")
    caption = f"probability that each of the {D} features is 1, in each component"
    return ReportFigure("Bernoulli probabilities per component", caption, to_png(figure))


def categorical_figure(probabilities: np.ndarray, unit: str = "component") -> ReportFigure:
    """Categorical probabilities (K, D, M) as one heatmap: a row per component
    (state), a column per (feature, symbol) pair."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 2:
        probabilities = probabilities[:, None, :]
    K, D, M = probabilities.shape
    flat = probabilities.reshape(K, D * M)
    ticks = [f"{d}:{m}" if D > 1 else str(m) for d in range(D) for m in range(M)]
    figure = new_figure(min(14, 3 + 0.35 * D * M), min(10, 1.5 + 0.4 * K))
    axes = figure.subplots()
    heatmap(
        axes,
        flat,
        row_label=unit,
        column_label="feature:symbol" if D > 1 else "symbol",
        colorbar_label="probability",
        column_ticks=ticks,
        vmin=0.0,
        vmax=1.0,
    )
    for boundary in range(1, D):
        axes.axvline(boundary * M - 0.5, color="white", lw=2)
    axes.set_title(f"Symbol probabilities per {unit}")
    caption = (
        f"probability of each of the {M} symbols"
        + (f" of each of the {D} features" if D > 1 else "")
        + f" in each {unit} (each feature's row sums to 1)"
    )
    return ReportFigure(f"Symbol probabilities per {unit}", caption, to_png(figure))

"""Gaussian components drawn over the data: weights, and 2-D projections of a data
sample with each component's 1- and 2-sigma ellipses.

The projection is onto the first two principal axes of the sample (centred, by SVD),
or onto two features the caller names.  A component's mean and covariance are
projected with the same axes, so the ellipses are the exact marginals of the
components in that plane.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_em.report.png import ReportFigure, new_figure, to_png


def full_covariances(covariances: np.ndarray, covariance_type: str, shape: tuple[int, int]):
    """Covariances in a covariance type's shape -> (K, D, D) matrices; ``shape`` (K, D)."""
    K, D = shape
    covariances = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "full" or covariances.shape == (K, D, D):
        return covariances
    if covariance_type == "tied":
        return np.broadcast_to(covariances, (K, D, D))
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in covariances])
    if covariance_type == "spherical":
        return np.stack([v * np.eye(D) for v in covariances])
    raise ValueError(f"unknown covariance_type {covariance_type!r}")


def projection_axes(
    sample: np.ndarray, features: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(centre (D,), axes (D, 2), axis labels)``: two named features, or the first
    two principal axes of the complete rows of ``sample``."""
    D = sample.shape[1]
    if features is not None:
        i, j = features
        if not (0 <= i < D and 0 <= j < D and i != j):
            raise ValueError(f"features must be two different indices below {D}, got {features}")
        axes = np.zeros((D, 2))
        axes[i, 0] = axes[j, 1] = 1.0
        return np.zeros(D), axes, [f"feature {i}", f"feature {j}"]
    centre = sample.mean(axis=0)
    _, singular, vt = np.linalg.svd(sample - centre, full_matrices=False)
    explained = singular**2 / max(float((singular**2).sum()), np.finfo(float).tiny)
    labels = [f"principal axis {n + 1} ({100 * explained[n]:.0f}% of variance)" for n in (0, 1)]
    return centre, vt[:2].T, labels


def _ellipse(axes: Any, mean: np.ndarray, covariance: np.ndarray, colour: str) -> None:
    from matplotlib.patches import Ellipse

    variances, vectors = np.linalg.eigh(covariance)
    variances = np.maximum(variances, 0.0)
    angle = float(np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1])))
    for n_sigma, style in ((1, "-"), (2, "--")):
        width, height = 2 * n_sigma * np.sqrt(variances[::-1])
        axes.add_patch(
            Ellipse(mean, width, height, angle=angle, fill=False, lw=1.5, ls=style, color=colour)
        )


def projection_figure(
    sample: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    labels: np.ndarray | None,
    features: tuple[int, int] | None = None,
    title: str = "Components over a data sample",
) -> ReportFigure:
    """The complete rows of ``sample`` projected to 2-D, coloured by ``labels`` (the
    model's most likely component, or None), and the components' ellipses.

    ``means`` (K, D) and ``covariances`` (K, D, D); with one feature, a histogram of the
    sample and the components' weighted densities instead.
    """
    complete = ~np.isnan(sample).any(axis=1)
    sample = sample[complete]
    labels = None if labels is None else np.asarray(labels)[complete]
    K, D = means.shape
    figure = new_figure(7, 6)
    axes = figure.subplots()
    if D == 1:
        axes.hist(sample[:, 0], bins=60, density=True, color="0.7")
        grid = np.linspace(sample[:, 0].min(), sample[:, 0].max(), 400)
        for k in range(K):
            sd = np.sqrt(covariances[k, 0, 0])
            density = np.exp(-0.5 * ((grid - means[k, 0]) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
            axes.plot(grid, density, color=f"C{k % 10}", label=f"component {k}")
        axes.set_xlabel("feature 0")
        axes.set_ylabel("density")
        axes.legend(fontsize=8)
        caption = f"{len(sample):,} rows of the data, one feature: histogram and components"
        return ReportFigure(title, caption, to_png(figure))
    centre, directions, axis_labels = projection_axes(sample, features)
    points = (sample - centre) @ directions
    colours = "0.5" if labels is None else [f"C{int(k) % 10}" for k in labels]
    axes.scatter(points[:, 0], points[:, 1], s=4, c=colours, alpha=0.5, linewidths=0)
    for k in range(K):
        mean = (means[k] - centre) @ directions
        covariance = directions.T @ covariances[k] @ directions
        colour = f"C{k % 10}"
        _ellipse(axes, mean, covariance, colour)
        axes.plot(*mean, marker="x", color="black", markersize=8)
        axes.annotate(str(k), mean, xytext=(4, 4), textcoords="offset points", fontsize=9)
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    axes.set_title(title)
    axes.autoscale_view()
    plane = "two named features" if features is not None else "first two principal axes"
    caption = (
        f"{len(sample):,} rows from the start of the data, projected on the {plane}, "
        "coloured by most likely component; each component's mean (x) and its 1- and "
        "2-sigma ellipses (solid, dashed) in that plane"
    )
    return ReportFigure(title, caption, to_png(figure))


def weights_figure(weights: np.ndarray, title: str = "Mixture weights") -> ReportFigure:
    """The components' weights as bars."""
    figure = new_figure(6, 3)
    axes = figure.subplots()
    K = len(weights)
    axes.bar(range(K), weights, color=[f"C{k % 10}" for k in range(K)])
    axes.set_xlabel("component")
    axes.set_ylabel("weight")
    if K <= 30:
        axes.set_xticks(range(K))
    axes.set_title(title)
    axes.grid(alpha=0.3, axis="y")
    caption = f"weights of the {K} components (they sum to 1)"
    return ReportFigure(title, caption, to_png(figure))

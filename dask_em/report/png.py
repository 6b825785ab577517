"""Figures as PNG bytes, and the pieces every figure of a report shares.

matplotlib is optional (the ``plot`` extra); :func:`have_matplotlib` says whether it
can be used.  No pyplot: figures are made with :class:`matplotlib.figure.Figure`, so no
global backend state is touched.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ReportFigure:
    """One picture of a report: a title, a caption (what it shows) and the PNG bytes."""

    title: str
    caption: str
    png: bytes


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (the ``plot`` extra is installed)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure of ``width`` x ``height`` inches, constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_png(figure: Any, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def heatmap(
    axes: Any,
    values: np.ndarray,
    *,
    row_label: str,
    column_label: str,
    colorbar_label: str,
    column_ticks: list[str] | None = None,
    annotate: bool | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    """``values`` (rows, columns) as an image with a colour bar; small matrices get
    their numbers written in the cells (``annotate`` None: when at most 12 x 12)."""
    values = np.asarray(values, dtype=np.float64)
    image = axes.imshow(values, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    axes.figure.colorbar(image, ax=axes, label=colorbar_label)
    rows, columns = values.shape
    axes.set_ylabel(row_label)
    axes.set_xlabel(column_label)
    if rows <= 20:
        axes.set_yticks(range(rows))
    if column_ticks is not None and columns <= 40:
        axes.set_xticks(range(columns), column_ticks, rotation=90 if columns > 12 else 0)
    elif columns <= 20:
        axes.set_xticks(range(columns))
    if annotate is None:
        annotate = rows <= 12 and columns <= 12
    if annotate:
        middle = (np.nanmin(values) + np.nanmax(values)) / 2
        for (i, j), value in np.ndenumerate(values):
            colour = "black" if value > middle else "white"
            axes.text(
                j,
                i,
                f"{value:.2f}" if abs(value) < 100 else f"{value:.3g}",
                ha="center",
                va="center",
                fontsize=7,
                color=colour,
            )

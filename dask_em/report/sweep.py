"""A model-size sweep's outputs: its table, its models, the criterion-vs-K plot and a
report page embedding them (:class:`dask_em.sweep.ModelSweep`).

``write_sweep(search, directory)`` fills ``directory`` with::

    results.csv          one row per candidate (dask_em.sweep.ModelSweep.results_)
    models/<name>.zarr   every fitted candidate (a model file each, dask-em info reads it)
    bic.png              BIC (or AIC) against the number of components, one line per
                         covariance type (or other grid parameter), mclust-style
    report.html          the plot, the table and the best model, self-contained
"""

from __future__ import annotations

import html
import os
from typing import Any

import numpy as np

from dask_em.report.page import STYLE, figure_html
from dask_em.report.png import ReportFigure, have_matplotlib, new_figure, to_png

RESULTS_FILE, MODELS_DIR, REPORT_FILE = "results.csv", "models", "report.html"


def candidate_name(point: dict[str, Any]) -> str:
    """A file name for a grid point: ``n_components-4_covariance_type-full``."""
    parts = [f"{name}-{value}" for name, value in point.items()]
    return "_".join(parts).replace(os.sep, "-").replace(" ", "")


def criterion_figure(search: Any) -> ReportFigure:
    """The criterion against ``n_components``, one line per value of the other grid
    parameters, the chosen candidate circled (lower is better)."""
    table, criterion = search.results_, search.criterion
    others = [name for name in search.best_params_ if name != "n_components"]
    figure = new_figure(7, 4.5)
    axes = figure.subplots()
    groups = table.groupby(others, sort=False) if others else [((), table)]
    for key, rows in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(str(value) for value in key) or criterion.upper()
        axes.plot(rows["n_components"], rows[criterion], marker="o", markersize=4, label=label)
    best = table.iloc[search.best_index_]
    axes.plot(
        [best["n_components"]], [best[criterion]], "o", markersize=14, fillstyle="none", color="k"
    )
    axes.set_xlabel("number of components K")
    axes.set_ylabel(f"{criterion.upper()} (lower is better)")
    axes.set_xticks(np.unique(table["n_components"]))
    axes.grid(alpha=0.3)
    if others:
        axes.legend(title=", ".join(others))
    chosen = ", ".join(f"{k}={v}" for k, v in search.best_params_.items())
    caption = (
        f"{criterion.upper()} of every candidate at its fitted parameters (circled: the "
        f"lowest, {chosen}); {len(table)} candidates fitted together in "
        f"{search.n_passes_} passes over the data"
    )
    return ReportFigure(f"{criterion.upper()} against K", caption, to_png(figure))


def write_sweep(search: Any, directory: str, details: dict[str, Any]) -> list[str]:
    """Write the sweep's table, models, plot and report into ``directory`` (which must
    not exist); returns notices for the user (e.g. no matplotlib)."""
    os.makedirs(os.path.join(directory, MODELS_DIR))
    search.results_.to_csv(os.path.join(directory, RESULTS_FILE), index=False)
    names = []
    for point, model in zip(search.grid_points_, search.estimators_, strict=True):
        names.append(candidate_name(point))
        model.save(os.path.join(directory, MODELS_DIR, names[-1] + ".zarr"))
    notices, figures = [], []
    if have_matplotlib():
        figure = criterion_figure(search)
        figures.append(figure)
        with open(os.path.join(directory, f"{search.criterion}.png"), "wb") as file:
            file.write(figure.png)
    else:
        notices.append("matplotlib is not installed: no plot (pip install 'dask_em[plot]')")
    page = sweep_page(search, names, details, figures, notices)
    with open(os.path.join(directory, REPORT_FILE), "w", encoding="utf-8") as file:
        file.write(page)
    return notices


def sweep_page(
    search: Any,
    names: list[str],
    details: dict[str, Any],
    figures: list[ReportFigure],
    notices: list[str],
) -> str:
    """The report page: summary, the plot, one table row per candidate (the best in
    bold) with a link to its model file."""
    best = names[search.best_index_]
    summary = {
        **details,
        "candidates": len(names),
        "criterion": search.criterion.upper(),
        "best": ", ".join(f"{k}={v}" for k, v in search.best_params_.items()),
        "passes over the data": search.n_passes_,
        "MB read": f"{search.bytes_read_ / 1e6:,.1f}",
        "data held in": search.data_placement_,
    }
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in search.results_.columns)
    rows = []
    for i, (name, row) in enumerate(
        zip(names, search.results_.itertuples(index=False), strict=True)
    ):
        cells = "".join(f"<td>{html.escape(_cell(value))}</td>" for value in row)
        link = f'<td><a href="{MODELS_DIR}/{html.escape(name)}.zarr">{html.escape(name)}</a></td>'
        style = ' style="font-weight:bold"' if i == search.best_index_ else ""
        rows.append(f"<tr{style}>{cells}{link}</tr>")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>dask_em sweep: {html.escape(best)}</title><style>{STYLE}</style></head><body>",
        f"<h1>dask_em: sweep of {html.escape(type(search.estimator).__name__)}</h1>",
        "<table>"
        + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in summary.items()
        )
        + "</table>",
        *(f'<p class="notice">{html.escape(n)}</p>' for n in notices),
        *(figure_html(figure) for figure in figures),
        "<h2>Candidates</h2>",
        f"<table><tr>{head}<th>model</th></tr>{''.join(rows)}</table>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)

"""A fit's report: one self-contained HTML page next to its model, and the
convergence plot as a PNG beside it.

For a model saved at ``run/model.zarr`` these are ``run/model.report.html`` and
``run/model.convergence.png``.  The page embeds its pictures (PNG ``data:`` URIs, no
links): convergence (objective, change, seconds and MB read per iteration, from
``history_``) and the fitted model (:mod:`dask_em.report.model_figures`), drawn over a
bounded sample of the data (:func:`data_sample`) when one is given.  The pictures need
matplotlib (the ``plot`` extra: ``pip install "dask_em[plot]"``); without it the page
is written without them and says so.  Both files are written beside their path and
renamed into place.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from dask_em.report.convergence import convergence_figure
from dask_em.report.model_figures import fitted_arrays, model_figures
from dask_em.report.page import html_page
from dask_em.report.png import have_matplotlib
from dask_em.report.sample import MAX_SAMPLE_ROWS, ReportSample, data_sample

NO_MATPLOTLIB = (
    "matplotlib is not installed: the report has no pictures (pip install 'dask_em[plot]')"
)


def report_paths(model_path: str | os.PathLike) -> tuple[str, str]:
    """``(png, html)`` paths next to the model file at ``model_path``."""
    base = os.fspath(model_path).rstrip("/")
    if base.endswith(".zarr"):
        base = base[: -len(".zarr")]
    return f"{base}.convergence.png", f"{base}.report.html"


def _replace_file(path: str, content: bytes) -> None:
    staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(staging, "wb") as file:
            file.write(content)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def write_report(
    model: Any,
    model_path: str | os.PathLike,
    details: dict | None = None,
    *,
    sample: ReportSample | None = None,
    features: tuple[int, int] | None = None,
) -> list[str]:
    """Write the HTML report (and the convergence PNG) next to ``model_path``.

    ``details``: more rows for the summary table; ``sample``: the data the pictures
    of the model are drawn over (:func:`data_sample`); ``features``: two feature
    indices for the Gaussian projections instead of the principal axes.  Returns
    notices (matplotlib missing, no sample).
    """
    png_path, html_path = report_paths(model_path)
    history = model.history_
    notices = []
    convergence, pictures = [], []
    if have_matplotlib():
        convergence = [convergence_figure(history, f"{type(model).__name__} convergence")]
        pictures = model_figures(model, sample, features)
        _replace_file(png_path, convergence[0].png)
    else:
        notices.append(NO_MATPLOTLIB)
    if sample is None:
        notices.append("no data sample was given: the report draws the parameters only")
    summary = [
        ("model", type(model).__name__),
        ("model file", os.fspath(model_path)),
        ("converged", f"{model.converged_} after {model.n_iter_} iterations"),
        ("final objective (mean per row)", f"{model.lower_bound_:.12g}"),
        (
            "passes over the data in EM iterations",
            str(history[-1].get("passes", len(history)) if history else 0),
        ),
        (
            "passes over the data in all (scan and init included)",
            f"{getattr(model, 'n_passes_', '?')}, "
            f"{getattr(model, 'bytes_read_', 0) / 1e6:,.1f} MB read",
        ),
        ("seconds in EM iterations", f"{sum(h['seconds'] for h in history):.2f}"),
        (
            "data read by EM iterations",
            f"{sum(h.get('bytes_read', 0) for h in history) / 1e6:,.1f} MB",
        ),
    ]
    if sample is not None:
        what = "rows" if sample.lengths is None else f"steps in {len(sample.lengths)} sequences"
        summary.append(
            ("data sample", f"the first {len(sample.values):,} {what} of {sample.source_rows:,}")
        )
    summary.extend((details or {}).items())
    page = html_page(model, summary, convergence, pictures, fitted_arrays(model), notices)
    _replace_file(html_path, page.encode("utf-8"))
    return [notice for notice in notices if notice == NO_MATPLOTLIB]


__all__ = ["MAX_SAMPLE_ROWS", "ReportSample", "data_sample", "report_paths", "write_report"]

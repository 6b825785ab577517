"""A fit's convergence plot (PNG) and a short HTML report, written next to its model.

For a model saved at ``run/model.zarr`` these are ``run/model.convergence.png`` and
``run/model.report.html``.  The plot needs matplotlib (the ``plot`` extra:
``pip install "dask_em[plot]"``); without it the report is written without the plot.
Both files are written beside their path and renamed into place.
"""

from __future__ import annotations

import html
import json
import math
import os
import uuid
from typing import Any


def report_paths(model_path: str | os.PathLike) -> tuple[str, str]:
    """``(png, html)`` paths next to the model file at ``model_path``."""
    base = os.fspath(model_path).rstrip("/")
    if base.endswith(".zarr"):
        base = base[: -len(".zarr")]
    return f"{base}.convergence.png", f"{base}.report.html"


def _replace_file(path: str, write) -> None:
    staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(staging)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def convergence_plot(history: list[dict], path: str, title: str) -> None:
    """Objective per iteration, and the size of its change (log scale), as a PNG.

    Raises ImportError without matplotlib.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state is touched
    from matplotlib.ticker import MaxNLocator

    iterations = [h["iteration"] for h in history]
    objective = [h["objective"] for h in history]
    changes = [(h["iteration"], abs(h["change"])) for h in history]
    changes = [(i, c) for i, c in changes if math.isfinite(c) and c > 0]
    figure = Figure(figsize=(7, 5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(iterations, objective, marker="o", markersize=3)
    top.set_ylabel("objective (mean per row)")
    top.set_title(title)
    top.grid(alpha=0.3)
    if changes:
        bottom.semilogy(*zip(*changes, strict=True), marker="o", markersize=3, color="C1")
    bottom.set_ylabel("|change|")
    bottom.set_xlabel("iteration")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.grid(alpha=0.3, which="both")

    def write(staging: str) -> None:
        figure.savefig(staging, format="png", dpi=100)

    _replace_file(path, write)


def html_report(model: Any, model_path: str, png_path: str | None, details: dict) -> str:
    """The report's HTML: the model, its fit, the plot (if any) and the iterations."""
    history = model.history_
    params = json.dumps(model.get_params(), default=lambda value: repr(value), indent=1)
    rows = [
        ("model", type(model).__name__),
        ("model file", model_path),
        ("converged", f"{model.converged_} after {model.n_iter_} iterations"),
        ("final objective (mean per row)", f"{model.lower_bound_:.12g}"),
        ("seconds in EM iterations", f"{sum(h['seconds'] for h in history):.2f}"),
        (
            "data read by EM iterations",
            f"{sum(h.get('bytes_read', 0) for h in history) / 1e6:,.1f} MB",
        ),
        (
            "passes over the data (scan and init included)",
            f"{getattr(model, 'n_passes_', '?')}, "
            f"{getattr(model, 'bytes_read_', 0) / 1e6:,.1f} MB read",
        ),
        *details.items(),
    ]
    summary = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    iterations = "\n".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(text)}</td>"
            for text in (
                str(h["iteration"]),
                f"{h['objective']:.12g}",
                f"{h['change']:.3g}",
                f"{h['seconds']:.3f}",
                f"{h.get('bytes_read', 0) / 1e6:,.1f}",
                str(h.get("passes", h["iteration"])),
                ", ".join(map(str, h.get("reseeded", []))),
            )
        )
        + "</tr>"
        for h in history
    )
    plot = (
        f'<p><img src="{html.escape(os.path.basename(png_path))}" alt="convergence plot"></p>'
        if png_path
        else "<p>(no convergence plot: matplotlib is not installed)</p>"
    )
    title = html.escape(f"dask_em: {type(model).__name__} fit")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}
td{{font-variant-numeric:tabular-nums}}</style></head>
<body><h1>{title}</h1>
<table>{summary}</table>
{plot}
<h2>Parameters</h2><pre>{html.escape(params)}</pre>
<h2>Iterations</h2>
<table><tr><th>iteration</th><th>objective</th><th>change</th><th>seconds</th><th>MB read</th>
<th>passes</th><th>re-seeded</th></tr>
{iterations}
</table></body></html>
"""


def write_report(model: Any, model_path: str, details: dict | None = None) -> list[str]:
    """Write the plot and the HTML report next to ``model_path``; returns notices.

    The notice says the plot was skipped when matplotlib is missing.
    """
    png_path, html_path = report_paths(model_path)
    notices = []
    try:
        convergence_plot(model.history_, png_path, f"{type(model).__name__} convergence")
    except ImportError:
        png_path = None
        notices.append(
            "matplotlib is not installed: no convergence plot (pip install 'dask_em[plot]')"
        )
    text = html_report(model, model_path, png_path, details or {})

    def write(staging: str) -> None:
        with open(staging, "w", encoding="utf-8") as file:
            file.write(text)

    _replace_file(html_path, write)
    return notices

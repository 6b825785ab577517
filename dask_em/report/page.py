"""The report's HTML: one self-contained page, its pictures embedded as PNG ``data:``
URIs (no side files to keep with it)."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import numpy as np

from dask_em.report.png import ReportFigure

STYLE = """body{font-family:sans-serif;max-width:64em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
td{font-variant-numeric:tabular-nums}figure{margin:1.5em 0}img{max-width:100%}
figcaption{color:#444;font-size:90%}.notice{background:#fff3cd;padding:.5em 1em}
pre{background:#f6f6f6;padding:.5em;overflow-x:auto}"""


def data_uri(png: bytes) -> str:
    """``png`` as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_html(figure: ReportFigure) -> str:
    """One embedded picture with its caption."""
    return (
        f'<figure><img src="{data_uri(figure.png)}" alt="{html.escape(figure.title)}">'
        f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>"
    )


def _table(rows: list[tuple[str, Any]]) -> str:
    return (
        "<table>"
        + "\n".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        + "</table>"
    )


def _iterations_table(history: list[dict]) -> str:
    header = (
        "<tr><th>iteration</th><th>objective</th><th>change</th><th>seconds</th>"
        "<th>MB read</th><th>re-seeded</th></tr>"
    )
    rows = "\n".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(text)}</td>"
            for text in (
                str(h["iteration"]),
                f"{h['objective']:.12g}",
                f"{h['change']:.3g}",
                f"{h['seconds']:.3f}",
                f"{h.get('bytes_read', 0) / 1e6:,.1f}",
                ", ".join(map(str, h.get("reseeded", []))),
            )
        )
        + "</tr>"
        for h in history
    )
    return f"<table>{header}\n{rows}\n</table>"


def html_page(
    model: Any,
    summary: list[tuple[str, Any]],
    convergence: list[ReportFigure],
    model_pictures: list[ReportFigure],
    arrays: dict[str, np.ndarray],
    notices: list[str],
) -> str:
    """The whole page: summary, notices, convergence, the fitted model (pictures and
    arrays), the constructor parameters, and one row per iteration."""
    title = html.escape(f"dask_em: {type(model).__name__} fit")
    params = json.dumps(model.get_params(), default=lambda value: repr(value), indent=1)
    notes = "\n".join(f'<p class="notice">{html.escape(text)}</p>' for text in notices)
    printed = "\n".join(
        f"<h3>{html.escape(name)} {html.escape(str(value.shape))}</h3><pre>"
        + html.escape(np.array2string(value, precision=4, threshold=400, max_line_width=100))
        + "</pre>"
        for name, value in arrays.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head>
<body><h1>{title}</h1>
{_table(summary)}
{notes}
<h2>Convergence</h2>
{"".join(figure_html(f) for f in convergence)}
<h2>The fitted model</h2>
{"".join(figure_html(f) for f in model_pictures)}
{printed}
<h2>Parameters</h2><pre>{html.escape(params)}</pre>
<h2>Iterations</h2>
{_iterations_table(model.history_)}
</body></html>
"""

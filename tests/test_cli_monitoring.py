"""Watching a fit: log lines, the progress bar, dashboard spans and task names, events
another client can follow, and the convergence plot and HTML report."""

from __future__ import annotations

import io
import logging
import re
import sys
import warnings

import dask.array as da
import numpy as np
import pytest
from distributed import Client

from dask_em import GaussianMixture
from dask_em.console import Console
from dask_em.em import IterationRecord
from dask_em.engine import EVENT_TOPIC
from dask_em.report import report_paths, write_report
from tests.helpers import make_blobs

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")


def test_fit_spans_task_names_and_events_on_the_cluster(client, caplog, tmp_path):
    X, _, _ = make_blobs(20_000, 3, 3, seed=21)
    store = str(tmp_path / "X.zarr")
    da.from_array(X, chunks=2_000).to_zarr(store)  # 10 blocks: reduce tasks below the root
    with caplog.at_level(logging.INFO, logger="dask_em"):
        model = GaussianMixture(3, tol=0.0, max_iter=4, random_state=0, cache="stream")
        model.fit(store)
    lines = [r.getMessage() for r in caplog.records if r.name == "dask_em.engine"]
    iteration_lines = [line for line in lines if " iteration " in line]
    assert len(iteration_lines) == 4
    pattern = (
        r"gmm iteration \d: objective -?\d\S*, change \S+, \d+\.\d{3} s, 0\.5 MB read, "
        r"\d+ passes \(\d+ in all\)"
    )
    assert all(re.fullmatch(pattern, line) for line in iteration_lines), iteration_lines
    assert [h["bytes_read"] for h in model.history_] == [X.nbytes] * 4
    fit_id = re.search(r"fit (\w{8}): dashboard span", "\n".join(lines)).group(1)

    # another client follows the fit through the scheduler's event log
    with Client(client.scheduler.address) as observer:
        events = [msg for _, msg in observer.get_events(EVENT_TOPIC) if msg["fit_id"] == fit_id]
    assert [e["kind"] for e in events] == ["fit-start"] + ["iteration"] * 4 + ["fit-end"]
    assert events[0]["n_samples"] == 20_000 and events[0]["model"] == "gmm"
    assert [e["objective"] for e in events[1:-1]] == model.lower_bounds_
    assert events[-1]["status"] == "ok" and events[-1]["n_iter"] == 4

    def spans_of(dask_scheduler, fit_id):
        spans = dask_scheduler.extensions["spans"].spans.values()
        return {
            span.name: {
                "prefixes": sorted({group.prefix.name for group in span.traverse_groups()}),
                "metrics": len(span.cumulative_worker_metrics),
            }
            for span in spans
            if span.name[0] == f"fit-gmm-{fit_id}"
        }

    async def send_heartbeat(dask_worker):
        await dask_worker.heartbeat()

    # Worker metrics reach the scheduler with the workers' heartbeats: send one now
    # rather than waiting for the next.
    client.run(send_heartbeat)
    spans = client.run_on_scheduler(spans_of, fit_id=fit_id)
    fit_span = (f"fit-gmm-{fit_id}",)
    assert set(spans) == {fit_span} | {(*fit_span, f"iteration-{i}") for i in range(1, 5)}
    assert {"scan-gmm", "init-gmm", "estep-gmm", "reduce-gmm"} <= set(spans[fit_span]["prefixes"])
    # Regression: a pass's graph built under the span's annotation kept dask from fusing
    # each block's read into its E-step task ("from-zarr" tasks, and a block held in
    # worker memory between the two); the annotation is now applied at submission only.
    assert "from-zarr" not in spans[fit_span]["prefixes"]
    # Each iteration's span holds its pass's work.  The pass's literal keys (the
    # parameters, the Zarr array object the E-step tasks read from) share a task group
    # by name with the previous pass's ("params-gmm", "original-from-zarr"), so they
    # stay in the span of the iteration that first made that group while it lives.
    assert {"estep-gmm", "reduce-gmm"} <= set(spans[(*fit_span, "iteration-2")]["prefixes"])
    assert set(spans[(*fit_span, "iteration-2")]["prefixes"]) <= {
        "estep-gmm",
        "original-from-zarr",
        "params-gmm",
        "reduce-gmm",
    }
    assert spans[fit_span]["metrics"] > 0  # fine performance metrics, grouped by this span


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def records(n: int) -> list[IterationRecord]:
    return [IterationRecord(i, -2.0 + 0.1 * i, 0.1, 0.25, (), 1000) for i in range(1, n + 1)]


def test_console_draws_a_progress_bar_only_on_a_terminal():
    engine_logger = logging.getLogger("dask_em.engine")
    for err, bar_expected in ((FakeTerminal(), True), (io.StringIO(), False)):
        out = io.StringIO()
        with Console("fit gmm", 10, out=out, err=err) as console:
            for record in records(3):
                engine_logger.info("gmm iteration %d: objective ...", record.iteration)
                console.iteration(record, None)
        assert out.getvalue().splitlines() == [
            f"gmm iteration {i}: objective ..." for i in (1, 2, 3)
        ]
        if bar_expected:
            assert (
                "\r\x1b[Kfit gmm [#######-----------------] 3/10  objective -1.7" in err.getvalue()
            )
            assert err.getvalue().endswith("\r\x1b[K")  # cleared when the fit ends
        else:
            assert err.getvalue() == ""
    assert logging.getLogger("dask_em").handlers == []  # the console removed its handler


def test_console_turns_warnings_into_one_line_on_stderr():
    err = io.StringIO()
    with Console("fit gmm", 10, out=io.StringIO(), err=err, quiet=True):
        warnings.warn("did not\n   converge", UserWarning, stacklevel=1)
    assert err.getvalue() == "dask-em: UserWarning: did not converge\n"


@pytest.fixture(scope="module")
def fitted():
    X, _, _ = make_blobs(2_000, 2, 2, seed=22)
    return GaussianMixture(2, tol=0.0, max_iter=6, random_state=0).fit(X)


def test_report_writes_a_convergence_plot_and_an_html_page(tmp_path, fitted):
    model_path = str(tmp_path / "run" / "model.zarr")
    (tmp_path / "run").mkdir()
    assert write_report(fitted, model_path, {"input": "blobs"}) == []
    png, page = report_paths(model_path)
    assert png == str(tmp_path / "run" / "model.convergence.png")
    with open(png, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(page, encoding="utf-8").read()
    assert text.count('<img src="data:image/png;base64,') == 2  # convergence, weights
    assert "model.convergence.png" not in text  # embedded, not linked
    assert text.count("<tr><td>") == 6  # one row per iteration
    assert f"{fitted.lower_bound_:.12g}" in text and "blobs" in text
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "model.convergence.png",
        "model.report.html",
    ]  # nothing left beside them


def test_report_without_matplotlib_still_writes_the_html(tmp_path, fitted, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    notices = write_report(fitted, str(tmp_path / "model.zarr"))
    assert len(notices) == 1 and "matplotlib is not installed" in notices[0]
    _, page = report_paths(str(tmp_path / "model.zarr"))
    assert "the report has no pictures" in open(page, encoding="utf-8").read()
    assert not (tmp_path / "model.convergence.png").exists()
    np.testing.assert_equal(len(fitted.history_), 6)

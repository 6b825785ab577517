"""Watching a fit: its dashboard spans, its events and its log lines.

With a ``distributed.Client``, a fit runs inside the span ``fit-<model>-<fit_id>``
(:meth:`FitMonitor.fit_span`) and each EM iteration inside the sub-span
``iteration-<n>``, so the dashboard's fine performance metrics group time per fit and
per iteration; every iteration is also sent as an event under the topic
:data:`EVENT_TOPIC` (:mod:`.events`, without waiting), which another client can follow
with ``Client.subscribe_topic`` or ``Client.get_events``.  Passes run without a graph
(:mod:`.direct`) are in no span: only their events and log lines show them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import dask

from dask_em.engine.events import FLUSH_TIMEOUT, EventSender
from dask_em.engine.malloc import glibc_thresholds_during
from dask_em.engine.messages import prompt_messages_during

#: One logger for the whole engine: a fit's log lines (and its warnings) come from it.
logger = logging.getLogger("dask_em.engine")

#: ``Client.log_event`` topic of the fit events (``fit-start``, ``iteration``, ``fit-end``).
EVENT_TOPIC = "dask-em"


class FitMonitor:
    """A fit's spans, events and log lines, for :class:`dask_em.engine.passes.EMEngine`.

    Parameters
    ----------
    client : the ``distributed.Client`` of the fit, or None (no spans, no events).
    model : short model name (``gmm``), in the span's and the log lines' names.
    fit_id : the fit's id (8 hex digits), in the span's name and every event.
    """

    def __init__(self, client: Any, model: str, fit_id: str) -> None:
        self.client, self.model, self.fit_id = client, model, fit_id
        self._events = EventSender(client, EVENT_TOPIC) if client is not None else None
        self._open_spans: list[dict] = []  # annotations of the spans open, innermost last

    @property
    def current_span(self) -> dict | None:
        """The annotation of the innermost open span (what a pass is submitted under)."""
        return self._open_spans[-1] if self._open_spans else None

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        """Open the span ``name`` (inside the open one): passes submitted within run in it.

        The span's annotation is applied when a pass is submitted, not while its graph
        is built: dask's blockwise optimizer does not fuse layers whose annotations
        differ, so building under the annotation would keep each block's read out of its
        E-step task (the data's layers were made outside the span).
        """
        if self.client is None:
            yield
            return
        from distributed import span

        parent = self.current_span
        with dask.annotate(span=parent) if parent else contextlib.nullcontext(), span(name):
            annotation = dask.get_annotations()["span"]
        self._open_spans.append(annotation)
        try:
            yield
        finally:
            self._open_spans.pop()

    @contextlib.contextmanager
    def fit_span(
        self, n_blocks: int, *, grouped: bool = False, **details: Any
    ) -> Iterator[dict[str, Any]]:
        """A fit: the span ``fit-<model>-<fit_id>`` and the events ``fit-start``/``fit-end``,
        with the workers' malloc thresholds (:mod:`.malloc`).  Where its passes are
        ``grouped``, a task per worker thread (:mod:`.grouped`), distributed's message
        batching is kept short (:mod:`.messages`): passes of a task per block (streamed
        data, blocks persisted in turns) have many more messages to batch.

        ``details`` go into the ``fit-start`` event; what the caller puts into the
        yielded dict goes into ``fit-end`` (``status`` is ``"ok"`` or ``"error"``).
        """
        end: dict[str, Any] = {}
        name = f"fit-{self.model}-{self.fit_id}"
        if self.client is not None:
            logger.info(
                "fit %s: dashboard span %r, events under the topic %r",
                self.fit_id,
                name,
                EVENT_TOPIC,
            )
        with (
            self.span(name),
            glibc_thresholds_during(self.client),
            prompt_messages_during(self.client if grouped else None),
        ):
            self.log_event("fit-start", n_blocks=n_blocks, **details)
            try:
                yield end
            except BaseException as error:
                with contextlib.suppress(Exception):  # the cluster may be what failed
                    self.log_event("fit-end", status="error", error=str(error)[:500])
                    self.flush_events(timeout=5.0)
                raise
        self.log_event("fit-end", status="ok", **end)
        self.flush_events()  # every event of the fit is in the scheduler's log

    def log_event(self, kind: str, **fields: Any) -> None:
        """Send ``{"kind", "fit_id", "model", **fields}`` under :data:`EVENT_TOPIC`,
        without waiting for the scheduler (:mod:`.events`; in order)."""
        if self.client is None:
            return
        message = {"kind": kind, "fit_id": self.fit_id, "model": self.model, **fields}
        self._events.send(message)

    def flush_events(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Wait (at most ``timeout`` seconds) until every event sent is in the log."""
        if self._events is not None:
            self._events.flush(timeout)

    def observe(self, record: Any, label: str, total_passes: int) -> None:
        """One EM iteration done: its log line and its ``iteration`` event.

        ``record`` is a :class:`dask_em.em.IterationRecord` (anything with its fields and
        ``as_dict()``); ``label`` names the run among those in lockstep (``restart 2/8``;
        empty for a lone run), in the line and the event (field ``run``); ``total_passes``:
        the engine's passes so far, every stage.
        """
        logger.info(
            "%s iteration %d: objective %.10g, change %.3g, %.3f s, %.1f MB read, "
            "%d passes (%d in all)",
            f"{self.model} {label}" if label else self.model,
            record.iteration,
            record.objective,
            record.change,
            record.seconds,
            record.bytes_read / 1e6,
            getattr(record, "passes", record.iteration),
            total_passes,
        )
        self.log_event("iteration", run=label, **record.as_dict())

"""distributed's message batching kept short while a fit runs.

Every stream between the client, the scheduler and the workers is a ``BatchedSend``:
a message sent within ``interval`` of the stream's last batch waits until that interval
has passed, so that a busy stream sends few, larger writes.  The intervals are fixed in
distributed's code (no Dask config): 10 ms from the client, 5 ms from the scheduler to
each worker, 2 ms from the scheduler to a client and from a worker.  An EM pass is a
short chain of such messages (the graph, its tasks, their results, the client's
release of the last pass), each sent soon after another on the same stream, and each
can wait out an interval.  On this project's 2-core machine (2 workers x 1 thread, a
pass over 16 small blocks that do nothing) a pass took 15.5 ms with distributed's
intervals and 10.4 ms with 1 ms on every stream (10.5 ms with none), medians of six
rounds of 30 passes in turn.

So while a fit runs (:func:`prompt_messages_during`), the streams that carry its
passes send within :data:`INTERVAL`, where a pass is one task per worker thread (data
in the workers' memory, :mod:`.grouped`; :meth:`.monitoring.FitMonitor.fit_span`).  A
pass of a task per block (streamed data) has many messages to batch, and gains from
batching: 100 one-row blocks took 138 ms a pass with distributed's intervals and 148 ms
with 1 ms.  The streams: the client's own stream to the scheduler, the
scheduler's stream to that client and to every worker, and every worker's stream to the
scheduler.  Batching still happens within a millisecond (everything one handler sends
goes as one batch).  When the fit ends each stream gets its own interval back; a stream
used by two fits at once keeps the short one until both have ended.  Workers that join
during the fit keep distributed's intervals.  A scheduler that does not run the
client's functions (``run_on_scheduler``) and workers that cannot be reached are left
as they are.  Set the Dask config ``dask_em.prompt-messages`` to False to leave every
stream alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import dask

#: Seconds a stream may hold a message back while a fit runs.
INTERVAL = 0.001

#: Dask config key: False leaves distributed's batching intervals alone.
CONFIG_KEY = "dask_em.prompt-messages"

#: Attributes kept on a stream while fits use it: its own interval, and how many fits.
_ORIGINAL = "_dask_em_interval"
_USERS = "_dask_em_fits"

logger = logging.getLogger("dask_em.engine")


def _shorten(streams: Iterable[Any]) -> int:
    """Give each stream (a ``BatchedSend``) :data:`INTERVAL`, keeping its own interval on
    it the first time; returns how many were set."""
    count = 0
    for stream in streams:
        if stream is None or not hasattr(stream, "interval"):
            continue
        users = getattr(stream, _USERS, 0)
        if users == 0:
            setattr(stream, _ORIGINAL, stream.interval)
        setattr(stream, _USERS, users + 1)
        stream.interval = min(stream.interval, INTERVAL)
        count += 1
    return count


def _restore(streams: Iterable[Any]) -> int:
    """Give each stream its own interval back once no fit uses it; returns how many."""
    count = 0
    for stream in streams:
        users = getattr(stream, _USERS, 0)
        if users <= 0:
            continue
        setattr(stream, _USERS, users - 1)
        if users == 1:
            stream.interval = getattr(stream, _ORIGINAL)
            count += 1
    return count


def scheduler_streams(dask_scheduler: Any, client_id: str) -> list[Any]:
    """The scheduler's streams to client ``client_id`` and to every worker."""
    to_client = getattr(dask_scheduler, "client_comms", {}).get(client_id)
    return [to_client, *getattr(dask_scheduler, "stream_comms", {}).values()]


def shorten_scheduler(dask_scheduler: Any = None, client_id: str = "") -> int:
    """:func:`_shorten` the scheduler's streams of a fit (``run_on_scheduler``)."""
    return _shorten(scheduler_streams(dask_scheduler, client_id))


def restore_scheduler(dask_scheduler: Any = None, client_id: str = "") -> int:
    """:func:`_restore` the scheduler's streams of a fit (``run_on_scheduler``)."""
    return _restore(scheduler_streams(dask_scheduler, client_id))


def shorten_worker(dask_worker: Any = None) -> int:
    """:func:`_shorten` a worker's stream to the scheduler (``Client.run``)."""
    return _shorten([getattr(dask_worker, "batched_stream", None)])


def restore_worker(dask_worker: Any = None) -> int:
    """:func:`_restore` a worker's stream to the scheduler (``Client.run``)."""
    return _restore([getattr(dask_worker, "batched_stream", None)])


@contextlib.contextmanager
def prompt_messages_during(client: Any) -> Iterator[None]:
    """The streams of ``client``'s fit (None: nothing) send within :data:`INTERVAL` while
    the block runs (module docstring); best effort: what cannot be reached is skipped."""
    if client is None or not dask.config.get(CONFIG_KEY, True):
        yield
        return
    own = getattr(client, "scheduler_comm", None)
    _shorten([own])
    with contextlib.suppress(Exception):  # a scheduler that runs no client functions
        client.run_on_scheduler(shorten_scheduler, client_id=client.id)
    with contextlib.suppress(Exception):
        done = client.run(shorten_worker, on_error="ignore")
        logger.debug("message batching shortened on %d workers", sum(done.values()))
    try:
        yield
    finally:
        _restore([own])
        with contextlib.suppress(Exception):  # the cluster may be what failed
            client.run_on_scheduler(restore_scheduler, client_id=client.id)
            client.run(restore_worker, on_error="ignore")

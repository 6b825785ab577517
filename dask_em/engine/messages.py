"""distributed's message batching kept short while a fit runs.

Every stream between the client, the scheduler and the workers is a ``BatchedSend``:
a message sent within ``interval`` of the stream's last batch waits until that interval
has passed, so that a busy stream sends few, larger writes.  The intervals are fixed in
distributed's code (no Dask config): 10 ms from the client, 5 ms from the scheduler to
each worker, 2 ms from the scheduler to a client and from a worker.  An EM pass is a
short chain of such messages (the graph, its tasks, their results, the client's
release of the last pass), each sent soon after another on the same stream, and each
can wait out an interval.

So while a fit runs (:func:`prompt_messages_during`), the streams that carry its
passes send within :data:`INTERVAL`, where a pass is one task per worker thread (data
in the workers' memory, :mod:`.grouped`; the engine decides at the fit's start,
:meth:`.passes.EMEngine.fit_span`).  ``benchmarks/batching.py`` (2 workers x 1 thread,
the two settings in turn, two runs): a pass over 10 one-row blocks that compute nothing
took 15.8 and 15.2 ms with distributed's intervals, 12.4 and 11.3 ms with 1 ms; over
100 and 1,000 blocks the two were within 4% either way; a Poisson mixture's iteration
(5,000,000 counts in memory) 0.90 and 0.94 times as long.  A pass of a task per block
(streamed data) has many messages to batch and keeps distributed's intervals: 100
one-row blocks took 113.6 and 109.1 ms a pass so, 121.8 and 112.2 ms with 1 ms.  The
streams: the client's own stream to the scheduler, the scheduler's stream to that client
and to every worker, and every worker's stream to the scheduler.  Batching still
happens within a millisecond (everything one handler sends goes as one batch).  When
the fit ends each stream gets its own interval back; a stream used by two fits at once
keeps the short one until both have ended.  Workers that join during the fit keep
distributed's intervals.  A scheduler that does not run the client's functions
(``run_on_scheduler``) and workers that cannot be reached are left as they are, and
nothing is restored on a client that is no longer running (its cluster may be gone).
Set the Dask config ``dask_em.prompt-messages`` to False to leave every stream alone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from dask_em.engine.direct import config_flag

#: Seconds a stream may hold a message back while a fit runs.
INTERVAL = 0.001

#: Dask config key: False leaves distributed's batching intervals alone.
CONFIG_KEY = "dask_em.prompt-messages"

#: Attributes kept on a stream while fits use it: its own interval, and how many fits.
_ORIGINAL = "_dask_em_interval"
_USERS = "_dask_em_fits"

logger = logging.getLogger("dask_em.engine")

#: Fits in two threads of one process may share the client's stream: one at a time.
_CLIENT_STREAM = threading.Lock()


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
    if client is None or not config_flag(CONFIG_KEY, True):
        yield
        return
    own = getattr(client, "scheduler_comm", None)
    with _CLIENT_STREAM:
        _shorten([own])
    with contextlib.suppress(Exception):  # a scheduler that runs no client functions
        client.run_on_scheduler(shorten_scheduler, client_id=client.id)
    with contextlib.suppress(Exception):
        done = client.run(shorten_worker, on_error="ignore")
        logger.debug("message batching shortened on %d workers", sum(done.values()))
    try:
        yield
    finally:
        with _CLIENT_STREAM:
            _restore([own])
        if getattr(client, "status", "running") == "running":  # else its cluster may be gone
            with contextlib.suppress(Exception):
                client.run_on_scheduler(restore_scheduler, client_id=client.id)
            with contextlib.suppress(Exception):
                client.run(restore_worker, on_error="ignore")

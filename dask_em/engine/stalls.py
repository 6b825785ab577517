"""No silent stall: a wait on workers paused for memory ends with an error that says why.

A Dask worker pauses when its process memory passes ``distributed.worker.memory.pause``
(0.8 of its ``memory_limit`` by default): it starts no task until its memory falls again.
When what fills it stays (persisted blocks, the pieces of a block waiting for the task
that joins them, other data, memory the process does not give back), it never falls, and
a pass would wait forever.  The engine waits through
:func:`dask_em.engine.cluster.wait_watched`, which runs :func:`watch` here: while the
wait is not over it looks at the cluster, and raises
:class:`~dask_em.exceptions.MemoryStallError` once, for ``dask_em.stall-timeout``
seconds, workers were paused, no running worker had a task of the wait and no task of
the wait finished.

What it costs: nothing while a pass finishes within a poll (:data:`POLL_SECONDS`; the
wait returns as soon as it is over); after that, one call for the workers' state per poll
(:func:`~dask_em.engine.workers.scheduler_workers`),
plus one ``processing`` call (the tasks each worker runs or queues) while a worker is
paused.  Nothing per task.

This module decides and words; it imports no Dask (the client comes in as an argument).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from dask_em.engine.workers import scheduler_workers

#: The engine's logger (see :mod:`dask_em.engine.passes`).
logger = logging.getLogger("dask_em.engine")

#: The Dask config key of the stall timeout: seconds, or a string such as ``"5 minutes"``;
#: 0 or None: wait forever (``dask.config.set({"dask_em.stall-timeout": 30})``).
STALL_TIMEOUT_KEY = "dask_em.stall-timeout"

#: Seconds a pass may wait on paused workers, with no task finished, before it stops.
DEFAULT_STALL_TIMEOUT = 120.0

#: Seconds between two looks at the cluster while a pass waits (less for short timeouts).
POLL_SECONDS = 1.0

#: A block should take at most this share of what one thread of a worker may hold before
#: the worker pauses: an E-step needs the block and its temporaries, and a worker holds
#: other blocks (persisted, or read by its other threads).
BLOCK_SHARE = 0.25


@dataclass(frozen=True)
class Blocks:
    """What the error says of the data: its largest block and its total.

    ``block_bytes`` and ``block_rows``: the largest block of X; ``n_features``,
    ``dtype``: X's; ``data_bytes``: X and its weights (or lengths), every block.
    """

    block_bytes: int
    block_rows: int
    n_features: int
    dtype: str
    data_bytes: int
    n_blocks: int


def blocks_of(X: Any, sample_weight: Any = None) -> Blocks:
    """:class:`Blocks` of a row-chunked dask array X (and its weights or lengths)."""
    rows = max(X.chunks[0], default=0)
    nbytes = X.nbytes + (0 if sample_weight is None else sample_weight.nbytes)
    return Blocks(
        block_bytes=int(rows * X.shape[1] * X.dtype.itemsize),
        block_rows=int(rows),
        n_features=int(X.shape[1]),
        dtype=str(X.dtype),
        data_bytes=int(nbytes),
        n_blocks=int(X.numblocks[0]),
    )


@dataclass(frozen=True)
class WorkerMemory:
    """A worker as the scheduler sees it: status, ``memory_limit`` (bytes, 0: none),
    process memory (bytes), threads."""

    address: str
    status: str
    memory_limit: int
    memory: int
    nthreads: int

    @property
    def paused(self) -> bool:
        return self.status == "paused"


class StallWatch:
    """Decides, look after look, whether a wait has stalled on paused workers.

    A look is stalled when a worker is paused, no running worker has a task of the wait
    and no task of the wait finished since the previous look; the wait has stalled when
    every look for ``timeout`` seconds was.  Pure: the looks come from
    :func:`look_at_cluster` (or a test).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.since: float | None = None  # when the looks began to be stalled

    def stalled(self, now: float, *, paused: bool, running_busy: bool, progressed: bool) -> bool:
        """Record one look at time ``now`` (seconds); True once the wait has stalled."""
        if not paused or running_busy or progressed:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.timeout


def key_name(key: Hashable) -> Hashable:
    """The name of a task key: ``key[0]`` of a tuple key (``("estep-gmm-ab12", 3, 0)``)."""
    return key[0] if isinstance(key, (tuple, list)) and key else key


def workers_of(client: Any) -> list[WorkerMemory]:
    """The workers of ``client``'s scheduler, from one call to it."""
    workers = scheduler_workers(client)
    return [
        WorkerMemory(
            address=address,
            status=str(info.get("status", "running")),
            memory_limit=int(info.get("memory_limit") or 0),
            memory=int((info.get("metrics") or {}).get("memory") or 0),
            nthreads=int(info.get("nthreads") or 1),
        )
        for address, info in workers.items()
    ]


def look_at_cluster(
    client: Any, names: Collection[Hashable]
) -> tuple[list[WorkerMemory], dict[str, set[Hashable]] | None]:
    """The workers, and while one is paused, the keys named ``names`` that each worker
    is processing (None while no worker is paused: not asked).  Nothing is asked of a
    client that lost its scheduler (its futures are cancelled: the wait ends)."""
    if getattr(client, "status", "running") != "running":
        return [], None
    workers = workers_of(client)
    if not any(worker.paused for worker in workers):
        return workers, None
    processing = client.processing()
    # a paused worker still finishes the task it runs: one that runs a task of the wait
    # (a pass's task may cover many blocks, :mod:`.grouped`) counts as a running one
    executing = executing_on(client, [worker.address for worker in workers if worker.paused], names)
    workers = [
        dataclasses.replace(worker, status="paused, finishing a task")
        if executing.get(worker.address)
        else worker
        for worker in workers
    ]
    return workers, {
        address: {key for key in keys if key_name(key) in names}
        for address, keys in processing.items()
    }


def executing_on(client: Any, addresses: Sequence[str], names: Collection[Hashable]) -> dict:
    """``{address: keys named names that the worker runs now}`` for ``addresses``, as the
    scheduler last heard from each worker (its heartbeat); {} if it cannot be asked."""

    def keys_running(dask_scheduler: Any, addresses: list, names: set) -> dict:
        found = {}
        for address in addresses:
            state = dask_scheduler.workers.get(address)
            keys = [task.key for task in state.executing] if state is not None else []
            found[address] = [
                key for key in keys if (key[0] if isinstance(key, tuple) and key else key) in names
            ]
        return found

    try:
        return client.run_on_scheduler(keys_running, addresses=list(addresses), names=set(names))
    except Exception:  # an old scheduler, a fake client, a lost connection: none known
        return {}


def watch(
    client: Any,
    wait: Callable[[float], bool],
    futures: Sequence[Any],
    names: Collection[Hashable],
    stall_error: Callable[[list[WorkerMemory]], Exception],
    *,
    timeout: float,
    clock: Callable[[], float],
) -> None:
    """Wait until ``wait(seconds)`` says the wait is over (True; False: not yet after
    ``seconds``), looking at the cluster between two calls.

    ``futures``: what is waited on (their ``done()`` counts as progress); ``names``: the
    names of the wait's tasks (:func:`key_name`), to tell them among those the workers
    process.  On a stall the futures are cancelled and ``stall_error(workers)`` is
    raised.
    """
    poll = min(POLL_SECONDS, timeout / 4)
    stalls = StallWatch(timeout)
    seen: set[Hashable] = set()  # the wait's keys processing at the previous look
    done = 0
    while not wait(poll):
        workers, processing = look_at_cluster(client, names)
        now_done = sum(future.done() for future in futures)
        keys = set().union(*processing.values()) if processing else set()
        paused = {worker.address for worker in workers if worker.paused}
        running_busy = any(
            keys_there
            for address, keys_there in (processing or {}).items()
            if address not in paused
        )
        progressed = now_done > done or bool(seen - keys)
        seen, done = keys, now_done
        was_stalled = stalls.since is not None
        if stalls.stalled(
            clock(), paused=bool(paused), running_busy=running_busy, progressed=progressed
        ):
            with contextlib.suppress(Exception):  # the futures are dropped anyway
                client.cancel(list(futures))
            raise stall_error(workers)
        if stalls.since is not None and not was_stalled:
            logger.info(
                "%d of %d workers paused for memory, none running a task of the pass: "
                "it stops unless a task finishes within %g s",
                len(paused),
                len(workers),
                timeout,
            )


# -- the message ---------------------------------------------------------------------------
def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.{1 if nbytes < 1e7 else 0}f} MB"


def stall_message(
    blocks: Blocks,
    workers: Sequence[WorkerMemory],
    timeout: float,
    *,
    persisting: bool,
    pause: float | None = 0.8,
) -> str:
    """The error's text: the block size against the workers' memory limit, and what to do.

    ``persisting``: the wait was the one that puts the data into the cluster's memory
    (``cache="memory"``), not a pass.  ``pause``: the share of the memory limit at which
    workers pause (``distributed.worker.memory.pause``; None: unknown or never).
    """
    pause = pause if pause and pause > 0 else None
    paused = [worker for worker in workers if worker.paused]
    limits = [worker.memory_limit for worker in (paused or workers) if worker.memory_limit]
    limit = min(limits) if limits else 0
    threads = max((worker.nthreads for worker in (paused or workers)), default=1)
    using = max((worker.memory for worker in paused), default=0)
    block = (
        f"a block is {_mb(blocks.block_bytes)} ({blocks.block_rows:,} rows x "
        f"{blocks.n_features} {blocks.dtype})"
    )
    if limit:
        holds = f"each worker may hold {_mb(limit)}" + (f" (pause at {pause:.0%})" if pause else "")
    else:
        holds = "the workers have no memory limit"
    state = f"{len(paused)} of {len(workers)} workers paused" + (
        f", using up to {_mb(using)}" if using else ""
    )
    if persisting:
        what = (
            f"workers paused for memory while holding the data in the cluster "
            f'(cache="memory"): no block was stored in {timeout:g} s ({state}); the data '
            f"is {_mb(blocks.data_bytes)} in {blocks.n_blocks} blocks, {block}, and {holds}"
        )
        todo = [
            'read the data on every pass instead (cache="stream", --cache stream)',
            "give the cluster more memory (more workers, or --memory-limit)",
        ]
    else:
        what = (
            f"workers paused for memory: no block of the pass finished in {timeout:g} s "
            f"({state}); {block} and {holds}"
        )
        todo = ["give the workers more memory (--memory-limit)"]
    budget = limit * (pause or 1.0) / threads * BLOCK_SHARE
    if budget and blocks.block_bytes > budget:
        parts = math.ceil(blocks.block_bytes / budget)
        rows = max(1, blocks.block_rows // parts)
        todo.insert(
            0,
            f"rechunk the store into smaller chunks (e.g. 1/{parts}: {rows:,} rows, "
            f"{_mb(blocks.block_bytes / parts)})",
        )
    elif not persisting:
        todo.insert(0, "free the memory the workers hold (other data on the cluster?)")
    return f"{what}; {', '.join(todo[:-1])}{' or ' if len(todo) > 1 else ''}{todo[-1]}"

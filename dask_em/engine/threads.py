"""BLAS/OpenMP threads inside a task: each task gets its share of the host, never more.

Why a pass collapsed (4-5x slower, single iterations up to 14 s) when a job script
exported ``OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2``:

* distributed's nanny sets these three variables to 1 in every worker process it spawns
  (config ``distributed.nanny.pre-spawn-environ``), which is what kept BLAS single
  threaded per Dask thread;
* but a variable already in the nanny's environment wins over that config
  (``nanny._get_env_variables`` reads ``os.environ.get(name, default)``), so with the
  variables exported each worker process starts BLAS with 2 threads;
* a LocalCluster of 2 workers x 1 thread on 2 cores then runs 2 Dask threads x 2 BLAS
  threads = 4 busy threads on 2 cores, and OpenBLAS' spinning threads fight each other.
  ``dask worker`` processes start through the same nanny and inherit the same
  environment; ``dask worker --no-nanny`` would not even get the 1.

The cure does not depend on the environment: every E-step task runs inside
:func:`task_thread_limit`, which limits the BLAS and OpenMP pools loaded in the process
(threadpoolctl, as scikit-learn does) to the task's share of its host:

    share = max(1, CPUs available to this process // Dask threads of all workers on its host)

The threads per host come from the scheduler when the pass is built
(:func:`host_threads`, asked again after 10 s); a worker the plan does not know, or a
run without a ``distributed.Client``, counts only its own threads.  Limits in
threadpoolctl are process-wide, so concurrent tasks of one worker share one limit, set
by the first task that enters and restored when the last one leaves.

The process that drives a fit (the client) runs its own small linear algebra with one
BLAS thread (:func:`dask_em.thread_pools.one_blas_thread`): a 16 x 16
``solve_triangular`` took 9.6 ms with OpenBLAS' 2 threads on a loaded 2-core machine
against 0.17 ms with one.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask_em.engine.workers import scheduler_workers
from dask_em.thread_pools import HeldLimit

_tasks = HeldLimit()  # the tasks running in this process


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


#: Seconds the threads per host of a client's cluster are reused before the scheduler
#: is asked again (each ask is a round trip; a pass asks once).
HOST_THREADS_MAX_AGE = 10.0

#: (client id, when asked, {worker address: (host, threads)}) of the last ask: one
#: client at a time
_workers_seen: tuple[str, float, dict[str, tuple[str, int]]] = ("", -math.inf, {})


def _workers(client: Any) -> dict[str, tuple[str, int]]:
    """``{worker address: (host, Dask threads)}`` of ``client``'s cluster, asked of the
    scheduler at most every :data:`HOST_THREADS_MAX_AGE` seconds per client."""
    global _workers_seen
    key = str(getattr(client, "id", id(client)))
    seen_key, asked_at, workers = _workers_seen
    if seen_key == key and time.monotonic() - asked_at < HOST_THREADS_MAX_AGE:
        return workers
    workers = {
        address: (info.get("host", ""), int(info.get("nthreads") or 1))
        for address, info in scheduler_workers(client).items()
    }
    _workers_seen = (key, time.monotonic(), workers)
    return workers


def host_threads(client: Any) -> dict[str, int]:
    """Dask threads per host, summed over the workers of ``client``'s cluster ({} without);
    asked of the scheduler at most every :data:`HOST_THREADS_MAX_AGE` seconds per client,
    so workers that join or leave a host count from the next ask on (until then a
    task's BLAS share on that host is off: its speed, never its results)."""
    if client is None:
        return {}
    totals: dict[str, int] = {}
    for host, threads in _workers(client).values():
        totals[host] = totals.get(host, 0) + threads
    return totals


def worker_threads(client: Any) -> dict[str, int]:
    """Dask threads of each worker of ``client``'s cluster (address -> threads; {}
    without), asked as :func:`host_threads` asks."""
    if client is None:
        return {}
    return {address: threads for address, (_, threads) in _workers(client).items()}


def task_share(threads_by_host: Mapping[str, int] | None = None, worker: Any = None) -> int:
    """BLAS threads one task may use where it runs (see module docstring); ``worker``:
    the worker it runs on, when ``get_worker()`` cannot tell (code run outside a task)."""
    threads = 1
    if worker is None:
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):
            worker = None
    if worker is not None:
        from distributed.comm import get_address_host

        host = get_address_host(worker.address)
        threads = (threads_by_host or {}).get(host) or worker.state.nthreads
    return max(1, available_cpus() // max(1, threads))


def task_thread_limit(threads: int) -> contextlib.AbstractContextManager[None]:
    """Limit the process' BLAS and OpenMP pools to ``threads`` while tasks run in it."""
    return _tasks.hold(threads)


@dataclass(frozen=True)
class ThreadLimited:
    """``function`` run under :func:`task_thread_limit` with the task's share.

    A picklable wrapper for task functions: ``ThreadLimited(f, plan)(*args)`` is
    ``f(*args)`` with BLAS limited to ``task_share(plan)`` threads.
    """

    function: Callable[..., Any]
    threads_by_host: Mapping[str, int] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with task_thread_limit(task_share(self.threads_by_host)):
            return self.function(*args, **kwargs)


def limit_threads(function: Callable[..., Any], client: Any = None) -> ThreadLimited:
    """Wrap a task function so it runs with its share of BLAS threads on ``client``'s cluster."""
    return ThreadLimited(function, host_threads(client))

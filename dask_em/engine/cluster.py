"""The cluster: the active client, and the one the command line starts or joins."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from dask_em.exceptions import ClusterError


def active_client():
    """The current ``distributed.Client``, or None when Dask runs without one."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a core dependency
        return None
    try:
        return get_client()
    except ValueError:
        return None


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    *,
    dashboard_address: str = ":8787",
    **local_options: Any,
) -> Iterator[Any]:
    """A ``distributed.Client`` on ``scheduler`` or on a LocalCluster started here
    (``local_options``: ``n_workers``, ``threads_per_worker``, ``memory_limit``; None
    means the default).

    The dashboard link is printed.  OSError or TimeoutError from an unreachable or lost
    scheduler become :class:`~dask_em.exceptions.ClusterError`.  LocalCluster workers
    shut down when this process dies without closing them (their nanny loses its
    parent); to be sure, kill the whole process group (``kill -9 -- -PGID``).
    """
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        if scheduler:
            try:
                client = stack.enter_context(Client(scheduler))
            except (OSError, TimeoutError) as error:
                raise ClusterError(f"cannot reach the scheduler at {scheduler}: {error}") from error
        else:
            options = {name: value for name, value in local_options.items() if value is not None}
            cluster = stack.enter_context(
                LocalCluster(dashboard_address=dashboard_address, **options)
            )
            client = stack.enter_context(Client(cluster))
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        try:
            yield client
        except (OSError, TimeoutError) as error:
            if client.status != "running":  # the connection to the scheduler is gone
                raise ClusterError(f"lost the cluster: {error}") from error
            raise


def cluster_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the cluster failed (not the input or the usage)."""
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return (
        ClusterError,
        CommClosedError,
        FutureCancelledError,
        KilledWorker,
        TimeoutError,
        asyncio.TimeoutError,
    )

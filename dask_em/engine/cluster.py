"""The cluster: the active client, and the one the command line starts or joins."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from typing import Any

from dask_em.engine import direct, stalls
from dask_em.engine.workers import scheduler_workers
from dask_em.exceptions import ClusterError, MemoryStallError


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


#: Seconds to wait for a scheduler to answer, and for its workers to arrive.
DEFAULT_CONNECT_TIMEOUT = 10.0


def open_client(address: str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT, min_workers: int = 1):
    """A ``distributed.Client`` of the scheduler at ``address`` with at least
    ``min_workers`` workers, or :class:`~dask_em.exceptions.ClusterError` within about
    ``timeout`` seconds (twice that at most: the connection, then the workers).

    The error says what was found at the address: nothing listening, something that is
    not a Dask scheduler (an HTTP server such as the dashboard), a TLS mismatch, or a
    scheduler with too few workers.  Use it instead of ``Client(address)``, which waits
    forever for a server that never answers and for workers that never come::

        client = dask_em.engine.open_client("tcp://10.0.0.5:8786", timeout=10, min_workers=2)
    """
    from distributed import Client

    from dask_em.engine import addresses

    found = addresses.host_port(address)
    if found is not None:
        if not _accepts_connections(found, timeout):
            raise ClusterError(f"cannot reach the scheduler at {address}: {addresses.NOTHING}")
        # A Dask client waits forever for the handshake of a server that never sends
        # one (an HTTP port): check first that the server speaks first, as Dask does.
        wait, tls = min(timeout, 3.0), address.startswith("tls://")
        if tls and addresses.talks_first(found, tls=False, wait=min(wait, 1.0)):
            # a plain scheduler: checked before a TLS hello that it would log as garbage
            raise ClusterError(f"cannot use {address}: {addresses.PLAIN_WITH_TLS}")
        if addresses.talks_first(found, tls=tls, wait=wait) is False:
            what = addresses.describe_silent_listener(address, timeout=wait)
            raise ClusterError(f"cannot use {address} as a scheduler: {what}")
    try:
        client = Client(address, timeout=timeout)
    except TypeError as error:  # tls:// without TLS settings: distributed's TypeError
        what = addresses.describe_listener(address, timeout=min(timeout, 2.0))
        raise ClusterError(
            f"cannot connect to {address}: "
            + (what or f"no TLS certificates are configured for tls:// ({_first_line(error)})")
        ) from None
    except (OSError, TimeoutError) as error:
        what = addresses.describe_listener(address, timeout=min(timeout, 2.0))
        detail = what or _first_line(error)
        raise ClusterError(
            f"cannot reach the scheduler at {address} within {timeout:g} s: {detail}"
        ) from None
    try:
        wait_for_workers(client, min_workers, timeout=timeout)
    except BaseException:
        client.close()
        raise
    return client


def _accepts_connections(found: tuple[str, int], timeout: float) -> bool:
    """Whether anything accepts a TCP connection at ``found`` (host, port)."""
    import socket

    try:
        with socket.create_connection(found, timeout=min(timeout, 5.0)):
            return True
    except OSError:
        return False


def wait_for_workers(client, min_workers: int = 1, *, timeout: float = DEFAULT_CONNECT_TIMEOUT):
    """Wait until ``client``'s scheduler has ``min_workers`` workers, at most ``timeout``
    seconds; then :class:`~dask_em.exceptions.ClusterError` saying how many there are."""
    if min_workers < 1:
        return
    try:
        client.wait_for_workers(min_workers, timeout=timeout)
    except (TimeoutError, OSError):
        have = len(scheduler_workers(client))
        address = client.scheduler.address
        raise ClusterError(
            f"the scheduler at {address} has {have} worker{'s' if have != 1 else ''} after "
            f"{timeout:g} s ({min_workers} needed); start workers with: dask worker {address}"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


#: The dashboard of a LocalCluster started here, when no address is given: every
#: interface, as Dask's own default; loopback only when Dask's configuration asks for TLS
#: (the dashboard is plain, unauthenticated HTTP whatever the cluster's security).
DASHBOARD_EVERY_INTERFACE = ":8787"
DASHBOARD_LOOPBACK = "127.0.0.1:8787"

#: The scheduler's HTTP routes without a dashboard: a scheduler started with
#: ``dashboard=False`` still serves its info pages (worker list, logs), Prometheus metrics
#: and JSON; this keeps only the health check (``distributed.scheduler.http.routes``).
NO_PAGES = ["distributed.http.health"]


def tls_configured() -> bool:
    """Whether Dask's configuration asks for TLS: ``distributed.comm.require-encryption``,
    or a CA file or certificate under ``distributed.comm.tls``."""
    from distributed import Security

    security = Security()
    fields = ("tls_ca_file", "tls_scheduler_cert", "tls_worker_cert", "tls_client_cert")
    return bool(security.require_encryption) or any(getattr(security, f) for f in fields)


def local_security():
    """The ``distributed.Security`` of a LocalCluster started here when TLS is configured:
    the configured certificates when the CA and every role (scheduler, worker, client)
    have one; otherwise throwaway ones, in memory (``Security.temporary()``, which needs
    ``cryptography``): a client configured only to reach a remote TLS scheduler still
    gets a LocalCluster that speaks TLS, instead of one whose scheduler cannot start."""
    from distributed import Security

    configured = Security(require_encryption=True)
    roles = ("tls_ca_file", "tls_scheduler_cert", "tls_worker_cert", "tls_client_cert")
    if all(getattr(configured, role) for role in roles):
        return configured
    try:
        return Security.temporary()
    except ImportError:
        raise ClusterError(
            "Dask's configuration asks for TLS, but has no certificates for a LocalCluster's "
            "scheduler and workers (distributed.comm.tls.scheduler/worker/client and "
            "ca-file); configure them, install cryptography for throwaway ones, or pass "
            "--scheduler"
        ) from None


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    *,
    dashboard_address: str | None = None,
    dashboard: bool = True,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    min_workers: int = 1,
    quiet: bool = False,
    stall_timeout: float | None = None,
    direct_passes: bool | None = None,
    **local_options: Any,
) -> Iterator[Any]:
    """A ``distributed.Client`` on ``scheduler`` (:func:`open_client`: bounded by
    ``timeout``, with ``min_workers``) or on a LocalCluster started here
    (``local_options``: ``n_workers``, ``threads_per_worker``, ``memory_limit``,
    ``silence_logs`` (the level below which the workers' log lines are dropped); None
    means the default).

    The LocalCluster follows Dask's security configuration: when it asks for TLS
    (:func:`tls_configured`), the scheduler, workers and client talk TLS
    (:func:`local_security`) and the dashboard, which is plain HTTP without
    authentication, listens on 127.0.0.1 only (:data:`DASHBOARD_LOOPBACK`) unless
    ``dashboard_address`` says otherwise; without TLS it listens on every interface
    (:data:`DASHBOARD_EVERY_INTERFACE`).  ``dashboard=False``: no dashboard, and no other
    page but the health check (:data:`NO_PAGES`).

    The dashboard link is printed.  OSError or TimeoutError from an unreachable or lost
    scheduler become :class:`~dask_em.exceptions.ClusterError`.  LocalCluster workers
    shut down when this process dies without closing them (their nanny loses its
    parent); to be sure, kill the whole process group (``kill -9 -- -PGID``).

    ``stall_timeout``: seconds for ``dask_em.stall-timeout`` inside the block (0: wait
    forever; None: the Dask config's value): a pass that waits that long on workers
    paused for memory stops with :class:`~dask_em.exceptions.MemoryStallError`.
    ``direct_passes``: ``dask_em.direct-passes`` inside the block (None: the config's).

    ``quiet``: for a command whose errors are one line.  distributed's client logs a
    lost scheduler (with tracebacks) before the error is raised, and again from its own
    thread when its reconnection gives up, possibly after this block: its logger is
    silenced for the rest of the process (set after importing distributed, whose import
    sets the levels of its loggers).
    """
    import dask
    from distributed import Client, LocalCluster

    if quiet:
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)

    with contextlib.ExitStack() as stack:
        if stall_timeout is not None:
            stack.enter_context(dask.config.set({stalls.STALL_TIMEOUT_KEY: stall_timeout}))
        if direct_passes is not None:
            stack.enter_context(dask.config.set({direct.CONFIG_KEY: direct_passes}))
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        if scheduler:
            client = open_client(scheduler, timeout=timeout, min_workers=min_workers)
            stack.callback(client.close)
        else:
            options = {name: value for name, value in local_options.items() if value is not None}
            tls = tls_configured()
            if tls:
                options |= {"protocol": "tls://", "security": local_security()}
            if dashboard_address is None:
                dashboard_address = DASHBOARD_LOOPBACK if tls else DASHBOARD_EVERY_INTERFACE
            if not dashboard:  # its scheduler still serves pages (logs among them): only /health
                stack.enter_context(
                    dask.config.set({"distributed.scheduler.http.routes": NO_PAGES})
                )
            cluster = stack.enter_context(
                LocalCluster(dashboard_address=dashboard_address if dashboard else None, **options)
            )
            client = stack.enter_context(Client(cluster))
        link = client.dashboard_link if scheduler or dashboard else None
        print(f"Dask dashboard: {link or 'off'}", flush=True)
        try:
            yield client
        except Exception as error:
            if client.status != "running":  # the connection to the scheduler is gone
                where = scheduler or "the LocalCluster's scheduler"
                raise ClusterError(
                    f"lost the connection to the scheduler at {where} (the client is "
                    f"{client.status}: {_first_line(error)}); a fit with --checkpoint "
                    "resumes with --resume on a running cluster"
                ) from error
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


def stall_timeout() -> float | None:
    """Seconds of ``dask_em.stall-timeout`` (Dask config; default
    :data:`~dask_em.engine.stalls.DEFAULT_STALL_TIMEOUT`), None for 0, None or False
    (wait forever).  A string such as ``"5 minutes"`` is read as Dask reads durations."""
    import dask
    from dask.utils import parse_timedelta

    value = dask.config.get(stalls.STALL_TIMEOUT_KEY, stalls.DEFAULT_STALL_TIMEOUT)
    if value is None or value is False:
        return None
    seconds = float(parse_timedelta(value, default="s") if isinstance(value, str) else value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(
            f"{stalls.STALL_TIMEOUT_KEY} must be a number of seconds >= 0, got {value!r}"
        )
    return seconds or None


def wait_watched(
    client: Any,
    futures: Sequence[Any],
    names: Collection[Hashable],
    blocks: stalls.Blocks,
    *,
    persisting: bool = False,
) -> None:
    """Wait until every future of ``futures`` is done (finished, erred or cancelled), or
    raise :class:`~dask_em.exceptions.MemoryStallError` when it stalls on workers paused
    for memory for :func:`stall_timeout` seconds (see :mod:`dask_em.engine.stalls`).

    ``names``: the names of the wait's tasks; ``blocks``: the data, for the message;
    ``persisting``: the wait holds the data in the cluster's memory (not a pass).
    """
    import dask
    from distributed import wait

    timeout = stall_timeout()
    if timeout is None:
        with client.as_current():
            wait(futures)
        return

    def over(seconds: float) -> bool:
        try:
            with client.as_current():
                wait(futures, timeout=seconds)
        except TimeoutError:
            return False
        return True

    pause = dask.config.get("distributed.worker.memory.pause", None)
    pause = pause if isinstance(pause, (int, float)) and not isinstance(pause, bool) else None

    def stall_error(workers: list[stalls.WorkerMemory]) -> MemoryStallError:
        text = stalls.stall_message(blocks, workers, timeout, persisting=persisting, pause=pause)
        return MemoryStallError(text)

    stalls.watch(client, over, futures, names, stall_error, timeout=timeout, clock=time.monotonic)


def run_on_one_worker(client: Any, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` as one task on a worker the scheduler picks; its result."""
    return client.submit(function, *args, pure=False).result()


def persist_watched(
    client: Any, collections: Sequence[Any], blocks: stalls.Blocks, *, optimize_graph: bool = True
) -> list:
    """``collections`` persisted on the cluster (their blocks computed or read by the
    workers), once every block is there.  A block that cannot be computed (a chunk of
    the store is unreadable, say) raises its task's own error; a stall on workers
    paused for memory raises MemoryStallError (:func:`wait_watched`)."""
    from distributed import futures_of

    persisted = client.persist(list(collections), optimize_graph=optimize_graph)
    futures = futures_of(persisted)
    names = {collection.name for collection in collections}
    wait_watched(client, futures, names, blocks, persisting=True)
    for future in futures:
        if future.status == "error":
            future.result()
    return persisted

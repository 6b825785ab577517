"""The workers of a cluster, asked of its scheduler at the time of the call.

``Client.scheduler_info(n_workers=-1)["workers"]`` is not that: it fetches the
scheduler's identity into the client's cache and then returns the cache, and the
client's own refresh (every ``distributed.client.scheduler-info-interval``, 2 s) writes
an identity without per-worker entries into the same cache; a refresh that lands between
the two, or a fetch that fails (distributed logs the ``OSError`` and keeps the cache),
leaves ``"workers"`` empty.  That happened under load in the test suite: a fit took its
in-memory data for data the workers must compute (no worker to scatter it to) and
persisted it through the scheduler instead.
"""

from __future__ import annotations

from typing import Any


def scheduler_workers(client: Any) -> dict[str, dict]:
    """``{address: the scheduler's information on that worker}`` (its ``nthreads``,
    ``memory_limit``, ``status``, ``metrics``, ...), from one call to the scheduler of
    ``client`` (a synchronous ``distributed.Client``)."""
    identity = client.sync(client.scheduler.identity, n_workers=-1)
    return dict(identity.get("workers") or {})

"""Fit events sent to the scheduler's event log without waiting for each one.

``Client.log_event`` is a round trip to the scheduler that blocks the caller; one per
EM iteration cost about 5 ms of a 40 ms pass on a LocalCluster.  :class:`EventSender`
sends each event from the client's event loop instead, one after another in the order
they were given (each send waits for the previous one), so the caller goes on at once;
:meth:`EventSender.flush` waits until every event sent so far has reached the
scheduler, and raises the first error a send met.  The engine flushes after
``fit-end``, so another client that reads the events once ``fit()`` has returned
successfully sees all of them (a failed fit waits at most 5 s for its last events).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import Any

#: Seconds :meth:`EventSender.flush` waits for the scheduler before giving up: more
#: than distributed's default connect timeout (30 s), so a lost scheduler shows as
#: the connection's error rather than this wait's.
FLUSH_TIMEOUT = 60.0


class EventSender:
    """Ordered, non-blocking ``log_event`` calls through ``client`` under ``topic``."""

    def __init__(self, client: Any, topic: str):
        self.client = client
        self.topic = topic
        self._last: concurrent.futures.Future | None = None
        self._error: BaseException | None = None  # the first send that failed

    def send(self, message: dict[str, Any]) -> None:
        """Queue ``message`` (msgpack-serializable) after the events already queued."""
        previous = self._last

        async def deliver() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):  # kept in _error, raised by flush
                    await asyncio.wrap_future(previous)
            try:
                await self.client.scheduler.log_event(topic=self.topic, msg=message)
            except Exception as error:
                self._error = self._error or error
                raise

        self._last = asyncio.run_coroutine_threadsafe(deliver(), self.client.loop.asyncio_loop)

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Wait until every event queued so far is in the scheduler's log; raise the
        first error a send met (a lost scheduler, say), once."""
        if self._last is not None:
            with contextlib.suppress(Exception):  # reported below, the first one
                self._last.result(timeout)
            if not self._last.done():
                raise TimeoutError(f"fit events not in the scheduler's log after {timeout} s")
        error, self._error = self._error, None
        if error is not None:
            raise error

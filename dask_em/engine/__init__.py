"""The engine: the only code in dask_em that knows Dask.

- :mod:`~dask_em.engine.passes`: :class:`EMEngine`, data placement, one pass over the
  data as one graph (a task per block, a fixed reduction tree), spans and events;
- :mod:`~dask_em.engine.monitoring`: a fit's spans, events and log lines;
- :mod:`~dask_em.engine.direct`: opt-in passes over persisted data without graphs (each
  worker runs its blocks, called through ``Client.run``);
- :mod:`~dask_em.engine.reduction`: that tree, its lower levels as tasks and its root
  in the client;
- :mod:`~dask_em.engine.events`: the fit's events, sent in order without waiting;
- :mod:`~dask_em.engine.predict`: prediction graphs, one way for every model;
- :mod:`~dask_em.engine.tasks`: the functions that run inside those tasks;
- :mod:`~dask_em.engine.speculation`: whether accelerated runs evaluate a proposal's
  fallback in its pass (``dask_em.speculate``);
- :mod:`~dask_em.engine.stalls`: a wait on workers paused for memory stops with
  :class:`~dask_em.exceptions.MemoryStallError` after ``dask_em.stall-timeout`` seconds;
- :mod:`~dask_em.engine.cluster`: the active client, and the cluster the command line
  starts or joins (:func:`open_client`: a scheduler's client within a timeout, with
  workers; :mod:`~dask_em.engine.addresses` says what listens at a bad address).

The EM loop that drives the passes is :mod:`dask_em.em` (pure Python).
"""

from dask_em.engine.cluster import (
    DEFAULT_CONNECT_TIMEOUT,
    active_client,
    cluster_errors,
    connect,
    open_client,
    run_on_one_worker,
    stall_timeout,
    wait_for_workers,
)
from dask_em.engine.monitoring import EVENT_TOPIC
from dask_em.engine.passes import (
    AUTO_PERSIST_SHARE,
    CACHE_MODES,
    LOCAL_FIT_BYTES,
    EMEngine,
)
from dask_em.engine.predict import apply_blocks, as_float, block_results
from dask_em.engine.stalls import DEFAULT_STALL_TIMEOUT, STALL_TIMEOUT_KEY
from dask_em.seeds import blockwise_seeds  # one seed per block (benchmarks import it here)

__all__ = [
    "AUTO_PERSIST_SHARE",
    "CACHE_MODES",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_STALL_TIMEOUT",
    "EVENT_TOPIC",
    "LOCAL_FIT_BYTES",
    "STALL_TIMEOUT_KEY",
    "EMEngine",
    "active_client",
    "apply_blocks",
    "as_float",
    "block_results",
    "blockwise_seeds",
    "cluster_errors",
    "connect",
    "open_client",
    "run_on_one_worker",
    "stall_timeout",
    "wait_for_workers",
]

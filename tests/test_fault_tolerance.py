"""Fault tolerance: a worker process killed in the middle of a fit.

Each test starts its own cluster (2 worker processes), fits once undisturbed, then
fits again and SIGKILLs a worker while it holds E-step tasks of a later iteration.
Dask reschedules those tasks and recomputes whatever the dead worker held (in memory
mode: its share of the persisted data, from the Zarr store), and the fit must end
exactly where the undisturbed one did: the blocks and the reduction tree are fixed, so
the result does not depend on which worker computed what.  The fit must not need the
nanny's replacement worker (under heavy CPU load it has been seen to take longer than
a minute to arrive), so nothing here waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_em import GaussianMixture

pytestmark = pytest.mark.slow

ROWS, FEATURES, CHUNK_ROWS = 200_000, 4, 10_000
TRUE_MEANS = np.array([[-2.0, 0, 0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 2.0]])
SETTINGS = dict(random_state=0, tol=1e-9, max_iter=8)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fault") / "X.zarr")
    rng = np.random.default_rng(11)
    labels = rng.choice(3, size=ROWS, p=[0.5, 0.3, 0.2])
    X = TRUE_MEANS[labels] + rng.standard_normal((ROWS, FEATURES))
    zarr.create_array(path, data=X, chunks=(CHUNK_ROWS, FEATURES))
    return path


@pytest.fixture
def own_client():
    """A cluster for one test: the tests kill its workers."""
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=":0", memory_limit="2GiB"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


class _KillOnFirstEStep(SchedulerPlugin):
    """Once armed, SIGKILLs the worker that the first E-step task is assigned to.

    It runs in the scheduler, on the scheduler's own task transitions, so the kill
    follows the assignment at once, with no polling.  ``victim`` gets the worker's
    ``address``, ``pid``, the E-step keys it was processing (``estep``) and every key it
    held (``held``).
    """

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.armed = False
        self.victim: dict = {}

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if not self.armed or finish != "processing" or "estep-gmm" not in str(key):
            return
        worker = self.scheduler.tasks[key].processing_on
        if worker is None or not worker.pid:
            return
        self.armed = False
        self.victim.update(
            address=worker.address,
            pid=worker.pid,
            estep=[t.key for t in worker.processing if "estep-gmm" in str(t.key)],
            held=[t.key for t in worker.has_what],
        )
        os.kill(worker.pid, signal.SIGKILL)


class _ArmAfterIteration(logging.Handler):
    """Arms ``plugin`` when the engine logs the end of EM iteration ``iteration``."""

    def __init__(self, iteration: int, plugin: _KillOnFirstEStep) -> None:
        super().__init__(logging.INFO)
        self.marker = f" iteration {iteration}:"
        self.plugin = plugin

    def emit(self, record: logging.LogRecord) -> None:
        if self.marker in record.getMessage():
            self.plugin.armed = True


@contextlib.contextmanager
def kill_a_busy_worker_after(client, iteration: int):
    """SIGKILL the first worker given an E-step task once ``iteration`` is done.

    Yields a dict that is filled in with the victim (see :class:`_KillOnFirstEStep`).
    """
    scheduler = client.cluster.scheduler  # a LocalCluster's scheduler runs in this process
    plugin = _KillOnFirstEStep(scheduler)
    scheduler.add_plugin(plugin, name="kill-on-first-estep")
    handler = _ArmAfterIteration(iteration, plugin)
    engine_logger = logging.getLogger("dask_em.engine")
    previous_level = engine_logger.level
    engine_logger.addHandler(handler)
    engine_logger.setLevel(logging.INFO)
    try:
        yield plugin.victim
    finally:
        plugin.armed = False
        engine_logger.removeHandler(handler)
        engine_logger.setLevel(previous_level)
        scheduler.remove_plugin(name="kill-on-first-estep")


@pytest.mark.parametrize("cache", ["stream", "memory"])
def test_fit_survives_a_killed_worker_with_the_same_result(own_client, store, cache):
    client = own_client
    with client.as_current():
        undisturbed = GaussianMixture(3, cache=cache, **SETTINGS).fit(store)
        assert undisturbed.n_iter_ >= 5  # long enough to be interrupted in the middle
        with kill_a_busy_worker_after(client, iteration=2) as victim:
            interrupted = GaussianMixture(3, cache=cache, **SETTINGS).fit(store)

    assert victim, "no worker was killed during the fit"
    assert victim["estep"]  # it died with E-step tasks of iteration 3 on its hands
    if cache == "memory":  # and with its share of the persisted data
        assert any("from-zarr" in str(key) for key in victim["held"])
    assert victim["address"] not in client.scheduler_info()["workers"]

    assert interrupted.data_placement_ == undisturbed.data_placement_ == cache
    assert interrupted.n_iter_ == undisturbed.n_iter_
    assert interrupted.lower_bounds_ == undisturbed.lower_bounds_
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(interrupted, name), getattr(undisturbed, name))


def test_a_fit_on_in_memory_data_survives_a_killed_worker(own_client, store):
    """NumPy data is scattered to the workers from this process (no lineage on the
    cluster): the blocks the dead worker held are sent again, and the fit ends where
    the undisturbed one did."""
    client = own_client
    # a dask array over NumPy (NumPy itself this small would be fitted in this process)
    X = da.from_array(zarr.open_array(store, mode="r")[:], chunks=(CHUNK_ROWS, FEATURES))
    with client.as_current():
        undisturbed = GaussianMixture(3, cache="memory", **SETTINGS).fit(X)
        with kill_a_busy_worker_after(client, iteration=2) as victim:
            interrupted = GaussianMixture(3, cache="memory", **SETTINGS).fit(X)
    assert victim and victim["estep"]
    assert any("scattered" in str(key) for key in victim["held"])
    assert interrupted.n_iter_ == undisturbed.n_iter_
    assert interrupted.lower_bounds_ == undisturbed.lower_bounds_
    np.testing.assert_array_equal(interrupted.means_, undisturbed.means_)


class _KillAWorkerAfterIteration(logging.Handler):
    """SIGKILLs one worker of ``client`` when the engine logs the end of ``iteration``
    (a fit of direct passes runs no E-step tasks to wait for)."""

    def __init__(self, client, iteration: int) -> None:
        super().__init__(logging.INFO)
        self.marker = f" iteration {iteration}:"
        self.workers = client.cluster.scheduler.workers
        self.victim: dict = {}
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if self.victim or self.marker not in record.getMessage():
            return
        address, worker = sorted(self.workers.items())[0]
        self.victim.update(address=address, held=[t.key for t in worker.has_what])
        os.kill(worker.pid, signal.SIGKILL)


def fit_undisturbed_then_killed(client, store: str, source: str):
    """``(undisturbed fit, fit during which a worker was killed after iteration 2, the
    killer)``, both of the store's data (``source``: read from the store, or held in
    this process)."""
    X = store
    if source == "in memory":
        X = da.from_array(zarr.open_array(store, mode="r")[:], chunks=(CHUNK_ROWS, FEATURES))
    with client.as_current():
        undisturbed = GaussianMixture(3, cache="memory", **SETTINGS).fit(X)
        handler = _KillAWorkerAfterIteration(client, iteration=2)
        engine_logger = logging.getLogger("dask_em.engine")
        previous_level = engine_logger.level
        engine_logger.addHandler(handler)
        engine_logger.setLevel(logging.INFO)
        try:
            interrupted = GaussianMixture(3, cache="memory", **SETTINGS).fit(X)
        finally:
            engine_logger.removeHandler(handler)
            engine_logger.setLevel(previous_level)
    return undisturbed, interrupted, handler


def assert_same_fit(interrupted, undisturbed) -> None:
    assert interrupted.n_iter_ == undisturbed.n_iter_
    assert interrupted.lower_bounds_ == undisturbed.lower_bounds_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(interrupted, name), getattr(undisturbed, name))


@pytest.mark.parametrize("source", ["store", "in memory"])
def test_a_fit_of_direct_passes_survives_a_killed_worker(own_client, store, source):
    """Direct passes (``dask_em.direct-passes``): the pass after the kill fails on the
    dead worker, runs as a graph (which recovers the blocks: from the store, or
    sent again from this process), and the fit ends where the undisturbed one did."""
    with dask.config.set({"dask_em.direct-passes": True}):
        undisturbed, interrupted, handler = fit_undisturbed_then_killed(own_client, store, source)
    assert handler.victim and handler.victim["held"]  # it died holding blocks
    assert any("direct pass failed" in line for line in handler.lines)  # then a graph
    assert_same_fit(interrupted, undisturbed)


@pytest.mark.parametrize("source", ["store", "in memory"])
def test_a_fit_of_graph_passes_survives_a_worker_killed_between_passes(own_client, store, source):
    """Between two graph passes the workers still hold the last pass's results (they
    are released once the next pass is sent, dask_em.engine.passes): killed then, a
    worker takes those with it, and the scheduler may start them again (blocks read
    from the store) or forget them (blocks sent from this process).  The next pass
    recovers the blocks and the fit ends where the undisturbed one did."""
    undisturbed, interrupted, handler = fit_undisturbed_then_killed(own_client, store, source)
    held = [str(key) for key in handler.victim.get("held", [])]
    assert any("estep-gmm" in key for key in held), held  # it died holding a pass's results
    assert_same_fit(interrupted, undisturbed)


def slow_block_sum(_shared, X, w):
    import time

    time.sleep(0.5)
    return float(X.sum())


def test_a_worker_killed_during_a_direct_pass_leaves_the_pass_to_a_graph(own_client):
    """The kill lands while the workers compute: the call to the dead worker
    fails (it does not wait for ever), and the graph pass that replaces it recomputes
    the lost blocks."""
    import threading

    from dask_em.engine import EMEngine

    client = own_client
    X = da.arange(40_000.0, chunks=4_000).reshape(10_000, 4).rechunk((1_000, 4))
    with client.as_current(), dask.config.set({"dask_em.direct-passes": True}):
        engine = EMEngine(X, model="test", cache="memory", client=client)
        first = engine.map_reduce(slow_block_sum, lambda *p: sum(p), None)
        assert engine._direct is not None
        pid = sorted(client.cluster.scheduler.workers.values(), key=str)[0].pid
        threading.Timer(0.2, os.kill, (pid, signal.SIGKILL)).start()
        second = engine.map_reduce(slow_block_sum, lambda *p: sum(p), None)
        engine.release()
    assert first == second == float(np.arange(40_000.0).sum())
    assert engine._direct is None and engine._direct_failures == 1


def test_a_direct_pass_on_paused_workers_becomes_a_graph_pass_that_is_watched():
    """A worker paused for memory does not run a direct pass: the pass runs as a graph,
    which waits on the paused workers and stops with the stall error.  (The workers'
    memory monitor is off, so that the pause set here stays.)"""
    from distributed.core import Status

    from dask_em import MemoryStallError
    from dask_em.engine import EMEngine

    def set_status(status, dask_worker=None):
        dask_worker.status = status

    X = da.ones((4_000, 2), chunks=(1_000, 2))
    config = {"dask_em.direct-passes": True, "dask_em.stall-timeout": 2}
    with (
        dask.config.set({"distributed.worker.memory.pause": False}),
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
        client.as_current(),
        dask.config.set(config),
    ):
        engine = EMEngine(X, model="test", cache="memory", client=client)
        assert engine.map_reduce(slow_block_sum, lambda *p: sum(p), None) == 8_000.0
        client.run(set_status, Status.paused)
        try:
            with pytest.raises(MemoryStallError):
                engine.map_reduce(slow_block_sum, lambda *p: sum(p), None)
        finally:
            client.run(set_status, Status.running)
        assert engine._direct_failures == 1
        assert engine.map_reduce(slow_block_sum, lambda *p: sum(p), None) == 8_000.0
        assert engine._direct is not None  # direct again once the workers run
        engine.release()


def test_a_worker_lost_before_a_direct_pass_leaves_that_pass_to_a_graph(own_client):
    """The scheduler already knows the worker is gone when the pass starts."""
    import time

    from dask_em.engine import EMEngine

    client = own_client
    X = da.arange(40_000.0, chunks=4_000).reshape(10_000, 4).rechunk((1_000, 4))
    with client.as_current(), dask.config.set({"dask_em.direct-passes": True}):
        engine = EMEngine(X, model="test", cache="memory", client=client)
        first = engine.map_reduce(slow_block_sum, lambda *p: sum(p), None)
        victim = sorted(client.cluster.scheduler.workers.values(), key=str)[0]
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while victim.address in client.scheduler_info()["workers"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # the direct pass's call still goes to the lost worker's address, and the
        # scheduler (in this process) gives up connecting after this timeout (30 s by
        # default) before the pass runs as a graph
        with dask.config.set({"distributed.comm.timeouts.connect": "5s"}):
            second = engine.map_reduce(slow_block_sum, lambda *p: sum(p), None)
        engine.release()
    assert first == second == float(np.arange(40_000.0).sum())
    assert engine._direct_failures == 1

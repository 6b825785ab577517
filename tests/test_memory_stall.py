"""Issue #16 item 4, no silent stall: a fit whose workers are paused for memory stops.

Observed: workers paused at their memory limit (store chunks too large for the worker),
and ``dask-em fit`` printed nothing and never exited.  Now, when no task of a pass has
finished for ``dask_em.stall-timeout`` seconds (``--stall-timeout``) while workers are
paused, the fit raises :class:`dask_em.MemoryStallError`, whose message names the block
size against the workers' memory limit (exit 3 on the command line).

The decision and the message are tested without a cluster; the stalls themselves on a
real LocalCluster of one worker process with a small ``memory_limit`` and real Zarr
stores.  Those clusters do not spill and are never terminated for memory (Dask config),
so that a worker over its pause threshold stays paused instead of writing its data to
disk or being killed; what keeps its memory high is held on purpose: the blocks of
``cache="memory"`` (more data than the worker may hold), or another array.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr

from dask_em import GaussianMixture, MemoryStallError
from dask_em.cli import build_parser
from dask_em.engine import DEFAULT_STALL_TIMEOUT, STALL_TIMEOUT_KEY, stall_timeout
from dask_em.engine.stalls import Blocks, StallWatch, WorkerMemory, stall_message, watch
from dask_em.exceptions import ClusterError

MB = 10**6

#: A worker that stays paused once over its pause threshold (no spilling, no restart)
#: and pauses within 10 ms of crossing it (not 100 ms: several uncompressed blocks
#: could be read in that time).
STAYS_PAUSED = {
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.terminate": False,
    "distributed.worker.memory.monitor-interval": "10ms",
}


# -- the decision, without a cluster ------------------------------------------------------
def test_a_stall_is_paused_workers_idle_for_the_pass_and_no_progress_for_the_timeout():
    watch_ = StallWatch(timeout=10.0)
    stalled = dict(paused=True, running_busy=False, progressed=False)
    assert not watch_.stalled(0.0, **stalled)
    assert not watch_.stalled(9.0, **stalled)
    assert watch_.stalled(10.0, **stalled)
    for reset in ("progressed", "running_busy"):  # a finished task, a running worker's task
        watch_ = StallWatch(timeout=10.0)
        watch_.stalled(0.0, **stalled)
        assert not watch_.stalled(5.0, **(stalled | {reset: True}))
        assert not watch_.stalled(6.0, **stalled)  # counted again from the next look
        assert not watch_.stalled(15.0, **stalled)
        assert watch_.stalled(16.0, **stalled)
    watch_ = StallWatch(timeout=10.0)
    watch_.stalled(0.0, **stalled)
    assert not watch_.stalled(5.0, **(stalled | {"paused": False}))  # workers resumed
    assert not watch_.stalled(30.0, paused=False, running_busy=False, progressed=False)


class FakeScheduler:
    """What :func:`watch` asks of a client: workers (the scheduler's identity), processing,
    cancel."""

    def __init__(self, statuses: dict[str, str], processing: dict[str, tuple]):
        self.statuses, self.processing_now, self.cancelled = statuses, processing, []

    def sync(self, function, *args, **kwargs):  # the client runs a call to the scheduler
        return function(*args, **kwargs)

    @property
    def scheduler(self):
        return types.SimpleNamespace(identity=self.identity)

    def identity(self, n_workers: int = -1):
        workers = {
            address: {"status": status, "memory_limit": 400 * MB, "nthreads": 1,
                      "metrics": {"memory": 390 * MB}}
            for address, status in self.statuses.items()
        }  # fmt: skip
        return {"workers": workers}

    def processing(self):
        return self.processing_now

    def cancel(self, futures):
        self.cancelled.extend(futures)

    def run_on_scheduler(self, function, **kwargs):
        """``function`` run on a stand-in of the scheduler's state: each worker's
        ``executing`` (tasks running there, as its heartbeat told)."""

        class Task:
            def __init__(self, key):
                self.key = key

        workers = {
            address: types.SimpleNamespace(executing={Task(key): 1.0 for key in keys})
            for address, keys in getattr(self, "executing_now", {}).items()
        }
        return function(dask_scheduler=types.SimpleNamespace(workers=workers), **kwargs)


class Pending:
    def done(self) -> bool:
        return False


def run_watch(scheduler: FakeScheduler, looks: int, timeout: float = 4.0) -> float:
    """Run :func:`watch` for at most ``looks`` polls (1 s each on a fake clock); returns
    the fake time it raised at, or inf when the wait ended first."""
    clock = {"now": 0.0, "looks": 0}

    def wait(seconds: float) -> bool:
        clock["now"] += seconds
        clock["looks"] += 1
        return clock["looks"] > looks

    def error(workers):
        return MemoryStallError(f"{sum(w.paused for w in workers)} paused")

    try:
        watch(scheduler, wait, [Pending()], {"estep-gmm-ab"}, error, timeout=timeout,
              clock=lambda: clock["now"])  # fmt: skip
    except MemoryStallError:
        return clock["now"]
    return float("inf")


def test_watch_stops_a_wait_whose_tasks_sit_on_paused_workers_and_cancels_it(caplog):
    stuck = FakeScheduler(
        {"w1": "paused", "w2": "paused"},
        {"w1": (("estep-gmm-ab", 0, 0),), "w2": (("estep-gmm-ab", 1, 0), "other-task")},
    )
    with caplog.at_level(logging.INFO, logger="dask_em.engine"):
        assert run_watch(stuck, looks=50) == 5.0  # polls of 1 s, stalled looks from 1 to 5 s
    assert len(stuck.cancelled) == 1
    said = [r.getMessage() for r in caplog.records if "paused for memory" in r.getMessage()]
    assert said == ["2 of 2 workers paused for memory, none running a task of the pass: it "
                    "stops unless a task finishes within 4 s"]  # fmt: skip
    all_queued = FakeScheduler({"w1": "paused"}, {"w1": ()})  # nothing could even start
    assert run_watch(all_queued, looks=50) == 5.0


def test_watch_waits_on_while_a_running_worker_has_a_task_of_the_wait_or_none_is_paused():
    busy = FakeScheduler(
        {"w1": "paused", "w2": "running"},
        {"w1": (("estep-gmm-ab", 0, 0),), "w2": (("estep-gmm-ab", 1, 0),)},
    )
    assert run_watch(busy, looks=20) == float("inf")
    healthy = FakeScheduler({"w1": "running"}, {})
    assert run_watch(healthy, looks=20) == float("inf")
    other_work = FakeScheduler({"w1": "paused", "w2": "running"}, {"w2": ("other-task",)})
    assert run_watch(other_work, looks=20) == 5.0  # not a task of the wait


def test_watch_waits_on_while_a_paused_worker_finishes_a_task_of_the_wait():
    # a paused worker still finishes the task it runs; a pass's task may cover all the
    # blocks of that worker (grouped passes), longer than the stall timeout
    finishing = FakeScheduler({"w1": "paused"}, {"w1": (("estep-gmm-ab", 0),)})
    finishing.executing_now = {"w1": [("estep-gmm-ab", 0), "other-task"]}
    assert run_watch(finishing, looks=20) == float("inf")
    finishing.executing_now = {"w1": ["other-task"]}  # not a task of the wait
    assert run_watch(finishing, looks=20) == 5.0


def test_watch_counts_a_task_that_left_the_workers_as_progress():
    scheduler = FakeScheduler({"w1": "paused"}, {"w1": (("estep-gmm-ab", 0, 0),)})
    clock = {"now": 0.0}

    def wait(seconds: float) -> bool:
        clock["now"] += seconds
        if clock["now"] == 3.0:  # block 0 finished, block 1 started, on the paused worker
            scheduler.processing_now = {"w1": (("estep-gmm-ab", 1, 0),)}
        return clock["now"] >= 7.0

    # stalled looks at 1-2 s and 4-7 s: never 4 s in a row (without the change: 5 s)
    watch(scheduler, wait, [Pending()], {"estep-gmm-ab"}, MemoryStallError, timeout=4.0,
          clock=lambda: clock["now"])  # fmt: skip


BLOCK = Blocks(
    block_bytes=256 * MB, block_rows=4_000_000, n_features=8, dtype="float64",
    data_bytes=1024 * MB, n_blocks=4,
)  # fmt: skip


def worker(status: str = "paused", limit: int = 256 * MB) -> WorkerMemory:
    return WorkerMemory("tcp://w", status, limit, memory=250 * MB, nthreads=1)


def test_the_message_names_the_block_size_against_the_memory_limit_and_what_to_do():
    text = stall_message(BLOCK, [worker(), worker("running")], 120.0, persisting=False)
    assert text.startswith("workers paused for memory: no block of the pass finished in 120 s")
    assert "1 of 2 workers paused, using up to 250 MB" in text
    assert "a block is 256 MB (4,000,000 rows x 8 float64)" in text
    assert "each worker may hold 256 MB (pause at 80%)" in text
    # at most a quarter of 80 % of 256 MB per block: 1/5 of 4,000,000 rows
    assert "rechunk the store into smaller chunks (e.g. 1/5: 800,000 rows, 51 MB)" in text
    assert text.endswith("or give the workers more memory (--memory-limit)")
    small = Blocks(1 * MB, 10_000, 8, "float64", 4 * MB, 4)
    text = stall_message(small, [worker()], 30.0, persisting=False)
    assert "rechunk" not in text and "free the memory the workers hold" in text
    text = stall_message(BLOCK, [worker()], 30.0, persisting=True)
    assert 'while holding the data in the cluster (cache="memory"): no block was stored' in text
    assert "the data is 1,024 MB in 4 blocks, a block is 256 MB" in text
    assert 'cache="stream", --cache stream' in text
    assert "pause at" not in stall_message(BLOCK, [worker()], 1.0, persisting=False, pause=None)


def test_the_stall_timeout_is_dask_config_in_seconds_and_0_waits_forever():
    assert stall_timeout() == DEFAULT_STALL_TIMEOUT == 120.0
    for value, seconds in ((30, 30.0), ("2 minutes", 120.0), ("45", 45.0), (0, None),
                           (None, None), (False, None)):  # fmt: skip
        with dask.config.set({STALL_TIMEOUT_KEY: value}):
            assert stall_timeout() == seconds
    with dask.config.set({STALL_TIMEOUT_KEY: -1}), pytest.raises(ValueError, match=">= 0"):
        stall_timeout()
    assert issubclass(MemoryStallError, ClusterError)  # the command line's exit 3


def test_the_command_line_takes_a_stall_timeout():
    args = ["fit", "gmm", "in.zarr", "-k", "2", "--out", "m.zarr"]
    assert build_parser().parse_args(args).stall_timeout is None  # the config decides
    assert build_parser().parse_args([*args, "--stall-timeout", "5"]).stall_timeout == 5.0


# -- real stalls on a real cluster --------------------------------------------------------
@pytest.fixture
def big_store(tmp_path):
    """4 blocks of 100 MB (1,562,500 rows x 8 float64), removed after the test."""
    path = write_store(tmp_path / "big.zarr", n_blocks=4, block_rows=1_562_500)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_store(path: Path, n_blocks: int, block_rows: int, n_features: int = 8) -> Path:
    """A Zarr array of ``n_blocks`` chunks of ``block_rows`` rows, uncompressed (quick to
    write; a chunk read takes its full size in memory)."""
    store = zarr.create_array(
        str(path), shape=(n_blocks * block_rows, n_features), chunks=(block_rows, n_features),
        dtype="f8", compressors=None,
    )  # fmt: skip
    block = np.random.default_rng(0).standard_normal((block_rows, n_features))
    for i in range(n_blocks):
        store[i * block_rows : (i + 1) * block_rows] = block
    return path


def small_cluster(memory_limit: str):
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, memory_limit=memory_limit,
        dashboard_address=":0", silence_logs=logging.CRITICAL,
    )  # fmt: skip


@pytest.mark.slow
def test_an_oversized_block_held_in_memory_stops_with_the_memory_message(big_store):
    """cache="memory" of 4 blocks of 100 MB on one worker that pauses at 200 MB: the
    blocks it holds keep it paused, so the last blocks are never stored."""
    from distributed import Client

    store = big_store
    with dask.config.set(STAYS_PAUSED | {STALL_TIMEOUT_KEY: 3}):
        with small_cluster("250MB") as cluster, Client(cluster):
            with pytest.raises(MemoryStallError) as raised:
                GaussianMixture(2, cache="memory", max_iter=2).fit(str(store))
    text = str(raised.value)
    assert "no block was stored in 3 s" in text
    assert "a block is 100 MB (1,562,500 rows x 8 float64)" in text
    assert "each worker may hold 250 MB (pause at 80%)" in text
    assert "rechunk the store into smaller chunks (e.g. 1/2: 781,250 rows, 50 MB)" in text


@pytest.mark.slow
def test_a_pass_on_a_worker_filled_by_other_data_stops_with_the_memory_message(tmp_path):
    """cache="stream": a 240 MB array held on the worker keeps it paused; the first pass
    over a small store never starts."""
    from distributed import Client, wait

    store = write_store(tmp_path / "small.zarr", n_blocks=2, block_rows=5_000)
    with dask.config.set(STAYS_PAUSED | {STALL_TIMEOUT_KEY: 3}):
        with small_cluster("250MB") as cluster, Client(cluster) as client:
            held = client.submit(np.ones, 30_000_000)  # 240 MB of task result
            wait([held], timeout=30)
            deadline = time.monotonic() + 30
            while not any(
                w["status"] == "paused" for w in client.scheduler_info()["workers"].values()
            ):
                assert time.monotonic() < deadline, "the worker did not pause"
                time.sleep(0.2)
            with pytest.raises(MemoryStallError) as raised:
                GaussianMixture(2, cache="stream", max_iter=2).fit(str(store))
            assert held.status == "finished"  # only the fit's own tasks are cancelled
    text = str(raised.value)
    assert text.startswith("workers paused for memory: no block of the pass finished in 3 s")
    assert "a block is 0.3 MB (5,000 rows x 8 float64)" in text
    assert "free the memory the workers hold" in text


@pytest.mark.slow
def test_the_command_line_exits_3_with_one_line_instead_of_stalling(tmp_path, big_store):
    store = big_store
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env |= {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
        for key, value in STAYS_PAUSED.items()
    }
    command = [
        sys.executable, "-m", "dask_em.cli", "fit", "gmm", str(store), "-k", "2",
        "--out", str(tmp_path / "model.zarr"), "--cache", "memory", "--n-workers", "1",
        "--threads-per-worker", "1", "--memory-limit", "250MB", "--stall-timeout", "3",
        "--dashboard-address", ":0",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,  # its LocalCluster's workers too, killed as one group
    )  # fmt: skip
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("dask-em fit stalled: still running after 120 s")
    assert process.returncode == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dask-em: cluster error: workers paused for memory while")
    assert "a block is 100 MB (1,562,500 rows x 8 float64)" in lines[0]
    assert "each worker may hold 250 MB" in lines[0]
    assert not (tmp_path / "model.zarr").exists()


@pytest.mark.slow
def test_a_healthy_fit_with_a_short_stall_timeout_runs_as_without_one(client, monkeypatch):
    """Polls every 10 ms (a 0.04 s timeout) on a cluster whose workers never pause: the
    fit is the one made without the watch (no stall is seen, the result is the same)."""
    import dask.array as da

    from dask_em.engine import stalls
    from tests.helpers import make_blobs

    looks = []
    look_at_cluster = stalls.look_at_cluster
    monkeypatch.setattr(
        stalls, "look_at_cluster", lambda *a: looks.append(1) or look_at_cluster(*a)
    )
    X, _, _ = make_blobs(n_samples=40_000, n_features=4, n_components=3, seed=1)
    X = da.from_array(X, chunks=(5_000, 4))
    fits = []
    for timeout in (0.04, 0):
        with dask.config.set({STALL_TIMEOUT_KEY: timeout}):
            model = GaussianMixture(3, cache="stream", random_state=0, max_iter=20)
            fits.append(model.fit(X))
    watched, unwatched = fits
    assert looks, "no pass lasted a poll: the watch was not exercised"
    np.testing.assert_array_equal(watched.means_, unwatched.means_)
    assert watched.n_iter_ == unwatched.n_iter_

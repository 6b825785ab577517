"""BLAS threads inside E-step tasks: limited to the task's share, whatever is exported.

The cluster here is started with ``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=2``
in the environment, as SLURM job scripts do; distributed's nanny then hands 2 to each
worker process instead of its default 1 (the cause of the oversubscription).
"""

from __future__ import annotations

import threading

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from threadpoolctl import threadpool_info, threadpool_limits

from dask_em import GaussianMixture, em
from dask_em.engine import EMEngine
from dask_em.engine.threads import available_cpus, task_share, task_thread_limit
from dask_em.families.gaussian import GaussianFamily
from dask_em.thread_pools import one_blas_thread

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def blas_threads() -> int:
    """Largest thread count of the BLAS pools loaded in this process."""
    return max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")


def report_threads(shared, X, w):
    return {"threads": [blas_threads()]}


def concatenate(*parts):
    return {"threads": [t for part in parts for t in part["threads"]]}


@pytest.fixture(scope="module")
def exported_client():
    with pytest.MonkeyPatch.context() as patch:
        for name in THREAD_VARIABLES:
            patch.setenv(name, "2")
        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                memory_limit="1GiB",
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client


@pytest.mark.slow
def test_exported_variables_reach_the_workers(exported_client):
    # Without the limit a task sees the exported 2 threads: this is what the engine fixes.
    seen = exported_client.run(blas_threads)
    assert sorted(seen.values()) == [2, 2]


def test_estep_tasks_run_with_their_share_of_blas_threads(exported_client):
    X = da.zeros((64, 3), chunks=(8, 3))
    engine = EMEngine(X, model="threads", cache="stream")
    threads = engine.map_reduce(report_threads, concatenate, None)["threads"]
    # 2 workers x 1 thread share this host's CPUs: one BLAS thread per task on 2 CPUs
    expected = max(1, available_cpus() // 2)
    assert threads == [expected] * 8
    # and the pools are back to the exported value once no task runs
    assert sorted(exported_client.run(blas_threads).values()) == [2, 2]


def test_share_outside_a_worker_is_the_process_cpus():
    assert task_share() == available_cpus()


def test_limit_is_held_while_any_task_runs_and_then_restored():
    before = blas_threads()
    with task_thread_limit(1):
        with task_thread_limit(1):
            assert blas_threads() == 1
        assert blas_threads() == 1  # the outer task still runs
    assert blas_threads() == before


def test_a_fit_drives_its_passes_with_one_blas_thread_and_restores_the_limit():
    # the M-step's small D x D algebra between passes: threads only cost there
    seen = []
    X = np.random.default_rng(0).normal(size=(400, 3))
    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() == 2
        GaussianMixture(2, max_iter=3, random_state=0).fit(
            X, callbacks=[lambda record, params: seen.append(blas_threads())]
        )
        assert blas_threads() == 2
    assert seen == [1, 1, 1]


class RecordingFamily(GaussianFamily):
    """A Gaussian family that notes the BLAS threads of each M-step."""

    def __init__(self, seen: list) -> None:
        super().__init__("full")
        self.seen = seen

    def m_step(self, stats):
        self.seen.append(("m-step", blas_threads()))
        return super().m_step(stats)


def test_the_em_loop_takes_one_blas_thread_for_its_own_steps_not_for_the_pass():
    # OpenBLAS hands even a 2 x 2 triangular solve to its threads: the loop's M-steps and
    # proposals run with one, the pass (the caller's map_reduce) with the caller's
    seen: list = []
    family = RecordingFamily(seen)
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(200, 2)), rng.normal(3.0, 1.0, size=(200, 2))])
    start = family.make_params(
        np.array([0.5, 0.5]),
        np.array([[0.5, 0.0], [2.0, 2.0]]),
        covariances=np.stack([np.eye(2)] * 2),
    )

    def map_reduce(block_func, merge, shared, *, stage):
        seen.append(("pass", blas_threads()))
        return merge(*(block_func(shared, block, None) for block in np.array_split(X, 3)))

    with threadpool_limits(limits=2, user_api="blas"):
        result = em.run(map_reduce, family, start, max_iter=6, tol=0.0, accelerate="squarem")
        assert blas_threads() == 2  # restored
    assert result.passes == 6
    assert {threads for kind, threads in seen if kind == "pass"} == {2}
    assert {threads for kind, threads in seen if kind == "m-step"} == {1}


def test_one_blas_thread_is_restored_by_the_last_holder_only():
    # an estimator's fit holds the limit around its loop, which takes it again each pass;
    # a fit driven from another thread meanwhile enters and leaves: only the outermost
    # holder's exit restores the pools
    def enter_and_leave() -> None:
        with one_blas_thread():
            pass

    with threadpool_limits(limits=2, user_api="blas"):
        with one_blas_thread():
            with one_blas_thread():
                assert blas_threads() == 1
            assert blas_threads() == 1
            other = threading.Thread(target=enter_and_leave)
            other.start()
            other.join()
            assert blas_threads() == 1
        assert blas_threads() == 2


POOL_LOADED_LATE = """
import json
import numpy
from threadpoolctl import threadpool_info
from dask_em.engine.threads import task_thread_limit

with task_thread_limit(1):  # the first limit: only NumPy's BLAS is loaded
    pass
before = {pool["filepath"] for pool in threadpool_info()}
import sklearn.cluster  # loads an OpenMP runtime (and SciPy's BLAS)
with task_thread_limit(1):
    inside = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()}
print(json.dumps({"new": sorted(set(inside) - before), "inside": inside}))
"""


def test_a_pool_loaded_after_the_first_limit_is_limited_too():
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, "2")}
    out = subprocess.run(
        [sys.executable, "-c", POOL_LOADED_LATE], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    if not result["new"]:
        pytest.skip("no thread pool was loaded by the later import here")
    assert set(result["inside"].values()) == {1}, result


def test_direct_passes_run_with_their_share_of_blas_threads(exported_client):
    X = da.zeros((64, 3), chunks=(8, 3))
    with dask.config.set({"dask_em.direct-passes": True}):
        engine = EMEngine(X, model="threads", cache="memory")
        threads = engine.map_reduce(report_threads, concatenate, None)["threads"]
        assert engine._direct is not None  # the pass ran directly, not as a graph
    engine.release()
    assert threads == [max(1, available_cpus() // 2)] * 8
    assert sorted(exported_client.run(blas_threads).values()) == [2, 2]

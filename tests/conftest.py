"""Shared fixtures: one real LocalCluster with 2 worker processes for the session."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

ROOT = Path(__file__).resolve().parent.parent


def _kernel_cache_is_empty() -> bool:
    """No compiled E-step kernel cached for this checkout yet (a fresh clone): numba
    writes its cache next to the sources' ``__pycache__``, or under NUMBA_CACHE_DIR."""
    pattern = "gaussian_compiled._full_block-*.nbi"
    if os.environ.get("NUMBA_CACHE_DIR"):
        return not any(Path(os.environ["NUMBA_CACHE_DIR"]).rglob(pattern))
    return not any((ROOT / "dask_em" / "families" / "__pycache__").glob(pattern))


def pytest_sessionstart(session):
    """On an empty kernel cache, compile the suite's main kernels once, in two processes
    side by side (``tests/warm_kernels.py``), before any test process starts: otherwise
    the first tests wait on compilations interleaved with their own work (a cold run's
    tests 846 s against 668 s after this).  Runs in the one process that starts the
    others (xdist's controller, or the only one)."""
    if hasattr(session.config, "workerinput") or os.environ.get("DASK_EM_DISABLE_JIT"):
        return
    if not _kernel_cache_is_empty():
        return
    from tests.warm_kernels import HALVES

    start = time.perf_counter()
    halves = [
        subprocess.Popen([sys.executable, "-m", "tests.warm_kernels", half], cwd=ROOT)
        for half in HALVES
    ]
    codes = [half.wait() for half in halves]
    if any(codes):  # the tests that need those kernels will say what is wrong
        print(f"compiling the kernels first failed ({codes}); the tests compile them")
    print(f"compiled the kernels first: {time.perf_counter() - start:.1f} s")


def pytest_collection_modifyitems(items):
    """Mark every test that uses the session's cluster, for ``-m "not cluster"``."""
    for item in items:
        if {"client", "cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster():
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        memory_limit="3GiB",
    ) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def client(cluster):
    with Client(cluster) as client:
        yield client


class _DecreaseRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("objective decreased"):
            self.messages.append(record.getMessage())


_LOOP_LOGGERS = ("dask_em.engine", "dask_em.em", "dask_em.acceleration.driver")


@pytest.fixture(autouse=True)
def no_fit_decreases_its_objective(request):
    """Every fit in every test: the engine, the loop and the drivers report any decrease
    beyond 1e-10 relative (a float32 fit's loop: its family's looser tolerance)."""
    if request.node.get_closest_marker("allow_objective_decrease"):
        yield
        return
    recorder = _DecreaseRecorder()
    # the engine's fits; loops run directly (dask_em.em) and drivers run by run_em
    loggers = [logging.getLogger(name) for name in _LOOP_LOGGERS]
    for logger in loggers:
        logger.addHandler(recorder)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(recorder)
    assert recorder.messages == []

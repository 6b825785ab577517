"""A head start for the compiled kernels of a fit on a cluster (see :func:`warm_kernels`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from dask_em.engine import EMEngine, run_on_one_worker
from dask_em.families.jit import HAVE_NUMBA

logger = logging.getLogger("dask_em.engine")

#: Rows the kernels are first called on: several slices of every kernel, whole ones and
#: a partial last one, in the data's dtype (numba compiles one version per argument
#: type: the missing-value kernel's last slice is a view into a larger buffer, of
#: another layout; a block of another memory order, e.g. Fortran, compiles in its pass).
WARM_UP_ROWS = 1000


def warm_kernels(engine: EMEngine, family: Any, params: Any, sample: np.ndarray) -> None:
    """Compile the E-step kernels of ``family`` at ``params`` once, on one worker,
    before the first pass.

    numba compiles a kernel on its first call and caches the machine code on disk
    (:mod:`dask_em.families.jit`).  Left to the first pass, every worker process would
    compile the same kernels at once (seconds each, on cores the pass needs); run as one
    task on the first rows of the scan sample (rows of zeros where the first EM pass is
    also the scan: :mod:`.first_pass`), in the data's dtype, the compilation happens
    once per machine and the other workers there load it from the cache.  With
    the cache already written the task only loads the kernels, which that worker would
    do in its first pass anyway; the driving process never compiles or loads them (on a
    remote cluster its own cache would serve nobody).  Its time is logged when it is
    more than a second (a first run).
    """
    if engine.client is None or not HAVE_NUMBA or len(sample) == 0:
        return
    rows = np.ascontiguousarray(sample[:WARM_UP_ROWS], dtype=engine.X.dtype)
    extra = np.array([len(rows)]) if engine.sequences else None
    started = time.perf_counter()
    try:
        run_on_one_worker(engine.client, _block_stats, family, params, rows, extra)
    except Exception as error:  # only a head start: the first pass compiles instead
        logger.debug("kernels not compiled ahead of the first pass: %s", error)
        return
    seconds = time.perf_counter() - started
    if seconds > 1.0:
        logger.info(
            "compiled the E-step kernels in %.1f s (once per machine: later runs and the "
            "other workers load them from numba's disk cache)",
            seconds,
        )


def _block_stats(family: Any, params: Any, rows: np.ndarray, extra: Any) -> None:
    """The warm-up task: one call of the kernels, its statistics dropped."""
    family.block_stats(params, rows, extra)

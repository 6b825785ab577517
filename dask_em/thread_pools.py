"""The BLAS and OpenMP thread pools loaded in this process, and one thread for the EM loop.

threadpoolctl (the library scikit-learn uses for this) finds the pools a process has
loaded (NumPy's and SciPy's OpenBLAS, an OpenMP runtime) and sets their thread counts.
Two kinds of code limit them:

* E-step tasks in a worker, to the task's share of its host
  (:func:`dask_em.engine.threads.task_thread_limit`);
* the process that drives EM, to one thread (:func:`one_blas_thread`) while it runs its
  own arithmetic between passes: an accelerated run's proposals, the M-step's K Cholesky
  factorizations and triangular solves of D x D matrices.  A multithreaded BLAS gains
  nothing on matrices that small and loses much: OpenBLAS hands even a 2 x 2
  ``solve_triangular`` to its threads.  On a 2-core machine that call took 66-108 us with
  2 threads against 13-27 us with one, idle, and 0.2-1.5 ms with 2 threads while the
  cores were busy.  The loop (:func:`dask_em.em.lockstep`) takes the limit around its
  own steps only, not around a pass (``map_reduce`` runs with the caller's threads); the
  estimators take it around the whole fit, k-means on the initialization sample included.

Limits in threadpoolctl are process-wide.  Each kind of limit is a :class:`HeldLimit`
that counts who holds it: the first to enter limits the pools, the last to leave restores
them, so tasks running side by side, fits driven from several threads at once, or nested
holds (an estimator's fit around its loop) leave the pools as they found them.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

_controller: Any = None
_controller_modules = 0  # len(sys.modules) when it was made


def pools() -> Any:
    """The thread pools loaded in this process (threadpoolctl's ``ThreadpoolController``).

    Made again whenever modules were imported since the last one: an import can load
    another pool (scipy's OpenBLAS, an OpenMP runtime), which a controller made before
    it would not limit.  Making one scans the loaded libraries (about 1.5 ms); a limit
    and its restore with one already made cost about 30 us.
    """
    global _controller, _controller_modules
    if _controller is None or _controller_modules != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
        _controller_modules = len(sys.modules)
    return _controller


class HeldLimit:
    """A process-wide limit on the pools, held by any number of callers at once: the
    first to enter sets it, the last to leave restores the limits it found."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._limiter: Any = None

    @contextlib.contextmanager
    def hold(self, threads: int) -> Iterator[None]:
        """``threads`` BLAS/OpenMP threads while this caller is inside (the first
        holder's ``threads`` while several are)."""
        with self._lock:
            if self._holders == 0:
                self._limiter = pools().limit(limits=threads)
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._limiter.restore_original_limits()
                    self._limiter = None


_driving = HeldLimit()


def one_blas_thread() -> contextlib.AbstractContextManager[None]:
    """One BLAS/OpenMP thread in this process while any caller is inside (module
    docstring); the pools' previous limits are restored when the last one leaves."""
    return _driving.hold(1)

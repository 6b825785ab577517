"""One way to compile a kernel: numba when it is importable, plain Python otherwise.

Every compiled kernel in :mod:`dask_em.families` is declared with :func:`jit`.  With
numba installed (a core dependency, shipped as wheels, so ``pip install`` needs no
compiler) the function is compiled on first call with ``cache=True``, so the machine
code is written next to the module's ``__pycache__`` once and reused by every later
process: workers of a cluster pay the compilation once per machine, not once per task.
numba checks a cached kernel against its own source file only, not against the files
of the kernels it calls nor the values of the module-level constants it reads (they are
compiled in): after editing a kernel or such a constant, delete the ``*.nbi``/``*.nbc``
files under ``dask_em/`` (an install replaces every file, and with them every cache).
Without numba (or with ``DASK_EM_DISABLE_JIT=1`` in the environment) :func:`jit` returns
the function unchanged and callers fall back to the pure-NumPy reference kernels, which
the compiled ones are tested against.

``nogil=True`` lets a Dask worker with several threads run kernels side by side;
``error_model="numpy"``: a division by zero gives inf or NaN, as in the NumPy reference,
instead of raising, and a loop that divides has no branch to stop the compiler from
vectorizing it (a vectorizable ``log`` went from 1.3 to 0.3 ms per 250,000 values);
``fastmath`` stays off so that results are reproducible and comparable to 1e-12 with the
NumPy reference, except for :func:`jit_reassociated` kernels: short dot products in
per-row loops run at the latency of one addition after another unless the compiler may
reorder the sum (LLVM's ``reassoc`` and ``contract`` flags only; NaN and infinity keep
their meaning), which changes rounding by a few ulps and keeps results deterministic;
and :func:`jit_fused` kernels (``contract`` only: fused multiply-adds, so results may
differ by an ulp between machines with and without FMA).

numba compiles a kernel once per distinct type of its arguments, and each version is
compiled again inside every kernel that calls it: the versions are what a first run
(``dask-em demo``, a fresh test run) waits for.  Two habits keep their number down:
- a loop counter that a kernel passes to another starts as ``np.int64(0)``, not ``0``: from
  a literal 0 numba types the first call with ``Literal[int](0)`` and compiles the
  callee for it as well as for ``int64`` (a whole second version of the callee);
- arrays handed to a kernel are writable: a read-only array (``np.broadcast_to``'s
  view, an array unpickled on a worker) is another type, so a copy of a small parameter
  array is cheaper than a second compilation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Set ``DASK_EM_DISABLE_JIT=1`` to run the pure-NumPy kernels only.
JIT_DISABLED = os.environ.get("DASK_EM_DISABLE_JIT", "").strip() not in ("", "0")

try:  # pragma: no cover - which branch runs depends on the installation
    if JIT_DISABLED:
        raise ImportError("disabled by DASK_EM_DISABLE_JIT")
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False


def _target_has_avx512() -> bool:
    """Whether numba compiles for AVX-512: the ``+avx512f`` feature of its own code
    generator's target (what its on-disk cache is keyed by, with the CPU's name), so
    that ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` move both together and a cache made
    for ``NUMBA_CPU_NAME=generic`` (no features) holds the kernels without it."""
    if not HAVE_NUMBA:
        return False
    try:
        from numba.core.registry import cpu_target

        _, _, features = cpu_target.target_context.codegen().magic_tuple()
        return "+avx512f" in features.split(",")
    except Exception:  # pragma: no cover - a numba whose internals moved
        return False


#: numba compiles for AVX-512.  Two kernels' shapes follow it: with AVX-512, 32 vector
#: registers hold :func:`~dask_em.families.gaussian_slice_loops.pair_moments`' sixteen
#: running sums, and OpenBLAS's small-matrix kernels (its SkylakeX-class targets) run
#: the full/tied factor product; without it (AVX2: 16 registers; OpenBLAS's
#: Haswell-class kernels, which pack every operand first) eight sums a pass and the
#: product in compiled loops (:mod:`~dask_em.families.gaussian_triangular`).  Both
#: shapes are tested on every host; they give the same sums to rounding.  The flag is
#: read from the target numba's cache is keyed by, so a cached kernel never holds the
#: other shape.
WIDE_VECTORS = _target_has_avx512()


def jit(function: F) -> F:
    """Compile ``function`` with numba (nopython, nogil, cached) when available."""
    if not HAVE_NUMBA:
        return function
    return numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")(function)


def jit_reassociated(function: F) -> F:
    """:func:`jit`, and sums may be reordered and fused (``reassoc``, ``contract``)."""
    if not HAVE_NUMBA:
        return function
    flags = {"reassoc", "contract"}
    return numba.njit(cache=True, nogil=True, fastmath=flags, error_model="numpy")(function)


def jit_fused(function: F) -> F:
    """:func:`jit`, and ``a * b + c`` may be one fused multiply-add (``contract`` only:
    one rounding instead of two, the order of operations kept)."""
    if not HAVE_NUMBA:
        return function
    return numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")(function)

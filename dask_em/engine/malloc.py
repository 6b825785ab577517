"""glibc's own malloc thresholds in the workers while a fit runs.

distributed's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (config
``distributed.nanny.pre-spawn-environ``), so that freed memory goes back to the OS at
once and a worker's memory use follows the data it holds.  Setting that variable also
turns off glibc's dynamic mmap threshold: every allocation of 128 KiB or more is then
fresh mmap'd memory, whose pages fault one by one when first written, and freed memory
is trimmed away at once.  A task pays that for each block it decodes or each scratch
array it makes.  Reading one 8 MiB Zarr chunk (zstd) took 17.5 ms in a process with the
variable against 8.4 ms with the thresholds below, and a worker's E-step task of a
streamed Gaussian mixture pays it twice (the compressed bytes and the decoded block).

So while a fit runs (:func:`glibc_thresholds_during`), every worker of the cluster that
has the variable set uses the thresholds glibc reaches on its own without it: an mmap
threshold of :data:`MMAP_THRESHOLD` (glibc's largest dynamic value on 64-bit) and a trim
threshold of :data:`TRIM_THRESHOLD` (twice that, glibc's rule).  A worker then keeps up
to that much freed memory per malloc arena for reuse, so a worker with little room left
below the memory at which it spills or pauses gets less: an mmap threshold of at most
1/4 of that room, or, for a worker with one thread that holds no data, 1/8 of its room
below pausing (:func:`mmap_threshold_cap`; a worker of 320 MB at 230 MiB, past its spill
threshold, keeps the nanny's setting if it holds data and gets 1.8 MiB, 1/8 of its 14
MiB before pausing, if it holds none; one of 512 MiB that holds no data, at 340 MiB,
gets 8.7 MiB, enough for an 8 MiB Zarr chunk).
When the fit ends the nanny's setting is put back (mmap threshold
``MALLOC_MMAP_THRESHOLD_`` or 128 KiB, trim threshold the variable's value) and
``malloc_trim`` hands the kept memory back to the OS.  Workers without the variable,
or without glibc, are left as they are.  Two fits at once on one cluster share the
setting: the first to end puts the nanny's back (the other runs on, only slower).
A client that is no longer running when the fit ends (its cluster lost) restores nothing.  Set
the Dask config ``dask_em.worker-malloc`` to False to leave every worker alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
from collections.abc import Iterator
from typing import Any

import dask
import psutil

#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: glibc's default mmap threshold, which stays fixed once the trim threshold is set.
NANNY_MMAP_THRESHOLD = 128 * 2**10
#: The largest mmap threshold glibc's dynamic rule reaches on 64-bit systems.
MMAP_THRESHOLD = 32 * 2**20
#: glibc's dynamic rule sets the trim threshold to twice the mmap threshold.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

#: Bytes a worker holds (``Worker.state.nbytes``, spilled ones included) up to which it
#: counts as holding no data (a fit's parameters and statistics): its room is counted to
#: its pause threshold, not to its spill threshold (:func:`mmap_threshold_cap`).
NO_DATA_BYTES = 2**20

#: Dask config key: False leaves the workers' malloc settings alone.
CONFIG_KEY = "dask_em.worker-malloc"

_ENV = "MALLOC_TRIM_THRESHOLD_"

logger = logging.getLogger("dask_em.engine")


@functools.cache
def _libc(name: str) -> Any:
    """glibc's function ``name`` (``mallopt``, ``malloc_trim``) in this process, or None
    (not glibc)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def _environment_bytes(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def headroom(dask_worker: Any, fractions: tuple[str, ...]) -> int | None:
    """Bytes ``dask_worker``'s process may still grow before it reaches the first of the
    memory manager's ``fractions`` (``"memory_spill_fraction"``, ...; one set to False
    is off) of its memory limit; None without a limit."""
    manager = getattr(dask_worker, "memory_manager", None)
    limit = getattr(manager, "memory_limit", None)
    if not limit:
        return None
    values = [getattr(manager, name, False) for name in fractions]
    fraction = min([f for f in values if f and not isinstance(f, bool)], default=1.0)
    return max(0, int(fraction * limit) - psutil.Process().memory_info().rss)


def mmap_threshold_cap(dask_worker: Any) -> int | None:
    """The largest mmap threshold ``dask_worker`` may take (None: no memory limit).

    glibc keeps freed memory for reuse in each malloc arena, up to about its trim
    threshold (twice the mmap threshold) at the top of the heap: a guide, not a bound,
    since a freed chunk below one still in use stays until ``malloc_trim``.  A worker
    with one thread allocates in about two arenas (its task thread's and its event
    loop's), one more for each further thread.
    - A worker that holds data (more than :data:`NO_DATA_BYTES`: persisted blocks), or
      whose pause threshold is off, takes 1/4 of its room below its spill and pause
      thresholds: kept memory must not make it write its data to disk.
    - One that holds none has little to spill (past its spill threshold it writes out a
      fit's parameters and statistics) and takes 1/(4 (threads + 1)) of its room below
      its pause threshold (1/8 with one thread), which would stall the fit: about half
      the room for the arenas' kept memory at most.  A streamed fit's workers hold none;
      by their second fit they hold the kernels and libraries the first one loaded, and
      the room to their spill threshold left them too little for a Zarr chunk.
    The room is measured when the fit starts, before its kernels load.
    """
    manager = getattr(dask_worker, "memory_manager", None)
    state = getattr(dask_worker, "state", None)
    held = getattr(state, "nbytes", None)
    pause = getattr(manager, "memory_pause_fraction", False)
    if held is None or held > NO_DATA_BYTES or not pause:
        fractions, share = ("memory_spill_fraction", "memory_pause_fraction"), 4
    else:
        threads = getattr(state, "nthreads", None) or 1
        fractions, share = ("memory_pause_fraction",), 4 * (threads + 1)
    room = headroom(dask_worker, fractions)
    return None if room is None else room // share


def set_thresholds(
    mmap_threshold: int | None, trim_threshold: int | None, dask_worker: Any = None
) -> bool:
    """In this process, when it has ``MALLOC_TRIM_THRESHOLD_`` (an integer) and glibc:
    set the mmap and trim thresholds (bytes; None: put back the environment's, then
    hand freed memory back to the OS).  True when both were set.

    In a worker (``dask_worker``, which ``Client.run`` passes) the mmap threshold is at
    most :func:`mmap_threshold_cap` (the trim threshold twice that): memory kept for
    reuse must not push a worker with little room left to pause, or to spill the data
    it holds."""
    nanny_trim = _environment_bytes(_ENV)
    mallopt = _libc("mallopt")
    if nanny_trim is None or mallopt is None:
        return False
    nanny_mmap = _environment_bytes("MALLOC_MMAP_THRESHOLD_") or NANNY_MMAP_THRESHOLD
    restoring = mmap_threshold is None
    cap = None if restoring or dask_worker is None else mmap_threshold_cap(dask_worker)
    if cap is not None:
        mmap_threshold = max(nanny_mmap, min(mmap_threshold, cap))
        trim_threshold = min(trim_threshold, 2 * mmap_threshold)
    done = [
        mallopt(_M_MMAP_THRESHOLD, nanny_mmap if restoring else mmap_threshold),
        mallopt(_M_TRIM_THRESHOLD, nanny_trim if trim_threshold is None else trim_threshold),
    ]
    if restoring and _libc("malloc_trim") is not None:
        _libc("malloc_trim")(0)  # what the fit kept for reuse goes back to the OS now
    return all(done)


@contextlib.contextmanager
def glibc_thresholds_during(client: Any) -> Iterator[None]:
    """The workers of ``client`` (None: nothing) use glibc's own malloc thresholds while
    the block runs (module docstring); best effort: a worker that cannot be reached is
    skipped."""
    if client is None or not dask.config.get(CONFIG_KEY, True):
        yield
        return
    done = client.run(set_thresholds, MMAP_THRESHOLD, TRIM_THRESHOLD, on_error="ignore")
    logger.debug("glibc malloc thresholds set in %d of the workers", sum(done.values()))
    try:
        yield
    finally:
        # a client no longer running may have lost its cluster: no call to wait out
        if getattr(client, "status", "running") == "running":
            with contextlib.suppress(Exception):  # the cluster may be what failed
                client.run(set_thresholds, None, None, on_error="ignore")

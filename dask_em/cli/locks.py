"""One run at a time per output: an advisory lock held while a command writes a path.

Two ``dask-em fit --overwrite`` runs to the same ``--out`` would each rename a complete
model into place, then each write a report beside it: the model could come from one run
and its report from the other.  A run therefore holds a lock on each output from before
its cluster starts until its last file is written, and a second run is refused at once
(:class:`OutputBusy`, a one-line usage error naming the holder's pid).

The lock is ``flock(LOCK_EX | LOCK_NB)`` on a hidden file beside the output,
``.<name>.dask-em-lock`` with a trailing ``.zarr`` left out of ``<name>``: ``model`` and
``model.zarr`` share their report's files, so they share a lock.  The kernel releases a
flock when its process dies (``kill -9`` included), so a lock left by a crash never
blocks; the file it leaves holds a dead pid and is taken over by the next run.  The file
is unlinked by its holder while still locked; an acquirer that finds it has locked a file
no longer at the path (unlinked or replaced meanwhile) tries again.  flock is advisory: it
orders dask-em runs, not other programs, and on NFS it works where the client maps it to
byte-range locks (Linux does).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from dask_em.cli.common import UsageError

#: The lock file's suffix: ``.model.dask-em-lock`` for ``model.zarr``.
LOCK_SUFFIX = ".dask-em-lock"


class OutputBusy(UsageError):
    """Another live run holds the lock of an output path."""


def lock_path(path: str) -> str:
    """The lock file of the output ``path``: hidden, in the same directory."""
    directory, name = os.path.split(os.path.abspath(path).rstrip(os.sep))
    return os.path.join(directory, f".{name.removesuffix('.zarr')}{LOCK_SUFFIX}")


def _holder(descriptor: int) -> str:
    """`` (pid N)`` from the lock file's content, or nothing when it names none yet."""
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def acquire(path: str, flag: str) -> int:
    """Lock the output ``path`` (``flag`` names it in the message) and return the lock
    file's descriptor; :class:`OutputBusy` if another live process holds it."""
    lock_file = lock_path(path)
    while True:
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise OutputBusy(
                f"{path} is being written by another dask-em run{holder}; wait for it to "
                f"finish or choose another {flag}"
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        try:
            current = os.stat(lock_file)
        except FileNotFoundError:
            current = None
        mine = os.fstat(descriptor)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(descriptor)  # its holder unlinked it between our open and our flock
    try:  # the holder's pid, for the message of a refused run; not needed for the lock
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # a full disk: the run goes on, and says so when its output is written
        pass
    return descriptor


def release(path: str, descriptor: int) -> None:
    """Unlink the lock file of ``path`` while holding it, then let it go."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path(path))
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def holding(outputs: dict[str, str]) -> Iterator[None]:
    """Hold the locks of ``outputs`` (flag -> path) for the block, or refuse with
    :class:`OutputBusy` holding none.  Paths that share a lock file are locked once."""
    with contextlib.ExitStack() as stack:
        seen: set[str] = set()
        for flag, path in outputs.items():
            if lock_path(path) in seen:
                continue
            seen.add(lock_path(path))
            descriptor = acquire(path, flag)
            stack.callback(release, path, descriptor)
        yield

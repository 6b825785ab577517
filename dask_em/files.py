"""Writing files safely: everything is written beside its destination, then renamed.

At every moment a destination path is either absent, or complete (the old or the new
content); a failed write leaves nothing behind.  Model files, checkpoints, the command
line's outputs and synthetic data all go through :func:`write_aside`.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def json_default(value: Any) -> Any:
    """``json.dumps``' fallback for NumPy values (None for what a file cannot restore)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return None  # e.g. a NumPy Generator as random_state: not reproducible from a file


def write_aside(path: str | os.PathLike, write: Callable[[str], T], *, quiet: bool = False) -> T:
    """``write(staging)`` to a path beside ``path`` (``<path>.tmp-*``), then rename it to
    ``path`` (:func:`replace_path`); nothing is left at either path if ``write`` fails.
    ``quiet`` silences the warnings ``write`` emits.  Returns what ``write`` returns."""
    path = os.path.abspath(os.fspath(path))
    staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            result = write(staging)
        replace_path(staging, path)
    finally:
        if os.path.lexists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return result


def write_zarr_atomically(
    ds: Any, path: str | os.PathLike, verify: Callable[[str], Any] | None = None
) -> None:
    """Write the xarray Dataset ``ds`` to a Zarr store at ``path`` (:func:`write_aside`).

    ``verify(staging)``, if given, reads the written store back before it replaces
    anything; if it raises, the store written aside is removed and ``path`` is left as
    it was.
    """

    def write(staging: str) -> None:
        ds.to_zarr(staging, mode="w-", consolidated=False)
        if verify is not None:
            verify(staging)

    write_aside(path, write)


def replace_path(source: str, path: str) -> None:
    """Move ``source`` to ``path``; an existing ``path`` is renamed aside, then removed."""
    if not os.path.lexists(path):
        os.rename(source, path)
        return
    retired = f"{path}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, retired)
    os.rename(source, path)
    if os.path.isdir(retired) and not os.path.islink(retired):
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.remove(retired)

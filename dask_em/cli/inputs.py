"""INPUT checked before any cluster starts: what it is on disk, its shape, dtype and K.

Everything here reads metadata only (a file's first bytes, an array's shape and dtype),
so a wrong INPUT costs a second, not a cluster start.  Messages speak to a command-line
user: flags and files, not Python.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dask_em.cli.common import UsageError
from dask_em.sequences import Sequences

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".dat")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_input_location(path: str) -> None:
    """Refuse a local INPUT that is a plain file but not a netCDF file (a CSV, say)."""
    if "://" in path or not os.path.isfile(path):
        return  # a directory (Zarr store), a URL, or missing: open_input says
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if path.endswith(NETCDF_SUFFIXES) or head.startswith((_HDF5_SIGNATURE, b"CDF")):
        return
    convert = (
        'convert it first, e.g. python -c "import numpy, zarr; '
        f"zarr.save_array('data.zarr', numpy.loadtxt('{path}', delimiter=','))\""
    )
    if path.lower().endswith(_TEXT_SUFFIXES) or _looks_like_text(head):
        raise UsageError(
            f"INPUT {path} is a text (CSV) file, not a Zarr store (a directory) or a netCDF "
            f"file; {convert}"
        )
    raise UsageError(
        f"INPUT {path} is a file but not a netCDF file; INPUT must be a Zarr store (a "
        "directory) or a netCDF file (.nc)"
    )


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def check_input_shape(X: Any, lengths: Any, n_components: int | None, path: str) -> None:
    """Refuse INPUT whose shape or dtype no model takes, or with fewer rows than K.

    ``X`` is the lazy array (or a :class:`~dask_em.sequences.Sequences`) that
    :func:`dask_em.stores.open_input` returned; only its shape and dtype are read.
    """
    array = X.values if isinstance(X, Sequences) else X
    shape = tuple(getattr(array, "shape", ()))
    dtype = getattr(array, "dtype", None)
    if len(shape) != 2:
        raise UsageError(
            f"INPUT {path} holds {len(shape)}-D data of shape {shape}; dask-em needs a 2-D "
            "array (rows, features): store a single feature as an array of shape (n, 1)"
        )
    if dtype is not None and (
        not (np.issubdtype(dtype, np.number) or dtype == np.bool_)
        or np.issubdtype(dtype, np.complexfloating)
    ):
        raise UsageError(
            f"INPUT {path} holds values of dtype {dtype}; dask-em needs real numbers "
            "(integers or floats)"
        )
    if 0 in shape:
        raise UsageError(f"INPUT {path} is empty: shape {shape}")
    if n_components is not None and n_components > shape[0]:
        raise UsageError(
            f"--components {n_components} is more than the {shape[0]} rows of INPUT {path}; "
            "choose fewer components"
        )


def check_first_rows(model: Any, X: Any, path: str) -> None:
    """Refuse INPUT whose first block already holds values ``model`` does not take (a
    model of another kind, data of another kind), before the cluster runs a task: one
    block is read here, so the message names the first bad entry, and no worker logs
    the failures of tasks running side by side."""
    array = X.values if isinstance(X, Sequences) else X
    first = array.blocks[0].compute(scheduler="sync") if hasattr(array, "blocks") else array
    rows = np.asarray(first)
    if rows.ndim == 2 and len(rows) and rows.shape[1] == model.n_features_in_:
        # (a feature count that differs: the model's own check says so)
        what = f"INPUT {path} (its first {len(rows):,} rows)"
        model._value_check().raise_for(rows, 0, what=what)

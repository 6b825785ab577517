"""Stores in and out for the command line: INPUT opened lazily, an array written safely.

INPUT is a Zarr array, a Zarr group (one member chosen by name; for sequence models a
group with ``values`` and ``lengths``), or a netCDF file, local or an fsspec URL.
Errors are ValueError naming INPUT and what is wrong, in one line.
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import numpy as np

from dask_em.data import open_zarr_node
from dask_em.files import write_aside
from dask_em.sequences import Sequences
from dask_em.zarr_source import create_complete_array, lazy_zarr


def is_url(path: str) -> bool:
    return "://" in path


def open_input(
    path: str,
    variable: str | None = None,
    storage_options: dict | None = None,
    sequences: bool = False,
    strict: bool = False,
) -> tuple[Any, Any]:
    """INPUT as ``(X, lengths)``: a lazy array (or :class:`Sequences`) and None.

    Chunks absent from a Zarr INPUT are reported (a warning, or ValueError when
    ``strict``; :func:`dask_em.zarr_source.check_gaps`).
    """
    import zarr

    if not is_url(path) and not os.path.exists(path):
        raise ValueError(f"INPUT {path} does not exist")
    if path.endswith((".nc", ".nc4", ".netcdf")):
        return _open_netcdf(path, variable, storage_options), None
    node = open_zarr_node(path, storage_options, expected="store")
    if variable is not None:
        if not isinstance(node, zarr.Group):
            raise ValueError(f"--variable needs a Zarr group, but INPUT {path} is an array")
        if variable not in node:
            raise ValueError(f"INPUT {path} has no {variable!r}; its members are {_members(node)}")
        node = node[variable]
    if sequences:
        if not isinstance(node, zarr.Group) or "values" not in node or "lengths" not in node:
            raise ValueError(
                f"INPUT {path} must be a Zarr group with arrays 'values' (steps, features) "
                "and 'lengths' (sequences)"
            )
        try:
            # blocks on sequence boundaries
            return Sequences.from_group(node, where=path, strict_input=strict), None
        except ValueError as error:
            raise ValueError(f"INPUT {path}: {error}") from None
    if isinstance(node, zarr.Group):
        raise ValueError(
            f"INPUT {path} is a Zarr group; choose one of its arrays with --variable "
            f"(its members are {_members(node)})"
        )
    where = path if variable is None else f"{path.rstrip('/')}/{variable}"
    return lazy_zarr(node, where, strict=strict), None


def _open_netcdf(path: str, variable: str | None, storage_options: dict | None):
    import xarray as xr

    if variable is None:
        raise ValueError(f"INPUT {path} is a netCDF file; name the variable with --variable")
    try:
        ds = xr.open_dataset(path, chunks={}, storage_options=storage_options)
    except Exception as error:  # backends raise several types
        raise ValueError(
            f"INPUT {path} is not a readable netCDF file: {first_line(error)}"
        ) from None
    if variable not in ds:
        raise ValueError(f"INPUT {path} has no variable {variable!r}; it has {sorted(ds)}")
    return ds[variable]


def _members(group) -> list[str]:
    return sorted(name for name, _ in group.members())


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def write_array(result: Any, path: str, attrs: dict[str, Any]) -> int:
    """Write the NumPy or dask array ``result`` to a new Zarr array at ``path`` (beside it,
    then renamed), with ``attrs``; computed on the active scheduler.  Returns its rows."""
    import zarr

    if not isinstance(result, da.Array):
        result = da.from_array(np.asarray(result))

    def write(staging: str) -> None:
        array = create_complete_array(
            staging,
            shape=result.shape,
            dtype=result.dtype,
            chunks=tuple(c[0] for c in result.chunks),
        )
        da.store(result.rechunk(array.chunks), array, lock=False)
        zarr.open_array(staging, mode="r+").attrs.update(attrs)

    write_aside(path, write)
    return int(result.shape[0])

"""Input data: conversion to row-chunked dask arrays, validation, and the scan pass.

Accepted inputs for ``X`` (n_samples, n_features):

- a NumPy array (or anything ``np.asarray`` takes),
- a dask array,
- an xarray DataArray, first dim the samples (e.g. ``("sample", "feature")``),
- a pandas or dask DataFrame of numeric columns (a dask DataFrame's partitions become
  the blocks; their lengths are computed once),
- the path or URL of a Zarr array (``"data.zarr"``, ``"data.zarr/X"``, ``"s3://..."``).

Outputs follow the input (:func:`like_input`): a DataArray in gives DataArrays out, on
the same sample dim and coordinates, with a ``component`` dim where there is one.

Chunks run along samples only: a feature axis split across chunks is rechunked into
one.  Integer and boolean data become float64, float16 becomes float32; float32 stays
float32 in storage and in cluster memory (half the bytes to read and hold); fitting
computes on float64 copies of one slice at a time, prediction in float32.

NaN/inf are found before any fitting: at once for NumPy input, and in the *scan pass*
for lazy input, which reads every block once to check it and to draw the sample used
for initialization (:func:`scan_block`).
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import numpy as np

from dask_em.checks import FINITE, ValueCheck
from dask_em.scan_summary import first_problem, summarize
from dask_em.zarr_source import lazy_zarr

#: Target size of one chunk when dask_em chunks in-memory data itself.
DEFAULT_CHUNK_BYTES = 64 * 2**20


def open_zarr_node(
    path: str | os.PathLike, storage_options: dict | None = None, expected: str = "array"
):
    """The Zarr array or group at ``path`` (local path or fsspec URL), opened read-only.

    ValueError, naming ``path`` and what was ``expected`` there, when nothing readable is.
    """
    import zarr

    location = os.fspath(path)
    try:
        return zarr.open(store=location, mode="r", storage_options=storage_options)
    except FileNotFoundError:
        raise ValueError(f"{location!r} is not a Zarr {expected}: nothing found there") from None
    except Exception as error:  # zarr raises several types for unreadable stores
        raise ValueError(f"{location!r} is not a readable Zarr {expected}: {error}") from None


def open_zarr_array(
    path: str | os.PathLike, storage_options: dict | None = None, strict: bool = False
) -> da.Array:
    """A dask array over the Zarr array at ``path`` (local path or fsspec URL).

    Chunks absent from the store are reported (:func:`dask_em.zarr_source.check_gaps`:
    a warning, or ValueError when ``strict``); secrets in ``storage_options`` stay out
    of the graph (:mod:`dask_em.credentials`)."""
    import zarr

    location = os.fspath(path)
    node = open_zarr_node(location, storage_options)
    if isinstance(node, zarr.Group):
        members = sorted(name for name, _ in node.arrays())
        hint = f"; its arrays are {members}" if members else " with no arrays"
        raise ValueError(
            f"{location!r} is a Zarr group, not an array{hint}. "
            f"Pass the path of one array, e.g. {location.rstrip('/')}/{(members or ['X'])[0]}"
        )
    return lazy_zarr(node, location, strict=strict)


def _chunk_rows(n_features: int, itemsize: int) -> int:
    return max(1, DEFAULT_CHUNK_BYTES // max(1, n_features * itemsize))


def as_row_chunked(
    X: Any,
    *,
    storage_options: dict | None = None,
    check: ValueCheck | None = FINITE,
    keep_integers: bool | None = None,
    strict_input: bool = False,
) -> da.Array:
    """``X`` as a 2-D dask array chunked along rows only (see module docstring).

    A path or URL is opened with :func:`open_zarr_array` (``strict_input``: refuse
    chunks absent from the store instead of warning).

    Raises ValueError for a path that is not a Zarr array, for input that is not 2-D and
    for non-numeric dtypes; NumPy input is also checked here with ``check`` (default:
    NaN/inf; None: only shape and dtype, the caller checks values).  Integer data keeps
    its dtype when ``check.keeps_integers`` (counts).
    """
    keeps_integers = (
        keep_integers if keep_integers is not None else (check is not None and check.keeps_integers)
    )
    if isinstance(X, (str, os.PathLike)):
        X = open_zarr_array(X, storage_options, strict_input)
    elif _is_dask_dataframe(X):
        X = _dataframe_values(X)
    elif _is_xarray(X):
        if X.ndim != 2:
            raise ValueError(
                f"expected a 2-D DataArray (sample, feature), got dims {tuple(X.dims)}"
            )
        X = X.data
    if not isinstance(X, da.Array):
        X = as_float_matrix(X, check=check, keep_integers=keeps_integers)
        X = da.from_array(X, chunks=(_chunk_rows(X.shape[1], X.itemsize), -1))
    else:
        _check_shape_dtype(X.shape, X.dtype)
        X = _as_float(X, keeps_integers)
    if any(_is_nan(c) for c in X.chunks[0]):
        raise ValueError("X has unknown chunk sizes; call X.compute_chunk_sizes() first")
    if len(X.chunks[1]) != 1:
        X = X.rechunk({1: -1})
    return X


def as_float_matrix(
    X: Any, check: ValueCheck | None = FINITE, keep_integers: bool | None = None
) -> np.ndarray:
    """In-memory ``X`` as a 2-D NumPy array, shape, dtype and ``check``'s values checked.

    ``keep_integers`` defaults to ``check.keeps_integers``.
    """
    if hasattr(X, "columns") and hasattr(X, "dtypes"):  # a pandas DataFrame
        _check_numeric_columns(X.dtypes)
    if hasattr(X, "toarray"):  # scipy.sparse
        raise ValueError("X is a sparse matrix; dask_em needs dense data (X.toarray())")
    X = np.asarray(X)
    if X.dtype == object:  # numbers held as objects; TypeError/ValueError for anything else
        X = X.astype(np.float64)
    _check_shape_dtype(X.shape, X.dtype)
    if keep_integers is None:
        keep_integers = check is not None and check.keeps_integers
    X = _as_float(X, keep_integers)
    if check is not None:
        check.raise_for(X)
    return X


def _is_nan(value) -> bool:
    return isinstance(value, float) and value != value


def _is_xarray(X: Any) -> bool:
    return type(X).__module__.startswith("xarray") and hasattr(X, "dims")


def _is_dask_dataframe(X: Any) -> bool:
    return type(X).__module__.startswith("dask") and hasattr(X, "to_dask_array")


def _dataframe_values(frame: Any) -> da.Array:
    """A dask DataFrame's numeric columns as a dask array with known row chunks
    (one pass computes the partition lengths); ValueError naming non-numeric columns."""
    _check_numeric_columns(frame.dtypes)
    return frame.to_dask_array(lengths=True)


def _check_numeric_columns(dtypes: Any) -> None:
    from pandas.api.types import is_complex_dtype, is_numeric_dtype  # xarray needs pandas

    bad = [
        str(name)
        for name, dtype in dtypes.items()
        if not is_numeric_dtype(dtype) or is_complex_dtype(dtype)
    ]
    if bad:
        raise ValueError(f"X must hold numeric columns only; not numeric: {bad}")


def like_input(X: Any, result: Any, name: str, columns: str | None = "component") -> Any:
    """``result`` (NumPy or dask, one row per row of ``X``) as a DataArray if ``X`` is
    one, else unchanged.

    The DataArray keeps X's first dim and every coordinate along it only; a second
    axis is the dim ``columns`` (coordinate 0..n-1), or, with ``columns=None``, X's
    own second dim and its coordinates (an output shaped like X, e.g. imputed data).
    """
    if not _is_xarray(X):
        return result
    import xarray as xr

    rows = X.dims[0]
    kept = {rows} if columns is not None or np.ndim(result) == 1 else set(X.dims)
    coords = {key: c.variable for key, c in X.coords.items() if set(c.dims) <= kept}
    if np.ndim(result) == 1:
        dims: tuple = (rows,)
    elif columns is None:
        dims = tuple(X.dims)
    else:
        dims = (rows, columns)
        coords[columns] = np.arange(result.shape[1])
    return xr.DataArray(result, dims=dims, coords=coords, name=name)


def _check_shape_dtype(shape: tuple, dtype: np.dtype) -> None:
    """ValueError unless 2-D, real and non-empty (worded as scikit-learn's, whose
    common checks match these messages)."""
    if len(shape) != 2:
        raise ValueError(
            f"expected 2-D data of shape (n_samples, n_features), got {len(shape)}-D data "
            f"of shape {shape}. Reshape your data: reshape a single feature with X.reshape(-1, 1)"
        )
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"X must hold real numbers, got dtype {dtype}: Complex data not supported")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise ValueError(f"X must hold real numbers, got dtype {dtype}")
    for axis, what in ((0, "sample"), (1, "feature")):
        if shape[axis] == 0:
            raise ValueError(
                f"X is empty: 0 {what}(s) (shape={tuple(shape)}) while a minimum of 1 is required."
            )


def _as_float(X, keep_integers: bool = False):
    if X.dtype in (np.float32, np.float64):
        return X
    if keep_integers and (np.issubdtype(X.dtype, np.integer) or X.dtype == np.bool_):
        return X
    if X.dtype == np.float16:
        return X.astype(np.float32)
    return X.astype(np.float64)


def as_sample_weight(sample_weight: Any, X: da.Array) -> da.Array | None:
    """Per-row weights (n_samples,) chunked like X's rows; checked if in memory."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, da.Array):
        w = sample_weight
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.ndim == 1 and w.shape[0] == X.shape[0]:
            if not np.all(np.isfinite(w)):
                raise ValueError("sample_weight contains NaN or infinite values")
            if np.any(w < 0):
                raise ValueError(
                    f"sample_weight must be non-negative; first negative at row "
                    f"{int(np.argmax(w < 0))}"
                )
            if not w.sum() > 0:
                raise ValueError("sample_weight sums to zero")
    if w.ndim != 1 or w.shape[0] != X.shape[0]:
        raise ValueError(f"sample_weight must have shape ({X.shape[0]},) to match X, got {w.shape}")
    if isinstance(w, np.ndarray):
        w = da.from_array(w, chunks=(X.chunks[0],))
    w = w.astype(np.float64)
    if w.chunks[0] != X.chunks[0]:
        w = w.rechunk((X.chunks[0],))
    return w


def is_lazy(X: Any) -> bool:
    """Whether ``X`` stays out of this process: a dask array, a DataArray over one, a
    path or URL, or :class:`~dask_em.sequences.Sequences` (whose arrays are dask's).
    Anything else (NumPy, lists, DataArrays over NumPy) is in memory."""
    if isinstance(X, (da.Array, str, os.PathLike)) or _is_dask_dataframe(X):
        return True
    data = getattr(X, "data", None) if hasattr(X, "dims") else getattr(X, "values", None)
    return isinstance(data, da.Array)


def n_rows(X: Any) -> int:
    """Rows of ``X`` (opening a path to read its shape)."""
    if isinstance(X, (str, os.PathLike)) or _is_dask_dataframe(X):
        return as_row_chunked(X).shape[0]
    return int(np.shape(X)[0]) if not hasattr(X, "shape") else int(X.shape[0])


# --------------------------------------------------------------------------- scan pass
def scan_block(
    check: ValueCheck | None,
    X: np.ndarray,
    w: np.ndarray | None,
    n_pick: int,
    seed: int,
    row_offset: int,
) -> dict[str, Any]:
    """Check one block's values (and weights) and draw ``n_pick`` rows from it.

    Returns ``sample`` (n_pick, D) float64 (float32 for float32 X), ``sample_weight``
    (n_pick,), ``column_max`` (D,), ``magnitude`` (D,) (the largest absolute value of
    each column),
    ``n_all_missing`` (rows that are all NaN), ``n_nan`` (NaN entries), and the count,
    first global position and value of any bad entry.  Merging is concatenation
    (:func:`merge_scans`).
    """
    check = check or FINITE
    summary = summarize(X)  # one pass: the columns' maxima, NaN and infinite counts
    problem = first_problem(check, X, summary, row_offset)
    n_bad_w, first_bad_w = 0, None
    if w is not None:
        bad_w = ~np.isfinite(w) | (w < 0)
        n_bad_w = int(bad_w.sum())
        if n_bad_w:
            first_bad_w = row_offset + int(np.argmax(bad_w))
    rng = np.random.default_rng(seed)
    n_pick = min(int(n_pick), len(X))
    rows = np.sort(rng.choice(len(X), size=n_pick, replace=False)) if n_pick else []
    # float32 rows travel as float32 (half the bytes; the client widens them exactly)
    sample_dtype = np.float32 if X.dtype == np.float32 else np.float64
    sample = np.asarray(X[rows], dtype=sample_dtype).reshape(n_pick, X.shape[1])
    sample_w = np.ones(n_pick) if w is None else np.asarray(w[rows], dtype=np.float64)
    column_max, magnitude = summary.column_max, summary.magnitude
    if problem is not None:
        column_max, magnitude = np.full_like(column_max, -np.inf), np.full_like(magnitude, -np.inf)
    all_missing = summary.n_all_missing
    return {
        "sample": sample,
        "sample_weight": sample_w,
        "n_all_missing": all_missing,
        "n_nan": summary.n_nan,
        "column_max": column_max,
        "magnitude": magnitude,
        "problem": problem,
        "n_bad_weight": n_bad_w,
        "first_bad_weight": first_bad_w,
        "weight": float(len(X)) if w is None else float(np.sum(w, dtype=np.float64)),
    }


def _first(a, b):
    candidates = [p for p in (a, b) if p is not None]
    return min(candidates) if candidates else None


def _merge_problems(a, b):
    """``(count, row, col, value)`` of two row ranges: counts add, the first one wins."""
    if a is None or b is None:
        return a if b is None else b
    first = a if a[1:3] <= b[1:3] else b
    return (a[0] + b[0], *first[1:])


def merge_scans(*parts: dict[str, Any]) -> dict[str, Any]:
    """Concatenate samples and add up the problem counts, in block order."""
    out = dict(parts[0])
    for b in parts[1:]:
        out = {
            "sample": np.concatenate([out["sample"], b["sample"]]),
            "sample_weight": np.concatenate([out["sample_weight"], b["sample_weight"]]),
            "n_all_missing": out["n_all_missing"] + b["n_all_missing"],
            "n_nan": out["n_nan"] + b["n_nan"],
            "column_max": np.fmax(out["column_max"], b["column_max"]),
            "magnitude": np.fmax(out["magnitude"], b["magnitude"]),
            "problem": _merge_problems(out["problem"], b["problem"]),
            "n_bad_weight": out["n_bad_weight"] + b["n_bad_weight"],
            "first_bad_weight": _first(out["first_bad_weight"], b["first_bad_weight"]),
            "weight": out["weight"] + b["weight"],
        }
    return out


def raise_for_scan_problems(scan: dict[str, Any], check: ValueCheck | None = None) -> None:
    """ValueError naming the count and first position of bad values or bad weights."""
    if scan["problem"] is not None:
        raise ValueError((check or FINITE).message(*scan["problem"]))
    if scan["n_bad_weight"]:
        raise ValueError(
            f"sample_weight contains {scan['n_bad_weight']} negative, NaN or infinite "
            f"values; the first is at row {scan['first_bad_weight']}"
        )
    if not scan["weight"] > 0:
        raise ValueError("sample_weight sums to zero")

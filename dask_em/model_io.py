"""Model files: fitted estimators as xarray Datasets in Zarr stores (never pickle).

Layout (format ``dask_em.model``, version :data:`FORMAT_VERSION`):

- data variables: the fitted arrays with named dims (``component``, ``feature``,
  ``feature_j`` for the second axis of a matrix) and the history along ``iteration``
  (``history_objective``, ``history_change``, ``history_seconds``,
  ``history_bytes_read``, the last optional when reading);
- attributes: ``dask_em_format``, ``dask_em_format_version``, ``model`` (class name),
  ``params`` (the constructor parameters as JSON), ``converged``, ``n_iter``,
  ``lower_bound``, ``n_features_in``, ``dask_em_version``, and (from version 2)
  ``dask_em_manifest``: each array's dims, shape, dtype and SHA-256, which
  :func:`load` checks (:mod:`dask_em.integrity`; version 1 files, without it, still
  load after every check that needs no manifest).

A store is written next to its destination and renamed into place, so a crash never
leaves half a model at ``path``; it is read back and verified before it replaces what
was there; an existing path is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from dask_em.integrity import StoreFormat, add_manifest, open_verified, verify_written

FORMAT_NAME = "dask_em.model"
FORMAT_VERSION = 2  # 2: with the manifest of dask_em.integrity


def _model_sizes(attrs: dict) -> dict[str, int]:
    """The dim sizes a model file's attributes imply (``component``, ``feature``)."""
    params = json.loads(attrs["params"])
    sizes = {"feature": int(attrs["n_features_in"])}
    if params.get("n_components") is not None:
        sizes["component"] = int(params["n_components"])
    return sizes


MODEL_FILE = StoreFormat(
    name=FORMAT_NAME,
    version=FORMAT_VERSION,
    noun="model file",
    manifest_since=2,
    advice="restore it from a copy or fit the model again",
    is_parameter=lambda name: not name.startswith("history_"),
    expected_sizes=_model_sizes,
)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return None  # e.g. a NumPy Generator as random_state: not reproducible from a file


def to_dataset(model: Any) -> xr.Dataset:
    """A fitted estimator as an xarray Dataset (see module docstring).

    The estimator names its arrays in ``_model_variables()``: ``{name: (dims, array)}``.
    """
    from dask_em import __version__

    model._check_fitted()
    history = model.history_
    data_vars = dict(model._model_variables())
    data_vars.update(
        history_objective=(("iteration",), [h["objective"] for h in history]),
        history_change=(("iteration",), [h["change"] for h in history]),
        history_seconds=(("iteration",), [h["seconds"] for h in history]),
        history_bytes_read=(("iteration",), np.asarray([h.get("bytes_read", 0) for h in history])),
    )
    coords = {"iteration": [h["iteration"] for h in history]}
    for dims, values in model._model_variables().values():
        for dim, size in zip(dims, np.shape(values), strict=True):
            coords.setdefault(dim, np.arange(size))
    attrs = {
        "dask_em_format": FORMAT_NAME,
        "dask_em_format_version": FORMAT_VERSION,
        "dask_em_version": __version__,
        "model": type(model).__name__,
        "params": json.dumps(model.get_params(), default=_json_default),
        "converged": bool(model.converged_),
        "n_iter": int(model.n_iter_),
        "lower_bound": float(model.lower_bound_),
        "n_features_in": int(model.n_features_in_),
        "history_reseeded": json.dumps([h["reseeded"] for h in history]),
    }
    return add_manifest(xr.Dataset(data_vars, coords=coords, attrs=attrs))


def from_dataset(ds: xr.Dataset) -> Any:
    """Rebuild a fitted estimator from :func:`to_dataset`'s Dataset."""
    from dask_em.hmm import MODEL_CLASSES as HMM_CLASSES
    from dask_em.mixture import MODEL_CLASSES as MIXTURE_CLASSES

    classes = {**MIXTURE_CLASSES, **HMM_CLASSES}

    fmt, version = ds.attrs.get("dask_em_format"), ds.attrs.get("dask_em_format_version")
    if fmt != FORMAT_NAME:
        raise ValueError(f"not a dask_em model file (format attribute is {fmt!r})")
    if version is None or int(version) > FORMAT_VERSION:
        raise ValueError(
            f"model file format version {version} is newer than this dask_em reads "
            f"({FORMAT_VERSION}); upgrade dask_em"
        )
    name = ds.attrs.get("model")
    if name not in classes:
        raise ValueError(f"unknown model class {name!r} in model file")
    params = json.loads(ds.attrs["params"])
    for key, value in params.items():
        if key.endswith("_init") and isinstance(value, list):
            params[key] = np.asarray(value)
    for key, value in params.items():
        if isinstance(value, list) and not key.endswith("_init"):
            params[key] = tuple(value)  # e.g. rate_prior, written as a JSON list
    model = classes[name](**params)
    model._restore_variables({name: ds[name].values for name in ds.data_vars})
    model.n_features_in_ = int(ds.attrs["n_features_in"])
    model.converged_ = bool(ds.attrs["converged"])
    model.n_iter_ = int(ds.attrs["n_iter"])
    model.lower_bound_ = float(ds.attrs["lower_bound"])
    reseeded = json.loads(ds.attrs.get("history_reseeded", "[]"))
    n_history = ds.sizes.get("iteration", 0)
    bytes_read = (
        ds["history_bytes_read"].values if "history_bytes_read" in ds else np.zeros(n_history)
    )
    model.history_ = [
        {
            "iteration": int(it),
            "objective": float(obj),
            "change": float(change),
            "seconds": float(sec),
            "reseeded": reseeded[i] if i < len(reseeded) else [],
            "bytes_read": int(nbytes),
        }
        for i, (it, obj, change, sec, nbytes) in enumerate(
            zip(
                ds["iteration"].values,
                ds["history_objective"].values,
                ds["history_change"].values,
                ds["history_seconds"].values,
                bytes_read,
                strict=True,
            )
        )
    ]
    model.lower_bounds_ = [h["objective"] for h in model.history_]
    return model


def save_model(model: Any, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write ``model`` to a Zarr store at ``path`` atomically (write aside, rename)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    write_zarr_atomically(
        to_dataset(model), path, verify=lambda staging: verify_written(staging, path, MODEL_FILE)
    )


def write_zarr_atomically(
    ds: xr.Dataset, path: str | os.PathLike, verify: Callable[[str], Any] | None = None
) -> None:
    """Write ``ds`` to a Zarr store beside ``path`` (``<path>.tmp-*``), then rename it there.

    ``verify(staging)``, if given, reads the written store back first; if it raises, the
    store written aside is removed and ``path`` is left as it was.

    An existing store at ``path`` is first renamed aside (``<path>.old-*``) and removed
    once the new one is in place, so at every moment ``path`` is either absent or a
    complete store.
    """
    path = os.path.abspath(os.fspath(path))
    staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        ds.to_zarr(staging, mode="w-", consolidated=False)
        if verify is not None:
            verify(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_path(staging, path)


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


def load(path: str | os.PathLike) -> Any:
    """Load a model written by ``save``, verified first (:mod:`dask_em.integrity`).

    Raises :class:`dask_em.integrity.ModelFileError` (a ValueError) for a damaged,
    mixed-up or foreign store, naming the array that is wrong.
    """
    return from_dataset(open_verified(path, MODEL_FILE))

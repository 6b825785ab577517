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
from typing import Any

import numpy as np
import xarray as xr

from dask_em.files import json_default, write_zarr_atomically
from dask_em.integrity import StoreFormat, add_manifest, open_verified, verify_written
from dask_em.registry import estimator_class
from dask_em.version import __version__

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


def to_dataset(model: Any) -> xr.Dataset:
    """A fitted estimator as an xarray Dataset (see module docstring).

    The estimator names its arrays in ``_model_variables()``: ``{name: (dims, array)}``.
    """
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
        "params": json.dumps(model.get_params(), default=json_default),
        "converged": bool(model.converged_),
        "n_iter": int(model.n_iter_),
        "lower_bound": float(model.lower_bound_),
        "n_features_in": int(model.n_features_in_),
        "history_reseeded": json.dumps([h["reseeded"] for h in history]),
        # the accelerated loop's fields of each step (passes, move, step, step_max)
        "history_steps": json.dumps(
            [{k: v for k, v in h.items() if k not in _HISTORY_COLUMNS} for h in history],
            default=json_default,
        ),
    }
    return add_manifest(xr.Dataset(data_vars, coords=coords, attrs=attrs))


#: The history fields stored as arrays or in ``history_reseeded``; the rest go to
#: the ``history_steps`` attribute.
_HISTORY_COLUMNS = ("iteration", "objective", "change", "seconds", "reseeded", "bytes_read")


def from_dataset(ds: xr.Dataset) -> Any:
    """Rebuild a fitted estimator from :func:`to_dataset`'s Dataset."""
    fmt, version = ds.attrs.get("dask_em_format"), ds.attrs.get("dask_em_format_version")
    if fmt != FORMAT_NAME:
        raise ValueError(f"not a dask_em model file (format attribute is {fmt!r})")
    if version is None or int(version) > FORMAT_VERSION:
        raise ValueError(
            f"model file format version {version} is newer than this dask_em reads "
            f"({FORMAT_VERSION}); upgrade dask_em"
        )
    estimator = estimator_class(ds.attrs.get("model"))
    params = json.loads(ds.attrs["params"])
    for key, value in params.items():
        if key.endswith("_init") and isinstance(value, list):
            params[key] = np.asarray(value)
    for key, value in params.items():
        if isinstance(value, list) and not key.endswith("_init"):
            params[key] = tuple(value)  # e.g. rate_prior, written as a JSON list
    model = estimator(**params)
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
    steps = json.loads(ds.attrs.get("history_steps", "[]"))
    for record, extra in zip(model.history_, steps, strict=False):
        record.update(extra)
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


def load(path: str | os.PathLike) -> Any:
    """Load a model written by ``save``, verified first (:mod:`dask_em.integrity`).

    Raises :class:`dask_em.integrity.ModelFileError` (a ValueError) for a damaged,
    mixed-up or foreign store, naming the array that is wrong.
    """
    return from_dataset(open_verified(path, MODEL_FILE))

"""Checkpoints of a running fit, so that a killed fit resumes exactly where it was.

After every EM iteration the fit writes the whole state its loop depends on:

- the parameters the iteration reached and the history so far (the objective of the
  last iteration is the one the next is compared with);
- every initialization (``n_init`` restarts run in lockstep): its parameters, history,
  convergence and the points SQUAREM extrapolates from, and the state of the random
  generator after the initializations;
- the seed, which the scan pass (sample for initialization and re-seeding) draws from;
- a fingerprint of the data (shape, dtype, row chunks) and of the estimator's
  parameters: a checkpoint is refused for anything else.

The data's sample is not stored: resuming redoes the scan pass, which draws exactly
the same rows from the same seed and chunks.  With that, a resumed fit performs the
same floating-point operations as an uninterrupted one and ends with the same
parameters, bit for bit.

Format ``dask_em.checkpoint`` (version :data:`FORMAT_VERSION`): an xarray Dataset in a
Zarr store (never pickle).  The estimator names its arrays (``_model_variables``, as in
model files); restart r's are stored as ``run<r>_<name>``, its history as the table
``run<r>_history`` (iteration x field, the fields named in the ``history_fields``
attribute); the rest is in attributes (JSON).
The store is written beside its path, read back and verified, and only then renamed
into place (:func:`dask_em.files.write_zarr_atomically`), so a kill at any moment
leaves either the previous or the new checkpoint.  From version 2 it carries the
manifest of :mod:`dask_em.integrity` (each array's shape, dtype and SHA-256); a
checkpoint that fails verification raises :class:`~dask_em.integrity.ModelFileError`
and is never resumed from.

Any estimator plugs in through the hooks its model files use: ``get_params()``,
``_set_fitted(params)`` with ``_model_variables()`` (parameters -> named arrays), and
``_restore_variables(arrays)`` with ``_fitted_params()`` (named arrays -> parameters);
:mod:`dask_em.estimators.driver` wires them into a fit.
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from dask_em.em import FitResult, IterationRecord
from dask_em.files import json_default, replace_path, write_zarr_atomically
from dask_em.integrity import StoreFormat, add_manifest, open_verified, verify_written

logger = logging.getLogger(__name__)

FORMAT_NAME = "dask_em.checkpoint"
#: 2: the manifest of dask_em.integrity; 3: accelerated EM; 4: lockstep restarts;
#: 5: ``after_rejection`` and ``evaluations`` per record; 6: the driver's own arrays
#: (``run<r>_driver_<name>``, named in the attribute ``run<r>_driver_arrays``: the
#: Jacobian and the centre's damping of ``accelerate="newton"``)
FORMAT_VERSION = 6


#: Estimator parameters that may change between a run and its resumption: they do not
#: change the arithmetic (``max_iter`` only lets a resumed fit run longer).
MAY_CHANGE = ("verbose", "cache", "max_iter")

_HISTORY_FIELDS = ("iteration", "objective", "change", "seconds", "bytes_read")
#: From version 3, per record: ``passes``, ``step``, ``step_max``, and ``extrapolated``
#: (1 for an extrapolation, 0 for an EM step), in ``<prefix>_steps_history``; from
#: version 5 also ``after_rejection`` (1 for a point taken after a rejected
#: extrapolation; 0 in the records of earlier versions) and ``evaluations`` (the points
#: of the run's path evaluated so far; ``passes`` in earlier versions, which did not
#: speculate).
_STEP_FIELDS = ("passes", "step", "step_max", "extrapolated", "after_rejection", "evaluations")


def _checkpoint_sizes(attrs: dict) -> dict[str, int]:
    """The dim sizes the fingerprint implies (``component``, ``feature``)."""
    found = json.loads(attrs["fingerprint"])
    sizes = {"feature": int(found["shape"][1])} if len(found["shape"]) > 1 else {}
    if found["params"].get("n_components") is not None:
        sizes["component"] = int(found["params"]["n_components"])
    return sizes


CHECKPOINT = StoreFormat(
    name=FORMAT_NAME,
    version=FORMAT_VERSION,
    noun="checkpoint",
    manifest_since=2,
    advice="it is not resumed from: remove it to start the fit afresh",
    is_parameter=lambda name: (
        name.startswith(("run", "current_", "best_")) and not name.endswith("_history")
    ),
    expected_sizes=_checkpoint_sizes,
)


@dataclass
class FitState:
    """Everything the fit loop's state depends on (see module docstring)."""

    seed: int
    rng_state: dict  # the generator's state after every initialization
    runs: list[FitResult]  # each initialization's parameters reached and history so far
    fingerprint: dict
    passes: int = 0  # passes over the data the fit made so far (scan, init and EM passes)
    bytes_read: int = 0  # bytes of data those passes read


def fingerprint(model: Any, X: Any, sample_weight: Any = None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: estimator, parameters and data layout."""
    params = {k: v for k, v in model.get_params().items() if k not in MAY_CHANGE}
    return {
        "model": type(model).__name__,
        "params": json.loads(json.dumps(params, default=json_default)),
        "shape": [int(n) for n in X.shape],
        "dtype": str(X.dtype),
        "row_chunks": [int(n) for n in X.chunks[0]],
        "weighted": sample_weight is not None,
    }


# -- writing --------------------------------------------------------------------------
def save_state(path: str | os.PathLike, model: Any, state: FitState) -> None:
    """Write ``state`` to the Zarr store at ``path`` atomically, replacing what is there."""
    path = os.path.abspath(os.fspath(path))
    data_vars: dict[str, Any] = {}
    attrs: dict[str, Any] = {
        "dask_em_format": FORMAT_NAME,
        "dask_em_format_version": FORMAT_VERSION,
        "model": type(model).__name__,
        "seed": str(state.seed),
        "n_runs": len(state.runs),
        "rng_state": json.dumps(state.rng_state),
        "fingerprint": json.dumps(state.fingerprint),
        "history_fields": json.dumps(_HISTORY_FIELDS),
        "step_fields": json.dumps(_STEP_FIELDS),
        "passes": str(state.passes),
        "bytes_read": str(state.bytes_read),
    }
    for r, result in enumerate(state.runs):
        prefix = f"run{r}"
        variables = _variables_of(model, result.params)
        attrs["parameter_names"] = json.dumps(sorted(variables))
        for name, (dims, values) in variables.items():
            data_vars[f"{prefix}_{name}"] = (dims, np.asarray(values))
        table = [[getattr(record, field) for field in _HISTORY_FIELDS] for record in result.history]
        data_vars[f"{prefix}_history"] = (
            (f"{prefix}_iteration", "history_field"),
            np.asarray(table, dtype=np.float64).reshape(-1, len(_HISTORY_FIELDS)),
        )
        attrs[f"{prefix}_history_reseeded"] = json.dumps(
            [list(record.reseeded) for record in result.history]
        )
        attrs[f"{prefix}_converged"] = bool(result.converged)
        steps = [
            [
                record.passes,
                record.step,
                record.step_max,
                float(record.move != "em"),
                float(record.after_rejection),
                record.evaluations,
            ]
            for record in result.history
        ]
        data_vars[f"{prefix}_steps_history"] = (
            (f"{prefix}_iteration", "step_field"),
            np.asarray(steps, dtype=np.float64).reshape(-1, len(_STEP_FIELDS)),
        )
        attrs[f"{prefix}_passes"] = int(result.passes)
        # the points SQUAREM extrapolates from (stored as parameters, so verified finite)
        attrs[f"{prefix}_chain_length"] = len(result.chain)
        for i, point in enumerate(result.chain):
            for name, (dims, values) in _variables_of(model, point).items():
                data_vars[f"{prefix}_chain{i}_{name}"] = (dims, np.asarray(values))
        # the driver's own arrays (empty ones are left out: the driver reads them as unset)
        stored = {n: np.asarray(a, dtype=np.float64) for n, a in result.arrays.items()}
        stored = {n: a for n, a in stored.items() if a.size}
        attrs[f"{prefix}_driver_arrays"] = json.dumps(sorted(stored))
        for name, values in stored.items():
            dims = tuple(f"{prefix}_driver_{name}_axis{i}" for i in range(values.ndim))
            data_vars[f"{prefix}_driver_{name}"] = (dims, values)
    write_zarr_atomically(
        add_manifest(xr.Dataset(data_vars, attrs=attrs)),
        path,
        verify=lambda staging: verify_written(staging, path, CHECKPOINT),
    )
    _remove_leftovers(path)


def _variables_of(model: Any, params: dict) -> dict[str, tuple]:
    """The estimator's named arrays for ``params`` (on a copy: ``model`` is untouched)."""
    view = copy.copy(model)
    view._set_fitted(params)
    return view._model_variables()


def _params_of(model: Any, variables: dict[str, np.ndarray]) -> dict:
    view = copy.copy(model)
    view._restore_variables(variables)
    return view._fitted_params()


def _remove_leftovers(path: str) -> None:
    """Staging or retired stores of earlier writes that a kill left behind."""
    for leftover in glob.glob(glob.escape(path) + ".tmp-*") + glob.glob(
        glob.escape(path) + ".old-*"
    ):
        shutil.rmtree(leftover, ignore_errors=True)


# -- reading --------------------------------------------------------------------------
def _recover(path: str) -> None:
    """A kill between the two renames of a replacement leaves ``path`` missing and the
    previous, complete checkpoint at ``<path>.old-*``: move it back."""
    if os.path.exists(path):
        return
    retired = sorted(glob.glob(glob.escape(path) + ".old-*"), key=os.path.getmtime)
    if retired:
        logger.warning("recovering the checkpoint %s from %s", path, retired[-1])
        replace_path(retired[-1], path)


def open_checkpoint(path: str | os.PathLike) -> xr.Dataset | None:
    """The checkpoint at ``path`` as a loaded Dataset, or None if there is none.

    Raises :class:`~dask_em.integrity.ModelFileError` (a ValueError) for a path that
    holds something else or a checkpoint that fails verification.
    """
    path = os.path.abspath(os.fspath(path))
    _recover(path)
    if not os.path.exists(path):
        return None
    return open_verified(path, CHECKPOINT)


def load_state(path: str | os.PathLike, model: Any, expected: dict) -> FitState | None:
    """The state saved at ``path`` for ``model`` and data matching ``expected``.

    None if there is no checkpoint; ValueError if it was written for another model,
    other parameters or other data (naming what differs).
    """
    ds = open_checkpoint(path)
    if ds is None:
        return None
    found = json.loads(ds.attrs["fingerprint"])
    differing = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
    if differing:
        what = differing[0]
        if what == "params":
            keys = set(found["params"]) | set(expected["params"])
            names = sorted(k for k in keys if found["params"].get(k) != expected["params"].get(k))
            what = "parameters " + ", ".join(names)
        raise ValueError(
            f"the checkpoint {os.fspath(path)} was written for a different fit ({what} "
            "differ); remove it to start afresh"
        )
    prefixes = _run_prefixes(ds, path)
    names = json.loads(ds.attrs["parameter_names"])

    def result(prefix: str) -> FitResult:
        variables = {name: ds[f"{prefix}_{name}"].values for name in names}
        reseeded = json.loads(ds.attrs[f"{prefix}_history_reseeded"])
        columns = ds[f"{prefix}_history"].values.T  # (field, iteration), _HISTORY_FIELDS
        steps = _steps(ds, prefix, columns)
        history = [
            IterationRecord(
                iteration=int(it),
                objective=float(obj),
                change=float(change),
                seconds=float(sec),
                reseeded=tuple(reseeded[i]),
                bytes_read=int(nbytes),
                passes=int(passes),
                move="extrapolated" if extrapolated else "em",
                step=float(step),
                step_max=float(step_max),
                after_rejection=bool(after_rejection),
                evaluations=int(evaluations),
            )
            for i, (
                (it, obj, change, sec, nbytes),
                (passes, step, step_max, extrapolated, after_rejection, evaluations),
            ) in enumerate(zip(zip(*columns, strict=True), zip(*steps, strict=True), strict=True))
        ]
        out = FitResult(_params_of(model, variables), history)
        out.converged = bool(ds.attrs[f"{prefix}_converged"])
        if history:
            out.n_iter, out.lower_bound = history[-1].iteration, history[-1].objective
        out.passes = int(ds.attrs.get(f"{prefix}_passes", len(history)))
        out.chain = tuple(
            _params_of(model, {name: ds[f"{prefix}_chain{i}_{name}"].values for name in names})
            for i in range(int(ds.attrs.get(f"{prefix}_chain_length", 0)))
        )
        arrays = json.loads(ds.attrs.get(f"{prefix}_driver_arrays", "[]"))  # before 6: none
        out.arrays = {name: ds[f"{prefix}_driver_{name}"].values for name in arrays}
        return out

    return FitState(
        seed=int(ds.attrs["seed"]),
        rng_state=json.loads(ds.attrs["rng_state"]),
        runs=[result(prefix) for prefix in prefixes],
        fingerprint=found,
        passes=int(ds.attrs.get("passes", 0)),
        bytes_read=int(ds.attrs.get("bytes_read", 0)),
    )


def _run_prefixes(ds: xr.Dataset, path) -> list[str]:
    """The prefixes of the runs' arrays.  Before version 4 the restarts ran one after
    another (arrays ``current_*`` and ``best_*``): such a checkpoint is resumed while
    it holds the first initialization only (always so with ``n_init=1``)."""
    version = int(ds.attrs["dask_em_format_version"])
    if version >= 4:
        return [f"run{r}" for r in range(int(ds.attrs["n_runs"]))]
    if int(ds.attrs["attempt"]) == 0 and not ds.attrs["has_best"]:
        return ["current"]
    raise ValueError(
        f"the checkpoint {os.fspath(path)} was written by an earlier dask_em (checkpoint "
        f"format {version}) after its first initialization, with restarts one after "
        "another; this version runs them in lockstep and cannot continue it: remove it "
        "to start afresh"
    )


def _steps(ds: xr.Dataset, prefix: str, columns: np.ndarray) -> np.ndarray:
    """The ``_STEP_FIELDS`` columns (field, iteration); before version 3 (plain EM only),
    those of plain EM: one pass per record, steps of 1; before version 5, no point
    after a rejection and as many evaluations as passes."""
    n = columns.shape[1]
    if f"{prefix}_steps_history" not in ds:
        passes = np.arange(1.0, n + 1)
        return np.stack([passes, np.ones(n), np.ones(n), np.zeros(n), np.zeros(n), passes])
    steps = ds[f"{prefix}_steps_history"].values.T
    if steps.shape[0] == 4:  # versions 3 and 4
        steps = np.concatenate([steps, np.zeros((1, n)), steps[:1]])
    return steps


def progress(path: str | os.PathLike) -> dict[str, Any] | None:
    """``{"iterations": [per initialization], "iteration": the furthest}`` of the
    checkpoint at ``path``, or None (no checkpoint).

    Read-only (for monitoring from another process): it never recovers or moves files.
    """
    path = os.fspath(path)
    try:
        with xr.open_zarr(path, consolidated=False) as ds:
            prefixes = [f"run{r}" for r in range(int(ds.attrs.get("n_runs", 0)))]
            iterations = []
            for prefix in prefixes or ["current"]:  # "current": before version 4
                done = ds[f"{prefix}_history"].values[:, 0]
                iterations.append(int(done[-1]) if len(done) else 0)
            return {"iterations": iterations, "iteration": max(iterations)}
    except Exception:  # absent, or being replaced at this moment
        return None

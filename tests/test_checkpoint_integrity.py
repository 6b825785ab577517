"""Checkpoints that detect damage (issue #15, item 1): a damaged checkpoint is never
resumed from (the fit refuses it, naming the array, and leaves it byte-identical), and
a new checkpoint replaces the previous good one only once it reads back intact.

Policy: refuse rather than start afresh.  The user asked to resume; starting afresh
would silently throw away the run the checkpoint stood for and hide that the disk or a
copy damaged it.  The message says to remove the checkpoint to start afresh.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from dask_em import GaussianHMM, GaussianMixture
from dask_em.checkpoint import CHECKPOINT, FORMAT_VERSION
from dask_em.integrity import MANIFEST_ATTR, ModelFileError, add_manifest, open_verified_as_any
from dask_em.model_io import MODEL_FILE
from tests.test_model_integrity import (
    chunk_files,
    damaged_write,
    edit_root_attributes,
    flip_byte,
    snapshot,
    swap_in,
    truncate,
    write_value,
)

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")

RNG = np.random.default_rng(16)
X = np.concatenate([RNG.normal(0, 1, (200, 2)), RNG.normal(3, 1, (200, 2))])
LENGTHS = [150, 250]
PARAMS = {"max_iter": 6, "tol": 0.0, "random_state": 0}


class Stop(Exception):
    """Raised from a callback to interrupt a fit after its n-th iteration."""


def stop_after(n_calls: int):
    calls = []

    def callback(record, params):
        calls.append(record.iteration)
        if len(calls) == n_calls:
            raise Stop

    return callback


def fit(model, path: Path, **kwargs):
    lengths = (LENGTHS,) if isinstance(model, GaussianHMM) else ()
    return model.fit(X, *lengths, checkpoint=path, **kwargs)


def interrupted_checkpoint(make, path: Path) -> Path:
    """The checkpoint a fit leaves when it stops after its second iteration."""
    with pytest.raises(Stop):
        fit(make(), path, callbacks=[stop_after(2)])
    return path


def damage_cases(weights: str) -> dict:
    """``{case: (what the message must name, damage(store))}``; ``weights`` is the
    checkpoint's first vector parameter (``run0_weights`` or ``run0_startprob``)."""
    return {
        "chunk deleted": ("run0_means", lambda s: chunk_files(s, "run0_means")[0].unlink()),
        "chunk truncated": (
            weights,
            lambda s: truncate(chunk_files(s, weights)[0], 9),
        ),
        "byte flipped": (
            "run0_means",
            lambda s: flip_byte(chunk_files(s, "run0_means")[0], 12),
        ),
        "metadata deleted": (
            "run0_means",
            lambda s: (s / "run0_means" / "zarr.json").unlink(),
        ),
        "NaN written": (weights, lambda s: write_value(s, weights, np.nan)),
        "version 1.9": (
            "dask_em_format_version",
            lambda s: edit_root_attributes(s, lambda a: a.update(dask_em_format_version=1.9)),
        ),
        "version removed": (
            "dask_em_format_version",
            lambda s: edit_root_attributes(s, lambda a: a.pop("dask_em_format_version")),
        ),
        "manifest removed": (
            MANIFEST_ATTR,
            lambda s: edit_root_attributes(s, lambda a: a.pop(MANIFEST_ATTR)),
        ),
        "root zarr.json deleted": ("zarr.json", lambda s: (s / "zarr.json").unlink()),
    }


MODELS = {
    "gmm": (lambda k=2: GaussianMixture(k, **PARAMS), "run0_weights"),
    "gaussian-hmm": (lambda k=2: GaussianHMM(k, **PARAMS), "run0_startprob"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", MODELS)
def test_a_damaged_checkpoint_is_never_resumed_from(tmp_path, kind):
    make, weights = MODELS[kind]
    pristine = interrupted_checkpoint(make, tmp_path / "pristine.zarr")
    other_k = interrupted_checkpoint(lambda: make(3), tmp_path / "other-k.zarr")
    cases = damage_cases(weights)
    cases["means from a K=3 fit"] = (
        "run0_means",
        lambda s: swap_in(s, other_k, ["run0_means"]),
    )
    for case, (name, damage) in cases.items():
        path = tmp_path / "case" / "ck.zarr"
        shutil.copytree(pristine, path)
        damage(path)
        before = snapshot(path.parent)
        with pytest.raises(ModelFileError) as refusal:
            fit(make(), path, resume=True)
        message = str(refusal.value)
        assert "\n" not in message and str(path) in message and name in message, (case, message)
        assert snapshot(path.parent) == before, case  # nothing moved, nothing beside it
        shutil.rmtree(path.parent)
    # the undamaged checkpoint resumes
    assert fit(make(), pristine, resume=True).n_iter_ == PARAMS["max_iter"]


def test_a_checkpoint_that_does_not_read_back_never_replaces_the_good_one(tmp_path, monkeypatch):
    reference = GaussianMixture(2, **PARAMS).fit(X)
    path = interrupted_checkpoint(MODELS["gmm"][0], tmp_path / "ck.zarr")
    before = snapshot(tmp_path)
    with monkeypatch.context() as patch:
        damaged_write(patch, "run0_means")
        with pytest.raises(ModelFileError, match=r"does not read back intact.*'run0_means'"):
            fit(GaussianMixture(2, **PARAMS), path, resume=True)
    assert snapshot(tmp_path) == before  # the previous checkpoint, and nothing beside it
    resumed = fit(GaussianMixture(2, **PARAMS), path, resume=True)
    np.testing.assert_array_equal(resumed.means_, reference.means_)
    assert resumed.lower_bounds_ == reference.lower_bounds_


def test_a_version_1_checkpoint_without_a_manifest_still_resumes(tmp_path):
    assert FORMAT_VERSION == 6
    reference = GaussianMixture(2, **PARAMS).fit(X)
    path = interrupted_checkpoint(MODELS["gmm"][0], tmp_path / "ck.zarr")
    earlier = as_format_3(path)
    earlier.attrs.pop(MANIFEST_ATTR)
    earlier.attrs["dask_em_format_version"] = 1
    earlier.to_zarr(tmp_path / "v1.zarr", consolidated=False)
    resumed = fit(GaussianMixture(2, **PARAMS), tmp_path / "v1.zarr", resume=True)
    np.testing.assert_array_equal(resumed.means_, reference.means_)


def test_an_earlier_checkpoint_past_its_first_restart_is_refused_saying_what_to_do(tmp_path):
    """Before format 4 the restarts ran one after another: a checkpoint written in the
    second one cannot be continued in lockstep.  It is refused, and nothing is lost."""
    path = interrupted_checkpoint(MODELS["gmm"][0], tmp_path / "ck.zarr")
    earlier = as_format_3(path)
    earlier.attrs["attempt"] = 1
    earlier.attrs["has_best"] = True
    earlier.attrs.pop(MANIFEST_ATTR)
    add_manifest(earlier).to_zarr(tmp_path / "v3.zarr", consolidated=False)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"earlier dask_em \(checkpoint format 3\).*remove it"):
        fit(GaussianMixture(2, **PARAMS), tmp_path / "v3.zarr", resume=True)
    assert snapshot(tmp_path) == before


def as_format_3(path: Path) -> xr.Dataset:
    """The checkpoint at ``path`` (one initialization) as format 3 wrote it: arrays
    ``current_*``, attributes ``attempt`` and ``has_best``."""
    with xr.open_zarr(path, consolidated=False) as ds:
        ds = ds.load()
    assert int(ds.attrs["n_runs"]) == 1
    ds = ds.rename(
        {name: name.replace("run0", "current") for name in ds.variables if "run0" in name}
    )
    for key in [k for k in ds.attrs if k.startswith("run0_")]:
        ds.attrs[key.replace("run0", "current")] = ds.attrs.pop(key)
    del ds.attrs["n_runs"]
    ds.attrs.update(attempt=0, has_best=False, dask_em_format_version=3)
    ds.attrs.pop(MANIFEST_ATTR)
    return add_manifest(ds)


def test_a_reader_of_both_kinds_verifies_each_as_its_own_kind(tmp_path):
    """``open_verified_as_any``: what ``dask-em info`` needs to read either kind."""
    checkpoint = interrupted_checkpoint(MODELS["gmm"][0], tmp_path / "ck.zarr")
    model = tmp_path / "model.zarr"
    GaussianMixture(2, **PARAMS).fit(X).save(model)
    kinds = [MODEL_FILE, CHECKPOINT]
    assert open_verified_as_any(model, kinds)[0] is MODEL_FILE
    fmt, ds = open_verified_as_any(checkpoint, kinds)
    assert fmt is CHECKPOINT and ds["run0_means"].shape == (2, 2)
    chunk_files(checkpoint, "run0_means")[0].unlink()
    with pytest.raises(ModelFileError, match=r"^checkpoint .*array 'run0_means' does not"):
        open_verified_as_any(checkpoint, kinds)
    with pytest.raises(
        ModelFileError, match="is not a dask_em model file or checkpoint: nothing exists"
    ):
        open_verified_as_any(tmp_path / "nothing.zarr", kinds)

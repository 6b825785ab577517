"""GaussianMixture behaviour on a real 2-process LocalCluster."""

from __future__ import annotations

import logging
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from distributed import get_task_stream

from dask_em import ConvergenceWarning, EmptyComponentWarning, GaussianMixture, load
from dask_em.families.gaussian import COVARIANCE_TYPES
from tests.helpers import assert_monotone, make_blobs


@pytest.mark.parametrize("grouped", [True, False])
def test_fit_runs_as_estep_tasks_on_the_workers(client, grouped):
    # persisted data: one E-step task per worker thread and pass (default), or one per
    # block and the tree's reduce tasks above them (dask_em.grouped-passes False)
    X, _, _ = make_blobs(2000, 3, 3, seed=1)
    with dask.config.set({"dask_em.grouped-passes": grouped}), get_task_stream(client) as stream:
        GaussianMixture(3, random_state=0, max_iter=5, tol=0).fit(da.from_array(X, chunks=(200, 3)))
    names = [record["key"][0] for record in stream.data if isinstance(record["key"], tuple)]
    prefixes = {name.rsplit("-", 1)[0] for name in names}
    assert {"estep-gmm", "scan-gmm", "init-gmm"} <= prefixes
    assert ("reduce-gmm" in prefixes) is not grouped  # 10 blocks: two levels of fan-in 8
    estep_tasks = [name for name in names if name.startswith("estep-gmm-")]
    passes = len(set(estep_tasks))
    assert len(estep_tasks) == passes * (2 if grouped else 10)  # 2 workers x 1 thread
    workers = {record["worker"] for record in stream.data}
    assert len(workers) == 2


@pytest.mark.slow
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_recovers_a_known_mixture(client, covariance_type, init_params):
    rng = np.random.default_rng(3)
    means = np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, -2.0]])
    labels = rng.choice(3, size=6000, p=[0.5, 0.3, 0.2])
    X = means[labels] + rng.standard_normal((6000, 2)) * [1.0, 0.7]
    # "random" responsibilities start every component at the overall mean, a saddle
    # point that EM leaves slowly (scikit-learn stops there after 2 iterations at tol=1e-3)
    tol = 1e-9 if init_params == "random" else 1e-3
    model = GaussianMixture(
        3,
        covariance_type=covariance_type,
        init_params=init_params,
        n_init=2,
        random_state=0,
        max_iter=1000,
        tol=tol,
    ).fit(da.from_array(X, chunks=(1000, 2)))
    assert model.converged_
    assert_monotone(model.history_)
    # match fitted components to true ones by nearest mean
    match = np.argmin(((model.means_[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert sorted(match) == [0, 1, 2]
    np.testing.assert_allclose(model.means_, means[match], atol=0.1)
    assert np.mean(match[model.predict(X)] == labels) > 0.98


@pytest.mark.slow
def test_integer_sample_weight_equals_repeated_rows(client):
    X, _, _ = make_blobs(500, 3, 3, seed=4)
    counts = np.random.default_rng(0).integers(0, 4, size=len(X))
    init = dict(
        weights_init=np.full(3, 1 / 3),
        means_init=X[[0, 100, 200]],
        precisions_init=np.stack([np.eye(3)] * 3),
    )
    weighted = GaussianMixture(3, tol=1e-10, max_iter=60, **init).fit(
        da.from_array(X, chunks=(90, 3)), sample_weight=counts
    )
    repeated = GaussianMixture(3, tol=1e-10, max_iter=60, **init).fit(
        da.from_array(np.repeat(X, counts, axis=0), chunks=(130, 3))
    )
    assert weighted.n_iter_ == repeated.n_iter_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(weighted, name), getattr(repeated, name), rtol=1e-9)
    np.testing.assert_allclose(weighted.lower_bound_, repeated.lower_bound_, rtol=1e-10)
    assert_monotone(weighted.history_)


@pytest.mark.slow
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_data_far_from_the_origin_fits_as_well_as_centred_data(client, covariance_type):
    X, _, _ = make_blobs(1500, 3, 3, seed=5, spread=3.0)
    shift = 1e6
    precisions = {
        "full": np.stack([np.eye(3)] * 3),
        "tied": np.eye(3),
        "diag": np.ones((3, 3)),
        "spherical": np.ones(3),
    }[covariance_type]
    init = dict(
        weights_init=np.full(3, 1 / 3), means_init=X[[0, 500, 1000]], precisions_init=precisions
    )
    kwargs = dict(covariance_type=covariance_type, tol=1e-4, max_iter=60)  # 17-43 iterations
    centred = GaussianMixture(3, **kwargs, **init).fit(da.from_array(X, chunks=(400, 3)))
    init["means_init"] = init["means_init"] + shift
    far = GaussianMixture(3, **kwargs, **init).fit(da.from_array(X + shift, chunks=(400, 3)))
    assert centred.converged_ and far.n_iter_ == centred.n_iter_  # stopped at the same pass
    np.testing.assert_allclose(far.means_ - shift, centred.means_, atol=1e-6)
    np.testing.assert_allclose(far.covariances_, centred.covariances_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(far.lower_bound_, centred.lower_bound_, rtol=1e-9)
    assert_monotone(far.history_)


@pytest.mark.slow
def test_component_that_loses_its_data_is_reseeded(client):
    X, _, _ = make_blobs(3000, 2, 3, seed=6, spread=5.0)
    means = np.vstack([X[:2], [[1e4, 1e4]]])  # third component far from every point
    model = GaussianMixture(
        3, means_init=means, weights_init=np.full(3, 1 / 3), random_state=0, max_iter=200
    )
    with pytest.warns(EmptyComponentWarning, match=r"component\(s\) \[2\]"):
        model.fit(da.from_array(X, chunks=(500, 2)))
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(model, name))), name
    assert model.weights_[2] > 0.05
    assert np.abs(model.means_[2]).max() < 50
    assert any(h["reseeded"] for h in model.history_)
    assert_monotone(model.history_)


@pytest.mark.slow
def test_input_kinds_give_the_same_fit(client, tmp_path):
    X, _, _ = make_blobs(1200, 3, 2, seed=7)
    kwargs = dict(random_state=3, tol=1e-8, max_iter=50)
    path = str(tmp_path / "X.zarr")
    da.from_array(X, chunks=(300, 3)).to_zarr(path)
    reference = GaussianMixture(2, **kwargs).fit(da.from_array(X, chunks=(300, 3)))
    inputs = {
        "numpy": X,
        "zarr path": path,
        "xarray": xr.DataArray(da.from_array(X, chunks=(300, 3)), dims=("sample", "feature")),
        "split features": da.from_array(X, chunks=(300, 1)),
    }
    for kind, data in inputs.items():
        model = GaussianMixture(2, **kwargs).fit(data)
        np.testing.assert_allclose(model.means_, reference.means_, rtol=1e-9, err_msg=kind)


@pytest.mark.slow
def test_float32_data_fits_close_to_float64(client):
    X, _, _ = make_blobs(5000, 4, 3, seed=8)
    kwargs = dict(random_state=1, tol=1e-7, max_iter=100, means_init=X[[0, 2000, 4000]])
    a = GaussianMixture(3, **kwargs).fit(da.from_array(X, chunks=(1000, 4)))
    b = GaussianMixture(3, **kwargs).fit(da.from_array(X.astype(np.float32), chunks=(1000, 4)))
    assert b.means_.dtype == np.float64
    np.testing.assert_allclose(b.means_, a.means_, atol=1e-4)
    np.testing.assert_allclose(b.lower_bound_, a.lower_bound_, rtol=1e-5)
    assert_monotone(b.history_)
    X32 = da.from_array(X.astype(np.float32), chunks=(1000, 4))
    assert b.predict_proba(X32).dtype == np.float64
    np.testing.assert_allclose(
        b.score_samples(X32).compute(),
        b.score_samples(X.astype(np.float32).astype(float)),
        rtol=1e-5,
    )


def test_lazy_predictions_are_chunked_like_x_and_write_to_zarr(client, tmp_path):
    X, _, _ = make_blobs(2000, 3, 3, seed=9)
    X_dask = da.from_array(X, chunks=(300, 3))
    model = GaussianMixture(3, random_state=0).fit(X_dask)
    labels = model.predict(X_dask)
    proba = model.predict_proba(X_dask)
    scores = model.score_samples(X_dask)
    for lazy in (labels, proba, scores):
        assert isinstance(lazy, da.Array)
        assert lazy.chunks[0] == X_dask.chunks[0]
    assert proba.chunks[1] == (3,)
    labels.to_zarr(str(tmp_path / "labels.zarr"))
    stored = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")[:]
    np.testing.assert_array_equal(stored, model.predict(X))
    np.testing.assert_allclose(proba.sum(axis=1).compute(), 1.0)
    assert any(name.startswith("predict-gmm") for name in labels.dask.layers)


def test_save_and_load_round_trip(client, tmp_path):
    X, _, _ = make_blobs(1500, 3, 3, seed=10)
    for covariance_type in COVARIANCE_TYPES:
        model = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(X)
        path = tmp_path / f"{covariance_type}.zarr"
        model.save(path)
        loaded = load(path)
        assert loaded.get_params() == {**model.get_params()}
        for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
            np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
        assert loaded.history_ == model.history_
        assert (loaded.converged_, loaded.n_iter_, loaded.lower_bound_) == (
            model.converged_,
            model.n_iter_,
            model.lower_bound_,
        )
        np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X))
        ds = model.to_xarray()
        assert ds.attrs["dask_em_format_version"] == 2
        assert "component" in ds["means"].dims and "feature" in ds["means"].dims


def test_save_never_overwrites_without_permission(tmp_path):
    X, _, _ = make_blobs(300, 2, 2, seed=11)
    model = GaussianMixture(2, random_state=0).fit(X)
    path = tmp_path / "model.zarr"
    path.mkdir()
    (path / "precious.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(path)
    assert (path / "precious.txt").read_text() == "mine"
    model.save(path, overwrite=True)
    assert load(path).n_iter_ == model.n_iter_


def test_load_rejects_what_is_not_a_model(tmp_path):
    path = str(tmp_path / "data.zarr")
    da.zeros((10, 2)).to_zarr(path)
    with pytest.raises(ValueError, match="not a dask_em model"):
        load(path)
    X, _, _ = make_blobs(300, 2, 2, seed=12)
    model = GaussianMixture(2, random_state=0).fit(X)
    ds = model.to_xarray()
    ds.attrs["dask_em_format_version"] = 99
    ds.to_zarr(str(tmp_path / "future.zarr"), consolidated=False)
    with pytest.raises(ValueError, match="newer"):
        load(tmp_path / "future.zarr")


@pytest.mark.slow
def test_n_init_keeps_the_best_initialization(client, caplog):
    X, _, _ = make_blobs(3000, 2, 5, seed=13)
    X_dask = da.from_array(X, chunks=(1000, 2))
    model = GaussianMixture(5, init_params="random_from_data", n_init=4, random_state=0)
    with caplog.at_level(logging.INFO, logger="dask_em"):
        model.fit(X_dask)
    finals = [r.args[1] for r in caplog.records if r.msg.startswith("initialization")]
    assert len(finals) == 4
    assert len(set(np.round(finals, 6))) > 1  # the restarts really differ
    assert model.lower_bound_ == max(finals)


def test_warm_start_continues_from_the_fitted_parameters(client):
    X, _, _ = make_blobs(2000, 2, 3, seed=14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = GaussianMixture(3, warm_start=True, max_iter=2, tol=0, random_state=0)
        model.fit(X)
        first = model.history_[-1]["objective"]
        model.fit(X)
    assert model.history_[0]["objective"] >= first
    cold = GaussianMixture(3, max_iter=4, tol=0, random_state=0)
    with pytest.warns(ConvergenceWarning):
        cold.fit(X)
    np.testing.assert_allclose(model.means_, cold.means_, rtol=1e-10)


def test_sample_draws_from_the_fitted_mixture():
    X, _, _ = make_blobs(4000, 2, 2, seed=15)
    model = GaussianMixture(2, random_state=0).fit(X)
    drawn, labels = model.sample(20000)
    assert drawn.shape == (20000, 2) and labels.shape == (20000,)
    np.testing.assert_allclose(np.bincount(labels) / 20000, model.weights_, atol=0.02)
    refit = GaussianMixture(2, random_state=0).fit(drawn)
    np.testing.assert_allclose(np.sort(refit.means_[:, 0]), np.sort(model.means_[:, 0]), atol=0.1)


def test_get_and_set_params():
    model = GaussianMixture(3, covariance_type="diag")
    params = model.get_params()
    assert params["n_components"] == 3 and params["covariance_type"] == "diag"
    assert params["tol"] == 1e-3 and params["reg_covar"] == 1e-6 and params["max_iter"] == 100
    model.set_params(n_components=5, tol=1e-4)
    assert model.n_components == 5 and model.tol == 1e-4
    with pytest.raises(ValueError, match="invalid parameter"):
        model.set_params(n_clusters=2)
    assert "n_components=5" in repr(model)


def test_verbose_logs_one_line_per_iteration(capsys):
    X, _, _ = make_blobs(600, 2, 2, seed=16)
    model = GaussianMixture(2, verbose=1, random_state=0, max_iter=100).fit(X)
    lines = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("gmm iteration")
    ]
    assert len(lines) == model.n_iter_

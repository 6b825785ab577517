"""Dask and xarray habits: ``client=`` on a second cluster, DataArrays in and out,
pandas and dask DataFrames as X (issue #13, item 3)."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client, LocalCluster, futures_of, get_task_stream

from dask_em import GaussianHMM, GaussianMixture, PoissonMixture
from dask_em.engine import EVENT_TOPIC
from tests.helpers import make_blobs

N, D, K = 600, 2, 3


@pytest.fixture(scope="module")
def blobs():
    X, _, _ = make_blobs(N, D, K, seed=3)
    return X


@pytest.fixture(scope="module")
def gmm(blobs):
    return GaussianMixture(K, random_state=0).fit(blobs)


def _sample_coords(n: int) -> dict:
    return {
        "time": pd.date_range("2024-01-01", periods=n, freq="h"),
        "station": ("time", np.arange(n) % 7),  # a non-index coordinate along the rows
    }


def _data_array(X: np.ndarray, chunks: int | None = None) -> xr.DataArray:
    data = X if chunks is None else da.from_array(X, chunks=(chunks, -1))
    coords = {**_sample_coords(len(X)), "feature": [f"f{j}" for j in range(X.shape[1])]}
    return xr.DataArray(data, dims=("time", "feature"), coords=coords)


def _assert_rows_labelled(out: xr.DataArray, given: xr.DataArray) -> None:
    assert out.dims[0] == "time"
    np.testing.assert_array_equal(out["time"].values, given["time"].values)
    np.testing.assert_array_equal(out["station"].values, given["station"].values)
    assert "feature" not in out.coords


# -- xarray out -------------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [None, 150], ids=["numpy", "dask"])
def test_predict_of_a_data_array_is_a_data_array_on_its_sample_coordinates(gmm, blobs, chunks):
    given = _data_array(blobs, chunks)
    labels = gmm.predict(given)
    assert isinstance(labels, xr.DataArray) and labels.dims == ("time",)
    assert labels.name == "label"
    assert isinstance(labels.data, da.Array) == (chunks is not None)  # lazy stays lazy
    _assert_rows_labelled(labels, given)
    np.testing.assert_array_equal(labels.values, gmm.predict(blobs))


@pytest.mark.parametrize("chunks", [None, 150], ids=["numpy", "dask"])
def test_predict_proba_of_a_data_array_has_a_component_dim(gmm, blobs, chunks):
    given = _data_array(blobs, chunks)
    proba = gmm.predict_proba(given)
    assert isinstance(proba, xr.DataArray) and proba.dims == ("time", "component")
    np.testing.assert_array_equal(proba["component"].values, np.arange(K))
    _assert_rows_labelled(proba, given)
    np.testing.assert_allclose(proba.values, gmm.predict_proba(blobs), rtol=1e-12)


@pytest.mark.parametrize("chunks", [None, 150], ids=["numpy", "dask"])
def test_score_samples_of_a_data_array_is_a_data_array(gmm, blobs, chunks):
    given = _data_array(blobs, chunks)
    scores = gmm.score_samples(given)
    assert isinstance(scores, xr.DataArray) and scores.dims == ("time",)
    _assert_rows_labelled(scores, given)
    np.testing.assert_allclose(scores.values, gmm.score_samples(blobs), rtol=1e-12)
    assert gmm.score(given) == pytest.approx(gmm.score(blobs), rel=1e-12)  # still a float


def test_impute_of_a_data_array_keeps_both_dims_and_their_coordinates(gmm, blobs):
    holes = blobs.copy()
    holes[::5, 1] = np.nan
    given = _data_array(holes, 150)
    imputed = gmm.impute(given)
    assert imputed.dims == ("time", "feature")
    np.testing.assert_array_equal(imputed["feature"].values, given["feature"].values)
    _assert_rows_labelled(imputed.drop_vars("feature"), given)
    np.testing.assert_allclose(imputed.values, gmm.impute(holes), rtol=1e-12)


@pytest.fixture(scope="module")
def hmm_data():
    rng = np.random.default_rng(1)
    states = (np.arange(400) // 25) % 2
    X = rng.normal(np.array([[-3.0], [3.0]])[states], 1.0)
    lengths = np.array([150, 250])
    return X, lengths, GaussianHMM(2, random_state=0).fit(X, lengths)


@pytest.mark.parametrize("chunks", [None, 150], ids=["numpy", "dask"])
@pytest.mark.parametrize("method", ["decode", "predict", "predict_proba"])
def test_hmm_outputs_per_step_of_a_data_array_are_data_arrays(hmm_data, method, chunks):
    X, lengths, model = hmm_data
    given = _data_array(X, chunks)
    expected = getattr(model, method)(X, lengths)
    out = getattr(model, method)(given, lengths)
    if method == "decode":
        assert out[0] == pytest.approx(expected[0], rel=1e-12)
        out, expected = out[1], expected[1]
    assert isinstance(out, xr.DataArray)
    _assert_rows_labelled(out, given)
    if method == "predict_proba":
        assert out.dims == ("time", "component") and out.name == "state_probability"
    else:
        assert out.dims == ("time",) and out.name == "state"
    np.testing.assert_allclose(out.values, expected, rtol=1e-12)


# -- DataFrames in ------------------------------------------------------------------------
def test_a_pandas_data_frame_of_numeric_columns_is_accepted(gmm, blobs):
    frame = pd.DataFrame(blobs, columns=["a", "b"])
    np.testing.assert_array_equal(gmm.predict(frame), gmm.predict(blobs))
    fitted = GaussianMixture(K, random_state=0).fit(frame)
    np.testing.assert_array_equal(fitted.means_, gmm.means_)


@pytest.mark.slow
def test_a_dask_data_frame_is_accepted_with_its_partitions_as_blocks(gmm, blobs, client):
    dd = pytest.importorskip("dask.dataframe")  # the test extra installs dask[dataframe]
    frame = dd.from_pandas(pd.DataFrame(blobs, columns=["a", "b"]), npartitions=4)
    labels = gmm.predict(frame)
    assert isinstance(labels, da.Array) and labels.numblocks == (4,)
    np.testing.assert_array_equal(labels.compute(), gmm.predict(blobs))
    fitted = GaussianMixture(K, random_state=0).fit(frame)
    reference = GaussianMixture(K, random_state=0).fit(da.from_array(blobs, chunks=(150, -1)))
    np.testing.assert_allclose(fitted.means_, reference.means_, rtol=1e-10)
    assert gmm.bic(frame) == pytest.approx(gmm.bic(blobs), rel=1e-12)


def test_a_data_frame_with_a_text_column_is_refused_naming_it(gmm, blobs):
    frame = pd.DataFrame({"a": blobs[:, 0], "b": blobs[:, 1], "site": "x"})
    with pytest.raises(ValueError, match=r"numeric columns only; not numeric: \['site'\]"):
        GaussianMixture(K).fit(frame)
    dd = pytest.importorskip("dask.dataframe")
    with pytest.raises(ValueError, match=r"not numeric: \['site'\]"):
        gmm.predict(dd.from_pandas(frame, npartitions=2))


# -- client= ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def second_client():
    """A second cluster whose client is not the default one."""
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as second,
    ):
        yield second


def _fit_starts(client) -> int:
    return sum(event["kind"] == "fit-start" for _, event in client.get_events(EVENT_TOPIC))


def _task_keys(stream) -> str:
    return " ".join(str(task["key"]) for task in stream.data)


@pytest.mark.slow
def test_client_runs_the_fit_and_the_predictions_on_that_cluster(blobs, client, second_client):
    X = da.from_array(blobs, chunks=(150, -1))
    default_before, second_before = _fit_starts(client), _fit_starts(second_client)
    model = GaussianMixture(K, random_state=0, cache="memory", client=second_client).fit(X)
    assert _fit_starts(second_client) == second_before + 1
    assert _fit_starts(client) == default_before  # the default client saw nothing

    labels = model.predict(X)
    assert {future.client for future in futures_of(labels)} == {second_client}
    with (
        get_task_stream(client=second_client) as on_second,
        get_task_stream(client=client) as on_default,
    ):
        computed = second_client.compute(labels).result()
        score = model.score(X)  # computed on the model's client, not the default one
    reference = GaussianMixture(K, random_state=0, cache="memory").fit(X)
    np.testing.assert_array_equal(computed, reference.predict(blobs))
    assert score == pytest.approx(reference.score(blobs), rel=1e-10)
    assert "predict-gmm" in _task_keys(on_second)
    assert "score_samples-gmm" in _task_keys(on_second)
    assert "gmm" not in _task_keys(on_default)


def test_client_on_a_hidden_markov_model(hmm_data, client, second_client):
    X, lengths, _ = hmm_data
    values = da.from_array(X, chunks=(150, -1))
    before = _fit_starts(second_client)
    model = GaussianHMM(2, random_state=0, client=second_client).fit(values, lengths)
    assert _fit_starts(second_client) == before + 1
    states = model.predict(values, lengths)
    assert {future.client for future in futures_of(states)} == {second_client}
    with second_client.as_current():
        np.testing.assert_array_equal(states.compute(), model.predict(X, lengths))


def test_clones_share_the_client_and_pickles_leave_it_out(second_client):
    from sklearn.base import clone

    model = PoissonMixture(2, client=second_client)
    assert clone(model).client is second_client
    assert pickle.loads(pickle.dumps(model)).client is None
    assert model.client is second_client


def test_a_client_that_is_not_a_client_is_refused_before_any_work(blobs):
    with pytest.raises(ValueError, match=r"client must be a distributed\.Client or None"):
        GaussianMixture(K, client="tcp://127.0.0.1:8786").fit(blobs)

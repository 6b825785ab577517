"""Blocks held with complete rows first and the rows with NaN by pattern (row_order)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from dask_em import GaussianMixture
from dask_em.engine import EMEngine
from dask_em.engine.row_order import in_row_order, ordered_blocks
from dask_em.families import gaussian_compiled
from dask_em.families.gaussian import GaussianFamily
from dask_em.families.gaussian_row_order import nan_pattern_order
from tests.helpers import random_gaussian_params


def holes(n, n_features, share, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features)) + 4.0 * rng.integers(0, 3, size=(n, 1))
    X[rng.random((n, n_features)) < share] = np.nan
    return X


def test_complete_rows_come_first_then_each_pattern_and_the_order_keeps_itself():
    X = holes(5000, 6, 0.15, seed=0)
    order = nan_pattern_order(X)
    assert sorted(order) == list(range(len(X)))
    complete = ~np.isnan(X).any(axis=1)
    n_complete = int(complete.sum())
    assert np.array_equal(order[:n_complete], np.flatnonzero(complete))
    keys = (np.isnan(X[order[n_complete:]]) * (1 << np.arange(6))).sum(axis=1)
    # frequent patterns (8 rows or more) as runs in key order, the rare ones after them
    counts = dict(zip(*np.unique(keys, return_counts=True), strict=True))
    frequent = np.array([counts[k] >= 8 for k in keys])
    assert not np.any(frequent[np.argmin(frequent) :]) or frequent.all()
    assert np.all(np.diff(keys[frequent]) >= 0) and np.all(np.diff(keys[~frequent]) >= 0)
    reordered = X[order]
    again = nan_pattern_order(reordered)
    assert np.array_equal(again, np.arange(len(X)))


@pytest.mark.parametrize(
    "X, w",
    [
        (np.ones((10, 3)), None),  # no NaN
        (np.where(np.eye(10, 3) > 0, np.inf, np.nan), None),  # an infinite value
        (np.where(np.eye(10, 3) > 0, np.nan, 1.0), -np.ones(10)),  # a negative weight
        (np.where(np.eye(10, 64) > 0, np.nan, 1.0), None),  # no bit masks above 63
    ],
)
def test_blocks_the_scan_reports_by_position_keep_their_order(X, w):
    assert nan_pattern_order(X, w) is None
    same_X, same_w = ordered_blocks(nan_pattern_order, X, w)
    assert same_X is X and same_w is w


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_a_block_in_pattern_order_has_the_same_statistics(covariance_type):
    X = holes(20000, 5, 0.1, seed=1)
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(X))
    family = GaussianFamily(covariance_type)
    params = random_gaussian_params(family, 3, 5, np.random.default_rng(3))
    params["center"] = np.nanmean(X, axis=0)
    order = nan_pattern_order(X, w)
    before = gaussian_compiled.block_stats(family, params, X, w)
    after = gaussian_compiled.block_stats(family, params, X[order], w[order])
    for name, value in before.items():
        np.testing.assert_allclose(after[name], value, rtol=1e-12, atol=1e-9, err_msg=name)


def test_only_stages_that_read_rows_by_position_get_the_order():
    def first_row(shared, X, w):
        return X[0]

    X = holes(200, 3, 0.3, seed=4)
    X[0, 0] = np.nan  # the first row moves
    assert in_row_order(None, first_row, "scan") is first_row
    assert in_row_order(nan_pattern_order, first_row, "estep") is first_row
    ordered = in_row_order(nan_pattern_order, first_row, "scan")
    np.testing.assert_array_equal(ordered(None, X, None), X[nan_pattern_order(X)[0]])


def test_data_the_engine_persists_is_held_in_pattern_order_and_the_users_is_left_alone(
    client, tmp_path
):
    X = holes(6000, 4, 0.2, seed=5)
    w = np.random.default_rng(6).uniform(0.5, 2.0, len(X))
    lazy_X, lazy_w = da.from_array(X, chunks=(1500, 4)), da.from_array(w, chunks=1500)
    lazy_X.to_zarr(str(tmp_path / "x.zarr"))
    # scattered from this process; computed by the workers (read from a store)
    for source in (lazy_X, da.from_zarr(str(tmp_path / "x.zarr"))):
        engine = EMEngine(
            source, lazy_w, model="order", cache="memory", row_order=nan_pattern_order
        )
        held = engine.X.compute()
        held_w = engine.sample_weight.compute()
        for b in range(4):
            block = slice(1500 * b, 1500 * (b + 1))
            order = nan_pattern_order(X[block], w[block])
            np.testing.assert_array_equal(held[block], X[block][order])
            np.testing.assert_array_equal(held_w[block], w[block][order])
        engine.release()
    local = EMEngine(lazy_X, lazy_w, model="order", local=True, row_order=nan_pattern_order)
    for b, (block, block_w) in enumerate(local._local_blocks):
        order = nan_pattern_order(X[1500 * b : 1500 * (b + 1)], w[1500 * b : 1500 * (b + 1)])
        np.testing.assert_array_equal(block, X[1500 * b : 1500 * (b + 1)][order])
        np.testing.assert_array_equal(block_w, w[1500 * b : 1500 * (b + 1)][order])
    persisted = client.persist(lazy_X)
    engine = EMEngine(persisted, model="order", cache="memory", row_order=nan_pattern_order)
    np.testing.assert_array_equal(engine.X.compute(), X)  # no second copy of the user's
    engine.release()


@pytest.mark.parametrize(
    "covariance_type, init_params", [("full", "kmeans"), ("tied", "kmeans"), ("full", "random")]
)
def test_a_fit_is_the_same_held_in_pattern_order_streamed_or_persisted_by_the_user(
    client, tmp_path, covariance_type, init_params
):
    # the scan draws its sample (k-means' start), and the init pass random
    # responsibilities, in pattern order however the data is held: the same start
    X = holes(8000, 4, 0.15, seed=7)
    w = np.random.default_rng(8).uniform(0.5, 2.0, len(X))
    path = str(tmp_path / "rows.zarr")
    da.from_array(X, chunks=(2000, 4)).to_zarr(path)
    lazy_w = da.from_array(w, chunks=2000)
    fits = {}
    for name, data, cache in [
        ("ordered", da.from_zarr(path), "memory"),
        ("streamed", da.from_zarr(path), "stream"),
        ("user's", client.persist(da.from_zarr(path)), "memory"),
    ]:
        model = GaussianMixture(
            3,
            covariance_type=covariance_type,
            init_params=init_params,
            random_state=0,
            max_iter=15,
            tol=0,
            cache=cache,
        )
        fits[name] = model.fit(data, sample_weight=lazy_w)
        assert model.data_placement_ == ("stream" if cache == "stream" else "memory")
    for name in ("streamed", "user's"):
        np.testing.assert_allclose(fits[name].means_, fits["ordered"].means_, rtol=1e-9)
        np.testing.assert_allclose(fits[name].covariances_, fits["ordered"].covariances_, rtol=1e-9)
        np.testing.assert_allclose(
            fits[name].lower_bound_, fits["ordered"].lower_bound_, rtol=1e-11
        )


def test_an_infinite_value_beside_rows_with_nan_is_reported_where_the_user_has_it(client):
    X = holes(4000, 3, 0.2, seed=9)
    X[2345, 1] = np.inf
    with pytest.raises(ValueError, match="2345"):
        GaussianMixture(2, cache="memory").fit(da.from_array(X, chunks=(1000, 3)))


def test_a_fit_of_data_smaller_than_the_sample_is_the_same_however_it_is_chunked(client):
    # the sample is every row; each block's rows come in its own pattern order, so the
    # scan puts the sample in value order before k-means draws from it
    X = holes(2000, 3, 0.2, seed=10)
    fits = [
        GaussianMixture(3, random_state=0, max_iter=30, tol=0, cache="memory").fit(
            da.from_array(X, chunks=(rows, 3))
        )
        for rows in (2000, 500, 300)
    ]
    for fit in fits[1:]:
        np.testing.assert_allclose(fit.means_, fits[0].means_, rtol=1e-8)
        np.testing.assert_allclose(fit.lower_bound_, fits[0].lower_bound_, rtol=1e-11)


def test_two_fits_over_the_same_weights_and_other_rows_each_hold_their_own_order(client, tmp_path):
    # the ordered layers are named after both inputs and the order: a layer named after
    # the weights alone would hand the second fit the first one's ordered weights
    w = np.random.default_rng(11).uniform(0.5, 2.0, 4000)
    held = []
    for seed in (12, 13):
        X = holes(4000, 3, 0.2, seed=seed)
        path = str(tmp_path / f"x{seed}.zarr")
        da.from_array(X, chunks=(1000, 3)).to_zarr(path)
        engine = EMEngine(
            da.from_zarr(path), da.from_array(w, chunks=1000), model="order", cache="memory",
            row_order=nan_pattern_order,
        )  # fmt: skip
        held.append((X, engine))
    for X, engine in held:
        held_w = engine.sample_weight.compute()
        for b in range(4):
            block = slice(1000 * b, 1000 * (b + 1))
            np.testing.assert_array_equal(held_w[block], w[block][nan_pattern_order(X[block])])
        engine.release()

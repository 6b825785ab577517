"""Bad input: a clear error naming the problem and where, before any fitting."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from dask_em import GaussianMixture, PoissonMixture


def with_holes(n_rows=200, n_features=3):
    X = np.random.default_rng(0).normal(size=(n_rows, n_features))
    X[17, 2] = np.nan
    X[150, 0] = np.inf
    X[160, 1] = -np.inf
    return X


def test_nan_and_inf_in_numpy_input_are_counted_and_located():
    with pytest.raises(
        ValueError, match=r"3 NaN or infinite values; the first is at row 17, column 2"
    ):
        GaussianMixture(2, missing="error").fit(with_holes())


def test_inf_is_refused_when_nan_marks_missing_values(client):
    message = (
        r"2 infinite values \(NaN marks a missing value.*\); the first is at row 150, column 0"
    )
    with pytest.raises(ValueError, match=message):
        GaussianMixture(2).fit(with_holes())
    with pytest.raises(ValueError, match=message):
        GaussianMixture(2).fit(da.from_array(with_holes(), chunks=(40, 3)))


def test_nan_and_inf_in_a_dask_array_are_found_by_the_scan_pass(client):
    X = da.from_array(with_holes(), chunks=(40, 3))
    with pytest.raises(
        ValueError, match=r"3 NaN or infinite values; the first is at row 17, column 2"
    ):
        GaussianMixture(2, missing="error").fit(X)


def test_nan_in_a_zarr_store_names_its_global_position(client, tmp_path):
    X = with_holes(1000)
    X[:17, :] = 0.0
    X[17, 2] = 0.0
    X[733, 1] = np.nan
    path = str(tmp_path / "holes.zarr")
    da.from_array(X, chunks=(100, 3)).to_zarr(path)
    with pytest.raises(ValueError, match=r"the first is at row 150, column 0"):
        GaussianMixture(2, missing="error").fit(path)


def test_nan_in_prediction_input_names_its_position(client):
    model = GaussianMixture(2, random_state=0, missing="error")
    model.fit(np.random.default_rng(1).normal(size=(100, 3)))
    with pytest.raises(ValueError, match="row 17, column 2"):
        model.predict(with_holes())
    # lazily, the first block to fail reports its own rows
    with pytest.raises(ValueError, match=r"X\[(10:20|150:160|160:170)\] contains 1 NaN"):
        model.predict(da.from_array(with_holes(), chunks=(10, 3))).compute()


def test_one_dimensional_input_is_refused_with_a_hint():
    with pytest.raises(ValueError, match=r"expected 2-D data .* got 1-D .* reshape"):
        GaussianMixture(2).fit(np.arange(10.0))


def test_fewer_samples_than_components():
    with pytest.raises(ValueError, match="n_samples=3 and n_components=5"):
        GaussianMixture(5).fit(np.zeros((3, 2)))


@pytest.mark.parametrize("bad", [np.array([["a", "b"], ["c", "d"]]), np.ones((4, 2), complex)])
def test_non_numeric_dtype(bad):
    with pytest.raises(ValueError, match="must hold real numbers, got dtype"):
        GaussianMixture(1).fit(bad)


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(ValueError, match="is not a Zarr array"):
        GaussianMixture(2).fit(str(tmp_path / "nothing.zarr"))


def test_path_that_is_a_plain_directory(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is not a"):
        GaussianMixture(2).fit(str(tmp_path / "plain"))


def test_path_that_is_a_zarr_group_lists_its_arrays(tmp_path):
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.create_array("X", shape=(10, 2), dtype="f8")
    with pytest.raises(ValueError, match=r"is a Zarr group, not an array; its arrays are \['X'\]"):
        GaussianMixture(2).fit(str(tmp_path / "group.zarr"))


@pytest.mark.slow
def test_feature_axis_split_across_chunks_is_rechunked_not_refused(client):
    X = np.random.default_rng(2).normal(size=(300, 4))
    model = GaussianMixture(2, random_state=0).fit(da.from_array(X, chunks=(100, 1)))
    assert model.means_.shape == (2, 4)


def test_integer_data_is_accepted_as_float():
    X = np.random.default_rng(3).integers(0, 100, size=(200, 2))
    assert GaussianMixture(2, random_state=0).fit(X).means_.dtype == np.float64


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (-np.ones(50), "non-negative; first negative at row 0"),
        (np.r_[np.ones(49), np.nan], "NaN or infinite"),
        (np.ones(49), r"shape \(50,\)"),
        (np.zeros(50), "sums to zero"),
    ],
)
def test_bad_sample_weight(weights, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(2).fit(np.random.default_rng(4).normal(size=(50, 2)), sample_weight=weights)


def test_negative_weight_in_a_dask_array_is_located(client):
    w = np.ones(100)
    w[63] = -1
    X = np.random.default_rng(5).normal(size=(100, 2))
    with pytest.raises(ValueError, match="the first is at row 63"):
        GaussianMixture(2).fit(
            da.from_array(X, chunks=30), sample_weight=da.from_array(w, chunks=30)
        )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"covariance_type": "banana"}, "covariance_type must be one of"),
        ({"init_params": "nope"}, "init_params must be one of"),
        ({"n_components": 0}, "n_components must be"),
        ({"tol": -1.0}, "tol must be"),
        ({"max_iter": 0}, "max_iter must be"),
        ({"reg_covar": -1.0}, "reg_covar must be"),
        ({"cache": "disk"}, "cache must be one of"),
        ({"weights_init": [0.5, 0.6]}, "sum to 1"),
        ({"means_init": np.zeros((2, 5))}, r"means_init must have shape \(2, 2\)"),
        ({"precisions_init": -np.ones((2, 2, 2))}, "positive definite"),
    ],
)
def test_bad_hyperparameters(params, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(**{"n_components": 2, **params}).fit(
            np.zeros((20, 2)) + np.arange(20)[:, None]
        )


def test_predict_before_fit():
    with pytest.raises(ValueError, match="not fitted yet"):
        GaussianMixture(2).predict(np.zeros((3, 2)))


@pytest.mark.slow
def test_predict_with_wrong_number_of_features():
    model = GaussianMixture(2, random_state=0).fit(np.random.default_rng(6).normal(size=(50, 3)))
    with pytest.raises(
        ValueError, match="X has 2 features, but GaussianMixture is expecting 3 features"
    ):
        model.predict(np.zeros((5, 2)))


@pytest.mark.parametrize("scale", [1e160, -1e200])
def test_data_too_large_to_square_is_refused_saying_to_rescale(client, scale):
    """Values around 1e160 overflow the squares of a Gaussian model: one message that
    names the scale and the column, not overflow warnings and a NaN error."""
    import warnings

    from dask_em import GaussianHMM

    X = np.random.default_rng(0).normal(size=(3000, 3))
    X[1234, 2] = scale
    message = r"X holds values up to 1e\+(160|200) in magnitude \(column 2\).*rescale X"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no overflow warning before it
        with pytest.raises(ValueError, match=message):
            GaussianMixture(2).fit(da.from_array(X, chunks=(500, 3)))
        with pytest.raises(ValueError, match=message):
            GaussianHMM(2).fit(X, [1000, 2000])
    X[1234, 2] = 0.0
    fitted = GaussianMixture(2, random_state=0).fit(X * 1e149)  # large, below the limit
    assert np.isfinite(fitted.lower_bound_) and np.isfinite(fitted.covariances_).all()


@pytest.mark.parametrize("estimator", [PoissonMixture, GaussianMixture])
def test_a_warm_start_on_data_with_other_features_is_refused(estimator):
    # its kernels would read parameters of the wrong shape
    rng = np.random.default_rng(0)
    model = estimator(2, warm_start=True, max_iter=3, random_state=0)
    model.fit(rng.poisson(3, size=(300, 2)).astype(float))
    with pytest.raises(ValueError, match="fitted to 2 features, but X has 3"):
        model.fit(da.from_array(rng.poisson(3, size=(300, 3)).astype(float), chunks=100))

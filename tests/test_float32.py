"""GaussianMixture(dtype="float32"): float32 E-step, float64 statistics, close to float64."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pytest

from dask_em import GaussianMixture
from dask_em.families.gaussian import COVARIANCE_TYPES
from tests.helpers import assert_monotone, make_blobs


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_compute_agrees_with_float64_to_1e_4(client, covariance_type):
    X, _, _ = make_blobs(20000, 5, 3, seed=4)
    X32 = da.from_array(X.astype(np.float32), chunks=(5000, 5))
    kwargs = dict(
        covariance_type=covariance_type,
        tol=0.0,
        max_iter=15,
        means_init=X[[0, 7000, 14000]],
        random_state=0,
    )
    exact = GaussianMixture(3, **kwargs).fit(X32)
    fast = GaussianMixture(3, dtype="float32", **kwargs).fit(X32)
    for name in ("weights_", "means_", "covariances_"):
        expected = getattr(exact, name)
        scale = np.max(np.abs(expected))
        np.testing.assert_allclose(getattr(fast, name), expected, rtol=0, atol=1e-4 * scale)
    assert fast.lower_bound_ == pytest.approx(exact.lower_bound_, rel=1e-5)
    # float32 rounding in the objective stays within the documented 1e-5 tolerance
    assert_monotone(fast.history_, rtol=1e-5)


def test_dtype_is_validated(client):
    X = da.from_array(np.random.default_rng(0).normal(size=(100, 2)), chunks=(50, 2))
    with pytest.raises(ValueError, match="dtype must be one of"):
        GaussianMixture(2, dtype="float16").fit(X)


@pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")
def test_float32_data_starts_where_the_same_values_in_float64_start(client):
    # the scan draws float32 rows as float32 and the client widens them: k-means++ on the
    # sample, and so the whole fit, is the fit of the same values held as float64
    X, _, _ = make_blobs(6000, 4, 3, seed=8)
    X32 = X.astype(np.float32)
    kwargs = dict(covariance_type="full", max_iter=5, tol=0.0, random_state=3)
    narrow = GaussianMixture(3, **kwargs).fit(da.from_array(X32, chunks=(1500, 4)))
    wide = GaussianMixture(3, **kwargs).fit(da.from_array(X32.astype(np.float64), chunks=(1500, 4)))
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(narrow, name), getattr(wide, name))


def test_the_scan_hands_initialization_a_float64_sample_of_float32_rows(client):
    from dask_em.engine import EMEngine
    from dask_em.estimators.starts import scan

    X32 = make_blobs(3000, 3, 2, seed=5)[0].astype(np.float32)
    engine = EMEngine(da.from_array(X32, chunks=(1000, 3)), model="gmm", cache="memory")
    try:
        scanned = scan(
            GaussianMixture(2, init_sample_size=500), engine, np.random.default_rng(0), None
        )
    finally:
        engine.release()
    assert scanned["sample"].dtype == np.float64 and scanned["sample"].shape == (500, 3)
    # the rows drawn, exactly (float32 values widen without rounding)
    assert np.isin(scanned["sample"][:, 0], X32[:, 0].astype(np.float64)).all()


def _separated_float32_blobs(seed: int, n_rows: int = 4000) -> np.ndarray:
    """Four well separated components in 16-D, float32: EM stops after two iterations,
    the second one's objective a few 1e-9 below the first's (float32 rounding)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((4, 16)) * 3
    return (means[rng.integers(0, 4, n_rows)] + rng.standard_normal((n_rows, 16))).astype(
        np.float32
    )


@pytest.mark.parametrize("accelerate", [None, "squarem", "daarem"])
def test_a_float32_fit_reports_no_decrease_within_its_rounding(caplog, accelerate):
    """The drivers' monotone check takes the family's float32 tolerance (1e-5), as the
    loop's does: a fall of the objective by float32 rounding is not reported (it was, by
    the accelerated drivers, at 1e-10, on every such fit)."""
    X = _separated_float32_blobs(seed=1)
    model = GaussianMixture(
        4, covariance_type="full", dtype="float32", random_state=0, accelerate=accelerate
    )
    with caplog.at_level("WARNING"):
        model.fit(X)
    objectives = [h["objective"] for h in model.history_]
    falls = [(b - a) / abs(b) for b, a in itertools.pairwise(objectives) if a < b]
    assert falls and 1e-10 < max(falls) < 1e-5  # the data does exercise the check
    assert not [r for r in caplog.records if "objective decreased" in r.getMessage()]

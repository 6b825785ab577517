"""``accelerate=`` on the estimators: SQUAREM fits reach plain EM's optimum, passes are
counted exactly, a SQUAREM fit resumes from its checkpoint to the uninterrupted result,
and the sampling E-step is refused before any work."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em import GaussianHMM, GaussianMixture, PoissonHMM, PoissonMixture
from tests.helpers import assert_monotone
from tests.test_checkpoint import Stop, stop_after
from tests.test_hmm import gaussian_sequences

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")


def overlapping_data(seed=0, n=600):
    """Two overlapping 2-D clusters with a few missing entries, and positive weights."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2))
    X[: n // 3] += [1.2, 0.4]
    X[rng.random((n, 2)) < 0.05] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    return X, rng.uniform(0.5, 2.0, size=n)


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_n_passes_of_plain_em_is_scan_plus_init_plus_iterations():
    X, _ = overlapping_data()
    model = GaussianMixture(2, tol=1e-4, max_iter=500, random_state=0).fit(X)
    assert model.converged_
    assert model.n_passes_ == 1 + 1 + model.n_iter_
    assert [h["passes"] for h in model.history_] == list(range(1, model.n_iter_ + 1))
    assert model.bytes_read_ == model.n_passes_ * X.size * 8
    assert sum(h["bytes_read"] for h in model.history_) == model.n_iter_ * X.size * 8


def test_n_passes_counts_every_pass_and_restarts_share_them():
    X, w = overlapping_data(1)
    model = GaussianMixture(2, tol=0.0, max_iter=7, n_init=3, random_state=0)
    model.fit(X, sample_weight=w)
    assert model.n_passes_ == 1 + 1 + 7  # scan, one init pass for all, 7 lockstep EM passes
    assert model.bytes_read_ == model.n_passes_ * (X.size + w.size) * 8


def test_n_passes_of_squarem_counts_its_rejected_extrapolations_too():
    X, _ = overlapping_data(2)
    model = GaussianMixture(2, tol=1e-8, max_iter=2000, random_state=0, accelerate="squarem")
    model.fit(X)
    assert model.converged_
    passes = [h["passes"] for h in model.history_]
    assert model.n_passes_ == 1 + 1 + passes[-1]
    assert passes == sorted(set(passes)) and passes[-1] >= len(passes)
    assert {h["move"] for h in model.history_} == {"em", "extrapolated"}
    assert model.history_[-1]["move"] == "em"
    assert_monotone(model.history_, rtol=1e-12)


def test_squarem_gaussian_mixture_reaches_plain_ems_optimum_with_priors_weights_and_nan():
    X, w = overlapping_data(3)
    params = dict(
        n_components=2,
        covariance_type="full",
        tol=1e-12,
        max_iter=20_000,
        random_state=1,
        mean_pseudocount=0.5,
        covariance_pseudocount=3.0,
        weight_concentration=1.5,
    )
    plain = GaussianMixture(**params).fit(X, sample_weight=w)
    fast = GaussianMixture(**params, accelerate="squarem").fit(X, sample_weight=w)
    assert plain.converged_ and fast.converged_
    for name in ("weights_", "means_", "covariances_"):
        assert relative_difference(getattr(fast, name), getattr(plain, name)) < 1e-5
    assert fast.lower_bound_ == pytest.approx(plain.lower_bound_, rel=1e-10)
    assert fast.n_passes_ < plain.n_passes_


@pytest.mark.slow
def test_squarem_gaussian_hmm_reaches_plain_ems_optimum_with_priors_and_nan():
    values, lengths, _ = gaussian_sequences(40, seed=7)
    values = values.copy()
    values[np.random.default_rng(0).random(values.shape) < 0.03] = np.nan
    params = dict(
        n_components=3,
        tol=1e-11,
        max_iter=20_000,
        random_state=0,
        startprob_prior=1.5,
        transmat_prior=2.0,
        mean_pseudocount=0.5,
    )
    plain = GaussianHMM(**params).fit(values, lengths)
    fast = GaussianHMM(**params, accelerate="squarem").fit(values, lengths)
    assert plain.converged_ and fast.converged_
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        assert relative_difference(getattr(fast, name), getattr(plain, name)) < 1e-5
    assert fast.lower_bound_ == pytest.approx(plain.lower_bound_, rel=1e-10)


def test_squarem_poisson_hmm_reaches_plain_ems_optimum():
    rng = np.random.default_rng(5)
    states = np.repeat(rng.integers(0, 2, size=400), 10)
    X = rng.poisson(np.where(states == 0, 1.5, 4.0))[:, None]
    lengths = np.full(40, 100)
    params = dict(n_components=2, tol=1e-11, max_iter=20_000, random_state=0)
    plain = PoissonHMM(**params).fit(X, lengths)
    fast = PoissonHMM(**params, accelerate="squarem").fit(X, lengths)
    assert plain.converged_ and fast.converged_
    for name in ("startprob_", "transmat_", "lambdas_"):
        assert relative_difference(getattr(fast, name), getattr(plain, name)) < 1e-5


@pytest.mark.slow
def test_a_stopped_squarem_fit_resumes_to_the_uninterrupted_result(tmp_path):
    # 15 iterations at tol 1e-5 (103 at 1e-10), each checkpointed: about 0.5 s a write
    X, w = overlapping_data(4, n=400)
    params = dict(n_components=2, tol=1e-5, max_iter=3000, random_state=2, accelerate="squarem")
    reference = GaussianMixture(**params).fit(X, sample_weight=w)
    kinds = [h["move"] for h in reference.history_]
    # stop right after an extrapolated point (the chain is then empty) and right after an
    # EM step that follows one (the chain holds the point SQUAREM extrapolates from next)
    after_extrapolation = kinds.index("extrapolated") + 1
    stops = (after_extrapolation, after_extrapolation + 2)
    for resumed in stopped_and_resumed(tmp_path, params, X, w, reference, stops):
        assert resumed.n_passes_ == reference.n_passes_  # the scan rides in its first pass


def stopped_and_resumed(tmp_path, params, X, w, reference, stops):
    """For each number of iterations in ``stops``: a GaussianMixture(**params) fit
    stopped there with a checkpoint, then resumed; each resumed fit equals ``reference``
    (parameters to 1e-12, the same objectives and passes).  Returns the resumed fits."""
    fits = []
    for stop in stops:
        path = tmp_path / f"stop-{stop}.zarr"
        with pytest.raises(Stop):
            GaussianMixture(**params).fit(
                X, sample_weight=w, checkpoint=path, callbacks=[stop_after(stop)]
            )
        resumed = GaussianMixture(**params).fit(X, sample_weight=w, checkpoint=path, resume=True)
        for name in ("weights_", "means_", "covariances_"):
            np.testing.assert_allclose(
                getattr(resumed, name), getattr(reference, name), rtol=0, atol=1e-12
            )
        assert resumed.lower_bounds_ == reference.lower_bounds_
        assert [h["passes"] for h in resumed.history_] == [h["passes"] for h in reference.history_]
        fits.append(resumed)
    return fits


def test_the_sampling_e_step_with_squarem_is_refused_before_any_work(tmp_path):
    values, lengths, _ = gaussian_sequences(10, seed=1)
    model = GaussianHMM(2, estep="sample", accelerate="squarem")
    path = tmp_path / "never.zarr"
    with pytest.raises(ValueError, match="needs the exact E-step"):
        model.fit(values, lengths, checkpoint=path)
    assert not path.exists() and not hasattr(model, "converged_")


@pytest.mark.parametrize("value", ["Squarem", "anderson", True])
def test_an_unknown_acceleration_is_refused(value):
    with pytest.raises(ValueError, match="accelerate must be one of"):
        PoissonMixture(2, accelerate=value).fit(np.arange(10.0)[:, None])


def test_a_version_2_checkpoint_still_resumes(tmp_path):
    """A checkpoint written before SQUAREM's state was stored (format version 2: no
    step table, no chain, no pass counts) resumes a plain EM fit as before."""
    from dask_em.integrity import MANIFEST_ATTR, add_manifest
    from tests.test_checkpoint_integrity import as_format_3

    X, _ = overlapping_data(5)
    params = dict(n_components=2, tol=0.0, max_iter=6, random_state=0)
    reference = GaussianMixture(**params).fit(X)
    path = tmp_path / "v3.zarr"
    with pytest.raises(Stop):
        GaussianMixture(**params).fit(X, checkpoint=path, callbacks=[stop_after(3)])
    old = as_format_3(path)
    old = old.drop_vars([name for name in old.data_vars if "steps" in name or "chain" in name])
    for key in [k for k in old.attrs if k.endswith(("passes", "chain_length", "bytes_read"))]:
        del old.attrs[key]
    del old.attrs["step_fields"]
    old.attrs["dask_em_format_version"] = 2
    del old.attrs[MANIFEST_ATTR]
    add_manifest(old).to_zarr(tmp_path / "v2.zarr", consolidated=False)
    resumed = GaussianMixture(**params).fit(X, checkpoint=tmp_path / "v2.zarr", resume=True)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(
            getattr(resumed, name), getattr(reference, name), rtol=0, atol=1e-12
        )
    assert resumed.lower_bounds_ == reference.lower_bounds_
    assert [h["passes"] for h in resumed.history_] == list(range(1, 7))


@pytest.mark.parametrize("accelerate", ["daarem", "squarem"])
def test_a_stopped_accelerated_hmm_fit_resumes_to_the_uninterrupted_result(tmp_path, accelerate):
    # the checkpoint keeps the HMM's parameters as its attributes: the emission's unused
    # mixing weights must be what the M-step gives, or the Gaussian's centre (and from
    # it every statistic, and the extrapolations) differs after a resume
    X, lengths, _ = gaussian_sequences(30, seed=5)
    start = dict(
        startprob_init=np.full(3, 1 / 3),
        transmat_init=np.full((3, 3), 0.1) + 0.7 * np.eye(3),
        means_init=np.array([[-1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]),
        covars_init=np.ones((3, 2)),
    )
    params = dict(tol=1e-9, max_iter=300, accelerate=accelerate, **start)
    reference = GaussianHMM(3, covariance_type="diag", **params).fit(X, lengths)
    assert reference.converged_
    for stop in (2, 5):
        path = tmp_path / f"stop-{stop}.zarr"
        with pytest.raises(Stop):
            GaussianHMM(3, covariance_type="diag", **params).fit(
                X, lengths, checkpoint=path, callbacks=[stop_after(stop)]
            )
        resumed = GaussianHMM(3, covariance_type="diag", **params).fit(
            X, lengths, checkpoint=path, resume=True
        )
        for name in ("startprob_", "transmat_", "means_", "covars_"):
            np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name))
        assert resumed.lower_bounds_ == reference.lower_bounds_
        assert resumed.n_passes_ == reference.n_passes_

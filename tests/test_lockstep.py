"""Restarts in lockstep: every pass over the data serves all live initializations
(and one init pass serves all their initializations).

Each restart's arithmetic is the same as alone, so its result equals a run of its own
bit for bit; the data is read once per pass, so ``n_init=8`` reads little more than
``n_init=1``; a checkpointed lockstep fit with SQUAREM resumes to the uninterrupted
result.
"""

from __future__ import annotations

import numpy as np
import pytest

from dask_em import GaussianMixture, PoissonMixture, em
from dask_em.estimators import driver, starts
from dask_em.families.gaussian import GaussianFamily
from tests.test_checkpoint import Stop, stop_after

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")


def blocks_map_reduce(blocks, calls):
    """A pass as a plain loop over NumPy blocks (no Dask), counting passes."""

    def map_reduce(block_func, merge, shared, *, stage):
        calls.append(stage)
        return merge(*(block_func(shared, block, None) for block in blocks))

    return map_reduce


def diag_starts(rng, n_starts):
    family = GaussianFamily("diag")
    return family, [
        family.make_params(
            np.array([0.5, 0.5]), rng.normal(0, 2, size=(2, 2)), covariances=np.ones((2, 2))
        )
        for _ in range(n_starts)
    ]


@pytest.mark.parametrize("accelerate", [None, "squarem"])
def test_lockstep_runs_equal_runs_alone_bit_for_bit_and_converged_ones_drop_out(accelerate):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-1, 1, (400, 2)), rng.normal(1, 1, (300, 2))])
    blocks = np.array_split(X, 5)
    family, starts = diag_starts(rng, 4)
    alone = []
    for start in starts:
        calls = []
        alone.append(
            em.run(
                blocks_map_reduce(blocks, calls),
                family,
                start,
                max_iter=400,
                tol=1e-9,
                accelerate=accelerate,
            )
        )
        assert len(calls) == alone[-1].passes
    calls = []
    runs = [
        em.EMRun(family, start, max_iter=400, tol=1e-9, accelerate=accelerate) for start in starts
    ]
    together = em.lockstep(blocks_map_reduce(blocks, calls), runs)
    passes = [result.passes for result in alone]
    assert len(set(passes)) > 1  # the runs converge after different numbers of passes
    assert len(calls) == max(passes)  # one pass serves every live run
    for a, b in zip(alone, together, strict=True):
        assert a.converged and b.converged and a.passes == b.passes
        assert [r.objective for r in a.history] == [r.objective for r in b.history]
        for name in a.params:
            np.testing.assert_array_equal(a.params[name], b.params[name])


def test_a_stopped_lockstep_squarem_run_resumes_to_the_uninterrupted_result():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(-0.8, 1, (300, 2)), rng.normal(0.8, 1, (300, 2))])
    blocks = np.array_split(X, 3)
    family, starts = diag_starts(rng, 3)

    def make_runs(resume=(None, None, None), callbacks=()):
        return [
            em.EMRun(
                family,
                start,
                max_iter=300,
                tol=1e-10,
                accelerate="squarem",
                resume=saved,
                callbacks=callbacks,
            )
            for start, saved in zip(starts, resume, strict=True)
        ]

    reference = em.lockstep(blocks_map_reduce(blocks, []), make_runs())
    for stop in (4, 11, 25):
        saved: list = []
        with pytest.raises(Stop):
            em.lockstep(
                blocks_map_reduce(blocks, []),
                make_runs(callbacks=[stop_after(stop)]),
                save=lambda results, saved=saved: saved.append([r.copy() for r in results]),
            )
        resumed = em.lockstep(blocks_map_reduce(blocks, []), make_runs(resume=saved[-1]))
        for a, b in zip(resumed, reference, strict=True):
            assert [r.objective for r in a.history] == [r.objective for r in b.history]
            assert [r.passes for r in a.history] == [r.passes for r in b.history]
            for name in a.params:
                np.testing.assert_array_equal(a.params[name], b.params[name])


def record_starts(monkeypatch) -> list:
    """Spy on the driver: the starting parameters of every initialization of a fit
    (per call, per candidate, per initialization)."""
    seen = []
    real = driver.initial_points

    def spy(*args, **kwargs):
        points = real(*args, **kwargs)
        seen.append(points)
        return points

    monkeypatch.setattr(driver, "initial_points", spy)
    return seen


@pytest.mark.slow
def test_eight_restarts_streamed_from_zarr_read_the_store_about_once_per_pass(
    client, tmp_path, monkeypatch
):
    from dask_em.synthetic import random_gaussian_mixture, write_gaussian_mixture

    store = str(tmp_path / "X.zarr")
    truth = random_gaussian_mixture(4, 3, seed=3, separation=1.2)
    write_gaussian_mixture(store, 20_000, truth, seed=3, chunk_rows=5_000)
    params = dict(covariance_type="diag", max_iter=15, tol=0.0, cache="stream", random_state=7)
    starts = record_starts(monkeypatch)
    eight = GaussianMixture(4, n_init=8, **params).fit(store)
    one = GaussianMixture(4, n_init=1, **params).fit(store)
    assert eight.data_placement_ == "stream"
    assert eight.bytes_read_ <= 1.3 * one.bytes_read_
    # scan, one init pass for all eight, 15 EM passes: the same passes as n_init=1
    assert eight.n_passes_ == one.n_passes_ == 1 + 1 + 15

    # the best of 8 fits one after another, each started where a lockstep restart started
    sequential = []
    for start in starts[0][0]:
        single = GaussianMixture(
            4,
            n_init=1,
            weights_init=start["weights"],
            means_init=start["means"],
            precisions_init=1.0 / start["covariances"],
            **params,
        ).fit(store)
        sequential.append(single)
    best = max(sequential, key=lambda model: model.lower_bound_)
    assert len({round(m.lower_bound_, 8) for m in sequential}) > 1  # the restarts differ
    assert eight.lower_bound_ == pytest.approx(best.lower_bound_, rel=1e-10)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(eight, name), getattr(best, name), rtol=1e-10)


@pytest.mark.slow
def test_a_lockstep_squarem_fit_stopped_anywhere_resumes_to_the_same_model(tmp_path):
    rng = np.random.default_rng(5)
    rates = np.array([[1.0, 4.0], [3.0, 1.5], [6.0, 6.0]])
    X = rng.poisson(rates[rng.integers(0, 3, 3000)])
    params = dict(n_components=3, n_init=3, tol=1e-9, max_iter=2000, random_state=4)
    params["accelerate"] = "squarem"
    reference = PoissonMixture(**params).fit(X)
    assert reference.converged_
    for stop in (5, 40):
        path = tmp_path / f"stop-{stop}.zarr"
        with pytest.raises(Stop):
            PoissonMixture(**params).fit(X, checkpoint=path, callbacks=[stop_after(stop)])
        resumed = PoissonMixture(**params).fit(X, checkpoint=path, resume=True)
        np.testing.assert_allclose(resumed.rates_, reference.rates_, rtol=0, atol=1e-12)
        np.testing.assert_allclose(resumed.weights_, reference.weights_, rtol=0, atol=1e-12)
        assert resumed.lower_bounds_ == reference.lower_bounds_


def test_each_initialization_runs_k_means_once_and_draws_as_if_twice(monkeypatch):
    """The replay round skips over the centres' draws (the generator's state after
    them) instead of running k-means again; the starts, and so the fits, are the same."""
    X = np.random.default_rng(4).normal(size=(3_000, 3)) + np.repeat([[0], [5], [9]], 1_000, 0)
    real_centers, real_draw = starts.initial_centers, starts._Draw
    calls: list[str] = []

    def counted(*args):
        calls.append(args[0])
        return real_centers(*args)

    def fit():
        calls.clear()
        return GaussianMixture(3, n_init=3, max_iter=5, random_state=0).fit(X)

    monkeypatch.setattr(starts, "initial_centers", counted)
    once = fit()
    assert calls == ["kmeans"] * 3
    # the old way: every replay draws the centres again (no state to skip to)
    monkeypatch.setattr(starts, "_Draw", lambda _, request, after: real_draw(None, request, after))
    twice = fit()
    assert calls == ["kmeans"] * 6
    for name in ("weights_", "means_", "covariances_", "lower_bound_"):
        np.testing.assert_array_equal(getattr(once, name), getattr(twice, name))

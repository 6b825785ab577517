"""Speculative fallbacks of the accelerated drivers (``PlainEM.speculative``): after a
rejected extrapolation, the next proposal's fallback is evaluated in the same pass, so
that a run of rejections costs one pass per EM step instead of two.  The accepted points
must be exactly those of the loop that does not speculate; only the passes change."""

from __future__ import annotations

import itertools

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from dask_em import GaussianMixture, em
from dask_em.acceleration import PlainEM, family_evaluate, run_em
from dask_em.checkpoint import _STEP_FIELDS, _steps
from dask_em.engine.speculation import CONFIG_KEY as SPECULATE_KEY
from dask_em.families.gaussian import GaussianFamily
from tests.test_accelerated_fits import overlapping_data, stopped_and_resumed
from tests.test_acceleration import categorical_mixture, overlapping_gmm, squarem
from tests.test_daarem import daarem
from tests.test_lockstep import blocks_map_reduce


def speculating_run(driver, family, pass_stats, max_passes=100_000):
    """Drive ``driver`` as the lockstep loop does: one read of the data per pass, the
    E-step at ``ask()`` and, when offered, at ``speculative()``.  Returns the driver
    and the number of E-steps evaluated."""
    evaluate = family_evaluate(family, pass_stats)
    e_steps = 0
    while not driver.converged and driver.passes < max_passes:
        point, second = driver.ask(), driver.speculative()
        objective, image, stats = evaluate(point)
        e_steps += 1
        fallback = None
        if second is not None:
            fallback = evaluate(second)
            e_steps += 1
        driver.tell(objective, image, stats, None if fallback is None else fallback_of(fallback))
    return driver, e_steps


def fallback_of(result):
    return lambda: result


def rejections_after_rejections(history) -> int:
    """Rejected proposals that followed a point taken after a rejection: each cost a
    pass of its own without speculation."""
    return sum(
        b.passes - a.passes - 1 if a.after_rejection else 0 for a, b in itertools.pairwise(history)
    )


@pytest.mark.parametrize("method", ["squarem", "daarem"])
@pytest.mark.parametrize("problem", [overlapping_gmm, categorical_mixture])
def test_speculation_keeps_every_accepted_point_and_saves_the_repeated_rejections(method, problem):
    family, pass_stats, start = problem()
    make = {"squarem": squarem, "daarem": daarem}[method]
    alone = run_em(
        make(family, start, tol=1e-10), family_evaluate(family, pass_stats), max_passes=10**5
    )
    fast, e_steps = speculating_run(make(family, start, tol=1e-10), family, pass_stats)
    assert alone.converged and fast.converged
    saved = rejections_after_rejections(alone.history)
    assert saved > 0  # the problem has runs of rejections
    assert [p.objective for p in fast.history] == [p.objective for p in alone.history]
    assert [(p.kind, p.step, p.after_rejection) for p in fast.history] == [
        (p.kind, p.step, p.after_rejection) for p in alone.history
    ]
    for name in alone.params:
        np.testing.assert_array_equal(fast.params[name], alone.params[name])
    assert fast.passes == alone.passes - saved
    # a speculative pass whose proposal is accepted wastes its second E-step: one per
    # run of rejections, never a read
    wasted = sum(
        b.kind == "extrapolated" and a.after_rejection for a, b in itertools.pairwise(fast.history)
    )
    assert e_steps == alone.passes + wasted


def test_plain_em_never_speculates():
    family, pass_stats, start = overlapping_gmm()
    driver, e_steps = speculating_run(PlainEM(start, tol=1e-6), family, pass_stats)
    assert driver.converged and e_steps == driver.passes == len(driver.history)
    assert not any(p.after_rejection for p in driver.history)


def test_squarem_with_back_offs_speculates_only_once_they_are_spent():
    """With back-offs left, a rejection's next point is a shorter step, not known before
    the pass: x2 is offered only once they are spent, and the path stays the same."""
    family, pass_stats, start = categorical_mixture()
    alone = run_em(
        squarem(family, start, tol=1e-10, max_backtracks=1),
        family_evaluate(family, pass_stats),
        max_passes=10**5,
    )
    fast, _ = speculating_run(
        squarem(family, start, tol=1e-10, max_backtracks=1), family, pass_stats
    )
    assert [p.objective for p in fast.history] == [p.objective for p in alone.history]
    assert [(p.kind, p.step, p.after_rejection) for p in fast.history] == [
        (p.kind, p.step, p.after_rejection) for p in alone.history
    ]
    assert fast.passes < alone.passes
    assert fast.evaluations == alone.evaluations == alone.passes


def overlapping_blocks_and_starts(n_starts: int):
    """A full-covariance family, 1,500 rows of the overlapping 2-D mixture in 5 blocks,
    and ``n_starts`` starts around its means (the runs a lockstep test advances)."""
    rng = np.random.default_rng(0)
    family = GaussianFamily("full")
    means = np.array([[0.0, 0.0], [1.5, 0.5], [0.5, 2.0]])
    labels = rng.choice(3, size=1500, p=[0.5, 0.3, 0.2])
    X = means[labels] + rng.standard_normal((1500, 2)) @ np.array([[1.0, 0.3], [0.0, 0.8]])
    starts = [
        family.make_params(
            np.full(3, 1 / 3),
            means + rng.normal(0, 0.7, size=(3, 2)),
            covariances=np.stack([np.eye(2)] * 3),
        )
        for _ in range(n_starts)
    ]
    return family, np.array_split(X, 5), starts


def test_runs_speculating_together_equal_each_alone():
    """Several runs offering second points in one lockstep pass: each run's results as
    alone without speculation, its passes as alone with it."""
    family, blocks, starts = overlapping_blocks_and_starts(4)
    methods = ["squarem", "daarem", "squarem", "daarem"]

    def runs(speculate, which=range(4)):
        return [
            em.EMRun(
                family,
                starts[i],
                max_iter=5000,
                tol=1e-10,
                accelerate=methods[i],
                speculate=speculate,
            )
            for i in which
        ]

    passes: list = []
    together = em.lockstep(blocks_map_reduce(blocks, passes), runs(True))
    for i, result in enumerate(together):
        (alone,) = em.lockstep(blocks_map_reduce(blocks, []), runs(False, [i]))
        (alone_fast,) = em.lockstep(blocks_map_reduce(blocks, []), runs(True, [i]))
        assert result.converged and alone.converged
        assert [r.objective for r in result.history] == [r.objective for r in alone.history]
        for name in alone.params:
            np.testing.assert_array_equal(result.params[name], alone.params[name])
        assert [r.passes for r in result.history] == [r.passes for r in alone_fast.history]
        assert result.passes <= alone.passes
    assert len(passes) == max(r.passes for r in together)
    assert any(r.after_rejection for result in together for r in result.history)


@pytest.mark.parametrize("accelerate", ["squarem", "daarem"])
def test_a_binding_max_iter_stops_a_speculating_fit_where_it_stops_one_that_does_not(
    accelerate,
):
    X, w = overlapping_data(2)
    params = dict(n_components=3, tol=0.0, max_iter=150, random_state=0, accelerate=accelerate)
    fits = {}
    for speculate in (True, False):
        with dask.config.set({SPECULATE_KEY: speculate}):
            fits[speculate] = GaussianMixture(**params).fit(X, sample_weight=w)
    fast, alone = fits[True], fits[False]
    assert not fast.converged_ and not alone.converged_
    assert fast.n_iter_ == alone.n_iter_ and fast.lower_bounds_ == alone.lower_bounds_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(alone, name))
    assert alone.history_[-1]["evaluations"] == alone.history_[-1]["passes"] <= 150
    assert fast.history_[-1]["evaluations"] == alone.history_[-1]["evaluations"]
    assert fast.n_passes_ < alone.n_passes_


@pytest.mark.parametrize("accelerate", ["squarem", "daarem"])
def test_a_fit_that_speculates_equals_one_that_does_not_in_fewer_passes(accelerate):
    X, w = overlapping_data(2)
    params = dict(n_components=3, tol=1e-9, max_iter=3000, random_state=0, accelerate=accelerate)
    fits = {}
    for speculate in (True, False):
        with dask.config.set({SPECULATE_KEY: speculate}):
            fits[speculate] = GaussianMixture(**params).fit(X, sample_weight=w)
    fast, alone = fits[True], fits[False]
    assert fast.converged_ and alone.converged_
    assert fast.lower_bounds_ == alone.lower_bounds_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(alone, name))
    assert [h["after_rejection"] for h in fast.history_] == [
        h["after_rejection"] for h in alone.history_
    ]
    assert fast.n_passes_ < alone.n_passes_
    assert fast.bytes_read_ == fast.n_passes_ * (X.size + w.size) * 8


@pytest.mark.slow
def test_by_default_a_fit_speculates_over_a_streamed_store_not_over_memory(client, tmp_path):
    X, _ = overlapping_data(3, n=1200)  # 113 passes speculating, 127 not (seed 2: 157, 182)
    store = tmp_path / "x.zarr"
    zarr.create_array(store, shape=X.shape, chunks=(300, 2), dtype="f8")[:] = X
    params = dict(n_components=3, tol=1e-6, max_iter=3000, random_state=0, accelerate="squarem")
    passes = {}
    for cache in ("stream", "memory"):
        for speculate in ("auto", False):
            with dask.config.set({SPECULATE_KEY: speculate}):
                model = GaussianMixture(**params, cache=cache).fit(da.from_zarr(str(store)))
            passes[cache, speculate] = (model.n_passes_, model.lower_bounds_)
    assert passes["stream", "auto"][1] == passes["stream", False][1]
    assert passes["stream", "auto"][0] < passes["stream", False][0]
    assert passes["memory", "auto"] == passes["memory", False]


@pytest.mark.slow
def test_a_fit_stopped_after_a_rejection_resumes_to_the_uninterrupted_result(tmp_path):
    X, w = overlapping_data(2, n=600)
    params = dict(n_components=2, tol=1e-6, max_iter=3000, random_state=0, accelerate="daarem")
    with dask.config.set({SPECULATE_KEY: True}):
        reference = GaussianMixture(**params).fit(X, sample_weight=w)
        after = [i + 1 for i, h in enumerate(reference.history_) if h["after_rejection"]]
        assert len(after) > 1, "the reference fit rejects too few proposals"
        # stopped right after a point taken after a rejection: the resumed driver
        # speculates on its next proposal as the uninterrupted one did (the same passes)
        stopped_and_resumed(tmp_path, params, X, w, reference, after[:1])


def test_a_version_4_steps_table_reads_as_no_point_after_a_rejection():
    columns = np.zeros((5, 3))
    old = xr.Dataset({"run0_steps_history": (("it", "field"), np.arange(12.0).reshape(3, 4))})
    steps = _steps(old, "run0", columns)
    assert steps.shape == (len(_STEP_FIELDS), 3)
    np.testing.assert_array_equal(steps[:4], np.arange(12.0).reshape(3, 4).T)
    np.testing.assert_array_equal(steps[4], 0.0)  # no point after a rejection
    np.testing.assert_array_equal(steps[5], steps[0])  # as many evaluations as passes
    assert _steps(xr.Dataset(), "run0", columns).shape == (len(_STEP_FIELDS), 3)


def test_a_version_4_checkpoint_still_resumes(tmp_path):
    """A checkpoint of format 4 (no ``after_rejection`` column) resumes an accelerated
    fit to the uninterrupted result."""
    from dask_em.integrity import MANIFEST_ATTR, add_manifest
    from tests.test_checkpoint import Stop, stop_after

    X, w = overlapping_data(2, n=600)
    params = dict(n_components=2, tol=1e-6, max_iter=3000, random_state=0, accelerate="squarem")
    with dask.config.set({SPECULATE_KEY: True}):
        reference = GaussianMixture(**params).fit(X, sample_weight=w)
        stop = next(i + 1 for i, h in enumerate(reference.history_) if h["after_rejection"])
        path = tmp_path / "v5.zarr"
        with pytest.raises(Stop):
            GaussianMixture(**params).fit(
                X, sample_weight=w, checkpoint=path, callbacks=[stop_after(stop)]
            )
    with xr.open_zarr(path, consolidated=False) as ds:
        old = ds.load()
    steps = old["run0_steps_history"]
    old = old.drop_vars(["run0_steps_history", "step_field"], errors="ignore")
    old["run0_steps_history"] = (steps.dims, steps.values[:, :4])
    old.attrs["dask_em_format_version"] = 4
    old.attrs["step_fields"] = '["passes", "step", "step_max", "extrapolated"]'
    del old.attrs[MANIFEST_ATTR]
    add_manifest(old).to_zarr(tmp_path / "v4.zarr", consolidated=False)
    with dask.config.set({SPECULATE_KEY: True}):
        resumed = GaussianMixture(**params).fit(
            X, sample_weight=w, checkpoint=tmp_path / "v4.zarr", resume=True
        )
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(resumed, name), getattr(reference, name), atol=1e-12)
    assert resumed.lower_bounds_ == reference.lower_bounds_
    # format 4 knew no speculation: its points read as taken after no rejection, so the
    # resumed run's first proposal is not speculated (one pass more at most)
    assert 0 <= resumed.history_[-1]["passes"] - reference.history_[-1]["passes"] <= 1


@pytest.mark.parametrize("accelerate", ["squarem", "daarem"])
def test_an_hmm_over_split_sequences_speculates_with_one_preliminary_pass_a_pass(accelerate):
    """Sequences split across blocks need a preliminary pass before each E-step
    (dask_em.preparation): a speculative pass prepares both points in one of them."""
    from dask_em.families.hmm import HMMFamily
    from tests.test_hmm_split import _blocks, _family_case

    X, emission, params = _family_case("diag", steps=3000)
    X = X[~np.isnan(X).any(axis=1)]
    family = HMMFamily(emission, split_sequences=True)
    blocks = _blocks(X, 500)
    results, stages = {}, {}
    for speculate in (True, False):
        calls: list = []

        def map_reduce(block_func, merge, shared, *, stage, calls=calls):
            calls.append(stage)
            return merge(*(block_func(shared, x, t) for x, t in blocks))

        run = em.EMRun(
            family, params, max_iter=3000, tol=1e-9, accelerate=accelerate, speculate=speculate
        )
        (results[speculate],) = em.lockstep(map_reduce, [run])
        stages[speculate] = calls
    fast, alone = results[True], results[False]
    assert fast.converged and alone.converged
    assert [r.objective for r in fast.history] == [r.objective for r in alone.history]
    assert fast.passes < alone.passes
    for speculate, result in results.items():
        assert stages[speculate].count("summary") == stages[speculate].count("estep")
        assert stages[speculate].count("estep") == result.passes

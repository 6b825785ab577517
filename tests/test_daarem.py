"""DAAREM-accelerated EM (dask_em.acceleration.daarem): the damping solve, the Anderson
proposal on a linear map, passes against plain EM and SQUAREM, monotonicity over the
families, resume from a saved state, lockstep, re-seeding and a checkpointed fit."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from dask_em import GaussianMixture, em
from dask_em.acceleration import PlainEM, family_evaluate, parameter_map, run_em
from dask_em.acceleration.daarem import Daarem, anderson_point, damping_target, ridge_for_norm
from dask_em.families.gaussian import COVARIANCE_TYPES
from dask_em.families.poisson import PoissonFamily
from tests.test_accelerated_fits import overlapping_data, stopped_and_resumed
from tests.test_acceleration import (
    DAYS,
    assert_accepted_never_decrease,
    assert_params_close,
    categorical_mixture,
    fit,
    gaussian_with_missing,
    hasselblad,
    hmm_with_priors,
    separated_gmm,
    squarem,
    stopping_checkpoint,
)
from tests.test_checkpoint import Stop, stop_after
from tests.test_lockstep import blocks_map_reduce, diag_starts


def daarem(family, start, **kwargs):
    return Daarem(start, functools.partial(parameter_map, family), **kwargs)


# --------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("ratio", [0.01, 0.3, 0.9])
def test_the_ridge_shrinks_the_least_squares_coefficients_to_the_asked_ratio(ratio):
    rng = np.random.default_rng(0)
    d = np.sort(rng.uniform(1e-4, 3.0, size=5))[::-1]
    uy = rng.normal(size=5)
    lam = ridge_for_norm(d, uy, ratio)
    assert lam > 0
    shrunk = np.linalg.norm(d * uy / (d**2 + lam))
    np.testing.assert_allclose(shrunk, ratio * np.linalg.norm(uy / d), rtol=1e-10)
    assert ridge_for_norm(d, uy, 1.0) == 0.0
    assert ridge_for_norm(np.zeros(2), uy[:2], ratio) == 0.0  # nothing to fit


def test_the_damping_loosens_with_every_accepted_proposal():
    targets = [damping_target(s, alpha=1.2, kappa=25.0) for s in range(0, 60, 5)]
    assert all(a < b for a, b in itertools.pairwise(targets))
    np.testing.assert_allclose(damping_target(25, alpha=1.2, kappa=25.0), np.sqrt(0.5))


def test_undamped_anderson_solves_a_linear_fixed_point_problem_in_one_proposal():
    """For F(x) = A x + b in n dimensions, n differences span the residuals, and the
    undamped proposal is the fixed point (I - A)^-1 b, where EM-like iteration crawls."""
    rng = np.random.default_rng(1)
    n = 3
    A = np.diag([0.99, 0.9, 0.5]) + 0.01 * rng.normal(size=(n, n))
    b = rng.normal(size=n)
    points = [rng.normal(size=n)]
    for _ in range(n):
        points.append(A @ points[-1] + b)
    points = np.stack(points)
    images = points @ A.T + b
    proposal = anderson_point(points, images, ratio=1.0)
    fixed = np.linalg.solve(np.eye(n) - A, b)
    np.testing.assert_allclose(proposal, fixed, rtol=1e-8)
    damped = anderson_point(points, images, ratio=1e-12)  # gamma ~ 0: the EM point
    np.testing.assert_allclose(damped, images[-1], rtol=1e-6)
    assert not np.allclose(proposal, images[-1], rtol=1e-3)


# --------------------------------------------------------------------------- passes
def test_hasselblad_daarem_reaches_the_published_optimum_in_fewer_passes_than_squarem():
    """Varadhan and Roland (2008), Table 2: pi = 0.6401146, lambda = (2.6634044,
    1.2560951), log-likelihood -1989.9459."""
    family, pass_stats, start = hasselblad()
    for tol in (1e-8, 1e-14):
        plain = fit(PlainEM(start, tol=tol), family, pass_stats)
        fast = fit(daarem(family, start, tol=tol), family, pass_stats)
        accelerated = fit(squarem(family, start, tol=tol), family, pass_stats)
        assert plain.converged and fast.converged
        assert fast.passes <= plain.passes / 10
        assert fast.passes < accelerated.passes
        assert fast.lower_bound >= plain.lower_bound
        assert_accepted_never_decrease(fast.history)
    np.testing.assert_allclose(fast.params["weights"][1], 0.6401146, rtol=1e-5)
    np.testing.assert_allclose(fast.params["rates"][:, 0], [1.2560951, 2.6634044], rtol=1e-5)
    np.testing.assert_allclose(fast.lower_bound * DAYS.sum(), -1989.9459, atol=1e-4)


def test_daarem_reaches_plain_ems_optimum_on_a_slow_and_a_fast_problem():
    family, pass_stats, start = categorical_mixture()
    plain = fit(PlainEM(start, tol=1e-11), family, pass_stats)
    fast = fit(daarem(family, start, tol=1e-11), family, pass_stats)
    assert plain.converged and fast.converged
    assert fast.passes <= 0.35 * plain.passes
    assert_params_close(fast.params, plain.params, rtol=1e-4)
    assert fast.lower_bound >= plain.lower_bound - 1e-12
    assert_accepted_never_decrease(fast.history)
    assert {point.kind for point in fast.history} == {"em", "extrapolated"}
    family, pass_stats, start = separated_gmm()
    for tol, rtol in ((1e-8, 1e-4), (1e-12, 1e-5)):
        plain = fit(PlainEM(start, tol=tol), family, pass_stats)
        fast = fit(daarem(family, start, tol=tol), family, pass_stats)
        assert fast.passes <= 1.2 * plain.passes
        assert_params_close(fast.params, plain.params, rtol=rtol)


def test_convergence_is_tested_on_a_plain_em_step():
    family, pass_stats, start = categorical_mixture(n=600)
    fast = fit(daarem(family, start, tol=1e-9), family, pass_stats)
    assert fast.converged and fast.history[-1].kind == "em"
    assert abs(fast.history[-1].change) < 1e-9


# --------------------------------------------------------------------------- monotone
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_accepted_objectives_never_decrease_gaussian_with_priors_weights_and_missing_values(
    covariance_type,
):
    family, pass_stats, start = gaussian_with_missing(covariance_type, np.random.default_rng(5))
    fast = fit(daarem(family, start, tol=1e-12), family, pass_stats, max_passes=60)
    assert sum(point.kind == "extrapolated" for point in fast.history) >= 5
    assert_accepted_never_decrease(fast.history)


@pytest.mark.parametrize("kind", ["poisson", "categorical", "bernoulli", "full"])
def test_accepted_objectives_never_decrease_hmm(kind):
    family, start, X, lengths = hmm_with_priors(kind, np.random.default_rng(7))
    fast = fit(
        daarem(family, start, tol=1e-13),
        family,
        lambda p: family.block_stats(p, X, lengths),
        max_passes=150,
    )
    assert any(point.kind == "extrapolated" for point in fast.history)
    assert_accepted_never_decrease(fast.history)


# --------------------------------------------------------------------------- resume
def test_resuming_from_a_saved_state_equals_the_uninterrupted_run():
    family, pass_stats, start = categorical_mixture(n=600)
    whole = fit(daarem(family, start, tol=1e-12), family, pass_stats)
    assert whole.converged
    chains = set()
    n = len(whole.history)
    for stop_at in sorted({2, 5, 13, n - 2}):
        checkpoint, saved = stopping_checkpoint(stop_at, Stop)
        with pytest.raises(Stop):
            run_em(
                daarem(family, start, tol=1e-12),
                family_evaluate(family, pass_stats),
                max_passes=10**5,
                callbacks=[checkpoint],
            )
        chains.add(len(saved[-1].chain))
        resumed = fit(daarem(family, start, tol=1e-12, resume=saved[-1]), family, pass_stats)
        assert resumed.history == whole.history
        assert resumed.passes == whole.passes
        assert_params_close(resumed.params, whole.params, rtol=1e-12)
    assert len(chains) >= 3  # stopped with windows of several lengths


def test_lockstep_daarem_runs_equal_runs_alone_and_resume():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-1, 1, (400, 2)), rng.normal(1, 1, (300, 2))])
    blocks = np.array_split(X, 5)
    family, starts = diag_starts(rng, 3)

    def make_runs(resume=(None,) * 3, callbacks=()):
        return [
            em.EMRun(
                family,
                s,
                max_iter=400,
                tol=1e-10,
                accelerate="daarem",
                resume=r,
                callbacks=callbacks,
            )
            for s, r in zip(starts, resume, strict=True)
        ]

    alone = [
        em.run(
            blocks_map_reduce(blocks, []), family, s, max_iter=400, tol=1e-10, accelerate="daarem"
        )
        for s in starts
    ]
    together = em.lockstep(blocks_map_reduce(blocks, []), make_runs())
    saved: list = []
    with pytest.raises(Stop):
        em.lockstep(
            blocks_map_reduce(blocks, []),
            make_runs(callbacks=[stop_after(9)]),
            save=lambda results: saved.append([r.copy() for r in results]),
        )
    resumed = em.lockstep(blocks_map_reduce(blocks, []), make_runs(resume=saved[-1]))
    for a, b, c in zip(alone, together, resumed, strict=True):
        assert a.converged and b.converged and a.passes == b.passes == c.passes
        assert [r.objective for r in a.history] == [r.objective for r in b.history]
        assert [r.objective for r in c.history] == [r.objective for r in b.history]
        for name in a.params:
            np.testing.assert_array_equal(a.params[name], b.params[name])
            np.testing.assert_array_equal(c.params[name], b.params[name])


def test_a_reseeded_component_restarts_the_window():
    rng = np.random.default_rng(8)
    family = PoissonFamily()
    X = np.concatenate([rng.poisson(2.0, 300), rng.poisson(9.0, 200)])[:, None].astype(float)
    start = family.make_params(np.array([0.45, 0.45, 0.1]), rates=np.array([[1.0], [5.0], [900.0]]))

    def repair(params, stats):
        empty = family.empty_components(stats)
        if empty.size == 0:
            return params, ()
        return family.reseed(params, empty, X[::10]), tuple(int(k) for k in empty)

    fast = fit(
        daarem(family, start, tol=1e-12, repair=repair),
        family,
        lambda p: family.block_stats(p, X),
    )
    position = next(i for i, point in enumerate(fast.history) if point.reseeded)
    assert fast.converged
    # the repaired point and its image come before any proposal
    assert [point.kind for point in fast.history[position + 1 : position + 3]] == ["em", "em"]
    assert_accepted_never_decrease(fast.history)


# --------------------------------------------------------------------------- estimator
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")
def test_a_stopped_daarem_fit_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
    X, w = overlapping_data(4, n=400)
    # 17 iterations at tol 1e-5 (49 at 1e-10), each checkpointed: about 0.5 s a write
    params = dict(n_components=2, tol=1e-5, max_iter=3000, random_state=2, accelerate="daarem")
    reference = GaussianMixture(**params).fit(X, sample_weight=w)
    assert reference.converged_ and len(reference.history_) > 9
    assert "extrapolated" in {h["move"] for h in reference.history_}
    assert len(stopped_and_resumed(tmp_path, params, X, w, reference, (3, 9))) == 2


@pytest.mark.parametrize("command", [["fit", "gmm"], ["sweep", "gmm"]])
def test_the_command_line_offers_daarem(command):
    from dask_em.cli import build_parser

    k = "2" if command[0] == "fit" else "1:3"
    argv = [*command, "data.zarr", "-k", k, "--out", "out", "--accelerate", "daarem"]
    assert build_parser().parse_args(argv).accelerate == "daarem"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv[:-1], "anderson"])

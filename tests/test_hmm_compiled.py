"""The compiled HMM kernels against the pure-NumPy reference kernels, on random blocks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dask_em.families import hmm_compiled, hmm_fused, hmm_kernels
from dask_em.families.categorical import CategoricalFamily
from dask_em.families.gaussian import GaussianFamily
from dask_em.families.hmm import HMMFamily
from dask_em.families.hmm_emissions import fused_emission
from dask_em.families.hmm_fused import fused_block_stats
from dask_em.families.hmm_kernels import TimeMajorLayout
from dask_em.families.jit import HAVE_NUMBA
from dask_em.families.poisson import PoissonFamily
from dask_em.families.vector_exp import exp_inplace

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not available")

#: Mixed lengths, several of length 1, the longest not first in block order.
LENGTHS = np.array([5, 1, 7, 3, 7, 2, 1, 12, 40, 1, 19])


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected)
    scale = max(np.abs(expected).max(), 1e-300)
    return float(np.abs(actual - expected).max() / scale)


def random_problem(seed, lengths, K=4, offset=0.0, scale=3.0):
    rng = np.random.default_rng(seed)
    log_b = rng.normal(size=(int(np.sum(lengths)), K)) * scale + offset
    return log_b, rng.dirichlet(np.ones(K)), rng.dirichlet(np.ones(K), size=K)


def test_vector_exp_is_within_one_ulp_of_numpy():
    rng = np.random.default_rng(0)
    special = [-np.inf, np.inf, np.nan, 0.0, -0.0, 709.78, 709.8, -745.13, -745.14, -708.4]
    x = np.concatenate(
        [rng.uniform(-750, 712, 200_000), rng.uniform(-1, 1, 10_000), special]
    ).reshape(-1, 10)  # any contiguous shape
    y = x.copy()
    exp_inplace(y)
    with np.errstate(over="ignore"):
        expected = np.exp(x)
    normal = np.isfinite(expected) & (expected > 0)
    ulps = np.abs(y[normal] - expected[normal]) / np.spacing(expected[normal])
    assert ulps.max() <= 1.0
    np.testing.assert_array_equal(y[~normal], expected[~normal])  # 0, inf, nan


@pytest.mark.parametrize("offset", [0.0, -5000.0])
def test_forward_backward_matches_the_reference(offset):
    log_b, pi, A = random_problem(0, LENGTHS, offset=offset)
    layout = TimeMajorLayout.from_lengths(LENGTHS)
    ours = hmm_compiled.forward_backward(layout, log_b[layout.perm], pi, A)
    ref = hmm_kernels.forward_backward(layout, log_b[layout.perm], pi, A)
    for field in ("gamma", "start", "trans", "loglik"):
        assert relative_error(getattr(ours, field), getattr(ref, field)) < 1e-12, field


def test_underflow_falls_back_to_log_space_like_the_reference():
    """The reference kernels' underflow case: a chain whose only reachable state explains
    a step ~1e-400 worse than an unreachable one."""
    A = np.array([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [0.0, 0.0, 1.0]])
    pi = np.array([1.0, 0.0, 0.0])
    log_b = np.zeros((12, 3))
    log_b[:, :2] = -1.0
    log_b[1, :2] = -1000.0
    layout = TimeMajorLayout.from_lengths(np.array([6, 6]))
    b = hmm_compiled.state_major(log_b[layout.perm])
    hmm_compiled.shift_densities(b, np.empty(12))
    assert hmm_compiled.scaled_posteriors(layout, b, pi, A) is None  # it does underflow
    ours = hmm_compiled.forward_backward(layout, log_b[layout.perm], pi, A)
    ref = hmm_kernels.forward_backward(layout, log_b[layout.perm], pi, A)
    assert np.all(np.isfinite(ours.gamma))
    for field in ("gamma", "start", "trans", "loglik"):
        assert relative_error(getattr(ours, field), getattr(ref, field)) < 1e-12, field


def test_viterbi_matches_the_reference():
    log_b, pi, A = random_problem(1, LENGTHS, K=5)
    A[0, 2] = 0.0  # log 0 = -inf in the recursion
    layout = TimeMajorLayout.from_lengths(LENGTHS)
    ours = hmm_compiled.viterbi(layout, log_b[layout.perm], pi, A)
    with np.errstate(divide="ignore"):
        ref = hmm_kernels.viterbi(layout, log_b[layout.perm], pi, A)
    np.testing.assert_array_equal(ours[1], ref[1])
    assert relative_error(ours[0], ref[0]) < 1e-13


@pytest.mark.parametrize("offset", [0.0, -5000.0])
def test_sampled_paths_are_the_references_paths(offset):
    log_b, pi, A = random_problem(2, LENGTHS, K=3, offset=offset, scale=1.0)
    layout = TimeMajorLayout.from_lengths(LENGTHS)
    ours = hmm_compiled.sample_paths(
        layout, log_b[layout.perm], pi, A, 64, np.random.default_rng(7)
    )
    ref = hmm_kernels.sample_paths(layout, log_b[layout.perm], pi, A, 64, np.random.default_rng(7))
    np.testing.assert_array_equal(ours.gamma, ref.gamma)
    np.testing.assert_array_equal(ours.trans, ref.trans)
    np.testing.assert_array_equal(ours.start, ref.start)
    assert relative_error(ours.loglik, ref.loglik) < 1e-13


# --------------------------------------------------------------------------- families
def gaussian_case(covariance_type, rng, K, D):
    family = GaussianFamily(covariance_type, reg_covar=0.0)
    covariances = {
        "diag": rng.uniform(0.5, 2.0, size=(K, D)),
        "spherical": rng.uniform(0.5, 2.0, size=K),
        "full": np.array([np.cov(rng.normal(size=(D, 3 * D))) for _ in range(K)]),
        "tied": np.cov(rng.normal(size=(D, 3 * D))),
    }[covariance_type]
    means = rng.normal(size=(K, D)) * 2 + 5.0
    emission = family.make_params(rng.dirichlet(np.ones(K)), means, covariances=covariances)
    X = rng.normal(size=(int(LENGTHS.sum()), D)) * 2 + 5.0
    return family, emission, X


def poisson_case(rng, K, D):
    family = PoissonFamily()
    emission = family.make_params(np.full(K, 1 / K), rates=rng.uniform(0.5, 8.0, size=(K, D)))
    return family, emission, rng.poisson(3.0, size=(int(LENGTHS.sum()), D)).astype(float)


def categorical_case(rng, K, D):
    family = CategoricalFamily(n_symbols=5)
    probabilities = rng.dirichlet(np.ones(5), size=(K, D))
    probabilities[0, 0, 1] = 0.0  # an impossible symbol: the log floor
    probabilities[0, 0] /= probabilities[0, 0].sum()
    emission = family.make_params(np.full(K, 1 / K), probabilities=probabilities)
    return family, emission, rng.integers(0, 5, size=(int(LENGTHS.sum()), D)).astype(float)


CASES = {
    "diag": lambda rng, K, D: gaussian_case("diag", rng, K, D),
    "spherical": lambda rng, K, D: gaussian_case("spherical", rng, K, D),
    "full": lambda rng, K, D: gaussian_case("full", rng, K, D),
    "tied": lambda rng, K, D: gaussian_case("tied", rng, K, D),
    "poisson": poisson_case,
    "categorical": categorical_case,
}


def make_case(name, seed, missing, K=4, D=3):
    rng = np.random.default_rng(seed)
    family, emission, X = CASES[name](rng, K, D)
    if missing:
        X[[0, 9, 30], 0] = np.nan  # some features of some steps
        X[[4, 50]] = np.nan  # every feature (a length-1 sequence's only step is row 5)
        X[5] = np.nan
    compiled = HMMFamily(family)
    params = compiled.make_params(
        rng.dirichlet(np.ones(K)), rng.dirichlet(np.ones(K), size=K), emission, seed=3
    )
    return compiled, dataclasses.replace(compiled, compiled=False), params, X


def assert_same_stats(ours, ref):
    for key in ("weight", "n_rows", "n_sequences", "seed"):
        assert ours[key] == ref[key], key
    for key in ("loglik", "start", "trans"):
        assert relative_error(ours[key], ref[key]) < 1e-12, key
    assert ours["emission"].keys() == ref["emission"].keys()
    for key, value in ref["emission"].items():
        assert relative_error(ours["emission"][key], value) < 1e-12, f"emission {key}"


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "with-nan"])
@pytest.mark.parametrize("name", list(CASES))
def test_block_stats_match_the_reference(name, missing):
    compiled, reference, params, X = make_case(name, 10, missing)
    assert_same_stats(
        compiled.block_stats(params, X, LENGTHS), reference.block_stats(params, X, LENGTHS)
    )


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "with-nan"])
@pytest.mark.parametrize("group_steps", [16384, 10, 1], ids=["one-group", "groups", "singles"])
@pytest.mark.parametrize("name", ["diag", "spherical", "poisson", "categorical"])
def test_fused_kernels_run_and_match_the_family_statistics(name, group_steps, missing):
    """The fused path itself (not a fallback), with the block's sequences in one group
    or in several, against the family's posterior_stats; with NaN, a Gaussian step
    takes the density of its observed features and its completed moments."""
    compiled, reference, params, X = make_case(name, 11, missing=missing)
    layout = TimeMajorLayout.from_lengths(LENGTHS)
    fused = fused_emission(compiled.emission)
    result = fused_block_stats(fused, params, X, LENGTHS, group_steps)
    assert result is not None
    loglik, start, trans, emission = result
    X_tm, post = reference.posteriors(params, X, layout)
    expected = reference.emission.posterior_stats(params["emission"], X_tm, post.gamma)
    assert relative_error(loglik, post.loglik.sum()) < 1e-12
    assert relative_error(start, post.start) < 1e-12
    assert relative_error(trans, post.trans) < 1e-12
    for key, value in expected.items():
        assert relative_error(emission[key], value) < 1e-12, key


def test_scratch_kept_between_blocks_gives_each_block_its_own_statistics():
    # a thread's scratch goes on to its next block (larger, smaller, other K and D):
    # every block's statistics are those it gets with fresh scratch, and none of the
    # returned arrays is a view of the scratch the next block overwrites
    fresh, blocks = [], []
    for seed, (K, D) in enumerate([(4, 3), (2, 5), (6, 1), (4, 3)]):
        compiled, _, params, X = make_case("diag", seed, missing=False, K=K, D=D)
        lengths = LENGTHS if seed % 2 == 0 else LENGTHS[:3]
        X = X[: lengths.sum()]
        blocks.append((compiled, params, X, lengths))
    for compiled, params, X, lengths in blocks:
        hmm_fused._kept.buffers = None
        fresh.append(compiled.block_stats(params, X, lengths))
    kept = [compiled.block_stats(params, X, lengths) for compiled, params, X, lengths in blocks]
    for ours, expected in zip(kept, fresh, strict=True):
        assert_same_stats(ours, expected)
        assert ours["loglik"] == expected["loglik"]
        for key, value in expected["emission"].items():
            np.testing.assert_array_equal(ours["emission"][key], value)


def test_fused_gaussian_block_that_underflows_takes_the_log_space_path():
    family = GaussianFamily("diag", reg_covar=0.0)
    emission = family.make_params(
        np.full(3, 1 / 3), np.array([[0.0], [0.0], [40.0]]), covariances=np.full((3, 1), 0.01)
    )
    compiled = HMMFamily(family)
    A = np.array([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [0.0, 0.0, 1.0]])
    params = compiled.make_params(np.array([1.0, 0.0, 0.0]), A, emission)
    X = np.zeros((12, 1))
    X[1] = 40.0  # state 2 explains it ~1e-34000 better, but it is not reachable yet
    lengths = np.array([6, 6])
    assert fused_block_stats(fused_emission(family), params, X, lengths) is None
    ours = compiled.block_stats(params, X, lengths)
    ref = dataclasses.replace(compiled, compiled=False).block_stats(params, X, lengths)
    assert np.isfinite(ours["loglik"])
    assert_same_stats(ours, ref)


def test_float32_blocks_give_the_float64_statistics():
    compiled, _, params, X = make_case("diag", 12, missing=False)
    X32 = X.astype(np.float32)
    assert_same_stats(
        compiled.block_stats(params, X32, LENGTHS),
        compiled.block_stats(params, X32.astype(np.float64), LENGTHS),
    )


@pytest.mark.parametrize("name", ["diag", "full", "poisson"])
def test_sampling_estep_and_prediction_match_the_reference(name):
    compiled, reference, params, X = make_case(name, 13, missing=True)
    sampled = dataclasses.replace(compiled, estep="sample", n_samples=16)
    assert_same_stats(
        sampled.block_stats(params, X, LENGTHS),
        dataclasses.replace(sampled, compiled=False).block_stats(params, X, LENGTHS),
    )
    ours, ref = (
        compiled.state_posteriors(params, X, LENGTHS),
        reference.state_posteriors(params, X, LENGTHS),
    )
    assert relative_error(ours[0], ref[0]) < 1e-12
    assert relative_error(ours[1], ref[1]) < 1e-12
    ours, ref = compiled.decode(params, X, LENGTHS), reference.decode(params, X, LENGTHS)
    assert relative_error(ours[0], ref[0]) < 1e-12
    np.testing.assert_array_equal(ours[1], ref[1])


def test_kernels_leave_a_fortran_ordered_input_intact():
    """Regression: the transpose of a Fortran-ordered (T, K) array is already C-ordered,
    and the in-place shift used to overwrite the caller's log-densities through it."""
    log_b, pi, A = random_problem(3, LENGTHS)
    layout = TimeMajorLayout.from_lengths(LENGTHS)
    fortran = np.asfortranarray(log_b[layout.perm])
    kept = fortran.copy()
    hmm_compiled.forward_backward(layout, fortran, pi, A)
    hmm_compiled.sample_paths(layout, fortran, pi, A, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(fortran, kept)


def test_a_symbol_out_of_range_is_an_error_not_a_stray_read():
    compiled, _, params, X = make_case("categorical", 14, missing=False)
    for bad in (5.0, -1.0):
        X_bad = X.copy()
        X_bad[7, 1] = bad
        with pytest.raises(ValueError, match="holds a symbol outside"):
            compiled.block_stats(params, X_bad, LENGTHS)

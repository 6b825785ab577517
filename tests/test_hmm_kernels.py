"""The HMM kernels against a one-sequence-at-a-time log-space reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import logsumexp

from dask_em.families.gaussian import GaussianFamily
from dask_em.families.hmm import HMMFamily
from dask_em.families.hmm_kernels import (
    TimeMajorLayout,
    forward_backward,
    forward_backward_log,
    sample_paths,
    viterbi,
)


def reference(log_b: np.ndarray, lengths, startprob, transmat):
    """Per-sequence log-space forward-backward and Viterbi, written out directly."""
    K = len(startprob)
    log_a, log_pi = np.log(transmat), np.log(startprob)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    gamma = np.zeros((offsets[-1], K))
    trans, start, loglik, paths, best = np.zeros((K, K)), np.zeros(K), [], [], []
    for s in range(len(lengths)):
        lb = log_b[offsets[s] : offsets[s + 1]]
        T = len(lb)
        la = np.zeros((T, K))
        la[0] = log_pi + lb[0]
        for t in range(1, T):
            la[t] = logsumexp(la[t - 1][:, None] + log_a, axis=0) + lb[t]
        lbeta = np.zeros((T, K))
        for t in range(T - 2, -1, -1):
            lbeta[t] = logsumexp(log_a + lb[t + 1] + lbeta[t + 1], axis=1)
        total = logsumexp(la[-1])
        loglik.append(total)
        gamma[offsets[s] : offsets[s + 1]] = np.exp(la + lbeta - total)
        start += gamma[offsets[s]]
        for t in range(T - 1):
            trans += np.exp(la[t][:, None] + log_a + lb[t + 1] + lbeta[t + 1] - total)
        delta, pointers = log_pi + lb[0], []
        for t in range(1, T):
            cand = delta[:, None] + log_a
            pointers.append(cand.argmax(axis=0))
            delta = cand.max(axis=0) + lb[t]
        path = [int(delta.argmax())]
        for p in reversed(pointers):
            path.append(int(p[path[-1]]))
        paths.extend(path[::-1])
        best.append(delta.max())
    return gamma, start, trans, np.array(loglik), np.array(paths), np.array(best)


def random_problem(seed, lengths, K=4, offset=0.0, scale=3.0):
    rng = np.random.default_rng(seed)
    log_b = rng.normal(size=(int(np.sum(lengths)), K)) * scale + offset
    transmat = rng.dirichlet(np.ones(K), size=K)
    startprob = rng.dirichlet(np.ones(K))
    return log_b, startprob, transmat


@pytest.mark.parametrize("offset", [0.0, -5000.0])
@pytest.mark.parametrize("kernel", [forward_backward, forward_backward_log])
def test_forward_backward_matches_reference(kernel, offset):
    lengths = np.array([5, 1, 7, 3, 7, 2, 1, 12])
    log_b, pi, A = random_problem(0, lengths, offset=offset)
    layout = TimeMajorLayout.from_lengths(lengths)
    post = kernel(layout, log_b[layout.perm], pi, A)
    gamma, start, trans, loglik, _, _ = reference(log_b, lengths, pi, A)
    # the reference exponentiates sums of size |offset|: its own error is ~|offset| * 1e-16
    atol = 1e-12 * max(1.0, abs(offset))
    np.testing.assert_allclose(layout.to_block_order(post.gamma), gamma, atol=atol)
    np.testing.assert_allclose(post.start, start, atol=atol)
    np.testing.assert_allclose(post.trans, trans, atol=atol * 10)
    np.testing.assert_allclose(post.loglik, loglik[layout.order], rtol=1e-13)


def test_viterbi_matches_reference():
    lengths = np.array([9, 1, 4, 4, 30, 2])
    log_b, pi, A = random_problem(1, lengths)
    layout = TimeMajorLayout.from_lengths(lengths)
    log_prob, states = viterbi(layout, log_b[layout.perm], pi, A)
    *_, paths, best = reference(log_b, lengths, pi, A)
    np.testing.assert_array_equal(layout.to_block_order(states), paths)
    np.testing.assert_allclose(log_prob, best[layout.order], rtol=1e-13)


def test_scaled_path_falls_back_to_log_space_on_underflow():
    """A left-to-right chain whose only reachable state explains a step ~1e-400 worse
    than an unreachable one: the scaled normalizer underflows, the log path does not."""
    lengths = np.array([6, 6])
    K = 3
    A = np.array([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [0.0, 0.0, 1.0]])
    pi = np.array([1.0, 0.0, 0.0])
    log_b = np.zeros((12, K))
    log_b[:, 2] = 0.0
    log_b[:, :2] = -1.0
    log_b[1, :2] = -1000.0  # step 2 of sequence 0: state 2 is unreachable yet, but it is best
    layout = TimeMajorLayout.from_lengths(lengths)
    post = forward_backward(layout, log_b[layout.perm], pi, A)
    expected = forward_backward_log(layout, log_b[layout.perm], pi, A)
    assert np.all(np.isfinite(post.gamma)) and np.all(np.isfinite(post.loglik))
    np.testing.assert_allclose(post.gamma, expected.gamma, atol=1e-12)
    np.testing.assert_allclose(post.loglik, expected.loglik, rtol=1e-12)
    with np.errstate(divide="ignore"):
        gamma, _, _, loglik, _, _ = reference(log_b, lengths, pi, A)
    np.testing.assert_allclose(layout.to_block_order(post.gamma), gamma, atol=1e-12)
    np.testing.assert_allclose(post.loglik, loglik[layout.order], rtol=1e-12)


@pytest.mark.slow
def test_long_sequence_and_extreme_densities_stay_finite():
    """2x10^4 steps, emission log-densities around -1e4: no NaN, no underflow (the
    unscaled probabilities would underflow at the first step)."""
    lengths = np.array([20_000, 1, 3])
    log_b, pi, A = random_problem(2, lengths, K=3, offset=-10_000.0, scale=50.0)
    layout = TimeMajorLayout.from_lengths(lengths)
    post = forward_backward(layout, log_b[layout.perm], pi, A)
    assert np.all(np.isfinite(post.gamma)) and np.all(np.isfinite(post.trans))
    np.testing.assert_allclose(post.gamma.sum(axis=1), 1.0, atol=1e-12)
    assert post.trans.sum() == pytest.approx(lengths.sum() - len(lengths), rel=1e-10)
    expected = forward_backward_log(layout, log_b[layout.perm], pi, A)
    np.testing.assert_allclose(post.loglik, expected.loglik, rtol=1e-10)
    np.testing.assert_allclose(post.gamma, expected.gamma, atol=1e-8)
    log_prob, states = viterbi(layout, log_b[layout.perm], pi, A)
    assert np.all(np.isfinite(log_prob)) and states.min() >= 0 and states.max() < 3


def test_monte_carlo_counts_converge_to_the_exact_ones():
    lengths = np.array([40, 25, 1, 60, 33])
    log_b, pi, A = random_problem(3, lengths, K=3, scale=1.0)
    layout = TimeMajorLayout.from_lengths(lengths)
    exact = forward_backward(layout, log_b[layout.perm], pi, A)
    errors = []
    for n_samples in (10, 100, 1000, 10_000):
        draws = [
            sample_paths(layout, log_b[layout.perm], pi, A, n_samples, np.random.default_rng(s))
            for s in range(3)
        ]
        error = np.mean([np.abs(d.trans - exact.trans).sum() for d in draws])
        errors.append(error)
        for d in draws:
            np.testing.assert_allclose(d.loglik, exact.loglik, rtol=1e-13)
            assert d.trans.sum() == pytest.approx(exact.trans.sum())
    print("MC E-step: L1 error of the transition counts by n_samples 10..1e4:", errors)
    # error ~ n^-1/2: each tenfold increase should shrink it by ~3.2; demand 2
    assert all(b < a / 2 for a, b in itertools.pairwise(errors))


def test_a_block_must_hold_whole_sequences():
    """Additivity over splits on sequence boundaries: tests/test_family_contract.py."""
    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 30, size=40)
    X = rng.normal(size=(int(lengths.sum()), 2))
    family = HMMFamily(GaussianFamily("diag", reg_covar=0.0))
    emission = family.emission.make_params(
        np.full(3, 1 / 3), rng.normal(size=(3, 2)), covariances=np.ones((3, 2))
    )
    params = family.make_params(np.full(3, 1 / 3), rng.dirichlet(np.ones(3), size=3), emission)
    with pytest.raises(ValueError, match="whole sequences"):
        family.block_stats(params, X[:10], lengths[:3])

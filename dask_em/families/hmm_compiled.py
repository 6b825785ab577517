"""Compiled forward-backward, Viterbi and forward-filtering backward-sampling.

The same recursions, on the same lockstep layout and with the same scaling, as the
pure-NumPy reference kernels of :mod:`dask_em.families.hmm_kernels` (read its module
docstring for the notation), compiled with :func:`dask_em.families.jit.jit`.  Each kernel
walks the time steps one at a time and, within a step, runs over the sequences still
running in SIMD loops: the arrays are *state-major*, (K, T) with time-major columns, so
that the rows of state k at step t are one contiguous run.  Nothing but the arrays of the
recursion itself (alpha, the shifted densities) is ever written: no (n_t, K) temporary
per step, no NumPy call inside the loop, and the GIL released throughout.

Scaled forward-backward keeps alpha in place and overwrites it with gamma on the way
back; beta lives in one (S, K) buffer of the current beta row of every running sequence
(the sequences still running at step t + 1 are a prefix of those running at t, so each
keeps its slot).  When a normalizer underflows the wrappers redo the block with the
reference log-space kernel, exactly as the reference does.

:class:`dask_em.families.hmm.HMMFamily` runs these when numba is available (and its
``compiled`` field is true), the reference kernels otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families.hmm_kernels import (
    UNDERFLOW,
    Posteriors,
    TimeMajorLayout,
    _forward_log_normalized,
    _log,
    _sum_per_sequence,
    forward_backward_log,
)
from dask_em.families.jit import jit, jit_reassociated
from dask_em.families.peaks import finish_peak, raise_peak
from dask_em.families.vector_exp import CHUNK, exp_chunk


# --------------------------------------------------------------------------- vector helpers
# Loops over the sequences of one step, on contiguous rows of state-major arrays: LLVM
# turns each into SIMD code.  Reductions keep four partial sums (fixed order, so results
# are reproducible; fastmath stays off).
@jit
def _scaled_copy(a, x, y):
    """``y = a * x``."""
    for i in range(len(y)):
        y[i] = a * x[i]


@jit
def _axpy(a, x, y):
    """``y += a * x``."""
    for i in range(len(y)):
        y[i] += a * x[i]


@jit
def _multiply(x, y):
    """``y *= x``."""
    for i in range(len(y)):
        y[i] *= x[i]


@jit_reassociated
def dot(x, y):
    """``sum_i x_i y_i``, the sum reassociated (vectorized)."""
    total = 0.0
    for i in range(len(x)):
        total += x[i] * y[i]
    return total


# --------------------------------------------------------------------------- kernels
@jit
def shift_chunk(log_b, first, stop, shift, high_bits, low_bits):
    """In place on the columns ``first:stop`` (at most CHUNK) of state-major ``log_b``
    (K, T): ``b = exp(log_b - m)``, with ``shift[first:stop] = m``, the maximum over
    states (0 where it is not finite)."""
    n_states = log_b.shape[0]
    peak = shift[first:stop]
    _scaled_copy(1.0, log_b[0, first:stop], peak)
    for k in range(1, n_states - 1):
        raise_peak(peak, log_b[k, first:stop])
    finish_peak(peak, log_b[n_states - 1, first:stop])  # one state: the row peak copies
    for k in range(n_states):
        row = log_b[k, first:stop]
        _axpy(-1.0, peak, row)
        exp_chunk(row, high_bits, low_bits)


@jit
def shift_densities(log_b, shift):
    """In place: state-major ``log_b`` (K, T) becomes ``b = exp(log_b - m)``; ``shift``
    (T,) receives ``m``, the maximum over states (0 where it is not finite)."""
    high_bits = np.empty(CHUNK, dtype=np.int64)
    low_bits = np.empty(CHUNK, dtype=np.int64)
    n_rows = log_b.shape[1]
    for first in range(0, n_rows, CHUNK):
        shift_chunk(log_b, first, min(first + CHUNK, n_rows), shift, high_bits, low_bits)


@jit
def forward_scaled(starts, counts, b, startprob, transmat, alpha, scale):
    """Scaled forward pass on state-major arrays: ``alpha_hat`` (K, T) and the
    normalizers ``c`` (T,), in place, from the shifted densities ``b`` (K, T).

    Returns False as soon as a normalizer is not above UNDERFLOW (or not finite): the
    caller then redoes the block in log space.
    """
    n_states = len(startprob)
    inverse = np.empty(counts[0])
    for t in range(len(counts)):
        n = counts[t]
        rows = slice(starts[t], starts[t] + n)
        for j in range(n_states):
            out = alpha[j, rows]
            if t == 0:
                _scaled_copy(startprob[j], b[j, rows], out)
                continue
            previous = slice(starts[t - 1], starts[t - 1] + n)
            _scaled_copy(transmat[0, j], alpha[0, previous], out)
            for k in range(1, n_states):
                _axpy(transmat[k, j], alpha[k, previous], out)
            _multiply(b[j, rows], out)
        total = scale[rows]
        _scaled_copy(1.0, alpha[0, rows], total)
        for j in range(1, n_states):
            _axpy(1.0, alpha[j, rows], total)
        for i in range(n):
            if not (total[i] > UNDERFLOW and total[i] < math.inf):
                return False
            inverse[i] = 1.0 / total[i]
        for j in range(n_states):
            _multiply(inverse[:n], alpha[j, rows])
    return True


@jit
def backward_scaled(starts, counts, b, scale, transmat, alpha, xi_sum):
    """Scaled backward pass on state-major arrays: overwrites ``alpha`` (K, T) with gamma
    and adds ``sum_t alpha_hat_t(i) b_{t+1}(j) beta_hat_{t+1}(j) / c_{t+1}`` into
    ``xi_sum`` (K, K), the transition counts before the elementwise product with A.

    ``beta`` (K, S) holds the current beta row of each running sequence, ``following``
    (K, S) the factor ``b_{t+1} beta_hat_{t+1} / c_{t+1}``.
    """
    n_states = transmat.shape[0]
    beta = np.ones((n_states, counts[0]))
    following = np.empty((n_states, counts[0]))
    inverse = np.empty(counts[0])
    for t in range(len(counts) - 2, -1, -1):
        n, n_next = counts[t], counts[t + 1]
        rows = slice(starts[t], starts[t] + n_next)  # the sequences that go on
        later = slice(starts[t + 1], starts[t + 1] + n_next)
        for i in range(n_next):
            inverse[i] = 1.0 / scale[starts[t + 1] + i]
        for j in range(n_states):
            f = following[j, :n_next]
            _scaled_copy(1.0, b[j, later], f)
            _multiply(beta[j, :n_next], f)
            _multiply(inverse[:n_next], f)
        for k in range(n_states):
            beta_k = beta[k, :n_next]
            _scaled_copy(transmat[k, 0], following[0, :n_next], beta_k)
            for j in range(1, n_states):
                _axpy(transmat[k, j], following[j, :n_next], beta_k)
            alpha_k = alpha[k, rows]
            for j in range(n_states):
                xi_sum[k, j] += dot(alpha_k, following[j, :n_next])
            _multiply(beta_k, alpha_k)  # gamma_t = alpha_hat_t * beta_hat_t
            beta[k, n_next:n] = 1.0  # the sequences whose last step is t


@jit
def viterbi_kernel(starts, counts, log_b, log_pi, log_a, delta, pointer, states, log_prob):
    """Viterbi in log space on the lockstep layout (the reference's operations)."""
    n_states = len(log_pi)
    longest = len(counts)
    for i in range(counts[0]):
        for k in range(n_states):
            delta[i, k] = log_pi[k] + log_b[i, k]
    for t in range(1, longest):
        row0, previous0 = starts[t], starts[t - 1]
        for i in range(counts[t]):
            r, p = row0 + i, previous0 + i
            for j in range(n_states):
                best = 0
                best_value = delta[p, 0] + log_a[0, j]
                for k in range(1, n_states):
                    candidate = delta[p, k] + log_a[k, j]
                    if candidate > best_value:
                        best, best_value = k, candidate
                pointer[r, j] = best
                delta[r, j] = best_value + log_b[r, j]
    current = np.zeros(counts[0], dtype=np.int64)
    for t in range(longest - 1, -1, -1):
        row0 = starts[t]
        n_next = counts[t + 1] if t + 1 < longest else 0
        for i in range(counts[t]):
            r = row0 + i
            if i < n_next:  # follow the pointer back from step t + 1
                current[i] = pointer[starts[t + 1] + i, current[i]]
            else:  # the sequence ends at t: start from its best end state
                best = 0
                for k in range(1, n_states):
                    if delta[r, k] > delta[r, best]:
                        best = k
                current[i] = best
                log_prob[i] = delta[r, best]
            states[r] = current[i]


@jit
def _draw_state(weights, total_draw, n_states):
    """The reference's inverse-CDF draw: how many cumulative weights lie below u."""
    cumulative = 0.0
    state = 0
    for k in range(n_states):
        cumulative += weights[k]
        if total_draw > cumulative:
            state += 1
    return min(state, n_states - 1)


@jit
def _cumulative_total(weights, n_states):
    total = 0.0
    for k in range(n_states):
        total += weights[k]
    return total


@jit
def sample_backward(starts, counts, alpha, transmat, n_samples, rng, state_counts, trans):
    """Backward sampling of ``n_samples`` paths per sequence from the filtered alpha
    (state-major, (K, T)).

    Draws in the reference's order (per step: the sequences ending there, then those
    going on; per sequence its ``n_samples`` paths), so with the same generator state
    the paths are the reference's.  Adds visit counts into ``state_counts`` (T, K) and
    transition counts into ``trans`` (K, K), both not yet divided by ``n_samples``.
    """
    n_states = transmat.shape[0]
    longest = len(counts)
    current = np.zeros((counts[0], n_samples), dtype=np.int64)
    weights = np.empty(n_states)
    for t in range(longest - 1, -1, -1):
        row0 = starts[t]
        n_here = counts[t]
        n_next = counts[t + 1] if t + 1 < longest else 0
        for i in range(n_next, n_here):  # last step of these sequences: draw from the filter
            r = row0 + i
            for k in range(n_states):
                weights[k] = alpha[k, r]
            total = _cumulative_total(weights, n_states)
            for s in range(n_samples):
                current[i, s] = _draw_state(weights, rng.random() * total, n_states)
        for i in range(n_next):
            r = row0 + i
            for s in range(n_samples):
                later = current[i, s]
                for k in range(n_states):
                    weights[k] = alpha[k, r] * transmat[k, later]
                total = _cumulative_total(weights, n_states)
                drawn = _draw_state(weights, rng.random() * total, n_states)
                trans[drawn, later] += 1.0
                current[i, s] = drawn
        for i in range(n_here):
            for s in range(n_samples):
                state_counts[row0 + i, current[i, s]] += 1.0


# --------------------------------------------------------------------------- wrappers
def state_major(time_major: np.ndarray) -> np.ndarray:
    """A (T, K) array as a C-contiguous float64 (K, T) copy (always a copy: the kernels
    work in place, and a Fortran-ordered input's transpose would be the input itself)."""
    return np.array(np.asarray(time_major).T, dtype=np.float64, order="C", copy=True)


def scaled_posteriors(
    layout: TimeMajorLayout,
    b: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Scaled forward-backward from state-major shifted densities ``b`` (K, T).

    Returns ``(gamma (K, T), xi_sum (K, K), normalizers c (T,))``, gamma state-major and
    ``transmat * xi_sum`` the transition counts, or None when a normalizer underflows
    (the caller then goes to log space).  ``b`` is left intact.
    """
    startprob = np.ascontiguousarray(startprob, dtype=np.float64)
    transmat = np.ascontiguousarray(transmat, dtype=np.float64)
    alpha = np.empty_like(b)
    scale = np.empty(b.shape[1])
    if not forward_scaled(layout.starts, layout.counts, b, startprob, transmat, alpha, scale):
        return None
    xi_sum = np.zeros_like(transmat)
    backward_scaled(layout.starts, layout.counts, b, scale, transmat, alpha, xi_sum)
    return alpha, xi_sum, scale


def forward_backward(
    layout: TimeMajorLayout,
    log_b: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
) -> Posteriors:
    """Compiled twin of :func:`dask_em.families.hmm_kernels.forward_backward` (gamma is
    returned as a (T, K) view of a state-major array)."""
    b = state_major(log_b)
    shift = np.empty(b.shape[1])
    shift_densities(b, shift)
    result = scaled_posteriors(layout, b, startprob, transmat)
    if result is None:
        return forward_backward_log(layout, log_b, startprob, transmat)
    gamma, xi_sum, scale = result
    log_scale = np.log(scale)
    log_scale += shift
    start = gamma[:, : int(layout.counts[0])].sum(axis=1)
    trans = np.asarray(transmat, dtype=np.float64) * xi_sum
    return Posteriors(gamma.T, start, trans, _sum_per_sequence(layout, log_scale))


def viterbi(
    layout: TimeMajorLayout,
    log_b: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Compiled twin of :func:`dask_em.families.hmm_kernels.viterbi`."""
    log_b = np.ascontiguousarray(log_b, dtype=np.float64)
    delta = np.empty_like(log_b)
    pointer = np.zeros(log_b.shape, dtype=np.int64)
    states = np.empty(layout.n_steps, dtype=np.int64)
    log_prob = np.empty(len(layout.order))
    viterbi_kernel(
        layout.starts,
        layout.counts,
        log_b,
        np.ascontiguousarray(_log(startprob), dtype=np.float64),
        np.ascontiguousarray(_log(transmat), dtype=np.float64),
        delta,
        pointer,
        states,
        log_prob,
    )
    return log_prob, states


def sample_paths(
    layout: TimeMajorLayout,
    log_b: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
) -> Posteriors:
    """Compiled twin of :func:`dask_em.families.hmm_kernels.sample_paths` (the same paths
    from the same generator state, up to draws that fall within rounding of a boundary)."""
    startprob = np.ascontiguousarray(startprob, dtype=np.float64)
    transmat = np.ascontiguousarray(transmat, dtype=np.float64)
    b = state_major(log_b)
    shift = np.empty(b.shape[1])
    shift_densities(b, shift)
    alpha = np.empty_like(b)
    scale = np.empty(b.shape[1])
    if forward_scaled(layout.starts, layout.counts, b, startprob, transmat, alpha, scale):
        log_scale = np.log(scale) + shift
    else:
        log_alpha, log_scale = _forward_log_normalized(layout, log_b, startprob, _log(transmat))
        alpha = state_major(np.exp(log_alpha))
    n_states = b.shape[0]
    counts = np.zeros((layout.n_steps, n_states))
    trans = np.zeros((n_states, n_states))
    sample_backward(
        layout.starts, layout.counts, alpha, transmat, int(n_samples), rng, counts, trans
    )
    counts /= n_samples
    trans /= n_samples
    start = counts[: int(layout.counts[0])].sum(axis=0)
    return Posteriors(counts, start, trans, _sum_per_sequence(layout, log_scale))

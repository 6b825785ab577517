"""Forward-backward, Viterbi and forward-filtering backward-sampling on a block of sequences.

Pure NumPy, one block of whole sequences at a time.  A block holds ``S`` sequences of
lengths ``lengths`` (S,) stored one after the other in ``values`` (T, D), T = sum of
lengths.  The recursions run over time *in lockstep across all the sequences of the
block*: the sequences are sorted by length (longest first), so at step t the sequences
still running are a prefix of that order, and the rows of step t are a contiguous slice
of a *time-major* copy of the block (:class:`TimeMajorLayout`).  One Python iteration per
time step of the longest sequence then does a (n_t, K) x (K, K) product for all n_t
sequences still running: sequences of any mix of lengths vectorize, with no padding.

Notation (Rabiner 1989): ``A`` (K, K) transition matrix, ``pi`` (K,) start
probabilities, ``b_t(k) = p(x_t | z_t = k)``.  Scaled forward-backward (Rabiner eq.
91-92): ``alpha_hat_t = alpha_t / prod_{s<=t} c_s`` sums to one over k, ``c_t`` is the
normalizer, ``log p(x_1..T) = sum_t log c_t``, and with ``beta_hat_t`` scaled by the same
``c``'s, ``gamma_t = alpha_hat_t * beta_hat_t`` and

    xi_t(i, j) = alpha_hat_t(i) A_ij b_{t+1}(j) beta_hat_{t+1}(j) / c_{t+1}.

Emission densities enter as log-densities shifted by their per-step maximum
``m_t = max_k log b_t(k)``: ``exp(log b_t - m_t)`` is at most one and at least one entry
is exactly one, so log-densities far below -700 neither underflow nor overflow; the
shift adds ``sum_t m_t`` back to the log-likelihood.  Should a normalizer still vanish
(a state reachable only through emissions ~1e-308 smaller than the best one, e.g. with
zeros in ``A``), the block is redone in log space (:func:`forward_backward_log`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A scaled normalizer at or below this is treated as underflow (the block is redone in
#: log space).
UNDERFLOW = 1e-290

#: Rows per slice of the (rows, K, K) temporaries in the log-space fallback.
LOG_SPACE_ROWS = 4096


@dataclass(frozen=True)
class TimeMajorLayout:
    """Where each step of each sequence of a block sits in time-major order.

    Attributes
    ----------
    lengths : (S,) int64, the sequence lengths in block order.
    order : (S,) sequences sorted by decreasing length (stable); ``order[j]`` is the
        block index of the j-th longest sequence.
    counts : (L,) int64, ``counts[t]`` sequences have a step t (L = longest length).
    starts : (L + 1,) int64, rows ``starts[t] : starts[t] + counts[t]`` of a time-major
        array are step t, for the sequences ``order[:counts[t]]`` in that order.
    perm : (T,) int64, time-major row r is block row ``perm[r]``.
    """

    lengths: np.ndarray
    order: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    perm: np.ndarray

    @classmethod
    def from_lengths(cls, lengths: np.ndarray) -> TimeMajorLayout:
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size == 0 or lengths.min() < 1:
            raise ValueError("every sequence needs at least one step")
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        order = np.argsort(-lengths, kind="stable")
        longest = int(lengths.max())
        # counts[t] = #sequences longer than t
        counts = np.cumsum(np.bincount(lengths, minlength=longest + 1)[::-1])[::-1][1:]
        starts = np.concatenate([[0], np.cumsum(counts)])
        step = np.repeat(np.arange(longest), counts)
        rank = np.arange(starts[-1]) - starts[step]
        perm = offsets[order[rank]] + step
        return cls(lengths, order, counts, starts, perm)

    @property
    def n_steps(self) -> int:
        return int(self.starts[-1])

    def step(self, t: int) -> slice:
        return slice(int(self.starts[t]), int(self.starts[t + 1]))

    def previous_rows(self) -> np.ndarray:
        """For each time-major row of step t >= 1, the row of the same sequence at t - 1."""
        step = np.repeat(np.arange(1, len(self.counts)), self.counts[1:])
        rank = np.arange(self.starts[1], self.starts[-1]) - self.starts[step]
        return self.starts[step - 1] + rank

    def last_rows(self) -> np.ndarray:
        """(S,) time-major row of the last step of each sequence, in ``order``."""
        sorted_lengths = self.lengths[self.order]
        return self.starts[sorted_lengths - 1] + np.arange(len(sorted_lengths))

    def to_block_order(self, time_major: np.ndarray) -> np.ndarray:
        """A time-major array (T, ...) in block order."""
        out = np.empty_like(time_major)
        out[self.perm] = time_major
        return out


@dataclass
class Posteriors:
    """What the E-step of a block yields (all time-major, see :class:`TimeMajorLayout`).

    ``gamma`` (T, K) state posteriors; ``start`` (K,) sum over sequences of gamma at
    t = 0; ``trans`` (K, K) expected transition counts summed over sequences and steps;
    ``loglik`` (S,) log-likelihood of each sequence, in ``layout.order``.
    """

    gamma: np.ndarray
    start: np.ndarray
    trans: np.ndarray
    loglik: np.ndarray


def logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """``log(sum(exp(x), axis))`` without overflow; -inf where every entry is -inf.

    (SciPy's version costs ~10x more per call on the small arrays of one time step.)
    """
    peak = x.max(axis=axis)
    finite_peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(x - np.expand_dims(finite_peak, axis)).sum(axis=axis)) + finite_peak


def _log(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(values)


def forward_backward(
    layout: TimeMajorLayout,
    log_b: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
) -> Posteriors:
    """Scaled forward-backward (module docstring) for every sequence of a block.

    ``log_b`` (T, K) time-major emission log-densities.  Falls back to log space when a
    normalizer underflows.
    """
    b, shift = _shifted_densities(log_b)
    with np.errstate(invalid="ignore", divide="ignore"):  # underflow: redone in log space
        alpha, scale = _forward_scaled(layout, b, startprob, transmat)
    if not (np.all(scale > UNDERFLOW) and np.all(np.isfinite(scale))):
        return forward_backward_log(layout, log_b, startprob, transmat)
    beta, xi_sum = _backward_scaled(layout, b, scale, transmat, alpha)
    alpha *= beta  # gamma_t = alpha_hat_t * beta_hat_t
    log_scale = np.log(scale)
    log_scale += shift
    loglik = _sum_per_sequence(layout, log_scale)
    gamma = alpha
    return Posteriors(gamma, gamma[layout.step(0)].sum(axis=0), transmat * xi_sum, loglik)


def _shifted_densities(log_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``exp(log_b - m)`` (T, K) and the per-step shift ``m = max_k log_b`` (T,)."""
    shift = log_b[:, 0].copy()
    for k in range(1, log_b.shape[1]):  # column by column: faster than max(axis=1) for small K
        np.maximum(shift, log_b[:, k], out=shift)
    shift[~np.isfinite(shift)] = 0.0
    b = log_b - shift[:, None]
    np.exp(b, out=b)
    return b, shift


def _forward_scaled(layout, b, startprob, transmat):
    """``alpha_hat`` (T, K) and the normalizers ``c`` (T,) (Rabiner eq. 91)."""
    alpha = np.empty_like(b)
    scale = np.empty(len(b))
    ones = np.ones(b.shape[1])
    first = layout.step(0)
    np.multiply(b[first], startprob, out=alpha[first])
    for t in range(len(layout.counts)):
        rows = layout.step(t)
        if t:
            start = int(layout.starts[t - 1])
            previous = alpha[start : start + int(layout.counts[t])]
            np.matmul(previous, transmat, out=alpha[rows])
            alpha[rows] *= b[rows]
        s = alpha[rows] @ ones  # row sums; a GEMV beats sum(axis=1) on short rows
        scale[rows] = s
        alpha[rows] /= s[:, None]
    return alpha, scale


def _backward_scaled(layout, b, scale, transmat, alpha):
    """``beta_hat`` (T, K) and ``sum_t alpha_hat_t^T (b_{t+1} beta_hat_{t+1} / c_{t+1})``
    (K, K), the transition counts before the elementwise product with ``A``."""
    beta = np.empty_like(b)
    xi_sum = np.zeros_like(transmat, dtype=np.float64)
    transposed = np.ascontiguousarray(transmat.T)
    longest = len(layout.counts)
    beta[layout.step(longest - 1)] = 1.0
    weighted = np.empty_like(b[: int(layout.counts[0])])
    for t in range(longest - 2, -1, -1):
        n_next = int(layout.counts[t + 1])
        following = layout.step(t + 1)
        start = int(layout.starts[t])
        nxt = weighted[:n_next]
        np.multiply(b[following], beta[following], out=nxt)
        nxt /= scale[following, None]
        np.matmul(nxt, transposed, out=beta[start : start + n_next])
        beta[start + n_next : int(layout.starts[t + 1])] = 1.0  # sequences ending at t
        xi_sum += alpha[start : start + n_next].T @ nxt
    return beta, xi_sum


def _sum_per_sequence(layout: TimeMajorLayout, per_row: np.ndarray) -> np.ndarray:
    """Sum a time-major (T,) array over the steps of each sequence -> (S,) in ``order``."""
    rank = np.arange(layout.n_steps) - np.repeat(layout.starts[:-1], layout.counts)
    return np.bincount(rank, weights=per_row, minlength=len(layout.order))


def forward_backward_log(
    layout: TimeMajorLayout,
    log_b: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
) -> Posteriors:
    """Forward-backward with logsumexp recursions; the same result as the scaled one.

    The log-alphas are normalized at every step (``log alpha_hat``, ``log c_t``), as
    the scaled recursion does, so that they stay of order one and keep their precision
    over sequences whose log-likelihood is ~1e9.
    """
    log_a = _log(transmat)
    log_alpha, log_scale = _forward_log_normalized(layout, log_b, startprob, log_a)
    log_beta = np.zeros_like(log_b)
    for t in range(len(layout.counts) - 2, -1, -1):
        following = layout.step(t + 1)
        start = int(layout.starts[t])
        nxt = log_b[following] + log_beta[following]
        log_beta[start : start + int(layout.counts[t + 1])] = (
            logsumexp(log_a + nxt[:, None, :], axis=2) - log_scale[following, None]
        )
    gamma = np.exp(log_alpha + log_beta)
    previous = layout.previous_rows()
    later = np.arange(int(layout.starts[1]), layout.n_steps)
    trans = np.zeros_like(transmat, dtype=np.float64)
    for lo in range(0, len(later), LOG_SPACE_ROWS):
        rows = later[lo : lo + LOG_SPACE_ROWS]
        log_xi = (
            log_alpha[previous[lo : lo + LOG_SPACE_ROWS], :, None]
            + log_a
            + (log_b[rows] + log_beta[rows] - log_scale[rows, None])[:, None, :]
        )
        trans += np.exp(log_xi).sum(axis=0)
    loglik = _sum_per_sequence(layout, log_scale)
    return Posteriors(gamma, gamma[layout.step(0)].sum(axis=0), trans, loglik)


def _forward_log_normalized(layout, log_b, startprob, log_a):
    """``log alpha_hat`` (T, K) and ``log c_t`` (T,) by logsumexp recursions."""
    log_alpha = np.empty_like(log_b)
    log_scale = np.empty(len(log_b))
    first = layout.step(0)
    v = _log(startprob) + log_b[first]
    log_scale[first] = logsumexp(v, axis=1)
    log_alpha[first] = v - log_scale[first, None]
    for t in range(1, len(layout.counts)):
        rows = layout.step(t)
        start = int(layout.starts[t - 1])
        previous = log_alpha[start : start + int(layout.counts[t])]
        v = logsumexp(previous[:, :, None] + log_a, axis=1) + log_b[rows]
        log_scale[rows] = logsumexp(v, axis=1)
        log_alpha[rows] = v - log_scale[rows, None]
    return log_alpha, log_scale


def viterbi(
    layout: TimeMajorLayout,
    log_b: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Most likely state paths, in log space.

    Returns ``(log_prob (S,) in layout.order, states (T,) time-major int64)``.
    """
    log_a = _log(transmat)
    delta = np.empty_like(log_b)
    pointer = np.zeros(log_b.shape, dtype=np.intp)
    first = layout.step(0)
    delta[first] = _log(startprob) + log_b[first]
    for t in range(1, len(layout.counts)):
        rows = layout.step(t)
        start = int(layout.starts[t - 1])
        candidates = delta[start : start + int(layout.counts[t])][:, :, None] + log_a
        best = np.argmax(candidates, axis=1)
        pointer[rows] = best
        delta[rows] = np.take_along_axis(candidates, best[:, None, :], axis=1)[:, 0] + log_b[rows]
    states = np.empty(layout.n_steps, dtype=np.int64)
    current = np.zeros(len(layout.order), dtype=np.intp)
    log_prob = np.empty(len(layout.order))
    longest = len(layout.counts)
    for t in range(longest - 1, -1, -1):
        rows = layout.step(t)
        n_here = int(layout.counts[t])
        n_next = int(layout.counts[t + 1]) if t + 1 < longest else 0
        if n_next:  # sequences that go on: follow the pointer back from step t + 1
            following = layout.step(t + 1)
            current[:n_next] = pointer[following][np.arange(n_next), current[:n_next]]
        if n_here > n_next:  # sequences whose last step is t: start from the best end state
            ends = delta[rows][n_next:n_here]
            current[n_next:n_here] = np.argmax(ends, axis=1)
            log_prob[n_next:n_here] = ends.max(axis=1)
        states[rows] = current[:n_here]
    return log_prob, states


def sample_paths(
    layout: TimeMajorLayout,
    log_b: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
) -> Posteriors:
    """Monte Carlo E-step: forward filtering, backward sampling of ``n_samples`` paths.

    The scaled forward pass gives the filtered ``p(z_t | x_1..t) = alpha_hat_t``; a path
    is drawn backwards from ``z_T ~ alpha_hat_T`` and ``z_t | z_{t+1} ~ alpha_hat_t(i)
    A_{i z_{t+1}}`` (Frühwirth-Schnatter 1994; Chib 1996).  The returned counts are
    averages over the paths: unbiased for the exact expected counts, with error
    ``O(n_samples ** -0.5)``.  The log-likelihood is exact.
    """
    b, shift = _shifted_densities(log_b)
    with np.errstate(invalid="ignore", divide="ignore"):  # underflow: redone in log space
        alpha, scale = _forward_scaled(layout, b, startprob, transmat)
    if not (np.all(scale > UNDERFLOW) and np.all(np.isfinite(scale))):
        log_alpha, log_scale = _forward_log_normalized(layout, log_b, startprob, _log(transmat))
        alpha = np.exp(log_alpha)
    else:
        log_scale = np.log(scale) + shift
    n_states = log_b.shape[1]
    counts = np.zeros((layout.n_steps, n_states))
    trans = np.zeros((n_states, n_states))
    longest = len(layout.counts)
    current = np.zeros((len(layout.order), n_samples), dtype=np.intp)
    for t in range(longest - 1, -1, -1):
        rows = layout.step(t)
        n_here = int(layout.counts[t])
        n_next = int(layout.counts[t + 1]) if t + 1 < longest else 0
        filtered = alpha[rows]
        if n_here > n_next:  # last step of these sequences: draw from the filter
            current[n_next:n_here] = _draw(filtered[n_next:n_here, None, :], rng, n_samples)
        if n_next:
            later = current[:n_next]
            weights = filtered[:n_next, None, :] * transmat[:, later].transpose(1, 2, 0)
            drawn = _draw(weights, rng, n_samples)
            trans += np.bincount(
                drawn.ravel() * n_states + later.ravel(), minlength=n_states * n_states
            ).reshape(n_states, n_states)
            current[:n_next] = drawn
        local = np.arange(n_here)[:, None] * n_states + current[:n_here]
        counts[rows] = np.bincount(local.ravel(), minlength=n_here * n_states).reshape(
            n_here, n_states
        )
    counts /= n_samples
    trans /= n_samples
    loglik = _sum_per_sequence(layout, log_scale)
    return Posteriors(counts, counts[layout.step(0)].sum(axis=0), trans, loglik)


def _draw(weights: np.ndarray, rng: np.random.Generator, n_samples: int) -> np.ndarray:
    """One state per (row, sample) from unnormalized ``weights`` (n, 1 or n_samples, K)."""
    cumulative = np.cumsum(weights, axis=-1)
    total = cumulative[..., -1:]
    u = rng.random((weights.shape[0], n_samples, 1)) * total
    states = (u > cumulative).sum(axis=-1)
    return np.minimum(states, weights.shape[-1] - 1)

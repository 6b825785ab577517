"""Baum-Welch statistics of a block by the compiled kernels, end to end.

The block's sequences, longest first, are cut into groups of about GROUP_STEPS steps,
and each group goes through every pass before the next one starts: gather into
state-major order (:func:`dask_em.families.hmm_emissions.gather_state_major`), emission
densities, scaled forward and backward recursions (:mod:`dask_em.families.hmm_compiled`),
gamma-weighted emission statistics.  A group's arrays (about (D + 2K) * 8 bytes a step)
then stay in the cache from one pass to the next, and the scratch is allocated once per
block.  The sequences of a group still run in lockstep, so each group is as wide as it
has sequences.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np

from dask_em.families.base import Params, Stats
from dask_em.families.hmm_compiled import backward_scaled, forward_scaled
from dask_em.families.hmm_emissions import FusedEmission, gather_state_major

#: Steps per group of sequences run through all the passes together, so that the group's
#: arrays (about (D + 2K) * 8 bytes a step) stay in the cache from one pass to the next.
#: Sized for two kernels at once, as the workers of a host run them: a 250,000-step block
#: (K=6, D=4) took 21-23 ms alone with groups of 65,536 steps (8 MB of arrays) or
#: 16,384, but 22-39 ms with 65,536 and 23-24 ms with 16,384 when two processes ran it
#: side by side (the larger groups spill the shared L3 cache).
GROUP_STEPS = 16384


def step_counts(sorted_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, starts)`` of :class:`TimeMajorLayout` for lengths sorted longest first,
    without the layout's (T,) permutation (the gather reads rows by sequence)."""
    longest = int(sorted_lengths[0])
    counts = np.cumsum(np.bincount(sorted_lengths, minlength=longest + 1)[::-1])[::-1][1:]
    return counts, np.concatenate([[0], np.cumsum(counts)])


def sequence_groups(sorted_lengths: np.ndarray, group_steps: int = GROUP_STEPS) -> np.ndarray:
    """Boundaries (G + 1,) of consecutive groups of about ``group_steps`` steps (a longer
    sequence gets a group of its own)."""
    before = np.cumsum(sorted_lengths) - sorted_lengths
    group_of = before // group_steps
    return np.concatenate([[0], np.flatnonzero(np.diff(group_of)) + 1, [len(sorted_lengths)]])


#: Bytes of scratch a thread keeps from one block to its next (it stays with the thread:
#: memory the worker does not count as data).  Fresh buffers for every block cost page
#: faults in a Dask worker, whose nanny sets ``MALLOC_TRIM_THRESHOLD_`` (freed memory
#: goes back to the OS): 32.4 ms against 26.7 ms for a block of 250,000 steps, K=6, D=4
#: (about 10 MB of scratch).
KEPT_SCRATCH_BYTES = 16 * 2**20

_kept = threading.local()  # .buffers: the scratch of this thread's last block, or None


class _Scratch:
    """Flat float64 buffers reused by the groups of a block, handed out as C-contiguous
    (rows, n) arrays (fresh large arrays would cost page faults for every group), and
    by this thread's next block when :meth:`keep` is called (none of them is returned)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buffers: dict[str, np.ndarray] = getattr(_kept, "buffers", None) or {}
        _kept.buffers = None  # taken: a nested block in this thread gets its own

    def get(self, name: str, rows: int, n: int) -> np.ndarray:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < rows * self.size:
            buffer = self.buffers[name] = np.empty(rows * self.size)
        return buffer[: rows * n].reshape(rows, n)

    def keep(self) -> None:
        """Leave the buffers to this thread's next block, if they are small enough."""
        if sum(buffer.nbytes for buffer in self.buffers.values()) <= KEPT_SCRATCH_BYTES:
            _kept.buffers = self.buffers


def fused_block_stats(
    fused: FusedEmission,
    params: Params,
    X: np.ndarray,
    lengths: np.ndarray,
    group_steps: int = GROUP_STEPS,
    end_message: np.ndarray | None = None,
) -> tuple[float, np.ndarray, np.ndarray, Stats] | None:
    """Baum-Welch statistics of a block by the compiled kernels: ``X`` (T, D) in block
    order, ``lengths`` (S,), ``params`` the HMM's.  Returns ``(log-likelihood, start
    (K,), trans (K, K), emission statistics)``.

    The sequences (longest first) run in groups of about ``group_steps`` steps, each through
    gather, densities, forward, backward and statistics before the next.  None when the
    block needs the general path: a normalizer that underflows (which that path redoes
    in log space).  Gaussian steps with NaN take the marginal density of their observed
    features (:mod:`dask_em.families.hmm_emissions_missing`).

    ``end_message`` (K,), for a block of one sequence only: multiplies the densities of
    its last step (the backward message from the steps after a piece of a split
    sequence, :mod:`dask_em.families.hmm_split`; the log-likelihood returned then
    includes it).
    """
    emission = params["emission"]
    X = np.ascontiguousarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0 or lengths.min() < 1:
        raise ValueError("every sequence needs at least one step")
    if end_message is not None and lengths.size != 1:
        raise ValueError("end_message needs a block of one sequence")
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    first_rows = (np.cumsum(lengths) - lengths)[order]
    startprob = np.ascontiguousarray(params["startprob"], dtype=np.float64)
    transmat = np.ascontiguousarray(params["transmat"], dtype=np.float64)
    n_states, n_features = len(startprob), X.shape[1]
    center = fused.center(emission, n_features)
    terms = fused.log_density_terms(emission)
    sums = fused.empty_sums(n_states, n_features)
    bounds = sequence_groups(sorted_lengths, group_steps)
    scratch = _Scratch(int(np.add.reduceat(sorted_lengths, bounds[:-1]).max()))
    log_scale_total, shift_total, n_observed, n_nan = 0.0, 0.0, 0, 0
    start, xi_sum = np.zeros(n_states), np.zeros((n_states, n_states))
    for lo, hi in itertools.pairwise(bounds):
        counts, starts = step_counts(sorted_lengths[lo:hi])
        n = int(starts[-1])
        X_sm, observed = scratch.get("X", n_features, n), scratch.get("observed", 1, n)[0]
        with_nan, unobserved, nan_values = gather_state_major(
            X, first_rows[lo:hi], starts, counts, center, X_sm, observed, fused.gaussian
        )
        b, shift = scratch.get("b", n_states, n), scratch.get("shift", 1, n)[0]
        fused.densities(terms, X_sm, observed, b, shift, with_nan > 0)
        if end_message is not None:
            b[:, n - 1] *= end_message
        alpha, scale = scratch.get("alpha", n_states, n), scratch.get("scale", 1, n)[0]
        if not forward_scaled(starts, counts, b, startprob, transmat, alpha, scale):
            return None
        backward_scaled(starts, counts, b, scale, transmat, alpha, xi_sum)
        fused.accumulate(alpha, X_sm, observed, sums, with_nan > 0)  # alpha now holds gamma
        start += alpha[:, : int(counts[0])].sum(axis=1)
        log_scale_total += float(np.log(scale).sum())
        shift_total += float(shift.sum())
        n_observed += n - unobserved
        n_nan += nan_values
    scratch.keep()
    loglik = log_scale_total + shift_total + fused.dropped_constant(emission, X, n_nan)
    statistics = fused.statistics(emission, sums, n_observed, len(X))
    return loglik, start, transmat * xi_sum, statistics

"""Compiled twins of the piece summaries of :mod:`dask_em.families.hmm_pieces`.

The same products, in the same order of operations, with no temporary per step: the
running (K, K) summary is updated through one (K, K) scratch row by row.  Tested against
the reference to 1e-12 relative.  :func:`summaries` picks these or the reference.
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families import hmm_pieces
from dask_em.families.hmm_kernels import _log
from dask_em.families.jit import HAVE_NUMBA, jit


@jit
def _sum_product(log_b, transmat, first, M, scratch):
    """``log_scale`` of the piece; ``M`` (K, K) receives ``M_hat`` (the reference's steps:
    shift the densities by their maximum, multiply, renormalize by the maximum)."""
    n_steps, n_states = log_b.shape
    b = np.empty(n_states)
    log_scale = 0.0
    for t in range(n_steps):
        shift = log_b[t, 0]
        for k in range(1, n_states):
            if log_b[t, k] > shift:
                shift = log_b[t, k]
        if not math.isfinite(shift):
            shift = 0.0
        for k in range(n_states):
            b[k] = math.exp(log_b[t, k] - shift)
        log_scale += shift
        if t == 0:
            for i in range(n_states):
                for j in range(n_states):
                    if first:
                        M[i, j] = b[j] if i == j else 0.0
                    else:
                        M[i, j] = transmat[i, j] * b[j]
        else:  # M <- (M A) D_t, row by row (axpy over contiguous rows of A)
            for i in range(n_states):
                for j in range(n_states):
                    scratch[i, j] = 0.0
                for k in range(n_states):
                    m = M[i, k]
                    for j in range(n_states):
                        scratch[i, j] += m * transmat[k, j]
                for j in range(n_states):
                    M[i, j] = scratch[i, j] * b[j]
        peak = 0.0
        for i in range(n_states):
            for j in range(n_states):
                if M[i, j] > peak:
                    peak = M[i, j]
        if not peak > 0.0:
            M[:, :] = 0.0
            return -np.inf
        for i in range(n_states):
            for j in range(n_states):
                M[i, j] /= peak
        log_scale += math.log(peak)
    return log_scale


@jit
def _max_product(log_b, log_a, first, V, scratch):
    """``offset`` of the piece; ``V`` (K, K) receives ``V_hat`` (the reference's steps)."""
    n_steps, n_states = log_b.shape
    offset = 0.0
    for t in range(n_steps):
        if t == 0:
            for i in range(n_states):
                for j in range(n_states):
                    if first:
                        V[i, j] = log_b[0, j] if i == j else -np.inf
                    else:
                        V[i, j] = log_a[i, j] + log_b[0, j]
        else:  # V[i, j] <- max_k V[i, k] + log A[k, j] + log b_t(j)
            for i in range(n_states):
                for j in range(n_states):
                    best = -np.inf
                    for k in range(n_states):
                        candidate = V[i, k] + log_a[k, j]
                        if candidate > best:
                            best = candidate
                    scratch[i, j] = best + log_b[t, j]
            V[:, :] = scratch
        peak = -np.inf
        for i in range(n_states):
            for j in range(n_states):
                if V[i, j] > peak:
                    peak = V[i, j]
        if not math.isfinite(peak):
            V[:, :] = 0.0
            return -np.inf
        for i in range(n_states):
            for j in range(n_states):
                V[i, j] -= peak
        offset += peak
    return offset


def sum_product_summary(
    log_b: np.ndarray, transmat: np.ndarray, first: bool
) -> tuple[float, np.ndarray]:
    """Compiled twin of :func:`dask_em.families.hmm_pieces.sum_product_summary`."""
    transmat = np.ascontiguousarray(transmat, dtype=np.float64)
    M, scratch = np.empty_like(transmat), np.empty_like(transmat)
    log_b = np.ascontiguousarray(log_b, dtype=np.float64)
    return float(_sum_product(log_b, transmat, bool(first), M, scratch)), M


def max_product_summary(
    log_b: np.ndarray, transmat: np.ndarray, first: bool
) -> tuple[float, np.ndarray]:
    """Compiled twin of :func:`dask_em.families.hmm_pieces.max_product_summary`."""
    log_a = np.ascontiguousarray(_log(transmat), dtype=np.float64)
    V, scratch = np.empty_like(log_a), np.empty_like(log_a)
    log_b = np.ascontiguousarray(log_b, dtype=np.float64)
    return float(_max_product(log_b, log_a, bool(first), V, scratch)), V


def summaries(compiled: bool):
    """The module whose ``sum_product_summary`` and ``max_product_summary`` to run: the
    compiled twins (numba available and ``compiled``) or the reference."""
    return _THIS if compiled and HAVE_NUMBA else hmm_pieces


class _This:
    sum_product_summary = staticmethod(sum_product_summary)
    max_product_summary = staticmethod(max_product_summary)


_THIS = _This()

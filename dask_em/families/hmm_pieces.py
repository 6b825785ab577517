"""What one piece of a split sequence does to the forward, backward and Viterbi messages.

A sequence split into pieces p = 1..P (:mod:`dask_em.sequence_layout`) is fitted
exactly by summarizing each piece with a K x K matrix (notation of
:mod:`dask_em.families.hmm_kernels`; ``D_t = diag(b_t)``, piece p covers steps a..e):

    sum-product   M_p = A D_a A D_{a+1} ... A D_e      (first piece: D_a A D_{a+1} ...)
    max-product   V_p = the same product in the (max, +) semiring of log A and log b

so that the forward message leaving piece p is ``alpha_e = alpha_{a-1} M_p`` (first piece:
``alpha_e = pi^T M_1``), the backward message entering it is ``beta_{a-1} = M_p beta_e``
(Rabiner 1989, eq. 19-25 applied a piece at a time), and the Viterbi score leaving it is
``delta_e(j) = max_i delta_{a-1}(i) + V_p[i, j]`` (eq. 105 likewise).  The products
are kept scaled: ``M_p = exp(log_scale) M_hat`` with ``max M_hat = 1`` (renormalized at
every step, as the scaled forward recursion is, so nothing under- or overflows), and
``V_p = offset + V_hat`` with ``max V_hat = 0``.

Emission densities enter shifted by their per-step maximum, as in the block kernels.
These are the pure-NumPy reference kernels; :mod:`dask_em.families.hmm_pieces_compiled`
has the compiled ones (tested against these).
"""

from __future__ import annotations

import numpy as np

from dask_em.families.hmm_kernels import _log, _shifted_densities


def sum_product_summary(
    log_b: np.ndarray, transmat: np.ndarray, first: bool
) -> tuple[float, np.ndarray]:
    """``(log_scale, M_hat)`` of a piece (module docstring): ``log_b`` (L, K) emission
    log-densities of its steps, ``transmat`` (K, K), ``first`` whether it starts its
    sequence.  ``M_hat`` (K, K) has maximum 1; log_scale is -inf for an impossible piece."""
    b, shift = _shifted_densities(np.asarray(log_b, dtype=np.float64))
    M = np.diag(b[0]) if first else transmat * b[0]
    log_scale = float(shift[0])
    for t in range(len(b)):
        if t:
            M = (M @ transmat) * b[t]
            log_scale += float(shift[t])
        peak = M.max()
        if not peak > 0:
            return -np.inf, np.zeros_like(M)
        M /= peak
        log_scale += float(np.log(peak))
    return log_scale, M


def max_product_summary(
    log_b: np.ndarray, transmat: np.ndarray, first: bool
) -> tuple[float, np.ndarray]:
    """``(offset, V_hat)`` of a piece (module docstring): ``V_hat[i, j]`` + offset is the
    best log-probability of its steps ending in state j, given state i before them (for
    the first piece: given state i at its first step).  ``max V_hat = 0``."""
    log_b = np.asarray(log_b, dtype=np.float64)
    log_a = _log(transmat)
    if first:
        V = np.full(log_a.shape, -np.inf)
        np.fill_diagonal(V, log_b[0])
    else:
        V = log_a + log_b[0]
    offset = 0.0
    for t in range(len(log_b)):
        if t:  # V[i, j] = max_k V[i, k] + log A[k, j] + log b_t(j)   (Rabiner eq. 105)
            V = (V[:, :, None] + log_a[None, :, :]).max(axis=1) + log_b[t]
        peak = V.max()
        if not np.isfinite(peak):
            return -np.inf, np.zeros_like(V)
        V -= peak
        offset += float(peak)
    return offset, V

"""Compiled, fused E-step + statistics of the Poisson, Bernoulli and categorical mixtures.

One compiled loop over the rows of a block: per row the K log-densities, Bayes' rule in
log space, and the statistics ``nk`` and ``sums`` updated in place, so no (n, K)
temporary exists.  The NumPy kernels of the families are the reference (and the
fallback without numba).

Poisson and Bernoulli log-densities are affine in the row,

    log pi_k + log p(x | k) = sum_d x_d A[k, d] + b_k + c(x),

with ``A = log lambda``, ``b = log pi - sum_d lambda`` and ``c(x) = -sum_d log(x_d!)``
(Poisson) or ``A = log p - log(1 - p)``, ``b = log pi + sum_d log(1 - p)``, ``c = 0``
(Bernoulli); their statistic is ``sums = sum_i r_ik x_i``.  Categorical rows pick one
log-probability per feature; their statistic is ``counts[k, d, m] = sum_i r_ik [x_id = m]``.
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families.jit import HAVE_NUMBA, jit

#: True when the compiled kernels run (numba importable and not disabled).
COMPILED = HAVE_NUMBA

#: Rows per inner accumulation group (two-level summation, as in the Gaussian kernels).
GROUP_ROWS = 1024


@jit
def _bayes(lp, wi):
    """Turn log-densities lp (K,) into weighted responsibilities in place; returns log p(x)."""
    peak = -np.inf
    for k in range(lp.shape[0]):
        if lp[k] > peak:
            peak = lp[k]
    if not np.isfinite(peak):
        peak = 0.0
    total = 0.0
    for k in range(lp.shape[0]):
        lp[k] = math.exp(lp[k] - peak)
        total += lp[k]
    for k in range(lp.shape[0]):
        lp[k] = wi * (lp[k] / total)
    return math.log(total) + peak


@jit
def _affine_rows(X, w, coef_t, offsets, poisson, nk, sums_t):
    """Poisson/Bernoulli rows: returns (weight, loglik); adds to nk (K,) and sums_t (D, K).

    X (n, D); w (n,); coef_t (D, K) the transposed ``A``; offsets (K,) ``b``; poisson
    adds ``c(x) = -sum_d lgamma(x_d + 1)``.
    """
    n, n_features = X.shape
    n_components = offsets.shape[0]
    lp = np.empty(n_components)
    g_nk = np.zeros(n_components)
    g_sums = np.zeros((n_features, n_components))
    weight = loglik = g_weight = g_loglik = 0.0
    for i in range(n):
        row_constant = 0.0
        if poisson:
            for d in range(n_features):
                row_constant -= math.lgamma(X[i, d] + 1.0)
        for k in range(n_components):
            lp[k] = 0.0
        for d in range(n_features):
            x = X[i, d]
            for k in range(n_components):
                lp[k] += x * coef_t[d, k]
        for k in range(n_components):
            lp[k] += offsets[k] + row_constant
        wi = w[i]
        g_loglik += wi * _bayes(lp, wi)
        g_weight += wi
        for k in range(n_components):
            g_nk[k] += lp[k]
        for d in range(n_features):
            x = X[i, d]
            for k in range(n_components):
                g_sums[d, k] += lp[k] * x
        if (i + 1) % GROUP_ROWS == 0 or i == n - 1:
            weight += g_weight
            loglik += g_loglik
            g_weight = g_loglik = 0.0
            nk += g_nk
            sums_t += g_sums
            g_nk[:] = 0.0
            g_sums[:] = 0.0
    return weight, loglik


@jit
def _categorical_rows(X, w, log_p_t, log_weights, nk, counts_t):
    """Categorical rows: returns (weight, loglik); adds to nk (K,) and counts_t (D, M, K).

    X (n, D) symbols 0..M-1 (any numeric dtype); log_p_t (D, M, K); log_weights (K,).
    """
    n, n_features = X.shape
    n_components = log_weights.shape[0]
    lp = np.empty(n_components)
    weight = loglik = 0.0
    for i in range(n):
        for k in range(n_components):
            lp[k] = 0.0
        for d in range(n_features):
            m = int(X[i, d])
            for k in range(n_components):
                lp[k] += log_p_t[d, m, k]
        for k in range(n_components):
            lp[k] += log_weights[k]
        wi = w[i]
        loglik += wi * _bayes(lp, wi)
        weight += wi
        for k in range(n_components):
            nk[k] += lp[k]
        for d in range(n_features):
            m = int(X[i, d])
            for k in range(n_components):
                counts_t[d, m, k] += lp[k]
    return weight, loglik


def affine_stats(X, w, coefficients, offsets, poisson: bool) -> dict:
    """``weight``, ``loglik``, ``nk`` (K,) and ``sums`` (K, D) of a Poisson/Bernoulli block.

    coefficients (K, D) ``A``, offsets (K,) ``b`` (module docstring); w (n,) row weights.
    """
    n_components, n_features = coefficients.shape
    nk = np.zeros(n_components)
    sums_t = np.zeros((n_features, n_components))
    coef_t = np.ascontiguousarray(coefficients.T)
    weight, loglik = _affine_rows(X, w, coef_t, offsets, poisson, nk, sums_t)
    return {"weight": weight, "loglik": loglik, "nk": nk, "sums": sums_t.T.copy()}


def categorical_stats(X, w, log_probabilities, log_weights) -> dict:
    """``weight``, ``loglik``, ``nk`` (K,) and ``sums`` (K, D, M) of a categorical block."""
    n_components, n_features, n_symbols = log_probabilities.shape
    nk = np.zeros(n_components)
    counts_t = np.zeros((n_features, n_symbols, n_components))
    log_p_t = np.ascontiguousarray(log_probabilities.transpose(1, 2, 0))
    weight, loglik = _categorical_rows(X, w, log_p_t, log_weights, nk, counts_t)
    return {
        "weight": weight,
        "loglik": loglik,
        "nk": nk,
        "sums": np.ascontiguousarray(counts_t.transpose(2, 0, 1)),
    }

"""The missing-value E-step of full covariances one row at a time, inside a pattern's run.

:mod:`dask_em.families.gaussian_missing_compiled` sorts a block's rows with NaN by
pattern; a pattern with many rows takes loops over its run of rows
(:mod:`dask_em.families.gaussian_missing_runs`).  Where a slice end cuts a frequent
pattern's run, the piece shorter than
:data:`~dask_em.families.gaussian_missing_compiled.RUN_ROWS` rows is cheaper row by row,
with loops over the features (:func:`row_estep`: the log-densities, Bayes' rule and the
pattern's moment terms while ``P_mm^-1`` is at hand), reading each row's column of the
slice's feature-major arrays.  The rows of patterns rare in the whole block take
:mod:`dask_em.families.gaussian_missing_lockstep` instead where patterns have bit masks
(D <= 63); above, they are short runs and come here too.  The mathematics is that of
the runs (module docstring of :mod:`~dask_em.families.gaussian_missing_compiled`).
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families.gaussian_missing_runs import (
    LOG_2PI,
    RESPONSIBILITY_FLOOR,
)
from dask_em.families.jit import jit, jit_reassociated
from dask_em.families.vector_exp import exp_chunk


@jit_reassociated
def row_log_densities(y, quads, cache, const, index, q, lp, coef, b):
    """lp (K,) ``log pi_k + log N(x_o | k)`` of one row with pattern ``index[:q]`` and
    ``coef[k, :q] = c_k = P_mm^-1 b`` (coef (K, >= q)).  y (>= K*D,) the row's ``P_k
    v_k`` at k*D + e, of which ``b = (P_k v_k)_m`` is read; quads (K,) its ``v_k^T P_k
    v_k``; cache as :func:`~dask_em.families.gaussian_missing_runs.pattern_inverses`,
    holding the pattern; const (K,) the complete rows' constants; b (>= q,) scratch."""
    _, inverse, log_dets = cache
    n_components = const.shape[0]
    n_features = y.shape[0] // n_components
    for k in range(n_components):
        base = k * n_features
        quad = quads[k]
        for t in range(q):
            b[t] = y[base + index[t]]
        for t in range(q):
            s = 0.0
            for t2 in range(q):
                s += inverse[k, t, t2] * b[t2]
            coef[k, t] = s
            quad -= b[t] * s
        lp[k] = const[k] + 0.5 * q * LOG_2PI - 0.5 * log_dets[k] - 0.5 * quad


@jit
def row_responsibilities(lp, w, nk, r, high_bits, low_bits):
    """Bayes' rule for one row: ``r[k] = w p(k | x_o)`` (0 below the reference's floor,
    :data:`~dask_em.families.gaussian_missing.RESPONSIBILITY_FLOOR`), added to nk (K,);
    returns w loglik.  lp, r (K,); high_bits, low_bits (>= K,) int64 scratch of
    :func:`~dask_em.families.vector_exp.exp_chunk` (the K exps in one vectorized loop).
    The one-row form of
    :func:`~dask_em.families.responsibilities_compiled.responsibilities`."""
    n_components = lp.shape[0]
    peak = -np.inf
    for k in range(n_components):
        peak = max(peak, lp[k])
    if not np.isfinite(peak):
        peak = 0.0
    for k in range(n_components):
        r[k] = lp[k] - peak
    exp_chunk(r, high_bits, low_bits)
    total = 0.0
    for k in range(n_components):
        total += r[k]
    scale = w / total
    for k in range(n_components):
        value = r[k] * scale
        value = 0.0 if value < RESPONSIBILITY_FLOOR else value
        r[k] = value
        nk[k] += value
    return w * (math.log(total) + peak)


@jit_reassociated
def row_moments(r, x, coef, cache, index, q, out):
    """What one row adds beyond the moments of its ``xt`` (as
    :func:`~dask_em.families.gaussian_missing_runs.run_moments` for a run of one row):
    r (K,) its weighted responsibilities, x (>= D,) its values, coef (K, >= q) from
    :func:`row_log_densities`; out (nk, sums, cross, block)."""
    _, sums, cross, block = out
    _, inverse, _ = cache
    n_components, n_features = cross.shape[0], cross.shape[2]
    for k in range(n_components):
        weight = r[k]
        if weight == 0.0:
            continue
        for t in range(q):
            j = index[t]
            re = -weight * coef[k, t]
            sums[k, j] += re
            for d in range(n_features):
                cross[k, j, d] += re * x[d]
            for t2 in range(t, q):  # the upper triangle (index ascends): symmetric
                block[k, j, index[t2]] += weight * inverse[k, t, t2] - re * coef[k, t2]


@jit
def row_scratch_of(n_features, n_components):
    """The scratch of :func:`row_estep`: lp, held (K,), coef (K, D), b (D,) and the two
    int64 (K,) of :func:`row_responsibilities`."""
    return (
        np.empty(n_components),
        np.empty(n_components),
        np.empty((n_components, n_features)),
        np.empty(n_features),
        np.empty(n_components, dtype=np.int64),
        np.empty(n_components, dtype=np.int64),
    )


@jit
def row_estep(y, x, quads, w, cache, const, index, q, out, scratch):
    """The whole E-step of one row with pattern ``index[:q]`` (q < D; cache holding it):
    its log-densities, Bayes' rule (``w r_k`` left in ``scratch[1]``, (K,)) and its
    pattern's moment terms, added to out; returns (w, w loglik).  y (K*D,), quads (K,)
    as :func:`row_log_densities`; x (>= D,) the row about the centre, missing entries 0,
    contiguous; scratch: :func:`row_scratch_of`."""
    lp, held, coef, b, high_bits, low_bits = scratch
    row_log_densities(y, quads, cache, const, index, q, lp, coef, b)
    loglik = row_responsibilities(lp, w, out[0], held, high_bits, low_bits)
    row_moments(held, x, coef, cache, index, q, out)
    return w, loglik

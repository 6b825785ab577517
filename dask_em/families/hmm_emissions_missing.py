"""Diag and spherical Gaussian emissions of steps with NaN, for the fused Baum-Welch path.

A step with some features missing has the marginal density of its observed ones, and
its statistics are the completed moments, exactly as in the Gaussian family's
missing-value path (:mod:`dask_em.families.gaussian_incomplete`); with a diagonal
covariance both reduce to per-feature terms (:mod:`dask_em.families.gaussian_missing_diag`
for the mixtures).  For a step t with observed features O, state k, ``s_kd =
1/sigma_kd`` and the data about ``center`` (``xc``, ``mc_k = mu_k - center``):

    log b_k(t) = sum_{d in O} (log s_kd - 1/2 ((xc_d - mc_kd) s_kd)^2)
                 (the dropped -(|O|/2) log 2 pi is added back per observed value),
    E[xc_d | x_O, k] = mc_kd,   E[xc_d^2 | x_O, k] = mc_kd^2 + sigma_kd^2   (d not in O).

So the state-major block keeps NaN in place (:func:`~dask_em.families.hmm_emissions.
gather_state_major` with ``keep_nan``); the densities
(:func:`~dask_em.families.hmm_emissions.diag_gaussian_log_b` with ``with_nan``) sum the
terms of the values that are not NaN (:func:`masked_terms`); the sums add the observed
values only, and per state and feature the posterior mass of the steps missing that
feature, which :meth:`~dask_em.families.hmm_emissions.FusedEmission.statistics` turns
into the missing entries' moments (:func:`~dask_em.families.gaussian_missing_diag.
add_missing_moments`, as for the mixtures).  A step with nothing observed has density 1 and no
statistics, as in the reference.  Every loop runs over a chunk of steps, contiguous.
"""

from __future__ import annotations

import numpy as np

from dask_em.families.gaussian_missing_diag import masked_feature_sums
from dask_em.families.hmm_compiled import dot
from dask_em.families.jit import jit, jit_reassociated
from dask_em.families.vector_exp import CHUNK


@jit_reassociated
def masked_terms(x, mean, scale, log_scale, row):
    """``row[i] += log_scale - 1/2 ((x[i] - mean) scale)^2`` where x[i] is not NaN."""
    for i in range(len(row)):
        z = (x[i] - mean) * scale
        row[i] += log_scale - 0.5 * z * z if x[i] == x[i] else 0.0


@jit
def masked_weighted_sums(gamma, X, observed, nk, first_moment, second_moment, lacking):
    """``nk[k] += sum_t gamma[k, t] observed[t]``; over the steps with anything observed
    (``observed[t]`` 1.0, else 0.0), ``first_moment[k, d] += sum gamma x`` and
    ``second_moment[k, d] += sum gamma x^2`` over the values of X (D, T) that are not
    NaN, and ``lacking[k, d] += sum gamma`` over those that are."""
    n_states = gamma.shape[0]
    n_features, n_rows = X.shape
    weighted = np.empty(CHUNK)
    for first in range(0, n_rows, CHUNK):
        stop = min(first + CHUNK, n_rows)
        width = stop - first
        seen = observed[first:stop]
        for k in range(n_states):
            g = gamma[k, first:stop]
            for i in range(width):
                weighted[i] = g[i] * seen[i]  # a step with nothing observed adds nothing
            nk[k] += dot(g, seen)
            for d in range(n_features):
                f, s, m = masked_feature_sums(weighted[:width], X[d, first:stop])
                first_moment[k, d] += f
                second_moment[k, d] += s
                lacking[k, d] += m

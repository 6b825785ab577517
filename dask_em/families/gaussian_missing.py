"""Exact EM for Gaussian mixtures with missing values (Ghahramani & Jordan, 1994).

E-step: a row's log-density uses only its observed features, the marginal Gaussian
``N(x_o | mu_o, Sigma_oo)``.  M-step: statistics of the *completed* data, the missing
entries replaced by their conditional mean ``E[x_m | x_o, k]``, plus the conditional
covariance ``Cov[x_m | x_o, k]`` added to the second moments (so this is exact EM, not
imputation).

Everything follows from the precision matrix ``P = Sigma^-1`` of each component
(Schur complements).  With ``delta`` = x - mu with the missing entries set to 0 and
``y = P delta``:

    (x_o - mu_o)^T Sigma_oo^-1 (x_o - mu_o) = delta^T y - y_m^T P_mm^-1 y_m
    log |Sigma_oo|                          = log |Sigma| + log |P_mm|
    E[x_m | x_o] = mu_m - P_mm^-1 y_m,      Cov[x_m | x_o] = P_mm^-1

so a row with q missing features costs one q x q solve (q is small when few values are
missing) instead of a factorization of its observed block.  Rows that share a frequent
missingness pattern share ``P_mm``: one inverse per pattern and component serves them
all.  The rows of rare patterns are grouped by q and each group is solved as one batch
(closed forms for q <= 3), which stays fast however many distinct patterns a block
holds.  Rows with every feature missing carry no information: they get
log-density 0 and the caller gives them no weight.

All four covariance types go through the same code with P as a (K, D, D) stack (diagonal
for "diag" and "spherical"); only rows with missing values take this path.
"""

from __future__ import annotations

import math

import numpy as np


def precision_stack(
    prec_chol: np.ndarray, covariance_type: str, n_components: int, n_features: int
):
    """The precision matrices ``P_k = L_k L_k^T`` as a (K, D, D) stack, for any type."""
    if covariance_type == "full":
        return prec_chol @ prec_chol.transpose(0, 2, 1)
    if covariance_type == "tied":
        return np.broadcast_to(prec_chol @ prec_chol.T, (n_components, n_features, n_features))
    if covariance_type == "diag":
        return (prec_chol**2)[:, :, None] * np.eye(n_features)
    return (prec_chol**2)[:, None, None] * np.eye(n_features)


def log_det_covariances(log_det_prec_half: np.ndarray, n_components: int) -> np.ndarray:
    """``log |Sigma_k|`` (K,) from ``log det(P_k)^{1/2}`` (scalar for tied)."""
    return np.broadcast_to(-2.0 * np.asarray(log_det_prec_half), (n_components,))


def _solve_small(matrices: np.ndarray, rhs: np.ndarray):
    """``(inverse, inverse @ rhs, log det)`` for a batch (..., q, q) of SPD matrices.

    q <= 3, most rows when few values are missing, go elementwise in closed form
    (batched LAPACK on thousands of tiny matrices costs more than the arithmetic);
    larger q through batched LAPACK.  ``rhs`` is (..., q).
    """
    q = matrices.shape[-1]
    if q == 1:
        inverse = 1.0 / matrices
        return inverse, rhs * inverse[..., 0], np.log(matrices[..., 0, 0])
    if q == 2:
        a, b, d = matrices[..., 0, 0], matrices[..., 0, 1], matrices[..., 1, 1]
        det = a * d - b * b
        inverse = np.empty_like(matrices)
        inverse[..., 0, 0], inverse[..., 1, 1] = d / det, a / det
        inverse[..., 0, 1] = inverse[..., 1, 0] = -b / det
        solved = np.empty_like(rhs)
        solved[..., 0] = inverse[..., 0, 0] * rhs[..., 0] + inverse[..., 0, 1] * rhs[..., 1]
        solved[..., 1] = inverse[..., 1, 0] * rhs[..., 0] + inverse[..., 1, 1] * rhs[..., 1]
        return inverse, solved, np.log(det)
    if q == 3:
        return _solve_3x3(matrices, rhs)
    inverse = np.linalg.inv(matrices)
    return inverse, (inverse @ rhs[..., None])[..., 0], np.linalg.slogdet(matrices)[1]


def _solve_3x3(matrices, rhs):
    """Symmetric 3 x 3 batch by cofactors (adjugate / determinant), elementwise."""
    a, b, c = matrices[..., 0, 0], matrices[..., 0, 1], matrices[..., 0, 2]
    d, e, f = matrices[..., 1, 1], matrices[..., 1, 2], matrices[..., 2, 2]
    c00, c01, c02 = d * f - e * e, c * e - b * f, b * e - c * d
    c11, c12, c22 = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * c00 + b * c01 + c * c02
    inverse = np.empty_like(matrices)
    for (i, j), cofactor in {
        (0, 0): c00,
        (0, 1): c01,
        (0, 2): c02,
        (1, 1): c11,
        (1, 2): c12,
        (2, 2): c22,
    }.items():
        inverse[..., i, j] = inverse[..., j, i] = cofactor / det
    solved = np.einsum("...ij,...j->...i", inverse, rhs)
    return inverse, solved, np.log(det)


#: A missingness pattern with more than 3 missing values shared by at least this many
#: rows of a slice is solved once per component for all of them; other rows are solved
#: row by row, grouped by their number of missing values.
SHARED_PATTERN_ROWS = 16


def _split_by_pattern(missing: np.ndarray, n_missing: np.ndarray, n_features: int):
    """Frequent patterns as ``[(rows, columns)]`` and the rows of rare ones (partial
    rows only: nothing missing and nothing observed are left out of both)."""
    partial = np.flatnonzero((n_missing > 0) & (n_missing < n_features))
    # q <= 3: the per-row closed forms are cheaper than a loop over patterns
    candidates = partial[n_missing[partial] > 3]
    if candidates.size < SHARED_PATTERN_ROWS:
        return [], partial
    small = partial[n_missing[partial] <= 3]
    frequent, rare = _frequent_patterns(missing, candidates, n_features)
    return frequent, np.sort(np.concatenate([small, rare]))


def _frequent_patterns(missing: np.ndarray, partial: np.ndarray, n_features: int):
    """Patterns of ``partial`` rows held by at least SHARED_PATTERN_ROWS rows."""
    if n_features <= 62:
        keys = missing[partial] @ (np.int64(1) << np.arange(n_features, dtype=np.int64))
        _, first, inverse, counts = np.unique(
            keys, return_index=True, return_inverse=True, return_counts=True
        )
    else:
        _, first, inverse, counts = np.unique(
            missing[partial],
            axis=0,
            return_index=True,
            return_inverse=True,
            return_counts=True,
        )
    inverse = inverse.ravel()
    frequent = []
    rare_mask = np.ones(len(partial), dtype=bool)
    for p in np.flatnonzero(counts >= SHARED_PATTERN_ROWS):
        members = np.flatnonzero(inverse == p)
        rare_mask[members] = False
        frequent.append((partial[members], np.flatnonzero(missing[partial[first[p]]])))
    return frequent, partial[rare_mask]


class MissingEStep:
    """Marginal log-densities and conditional completions of one slice with NaNs.

    Parameters
    ----------
    Xc : (n, D) data shifted by the mixture centre, NaN where missing.
    means_c : (K, D) component means shifted by the same centre.
    precisions : (K, D, D) precision matrices.
    log_det_cov : (K,) ``log |Sigma_k|``.

    Attributes
    ----------
    log_prob : (n, K) ``log N(x_o | mu_o, Sigma_oo)`` (0 for rows with nothing observed).
    completed : (K, n, D) the rows with missing entries replaced by ``E[x_m | x_o, k]``.
    observed_any : (n,) False for rows with every feature missing.
    """

    def __init__(self, Xc, means_c, precisions, log_det_cov):
        n_features = Xc.shape[1]
        missing = np.isnan(Xc)
        n_missing = missing.sum(axis=1)
        self.observed_any = n_missing < n_features
        observed = ~missing
        # delta_k = x - mu_k on the observed entries, 0 on the missing ones
        delta = np.empty((len(means_c), *Xc.shape))
        np.multiply(observed, means_c[:, None, :], out=delta)
        np.subtract(np.where(missing, 0.0, Xc), delta, out=delta)
        y = delta @ precisions  # (K, n, D); P is symmetric
        maha = np.einsum("knd,knd->kn", delta, y)
        log_det = np.broadcast_to(log_det_cov[:, None], maha.shape).copy()
        completed = delta  # becomes x_hat - mu_k, filled group by group below
        self._shared = []  # (rows, columns, inverse (K, q, q)): one pattern, many rows
        self._groups = []  # (rows, columns (n_q, q), inverse (K, n_q, q, q)): by q
        frequent, rare = _split_by_pattern(missing, n_missing, n_features)
        for rows, columns in frequent:
            p_mm = precisions[:, columns[:, None], columns[None, :]]  # (K, q, q)
            inverse, _, log_det_mm = _solve_small(p_mm, np.zeros(p_mm.shape[:-1]))
            y_m = y[:, rows[:, None], columns[None, :]]  # (K, n_p, q)
            solved = y_m @ inverse  # inverse is symmetric
            maha[:, rows] -= (y_m * solved).sum(axis=2)
            log_det[:, rows] += log_det_mm[:, None]
            completed[:, rows[:, None], columns[None, :]] = -solved
            self._shared.append((rows, columns, inverse))
        for q in np.unique(n_missing[rare]):
            rows = rare[n_missing[rare] == q]
            columns = np.nonzero(missing[rows])[1].reshape(len(rows), q)  # (n_q, q)
            p_mm = precisions[:, columns[:, :, None], columns[:, None, :]]  # (K, n_q, q, q)
            y_m = y[:, rows[:, None], columns]  # (K, n_q, q)
            inverse, solved, log_det_mm = _solve_small(p_mm, y_m)
            maha[:, rows] -= (y_m * solved).sum(axis=2)
            log_det[:, rows] += log_det_mm
            completed[:, rows[:, None], columns] = -solved
            self._groups.append((rows, columns, inverse))
        completed += means_c[:, None, :]
        n_observed = n_features - n_missing
        log_prob = -0.5 * (n_observed * math.log(2 * math.pi) + log_det + maha)
        log_prob[:, ~self.observed_any] = 0.0
        self.log_prob = log_prob.T
        self.completed = completed

    def conditional_scatter(self, resp: np.ndarray, n_features: int) -> np.ndarray:
        """``sum_i r_ik Cov[x_m | x_o, k]`` embedded in (K, D, D)."""
        n_components = resp.shape[1]
        out = np.zeros((n_components, n_features * n_features))
        for rows, columns, inverse in self._shared:
            flat = (columns[:, None] * n_features + columns[None, :]).ravel()
            out[:, flat] += resp[rows].sum(axis=0)[:, None] * inverse.reshape(n_components, -1)
        size = n_features * n_features
        for rows, columns, inverse in self._groups:
            flat = columns[:, :, None] * n_features + columns[:, None, :]  # (n_q, q, q)
            flat = flat[None] + (np.arange(n_components) * size)[:, None, None, None]
            weighted = inverse * resp[rows].T[:, :, None, None]
            out += np.bincount(
                flat.ravel(), weights=weighted.ravel(), minlength=n_components * size
            ).reshape(n_components, size)
        return out.reshape(n_components, n_features, n_features)


def completed_stats(step: MissingEStep, resp: np.ndarray, covariance_type: str) -> dict:
    """``nk``, ``means`` (relative to the centre) and ``scatter`` of the completed data.

    ``resp`` (n, K) holds ``w_i r_ik`` (0 for rows with nothing observed).
    """
    completed = step.completed  # (K, n, D)
    n_features = completed.shape[2]
    nk = resp.sum(axis=0)
    sums = np.einsum("nk,knd->kd", resp, completed)
    means_c = np.divide(sums, nk[:, None], out=np.zeros_like(sums), where=nk[:, None] > 0)
    # second moments about the centre, then about the means (the centre is central, so
    # the subtraction loses nothing that matters; see gaussian.py's statistics section)
    weighted = completed * resp.T[:, :, None]
    raw = weighted.transpose(0, 2, 1) @ completed
    scatter = raw - nk[:, None, None] * means_c[:, :, None] * means_c[:, None, :]
    scatter += step.conditional_scatter(resp, n_features)
    if covariance_type == "tied":
        scatter = scatter.sum(axis=0)
    elif covariance_type == "diag":
        scatter = np.diagonal(scatter, axis1=1, axis2=2).copy()
    elif covariance_type == "spherical":
        scatter = np.trace(scatter, axis1=1, axis2=2)
    return {"nk": nk, "means_c": means_c, "scatter": scatter}

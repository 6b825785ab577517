"""Exact EM for Gaussian mixtures with missing values (Ghahramani & Jordan, 1994).

E-step: a row's log-density uses only its observed features, the marginal Gaussian
``N(x_o | mu_o, Sigma_oo)``.  M-step: statistics of the *completed* data, the missing
entries replaced by their conditional mean ``E[x_m | x_o, k]``, plus the conditional
covariance ``Cov[x_m | x_o, k]`` added to the second moments (so this is exact EM, not
imputation).

Everything follows from the precision matrix ``P = Sigma^-1`` of each component (Schur
complements).  With ``delta`` = x - mu with the missing entries set to 0 and
``y = P delta``:

    (x_o - mu_o)^T Sigma_oo^-1 (x_o - mu_o) = delta^T y - y_m^T P_mm^-1 y_m          (1)
    log |Sigma_oo|                          = log |Sigma| + log |P_mm|              (2)
    E[x_m | x_o] = mu_m - P_mm^-1 y_m,      Cov[x_m | x_o] = P_mm^-1               (3)

(1): ``delta^T y = delta^T P delta``; minimizing it over the missing entries subtracts
``y_m^T P_mm^-1 y_m`` and leaves the Schur complement ``P_oo - P_om P_mm^-1 P_mo =
Sigma_oo^-1``.  (2): ``det P = det P_mm det Sigma_oo^-1``.

So the work shared by all rows is that of complete data (one (n, D) x (D, D) product
per component), and a row with q missing features adds one q x q solve of ``P_mm``.
The rows of a slice are sorted into batches, each a contiguous range: the rows of a
frequent missingness pattern share ``P_mm``, so one inverse per pattern and component
serves them all; the rows of rare patterns are batched by q and solved together
(closed forms for q <= 3, a Gauss-Jordan sweep above), which stays fast however many
distinct patterns a slice holds.  The missing entries of ``delta`` are then
overwritten with ``E[x_m | x_o, k] - mu_m``, which makes it the completed data
relative to each component's mean, ready for the M-step statistics (moments about
``mu_k``, then about the weighted mean; ``P_mm^-1`` added on each row's missing block).

Rows without NaN simply belong to no batch, so a slice with any NaN goes through here
whole.  Rows with every feature missing carry no information: they get log-density 0
and the caller gives them no weight.  All four covariance types go through the same
code with P as a (K, D, D) stack (diagonal for "diag" and "spherical").  Large
temporaries live in the block's :class:`~dask_em.families.base.Workspace`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dask_em.families.base import Workspace


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


def _scratch(work: Workspace, name: str, shape: tuple[int, ...], dtype=np.float64):
    """A workspace array of ``shape``, reused across the slices of a block.

    Worker processes return freed memory to the OS at once (the nanny sets
    ``MALLOC_TRIM_THRESHOLD_``), so a large temporary allocated afresh for every slice
    costs a page fault per 4 KiB, several times the arithmetic done on it.
    """
    size = math.prod(shape)
    return work.get(name, (size,), dtype).reshape(shape)


# --------------------------------------------------------------------------- small solves
# A batch of small SPD matrices is stored as (K, q, q, n): one matrix per component and
# row, the rows LAST, so that every elementwise operation below runs over long
# contiguous row axes.  Batched LAPACK on thousands of tiny matrices costs more than
# the arithmetic.
def _invert_spd(matrices: np.ndarray, work: Workspace) -> np.ndarray:
    """Overwrite a batch (K, q, q, n) of SPD matrices with their inverses.

    Returns the log determinants (K, n) of the matrices.  q <= 3 (most rows when few
    values are missing) go in closed form (adjugate / determinant), larger q by
    :func:`_sweep`.
    """
    q = matrices.shape[1]
    if q == 1:
        diagonal = matrices[:, 0, 0]
        log_det = np.log(diagonal)
        np.reciprocal(diagonal, out=diagonal)
        return log_det
    if q == 2:
        a, b, d = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 1, 1]
        det = a * d - b * b
        cofactors = {(0, 0): d / det, (1, 1): a / det, (0, 1): -b / det}
    elif q == 3:
        a, b, c = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
        d, e, f = matrices[:, 1, 1], matrices[:, 1, 2], matrices[:, 2, 2]
        c00, c01, c02 = d * f - e * e, c * e - b * f, b * e - c * d
        det = a * c00 + b * c01 + c * c02
        cofactors = {
            (0, 0): c00 / det,
            (0, 1): c01 / det,
            (0, 2): c02 / det,
            (1, 1): (a * f - c * c) / det,
            (1, 2): (b * c - a * e) / det,
            (2, 2): (a * d - b * b) / det,
        }
    else:
        return _sweep(matrices, work)
    for (i, j), value in cofactors.items():
        matrices[:, i, j] = value
        matrices[:, j, i] = value
    return np.log(det)


def _sweep(matrices: np.ndarray, work: Workspace) -> np.ndarray:
    """:func:`_invert_spd` by sweeping every pivot in turn (Goodnight 1979).

    Sweeping pivot p maps ``a_pp -> -1/a_pp``, ``a_ip -> a_ip/a_pp``, ``a_pj -> a_pj/a_pp``
    and ``a_ij -> a_ij - a_ip a_pj / a_pp``; after all q pivots the matrix is ``-A^-1``.
    The pivots are the successive Schur complements, so their product is ``det A``.
    On SPD matrices this is Gaussian elimination without pivoting, which is stable.
    """
    # swept in a (q, q, K, n) copy: the matrix axes first make every pass one long loop
    n_components, q, _, n_rows = matrices.shape
    swept = _scratch(work, "missing_swept", (q, q, n_components, n_rows))
    np.copyto(swept, matrices.transpose(1, 2, 0, 3))
    update = _scratch(work, "missing_sweep", swept.shape)
    pivots = np.empty((q, n_components, n_rows))
    for p, pivot in enumerate(pivots):
        np.copyto(pivot, swept[p, p])
        reciprocal = 1.0 / pivot
        row = swept[p] * reciprocal
        np.multiply(swept[:, p, None], row[None], out=update)
        swept -= update
        swept[p] = row
        swept[:, p] = row
        np.negative(reciprocal, out=swept[p, p])
    np.negative(swept.transpose(2, 0, 1, 3), out=matrices)
    return np.log(pivots).sum(axis=0)


def _apply(inverse: np.ndarray, vectors: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[k, :, i] = inverse[k, :, :, i] @ vectors[k, :, i]``: (K, q, q, n), (K, q, n)."""
    np.multiply(inverse[:, :, 0], vectors[:, None, 0], out=out)
    for b in range(1, inverse.shape[2]):
        out += inverse[:, :, b] * vectors[:, None, b]
    return out


# --------------------------------------------------------------------------- patterns
#: A missingness pattern with more than 3 missing values shared by at least this many
#: rows of a slice is solved once per component for all of them; other rows are solved
#: row by row, grouped by their number of missing values.
SHARED_PATTERN_ROWS = 16


def _batches(missing: np.ndarray, n_missing: np.ndarray):
    """Sort the rows into batches that are solved together.

    A batch is the rows of one frequent pattern (``shared``), or the other partial rows
    (some but not all features missing) with q missing values.  Returns ``order`` (n,),
    which puts the rows outside every batch (complete, or nothing observed) first and
    then each batch as one contiguous range, and ``[(start, stop, q, shared)]`` over the
    sorted rows.
    """
    n_features = missing.shape[1]
    labels = np.where(n_missing < n_features, n_missing, 0)  # q, or 0 for no batch
    shared_q = []
    # q <= 3: the per-row closed forms are cheaper than a loop over patterns
    candidates = np.flatnonzero(labels > 3)
    if candidates.size >= SHARED_PATTERN_ROWS:
        for rows in _frequent_patterns(missing, candidates, n_features):
            shared_q.append(labels[rows[0]])
            labels[rows] = n_features + len(shared_q) - 1
    # a stable sort of small unsigned integers is a radix sort
    order = np.argsort(labels.astype(np.min_scalar_type(labels.max(initial=0))), kind="stable")
    counts = np.bincount(labels, minlength=n_features)
    stops = np.cumsum(counts)
    batches = []
    for label in np.flatnonzero(counts[1:]) + 1:
        q, shared = (label, False) if label < n_features else (shared_q[label - n_features], True)
        batches.append((stops[label] - counts[label], stops[label], q, shared))
    return order, batches


def _frequent_patterns(missing: np.ndarray, partial: np.ndarray, n_features: int):
    """The rows of each pattern held by at least SHARED_PATTERN_ROWS ``partial`` rows."""
    if n_features <= 62:
        keys = missing[partial] @ (np.int64(1) << np.arange(n_features, dtype=np.int64))
        if np.unique(keys, return_counts=True)[1].max() < SHARED_PATTERN_ROWS:
            return []  # the usual case when values go missing independently
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = np.unique(
            missing[partial], axis=0, return_inverse=True, return_counts=True
        )
    inverse = inverse.ravel()
    return [partial[inverse == p] for p in np.flatnonzero(counts >= SHARED_PATTERN_ROWS)]


@dataclass
class _Batch:
    """Partial rows solved together: one q, or one shared pattern.

    ``rows`` is their range in the sorted slice.  ``pairs`` (q, q, n_b) (or (q, q) when
    shared) are the positions ``a D + b`` of their missing blocks in (D, D), and
    ``inverse`` (K, q, q, n_b) (or (K, q, q)) is ``P_mm^-1 = Cov[x_m | x_o, k]``.
    """

    rows: slice
    pairs: np.ndarray
    inverse: np.ndarray
    shared: bool


class MissingEStep:
    """Marginal log-densities and conditional completions of rows with NaNs.

    The rows are first sorted so that the rows solved together are contiguous
    (:func:`_batches`); every per-row attribute is in that order.

    Parameters
    ----------
    X : (n, D) float64 data, NaN where missing.
    means : (K, D) component means.
    precisions : (K, D, D) precision matrices.
    log_det_cov : (K,) ``log |Sigma_k|``.
    work : scratch arrays reused across the slices of a block (optional).

    Attributes
    ----------
    order : (n,) row j of every attribute below is row ``order[j]`` of X.
    log_prob : (n, K) ``log N(x_o | mu_o, Sigma_oo)`` (0 for rows with nothing observed).
    observed_any : (n,) False for rows with every feature missing.
    completed : (K, n, D) ``xhat_ik - mu_k``: the rows with their missing entries
        replaced by ``E[x_m | x_o, k]``, relative to each component's mean.
    means : the ``means`` parameter.
    batches : the partial rows' batches (:class:`_Batch`).
    """

    def __init__(self, X, means, precisions, log_det_cov, work=None):
        self.work = work = work or Workspace()
        self.means = means
        n_rows, n_features = X.shape
        n_components = len(means)
        size = n_rows * n_features
        missing = np.isnan(X)
        # counting the positions is faster than a sum along rows of a few booleans
        n_missing = np.bincount(np.flatnonzero(missing) // n_features, minlength=n_rows)
        self.order, batches = _batches(missing, n_missing)
        missing, n_missing = missing[self.order], n_missing[self.order]
        self.observed_any = n_missing < n_features
        # delta_k = x - mu_k on the observed entries, 0 on the missing ones (K, n, D)
        shape = (n_components, n_rows, n_features)
        delta = _scratch(work, "missing_delta", shape)
        X = np.take(X, self.order, axis=0, out=_scratch(work, "missing_X", X.shape), mode="clip")
        np.subtract(X, means[:, None, :], out=delta)
        flat_delta = delta.reshape(n_components, size)
        missing_at = np.flatnonzero(missing)  # row by row, each row's columns in order
        flat_delta[:, missing_at] = 0.0
        y = _scratch(work, "missing_y", shape)
        np.matmul(delta, precisions, out=y)  # P is symmetric
        flat_y = y.reshape(n_components, size)
        # maha + log |P_mm|: eqs. (1) and (2) add up in the log-density
        log_prob = _scratch(work, "missing_log_prob", (n_components, n_rows))
        np.einsum("knd,knd->kn", delta, y, out=log_prob)
        flat_precisions = precisions.reshape(n_components, n_features**2)
        starts = np.cumsum(n_missing) - n_missing
        self.batches = []
        for start, stop, q, shared in batches:
            rows = slice(start, stop)
            offsets = missing_at[starts[rows] + np.arange(q)[:, None]]  # (q, n_b)
            columns = offsets[:, :1] if shared else offsets
            columns = columns - np.arange(start, start + columns.shape[1]) * n_features
            pairs = columns[:, None] * n_features + columns[None, :]  # (q, q, n_b or 1)
            y_m = _scratch(work, "missing_y_m", (n_components, *offsets.shape))
            np.take(flat_y, offsets, axis=1, out=y_m, mode="clip")
            solved = _scratch(work, "missing_solved", y_m.shape)
            if shared:
                pairs = pairs[:, :, 0]
                inverse = flat_precisions[:, pairs]  # (K, q, q), one for all rows
                log_det_mm = _invert_spd(inverse[..., None], work)
                np.matmul(inverse, y_m, out=solved)
            else:
                inverse = _scratch(work, f"missing_inverse_{q}", (n_components, *pairs.shape))
                np.take(flat_precisions, pairs, axis=1, out=inverse, mode="clip")
                log_det_mm = _invert_spd(inverse, work)
                _apply(inverse, y_m, solved)
            log_prob[:, rows] += log_det_mm  # eq. (2)
            log_prob[:, rows] -= np.einsum("kqn,kqn->kn", y_m, solved)  # eq. (1)
            np.negative(solved, out=solved)
            flat_delta[:, offsets] = solved  # eq. (3): xhat_m - mu_m
            self.batches.append(_Batch(rows, pairs, inverse, shared))
        self.completed = delta
        log_prob += log_det_cov[:, None]
        log_prob += (n_features - n_missing) * math.log(2 * math.pi)
        log_prob *= -0.5
        log_prob[:, ~self.observed_any] = 0.0
        self.log_prob = log_prob.T

    def conditional_mean(self, weights: np.ndarray) -> np.ndarray:
        """``sum_k weights_ik E[x_i | x_o, k]`` (n, D) for weights (n, K) summing to 1;
        the observed entries are the data up to rounding."""
        return np.einsum("nk,knd->nd", weights, self.completed) + weights @ self.means


#: Weighted responsibilities below this are taken as 0 in the completed-data moments.
#: Their share of any statistic is far below rounding, and their products with the data
#: would be subnormal numbers, each costing some hundred times a normal multiply.
RESPONSIBILITY_FLOOR = 1e-200

#: float64 elements of the (K, rows, D) arrays worked on at once where a pass can stay in
#: the core's cache (512 KiB).
CACHE_ELEMENTS = 2**16


def completed_stats(step: MissingEStep, resp: np.ndarray, covariance_type: str) -> dict:
    """``nk`` (K,), ``means`` (K, D) and ``scatter`` of the completed data; ``resp``
    (n, K) holds ``w_i r_ik`` (0 for rows with nothing observed) and may be floored in
    place (:data:`RESPONSIBILITY_FLOOR`).

    The moments are taken about each component's mean ``mu_k`` (the rows of
    ``step.completed``), then moved to the weighted mean: the scatter does not depend
    on the point it is taken about, and ``mu_k`` is close to the rows that weigh in k.
    """
    completed = step.completed  # (K, n, D)
    n_features = completed.shape[2]
    resp_t = np.ascontiguousarray(resp.T)  # (K, n); a view when resp is F-ordered
    resp_t[resp_t < RESPONSIBILITY_FLOOR] = 0.0
    nk = resp_t.sum(axis=1)
    # sum_i r_ik c_ik and sum_i r_ik c_ik c_ik^T over row chunks that stay in cache
    sums = np.zeros((len(completed), n_features))
    raw = np.zeros((len(completed), n_features, n_features))
    chunk = max(1, CACHE_ELEMENTS // (len(completed) * n_features))
    weighted = _scratch(step.work, "missing_y", (len(completed), chunk, n_features))  # y: done
    for start in range(0, completed.shape[1], chunk):
        rows, r = completed[:, start : start + chunk], resp_t[:, start : start + chunk]
        sums += np.matmul(r[:, None], rows)[:, 0]
        part = weighted[:, : rows.shape[1]]
        np.multiply(rows, r[:, :, None], out=part)
        raw += part.transpose(0, 2, 1) @ rows
    offsets = np.divide(sums, nk[:, None], out=np.zeros_like(sums), where=nk[:, None] > 0)
    scatter = raw - nk[:, None, None] * offsets[:, :, None] * offsets[:, None, :]
    scatter += _conditional_scatter(step, resp_t, n_features)
    means = np.where(nk[:, None] > 0, offsets + step.means, 0.0)
    if covariance_type == "tied":
        scatter = scatter.sum(axis=0)
    elif covariance_type == "diag":
        scatter = np.diagonal(scatter, axis1=1, axis2=2).copy()
    elif covariance_type == "spherical":
        scatter = np.trace(scatter, axis1=1, axis2=2)
    return {"nk": nk, "means": means, "scatter": scatter}


def _conditional_scatter(step: MissingEStep, resp_t: np.ndarray, n_features: int) -> np.ndarray:
    """``sum_i r_ik Cov[x_m | x_o, k]`` embedded in (K, D, D); ``resp_t`` is (K, n)."""
    n_components = len(resp_t)
    out = np.zeros((n_components, n_features**2))
    first = (np.arange(n_components) * n_features**2)[:, None, None, None]
    for batch in step.batches:
        r = resp_t[:, batch.rows]  # (K, n_b)
        if batch.shared:
            out[:, batch.pairs] += batch.inverse * r.sum(axis=1)[:, None, None]
            continue
        shape = batch.inverse.shape
        weights = _scratch(step.work, "missing_weights", shape)
        np.multiply(batch.inverse, r[:, None, None, :], out=weights)
        index = _scratch(step.work, "missing_index", shape, np.intp)
        np.add(batch.pairs, first, out=index)
        out += np.bincount(index.ravel(), weights=weights.ravel(), minlength=out.size).reshape(
            out.shape
        )
    return out.reshape(n_components, n_features, n_features)

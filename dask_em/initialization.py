"""Initialization from a sample: k-means++ seeding, Lloyd rounds, random choices.

The client never loads the whole dataset.  The scan pass (:mod:`dask_em.data`) draws a
sample from across all blocks; centres are chosen on that sample here; then one
distributed pass turns them into initial parameters: each row is assigned to its
nearest centre (a one-hot responsibility; a Gaussian family adds the row to that
component's moments only) or, for ``"random"``, gets random responsibilities, and the
family's M-step runs on the resulting statistics.  This is
scikit-learn's ``_initialize_parameters`` (responsibilities first, then an M-step),
computed on the cluster.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_em.families.base import ROWS_PER_SLICE, Workspace, rows_per_slice, sliced_stats

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")

#: Rows drawn from across the blocks for initialization and re-seeding.
DEFAULT_SAMPLE_SIZE = 20_000


def _squared_distances(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    # Shift by the centres' mean first so that data far from the origin keeps precision.
    shift = centers.mean(axis=0)
    Xs, Cs = X - shift, centers - shift
    d2 = (Xs * Xs).sum(1)[:, None] - 2.0 * Xs @ Cs.T + (Cs * Cs).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def kmeans_plusplus(
    X: np.ndarray, n_clusters: int, rng: np.random.Generator, weights: np.ndarray | None = None
) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007), weighted by ``weights``.

    Returns centres (n_clusters, D).  Tries ``2 + log(k)`` candidates per step, as
    scikit-learn does.
    """
    n = len(X)
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    n_trials = 2 + int(np.log(n_clusters))
    first = rng.choice(n, p=weights / weights.sum())
    centers = [X[first]]
    closest = _squared_distances(X, X[first : first + 1])[:, 0]
    for _ in range(1, n_clusters):
        potential = weights * closest
        total = potential.sum()
        if not total > 0:  # every row sits on a chosen centre already
            candidates = rng.choice(n, size=n_trials)
        else:
            candidates = rng.choice(n, size=n_trials, p=potential / total)
        distances = np.minimum(closest[None, :], _squared_distances(X, X[candidates]).T)
        best = int(np.argmin((distances * weights).sum(axis=1)))
        centers.append(X[candidates[best]])
        closest = distances[best]
    return np.array(centers)


def lloyd(
    X: np.ndarray,
    centers: np.ndarray,
    weights: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> np.ndarray:
    """Weighted Lloyd iterations from ``centers`` until they stop moving.

    ``tol`` is relative to the mean per-feature variance of ``X``, as in scikit-learn.
    """
    weights = np.ones(len(X)) if weights is None else weights
    threshold = tol * float(np.mean(np.var(X, axis=0)))
    centers = centers.copy()
    for _ in range(max_iter):
        labels = np.argmin(_squared_distances(X, centers), axis=1)
        new = centers.copy()
        mass = np.bincount(labels, weights=weights, minlength=len(centers))
        for k in np.flatnonzero(mass > 0):
            members = labels == k
            new[k] = weights[members] @ X[members] / mass[k]
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if shift <= threshold:
            break
    return centers


def initial_centers(
    method: str,
    sample: np.ndarray,
    sample_weight: np.ndarray,
    n_components: int,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """Centres (K, D) chosen on the sample, or None for ``"random"`` responsibilities."""
    if method not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}, got {method!r}")
    if method == "random":
        return None
    if method == "random_from_data":
        # distinct rows: discrete data repeats rows, and equal centres leave one empty
        distinct = np.unique(sample, axis=0)
        pool = distinct if len(distinct) >= n_components else sample
        return pool[rng.choice(len(pool), size=n_components, replace=False)].copy()
    centers = kmeans_plusplus(sample, n_components, rng, sample_weight)
    if method == "kmeans":
        centers = lloyd(sample, centers, sample_weight)
    return centers


def init_block_stats(
    shared: dict[str, Any], X: np.ndarray, w: np.ndarray | None, seed: int
) -> dict[str, Any]:
    """Statistics of one block under initial responsibilities.

    ``shared`` holds ``family``, ``n_components`` and ``centers`` (K, F) or None; with
    centres each row is assigned to the nearest one in the family's k-means feature space
    (``family.init_features``, F columns): a one-hot responsibility, or, for a family
    with ``label_stats`` (Gaussian), the row enters its own component's moments only.
    Without centres each row gets random responsibilities drawn from ``seed``
    (normalized uniform, as scikit-learn).  With ``fill`` (D,) given, missing values
    (NaN) are replaced by it, slice by slice, for this starting pass only.  A family with
    ``compiled_label_stats`` (Gaussian) does the nearest centres and the moments of a
    block in one compiled call.
    """
    family, centers, n_components = shared["family"], shared["centers"], shared["n_components"]
    fill = shared.get("fill")
    compiled = getattr(family, "compiled_label_stats", None)
    if centers is not None and compiled is not None:
        stats = compiled(family, X, centers, w, fill)  # the whole block in one call
        if stats is not None:
            return stats
    rng = np.random.default_rng(seed)
    work = Workspace()  # scratch reused across the block's slices (see Workspace)
    by_label = centers is not None and hasattr(family, "label_stats")

    def slice_stats(X_slice, w_slice):
        n_rows = len(X_slice)
        if fill is not None:  # missing values: the sample's column means, for the start only
            X_slice = np.where(np.isnan(X_slice), fill, X_slice)
        if centers is None:
            resp = rng.uniform(size=(n_rows, n_components))
            resp /= resp.sum(axis=1, keepdims=True)
            return family.responsibility_stats(X_slice, resp, w_slice)
        labels = nearest_centers(family, X_slice, centers, work)
        if by_label:  # D^2 work a row instead of K D^2
            return family.label_stats(X_slice, labels, n_components, w_slice, work)
        resp = np.zeros((n_rows, n_components))
        resp[np.arange(n_rows), labels] = 1.0
        return family.responsibility_stats(X_slice, resp, w_slice)

    return sliced_stats(slice_stats, family.merge, X, w, rows_per_slice=rows_per_slice(X.shape[1]))


def nearest_centers(
    family: Any, X: np.ndarray, centers: np.ndarray, work: Workspace | None = None
) -> np.ndarray:
    """Index of the nearest of ``centers`` (K, F) for each row of X (n, D), measured in
    ``family.init_features`` coordinates, a slice of rows at a time; shape (n,).

    ``argmin_k |x - c_k|^2 = argmin_k (|c_k|^2 - 2 x.c_k)``: the row's own norm is the
    same for every k and is left out; coordinates are shifted by the centres' mean
    first, so data far from the origin keeps its precision.  ``work`` keeps the scratch
    arrays across calls.
    """
    work = work or Workspace()
    shift = centers.mean(axis=0)
    shifted_centers = centers - shift
    slope, offset = -2.0 * shifted_centers.T, (shifted_centers * shifted_centers).sum(axis=1)
    labels = np.empty(len(X), dtype=np.int64)
    # slices of at most 64 KiB of float64 features: a Dask worker hands larger freed
    # blocks back to the OS at once, so the per-slice features copy would page-fault
    step = max(16, min(ROWS_PER_SLICE, 8192 // max(1, X.shape[1])))
    for start in range(0, len(X), step):
        features = family.init_features(X[start : start + step])
        shifted = np.subtract(features, shift, out=work.get("shifted", features.shape, float))
        scores = work.get("scores", (len(shifted), len(centers)), float)
        np.matmul(shifted, slope, out=scores)
        scores += offset
        labels[start : start + step] = np.argmin(scores, axis=1)
    return labels

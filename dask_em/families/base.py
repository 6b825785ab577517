"""The contract every family of kernels fulfils, and helpers for additive statistics.

A *family* is a bundle of pure NumPy functions that work on ONE block of data and know
nothing of Dask.  One EM iteration is

    stats_b = family.block_stats(params, X_b, w_b)      for every block b (on workers)
    stats   = family.merge(stats_1, stats_2, ...)        tree reduction (anywhere)
    params  = family.m_step(stats)                       on the client

``Stats`` are plain ``dict[str, np.ndarray | float]`` in float64.  They are *additive*:
for any partition of the rows into A and B, ``merge(stats(A), stats(B)) == stats(A ∪ B)``
up to rounding.  Most fields are plain sums; first and second moments are carried in a
centred form (per-component weighted mean and scatter about that mean) and merged with
the pairwise update of Chan, Golub and LeVeque (1979), which is exact in real arithmetic
and avoids the catastrophic cancellation of ``E[xx] - m m^T``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

Stats = dict[str, Any]
Params = dict[str, Any]


class Family(Protocol):
    """What the engine needs from a model to run EM on it (see module docstring)."""

    name: str

    def block_stats(self, params: Params, X: np.ndarray, w: np.ndarray | None) -> Stats:
        """E-step fused with statistics for one block ``X`` of shape (n, D)."""

    def merge(self, *parts: Stats) -> Stats:
        """Combine the statistics of disjoint blocks (associative)."""

    def m_step(self, stats: Stats) -> Params:
        """New parameters from merged statistics."""

    def objective(self, stats: Stats, params: Params) -> float:
        """Mean per-sample objective at ``params`` (log-likelihood [+ log-prior]) / weight."""


def merge_centred_moments(
    nk_a: np.ndarray,
    mean_a: np.ndarray,
    nk_b: np.ndarray,
    mean_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise merge of weighted means (Chan et al. 1979, eq. 2.1).

    Parameters
    ----------
    nk_a, nk_b : (K,) total weight of each component in blocks A and B.
    mean_a, mean_b : (K, D) weighted means of each component in A and B (0 where nk is 0).

    Returns
    -------
    nk : (K,) merged weight.
    mean : (K, D) merged mean ``mean_a + delta * nk_b / nk``.
    delta : (K, D) ``mean_b - mean_a``.
    correction : (K,) ``nk_a * nk_b / nk``; the merged scatter is
        ``scatter_a + scatter_b + correction * delta delta^T`` (or its diagonal/trace).
    """
    nk = nk_a + nk_b
    frac_b = np.divide(nk_b, nk, out=np.zeros_like(nk), where=nk > 0)
    delta = mean_b - mean_a
    mean = mean_a + delta * frac_b[:, None]
    correction = nk_a * frac_b
    return nk, mean, delta, correction


def add_fields(a: Mapping[str, Any], b: Mapping[str, Any], names: Sequence[str]) -> Stats:
    """``{name: a[name] + b[name]}`` for the plainly additive fields."""
    return {name: a[name] + b[name] for name in names}


def log_normalize(weighted_log_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bayes' rule in log space: returns ``log p(x_i)`` (n,) and responsibilities (n, K)."""
    peak = weighted_log_prob.max(axis=1, keepdims=True)
    peak[~np.isfinite(peak)] = 0.0
    shifted = np.exp(weighted_log_prob - peak)
    total = shifted.sum(axis=1, keepdims=True)
    shifted /= total
    return (np.log(total) + peak)[:, 0], shifted


def responsibilities_and_loglik(
    weighted_log_prob: np.ndarray, w: np.ndarray | None
) -> tuple[np.ndarray, float, float]:
    """Bayes' rule with row weights: ``(w_i r_ik (n, K), sum w_i, sum w_i log p(x_i))``."""
    log_norm, resp = log_normalize(weighted_log_prob)
    if w is None:
        return resp, float(len(resp)), float(log_norm.sum())
    w = np.asarray(w, dtype=np.float64)
    resp *= w[:, None]
    return resp, float(w.sum()), float(w @ log_norm)


#: Rows handled at once inside a block, so the (rows, K*D) temporaries stay in cache and
#: a task's memory does not grow with its block beyond the block itself.
ROWS_PER_SLICE = 4096

#: Largest temporary a slice may need, in float64 elements (8 MiB).
SLICE_ELEMENTS = 2**20


def rows_per_slice(columns: int) -> int:
    """Rows per slice so that a (rows, columns) temporary stays within SLICE_ELEMENTS."""
    return int(min(ROWS_PER_SLICE, max(64, SLICE_ELEMENTS // max(1, columns))))


class Workspace:
    """Scratch arrays reused across the slices of one block.

    Large temporaries allocated afresh for every slice cost page faults each time (the
    Dask nanny sets ``MALLOC_TRIM_THRESHOLD_`` so freed memory goes back to the OS); a
    block allocates them once here.  ``get`` returns a view of the first ``shape[0]`` rows.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        array = self._arrays.get(name)
        if (
            array is None
            or array.dtype != dtype
            or array.shape[1:] != tuple(shape[1:])
            or array.shape[0] < shape[0]
        ):
            array = np.empty(shape, dtype=dtype)
            self._arrays[name] = array
        return array[: shape[0]]


def sliced_stats(
    slice_stats: Callable[..., Stats],
    merge: Callable[..., Stats],
    *arrays: np.ndarray | None,
    rows_per_slice: int | None = None,
) -> Stats:
    """``merge(slice_stats(*(a[s:e] for a in arrays)) for each row slice [s, e))``.

    ``arrays`` share their first axis; ``None`` entries are passed through as None.
    """
    step = rows_per_slice or ROWS_PER_SLICE
    n_rows = len(arrays[0])
    parts = []
    for start in range(0, max(n_rows, 1), step):
        stop = start + step
        parts.append(slice_stats(*(None if a is None else a[start:stop] for a in arrays)))
    return merge(*parts)

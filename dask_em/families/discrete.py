"""What the mixture families of discrete data share: plain-sum statistics, MAP updates.

Statistics of a block are ``weight`` (sum of row weights), ``n_rows``, ``loglik`` (sum of
``w_i log p(x_i)``), ``nk`` (K,) (sum of ``w_i r_ik``) and one family-specific sum
``sums`` (e.g. ``sum_i w_i r_ik x_id`` for Poisson); all merge by addition.

Priors make the M-step a MAP update, and the objective the penalized one:
``(log-likelihood + log-prior) / total weight``, with the log-prior up to an additive
constant, so that with zero-strength priors it is exactly the log-likelihood and the MAP
path is the maximum-likelihood path.  The Dirichlet(alpha) prior on the mixing weights
(``weight_concentration = alpha >= 1``) gives (Bishop 2006, eq. 2.21 for the mode)

    pi_k = (N_k + alpha - 1) / (N + K (alpha - 1)),   log-prior = (alpha - 1) sum_k log pi_k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_em.families import discrete_compiled
from dask_em.families.base import (
    Params,
    Stats,
    log_normalize,
    responsibilities_and_loglik,
    rows_per_slice,
    sliced_stats,
)
from dask_em.families.dirichlet import dirichlet_log_prior, dirichlet_weights, safe_log

__all__ = ["DiscreteMixtureFamily", "distinct_rows", "safe_log"]

#: Floor for log(0) in the kernels: a row a component cannot produce gets log-density
#: about -708 per impossible entry instead of -inf, so responsibilities stay defined.
LOG_FLOOR = float(np.log(np.finfo(np.float64).tiny))

#: A component whose weight falls to this share of the total (or below) is empty.
EMPTY_COMPONENT_SHARE = 1e-12

#: Blocks are collapsed to their distinct rows when the rows, read as mixed-radix
#: numbers, have at most this many possible values (and no more than 8 per row).
MAX_DISTINCT_KEYS = 2**20


def distinct_rows(
    X: np.ndarray, w: np.ndarray | None, max_keys: int | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """A block of non-negative integers as (distinct rows (u, D) float64, weights (u,)).

    The E-step and the statistics of a discrete block depend on it only through its
    distinct rows and their (weighted) multiplicities, and count data repeats rows
    heavily: one ``bincount`` over mixed-radix row keys replaces per-row work.  Returns
    None when the key space is too large for that to pay.
    """
    max_keys = MAX_DISTINCT_KEYS if max_keys is None else max_keys
    if X.size == 0:
        return None
    values = X if np.issubdtype(X.dtype, np.integer) else X.astype(np.int64)
    sizes = [int(v) + 1 for v in values.max(axis=0)]
    n_keys = int(np.prod(sizes, dtype=object))
    if n_keys > max_keys or n_keys > 8 * len(X):
        return None
    keys = values[:, 0] if len(sizes) == 1 else np.ravel_multi_index(values.T, sizes)
    weights = np.bincount(keys, weights=w, minlength=n_keys)
    present = np.flatnonzero(weights)
    rows = np.stack(np.unravel_index(present, sizes), axis=1).astype(np.float64)
    return rows, weights[present].astype(np.float64)


@dataclass(frozen=True)
class DiscreteMixtureFamily:
    """Base of the Poisson, categorical and Bernoulli families (see module docstring).

    Subclasses define ``log_component_prob(params, X) -> (n, K)``, ``sums(X, resp)``,
    ``component_m_step(stats) -> dict``, ``component_log_prior(params) -> float``,
    ``parameter`` (the name of their parameter array), ``init_features``, ``reseed_row``
    and ``sample_component``.
    """

    weight_concentration: float = 1.0

    parameter = "values"
    handles_missing = False  # callers leave rows with NaN out (families.protocols)

    # -- parameters ---------------------------------------------------------------
    def make_params(self, weights: np.ndarray, **values: np.ndarray) -> Params:
        params = {"weights": np.asarray(weights, dtype=np.float64)}
        params[self.parameter] = np.asarray(values[self.parameter], dtype=np.float64)
        return params

    def with_weights(self, params: Params, weights: np.ndarray) -> Params:
        """``params`` with other mixing ``weights`` (K,)."""
        return self.make_params(weights, **{self.parameter: params[self.parameter]})

    # -- E-step and statistics ----------------------------------------------------
    def weighted_log_prob(self, params: Params, X: np.ndarray) -> np.ndarray:
        """``log pi_k + log p(x_i | k)``, shape (n, K), float64."""
        X = np.asarray(X, dtype=np.float64)
        return self.log_component_prob(params, X) + safe_log(params["weights"])

    def block_stats(self, params: Params, X: np.ndarray, w: np.ndarray | None = None) -> Stats:
        """E-step fused with the statistics of one block ``X`` (n, D), weights ``w`` (n,).

        Runs on the block's distinct rows with their multiplicities when that is cheaper
        (:func:`distinct_rows`); the result is the same up to summation order.
        """
        n_rows = len(X)
        compressed = distinct_rows(X, w)
        if compressed is not None:
            X, w = compressed
        if discrete_compiled.COMPILED:
            w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
            stats = self.compiled_stats(params, X, w)
            stats["n_rows"] = n_rows
            return stats
        return self.reference_block_stats(params, X, w, n_rows)

    def compiled_stats(self, params: Params, X: np.ndarray, w: np.ndarray) -> Stats:
        """The statistics of a block by :mod:`dask_em.families.discrete_compiled`.

        Families override this; one without a compiled kernel runs the reference.
        """
        return self.reference_block_stats(params, X, w)

    def reference_block_stats(
        self, params: Params, X: np.ndarray, w: np.ndarray | None, n_rows: int | None = None
    ) -> Stats:
        """:meth:`block_stats` by the NumPy reference kernels, slice by slice."""
        n_rows = len(X) if n_rows is None else n_rows
        columns = self.slice_columns(params, X.shape[1])
        stats = sliced_stats(
            lambda X_slice, w_slice: self._slice_stats(params, X_slice, w_slice),
            self.merge,
            X,
            w,
            rows_per_slice=rows_per_slice(columns),
        )
        stats["n_rows"] = n_rows
        return stats

    def slice_columns(self, params: Params, n_features: int) -> int:
        """Widest per-row temporary of the kernels, in float64 elements."""
        return len(params["weights"]) * max(n_features, 2)

    def _slice_stats(self, params, X, w):
        X = np.asarray(X, dtype=np.float64)
        resp, weight, loglik = responsibilities_and_loglik(self.weighted_log_prob(params, X), w)
        return self._stats(X, resp, weight, loglik)

    def _stats(self, X, resp, weight, loglik):
        return {
            "weight": weight,
            "n_rows": len(X),
            "loglik": loglik,
            "nk": resp.sum(axis=0),
            "sums": self.sums(X, resp),
        }

    def responsibility_stats(
        self, X: np.ndarray, resp: np.ndarray, w: np.ndarray | None = None
    ) -> Stats:
        """Statistics of a block from given responsibilities (initialization)."""

        def slice_stats(X_slice, resp_slice, w_slice):
            X_slice = np.asarray(X_slice, dtype=np.float64)
            if w_slice is not None:
                resp_slice = resp_slice * np.asarray(w_slice, dtype=np.float64)[:, None]
            weight = float(len(X_slice)) if w_slice is None else float(np.sum(w_slice))
            return self._stats(X_slice, resp_slice, weight, 0.0)

        return sliced_stats(slice_stats, self.merge, X, resp, w)

    def posterior_stats(self, params: Params, X: np.ndarray, resp: np.ndarray) -> Stats:
        """Statistics of a block under given posteriors ``resp`` (n, K) (hidden Markov
        models); rows with NaN (missing steps) are left out."""
        X = np.asarray(X, dtype=np.float64)
        observed = ~np.isnan(X).any(axis=1)
        if not observed.all():
            X, resp = X[observed], resp[observed]
        return self.responsibility_stats(X, resp)

    @staticmethod
    def merge(*parts: Stats) -> Stats:
        """Statistics of disjoint row sets add up."""
        out = dict(parts[0])
        for part in parts[1:]:
            out = {key: out[key] + part[key] for key in out}
        return out

    # -- M-step and objective -----------------------------------------------------
    def empty_components(self, stats: Stats) -> np.ndarray:
        return np.flatnonzero(stats["nk"] <= EMPTY_COMPONENT_SHARE * stats["weight"])

    def m_step(self, stats: Stats) -> Params:
        """MAP update (ML with zero-strength priors); empty components keep placeholders."""
        weights = dirichlet_weights(stats["nk"], stats["weight"], self.weight_concentration)
        return self.make_params(weights, **{self.parameter: self.component_m_step(stats)})

    def log_prior(self, params: Params) -> float:
        return dirichlet_log_prior(
            params["weights"], self.weight_concentration
        ) + self.component_log_prior(params)

    def objective(self, stats: Stats, params: Params) -> float:
        """``(log-likelihood + log-prior) / total weight`` at ``params``."""
        return (stats["loglik"] + self.log_prior(params)) / stats["weight"]

    # -- re-seeding and sampling --------------------------------------------------
    def reseed(self, params: Params, empty: np.ndarray, sample: np.ndarray) -> Params:
        """Move each empty component onto the sample row the model explains worst."""
        log_density, _ = log_normalize(self.weighted_log_prob(params, sample))
        order = np.argsort(log_density)
        weights = params["weights"].copy()
        values = params[self.parameter].copy()
        for rank, k in enumerate(empty):
            values[k] = self.reseed_row(sample[order[rank % len(order)]], sample)
            weights[k] = 1.0 / len(sample)
        return self.make_params(weights / weights.sum(), **{self.parameter: values})

"""Categorical mixture kernels: D independent symbols in 0..M-1 per row and component.

Parameters: ``weights`` (K,) and ``probabilities`` (K, D, M), each ``[k, d, :]`` summing
to one.  ``log p(x | k) = sum_d log P[k, d, x_d]``.

M-step under a symmetric Dirichlet(1 + a) prior on every ``P[k, d, :]`` (``pseudocount``
a >= 0; a = 0 is maximum likelihood):

    P[k, d, m] = (C[k, d, m] + a) / (N_k + M a),   C[k, d, m] = sum_i r_ik [x_id = m],
    log-prior = a sum log P   (+ const).

With a > 0 no probability is ever exactly zero, so EM can never lock a symbol out of a
component (the classic failure of maximum likelihood in motif finding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_em.families.base import Params, Stats
from dask_em.families.discrete import DiscreteMixtureFamily, safe_log
from dask_em.families.discrete_compiled import categorical_stats


def one_hot(X: np.ndarray, n_symbols: int) -> np.ndarray:
    """(n, D) symbols -> (n, D*M) indicators, column ``d*M + m`` for symbol m at d."""
    n_rows, n_features = X.shape
    out = np.zeros((n_rows, n_features * n_symbols))
    columns = np.arange(n_features) * n_symbols + X.astype(np.intp)
    out[np.arange(n_rows)[:, None], columns] = 1.0
    return out


@dataclass(frozen=True)
class CategoricalFamily(DiscreteMixtureFamily):
    """Categorical mixture kernels (see module docstring)."""

    n_symbols: int = 2
    pseudocount: float = 0.0
    name: str = "categorical"

    parameter = "probabilities"

    def slice_columns(self, params: Params, n_features: int) -> int:
        return max(len(params["weights"]), n_features * self.n_symbols)

    def log_component_prob(self, params: Params, X: np.ndarray) -> np.ndarray:
        log_p = safe_log(params["probabilities"])  # (K, D, M)
        symbols = X.astype(np.intp)
        out = np.zeros((len(X), log_p.shape[0]))
        for d in range(log_p.shape[1]):
            out += log_p[:, d, :].T[symbols[:, d]]
        return out

    def compiled_stats(self, params: Params, X: np.ndarray, w: np.ndarray) -> Stats:
        log_p = safe_log(params["probabilities"])
        return categorical_stats(X, w, log_p, safe_log(params["weights"]))

    def sums(self, X: np.ndarray, resp: np.ndarray) -> np.ndarray:
        """``C[k, d, m]``, shape (K, D, M)."""
        counts = resp.T @ one_hot(X, self.n_symbols)
        return counts.reshape(resp.shape[1], X.shape[1], self.n_symbols)

    def component_m_step(self, stats: Stats) -> np.ndarray:
        numerator = stats["sums"] + self.pseudocount
        denominator = numerator.sum(axis=2, keepdims=True)
        uniform = np.full_like(numerator, 1.0 / self.n_symbols)
        return np.divide(numerator, denominator, out=uniform, where=denominator > 0)

    def component_log_prior(self, params: Params) -> float:
        if not self.pseudocount:
            return 0.0
        return float(self.pseudocount * safe_log(params["probabilities"]).sum())

    def n_parameters(self, n_components: int, n_features: int) -> int:
        return n_components * n_features * (self.n_symbols - 1) + n_components - 1

    def init_features(self, X: np.ndarray) -> np.ndarray:
        return one_hot(np.asarray(X), self.n_symbols)

    def reseed_row(self, row: np.ndarray, sample: np.ndarray) -> np.ndarray:
        observed = one_hot(row[None, :], self.n_symbols).reshape(len(row), self.n_symbols)
        overall = one_hot(sample, self.n_symbols).mean(axis=0).reshape(len(row), -1)
        blend = 0.5 * observed + 0.5 * overall + 1e-3
        return blend / blend.sum(axis=1, keepdims=True)

    def sample_component(
        self, params: Params, k: int, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        cumulative = np.cumsum(params["probabilities"][k], axis=1)  # (D, M)
        draws = rng.random((n, cumulative.shape[0], 1))
        symbols = (draws > cumulative[None]).sum(axis=2)
        return np.minimum(symbols, self.n_symbols - 1)

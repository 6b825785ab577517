"""The Gaussian mixture family: parameters, E-step dispatch, merge, MAP M-step, re-seeding.

Pure NumPy/SciPy on ONE block; no Dask here.  The pieces live beside it:

* :mod:`~dask_em.families.gaussian_linalg`: precision Cholesky factors, covariances and
  log-determinants from them;
* :mod:`~dask_em.families.gaussian_kernels`: the reference NumPy kernels;
* :mod:`~dask_em.families.gaussian_compiled`: the compiled fused E-step + statistics
  that :meth:`GaussianFamily.block_stats` runs on complete rows when numba is available;
* :mod:`~dask_em.families.gaussian_missing`: exact EM for rows with NaN;
* :mod:`~dask_em.families.niw_prior` and :mod:`~dask_em.families.dirichlet`: the MAP
  priors.  ``reg_covar * I`` is added after the update, as scikit-learn does; it is not
  part of the prior (for a strictly monotone objective: a prior, ``reg_covar=0``).

Numerics: each block is first shifted by ``params["center"]`` (the mixture's overall
mean), so data far from the origin (values around 1e6 with unit spread) loses no
precision in the E-step.  ``dtype`` selects the arithmetic of the E-step: "float64"
(default) casts float32 blocks to float64 one slice at a time; "float32" keeps float32
blocks in float32 for the log-densities and the per-slice matrix products (about 1e-7
relative noise per row; predictions too), every statistic accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_em.families import gaussian_compiled as compiled
from dask_em.families import gaussian_incomplete as incomplete
from dask_em.families.base import (
    Params,
    Stats,
    Workspace,
    add_fields,
    log_normalize,
    merge_centred_moments,
    responsibilities_and_loglik,
    rows_per_slice,
    sliced_stats,
)
from dask_em.families.dirichlet import dirichlet_log_prior, dirichlet_weights
from dask_em.families.gaussian_init_compiled import block_label_stats
from dask_em.families.gaussian_kernels import (
    estimate_log_gaussian_prob,
    merge_scatter,
    stats_from_labels,
    stats_from_responsibilities,
)
from dask_em.families.gaussian_linalg import (
    cholesky_from_precisions,
    compute_precision_cholesky,
    covariances_from_cholesky,
    precisions_from_cholesky,
)
from dask_em.families.niw_prior import niw_log_prior, posterior_moments

__all__ = [
    "COMPUTE_DTYPES",
    "COVARIANCE_TYPES",
    "GaussianFamily",
    "cholesky_from_precisions",
    "compute_precision_cholesky",
    "covariances_from_cholesky",
    "precisions_from_cholesky",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

#: Arithmetic of the E-step (module docstring).
COMPUTE_DTYPES = ("float64", "float32")

#: A component whose weight falls to this share of the total (or below) is empty.
EMPTY_COMPONENT_SHARE = 1e-12

_ADDITIVE_FIELDS = ("weight", "n_rows", "loglik")


@dataclass(frozen=True)
class GaussianFamily:
    """Gaussian mixture kernels for one covariance type (see module docstring).

    Parameters are a dict with ``weights`` (K,), ``means`` (K, D), ``covariances`` and
    ``precisions_cholesky`` (shapes in the module table) and ``center`` (D,).
    """

    covariance_type: str = "full"
    reg_covar: float = 1e-6
    name: str = "gmm"
    handles_missing = True  # NaN features are marginalized (families.protocols)
    compiled_label_stats = staticmethod(block_label_stats)  # the init pass (initialization)
    weight_concentration: float = 1.0
    mean_prior: np.ndarray | None = None
    mean_pseudocount: float = 0.0
    covariance_prior: np.ndarray | float | None = None
    covariance_pseudocount: float = 0.0
    dtype: str = "float64"

    def __post_init__(self):
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}"
            )
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {self.dtype!r}")

    @property
    def monotone_tolerance(self) -> float:
        """Relative fall of the objective the monotone check tolerates (engine).

        1e-10 in float64.  In float32 each row's log-density carries about 1e-7
        relative rounding (eps32 = 1.2e-7 on products of D terms), which does not
        average out between two nearby parameter sets; 1e-5 leaves a margin of 100
        over that and still catches any real decrease of EM.
        """
        return 1e-5 if self.dtype == "float32" else 1e-10

    # -- parameters ---------------------------------------------------------------
    def make_params(
        self,
        weights: np.ndarray,
        means: np.ndarray,
        covariances: np.ndarray | None = None,
        precisions_cholesky: np.ndarray | None = None,
    ) -> Params:
        """Complete a parameter dict from weights, means and either covariance form."""
        weights = np.asarray(weights, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        if precisions_cholesky is None:
            covariances = np.asarray(covariances, dtype=np.float64)
            precisions_cholesky = compute_precision_cholesky(covariances, self.covariance_type)
        elif covariances is None:
            precisions_cholesky = np.asarray(precisions_cholesky, dtype=np.float64)
            covariances = covariances_from_cholesky(precisions_cholesky, self.covariance_type)
        return {
            "weights": weights,
            "means": means,
            "covariances": covariances,
            "precisions_cholesky": precisions_cholesky,
            "center": weights @ means,
        }

    def with_weights(self, params: Params, weights: np.ndarray) -> Params:
        """``params`` with other mixing ``weights`` (K,) and the ``center`` they give."""
        return self.make_params(weights, params["means"], covariances=params["covariances"])

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Number of free parameters (for BIC/AIC)."""
        per_cov = {
            "full": n_components * n_features * (n_features + 1) / 2.0,
            "tied": n_features * (n_features + 1) / 2.0,
            "diag": n_components * n_features,
            "spherical": n_components,
        }[self.covariance_type]
        return int(per_cov + n_components * n_features + n_components - 1)

    def init_features(self, X: np.ndarray) -> np.ndarray:
        """Coordinates in which k-means initialization measures distances: X itself."""
        return np.asarray(X, dtype=np.float64)

    # -- E-step -------------------------------------------------------------------
    def log_component_prob(
        self, params: Params, X: np.ndarray, work: Workspace | None = None
    ) -> np.ndarray:
        """``log N(x_i | k)``, shape (n, K), float64.

        Rows with NaN use the marginal density of their observed features
        (:mod:`dask_em.families.gaussian_missing`); a row with nothing observed gets 0.
        """
        if np.isnan(X).any():
            step = incomplete.missing_estep(self, params, X, work)
            log_prob = np.empty_like(step.log_prob)
            log_prob[step.order] = step.log_prob  # the step's rows are in step.order
            return log_prob
        return estimate_log_gaussian_prob(
            X,
            params["means"],
            params["precisions_cholesky"],
            self.covariance_type,
            params["center"],
            work,
        )

    def weighted_log_prob(
        self, params: Params, X: np.ndarray, work: Workspace | None = None
    ) -> np.ndarray:
        """``log pi_k + log N(x_i | k)``, shape (n, K), float64 (NaN: as above)."""
        log_prob = self.log_component_prob(params, X, work)
        with np.errstate(divide="ignore"):
            return log_prob + np.log(params["weights"])

    def block_stats(self, params: Params, X: np.ndarray, w: np.ndarray | None = None) -> Stats:
        """E-step fused with the statistics of one block ``X`` (n, D), weights ``w`` (n,).

        Complete rows and rows with NaN (the exact missing-value E-step) run through
        the compiled kernels when numba is available; without numba everything runs
        through :meth:`reference_block_stats`.
        """
        if not compiled.COMPILED or X.dtype.kind != "f":
            return self.reference_block_stats(params, X, w)
        return compiled.block_stats(self, params, X, w)

    def reference_block_stats(
        self, params: Params, X: np.ndarray, w: np.ndarray | None = None
    ) -> Stats:
        """:meth:`block_stats` by the NumPy reference kernels, slice by slice."""
        work = Workspace()
        n_components, n_features = params["means"].shape
        return sliced_stats(
            lambda X_slice, w_slice: self._slice_stats(params, X_slice, w_slice, work),
            self.merge,
            X,
            w,
            rows_per_slice=rows_per_slice(n_components * max(n_features, 2)),
        )

    def _slice_stats(self, params, X, w, work=None):
        # Fitting computes in float64 even for float32 blocks (cast one slice at a time):
        # float32 products leave ~1e-7 relative noise in the objective, too coarse for the
        # monotone-objective guarantee and for small tol.  Prediction keeps float32.
        if self.dtype != "float32" or X.dtype != np.float32:
            X = np.asarray(X, dtype=np.float64)
        if np.isnan(X).any():
            X = np.asarray(X, dtype=np.float64)
            # the whole slice takes the exact missing-value E-step: its rows without NaN
            # cost there what they cost in the complete-data kernel, and the slice is
            # neither split nor merged
            return incomplete.slice_stats(self, params, X, w, work)
        resp, weight, loglik = responsibilities_and_loglik(
            self.weighted_log_prob(params, X, work), w
        )
        stats = stats_from_responsibilities(X, resp, self.covariance_type, params["center"], work)
        stats.update(weight=weight, n_rows=len(X), loglik=loglik)
        return stats

    def impute(self, params: Params, X: np.ndarray) -> np.ndarray:
        """X with each missing entry replaced by ``E[x_m | x_o]`` under the mixture."""
        return incomplete.impute(self, params, X)

    def responsibility_stats(
        self, X: np.ndarray, resp: np.ndarray, w: np.ndarray | None = None
    ) -> Stats:
        """Statistics of a block from given responsibilities ``resp`` (n, K) (initialization)."""
        return sliced_stats(self._slice_responsibility_stats, self.merge, X, resp, w)

    def label_stats(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        n_components: int,
        w: np.ndarray | None = None,
        work: Workspace | None = None,
    ) -> Stats:
        """:meth:`responsibility_stats` of one slice for hard assignments: row i wholly in
        component ``labels[i]`` of ``n_components`` (the initialization pass from k-means
        centres); D^2 work per row instead of K D^2 (``stats_from_labels``)."""
        return stats_from_labels(X, labels, w, n_components, self.covariance_type, work)

    def _slice_responsibility_stats(self, X, resp, w):
        if w is not None:
            resp = resp * np.asarray(w, dtype=np.float64)[:, None]
        center = np.asarray(X, dtype=np.float64).mean(axis=0) if len(X) else None
        stats = stats_from_responsibilities(X, resp, self.covariance_type, center)
        weight = float(len(X)) if w is None else float(np.sum(w, dtype=np.float64))
        stats.update(weight=weight, n_rows=len(X), loglik=0.0)
        return stats

    def posterior_stats(self, params: Params, X: np.ndarray, resp: np.ndarray) -> Stats:
        """Exact EM statistics of a block under given posteriors ``resp`` (n, K).

        For hidden Markov models, whose posteriors come from forward-backward.  Rows with
        NaN contribute their completed moments (conditional means and covariances of the
        missing block given ``params``, as in the mixture E-step); ``loglik`` is 0.
        """
        X = np.asarray(X, dtype=np.float64)
        has_nan = np.isnan(X @ np.ones(X.shape[1]))  # NaN anywhere in the row
        if not has_nan.any():
            stats = stats_from_responsibilities(X, resp, self.covariance_type, params["center"])
            stats.update(weight=float(len(X)), n_rows=len(X), loglik=0.0)
            return stats
        complete = ~has_nan
        parts = []
        if complete.any():
            stats = stats_from_responsibilities(
                X[complete], resp[complete], self.covariance_type, params["center"]
            )
            stats.update(weight=float(complete.sum()), n_rows=int(complete.sum()), loglik=0.0)
            parts.append(stats)
        parts.append(incomplete.posterior_stats(self, params, X[has_nan], resp[has_nan]))
        return self.merge(*parts)

    # -- reduction ----------------------------------------------------------------
    def merge(self, *parts: Stats) -> Stats:
        """Merge statistics of disjoint row sets, left to right."""
        out = parts[0]
        for b in parts[1:]:
            if out["n_rows"] == 0:
                out = b
                continue
            if b["n_rows"] == 0:
                continue
            nk, means, delta, correction = merge_centred_moments(
                out["nk"], out["means"], b["nk"], b["means"]
            )
            scatter = merge_scatter(
                self.covariance_type, out["scatter"], b["scatter"], delta, correction
            )
            merged = add_fields(out, b, _ADDITIVE_FIELDS)
            merged.update(nk=nk, means=means, scatter=scatter)
            out = merged
        return out

    # -- M-step -------------------------------------------------------------------
    def empty_components(self, stats: Stats) -> np.ndarray:
        """Indices of components whose weight vanished (they need re-seeding)."""
        return np.flatnonzero(stats["nk"] <= EMPTY_COMPONENT_SHARE * stats["weight"])

    def m_step(self, stats: Stats) -> Params:
        """MAP update from merged statistics (module docstring), then ``reg_covar * I``.

        With zero pseudocounts this is weighted maximum likelihood.  Empty components
        (see :meth:`empty_components`) keep finite placeholder values; the estimator
        re-seeds them.
        """
        nk = stats["nk"]
        n_features = stats["means"].shape[1]
        means, scatter = posterior_moments(self, nk, stats["means"], stats["scatter"])
        eta = self.covariance_pseudocount
        safe_nk = np.maximum(nk + eta, np.finfo(np.float64).tiny)
        reg = self.reg_covar
        if self.covariance_type == "full":
            covariances = scatter / safe_nk[:, None, None] + reg * np.eye(n_features)
        elif self.covariance_type == "tied":
            covariances = scatter / (nk.sum() + eta) + reg * np.eye(n_features)
        elif self.covariance_type == "diag":
            covariances = scatter / safe_nk[:, None] + reg
        else:
            covariances = scatter / (safe_nk * n_features) + reg
        empty = self.empty_components(stats)
        if empty.size and self.covariance_type != "tied":
            covariances[empty] = _neutral_covariance(self.covariance_type, n_features, reg)
        weights = dirichlet_weights(nk, stats["weight"], self.weight_concentration)
        return self.make_params(weights, means, covariances=covariances)

    def log_prior(self, params: Params) -> float:
        """Log-prior of ``params`` (Dirichlet and normal-inverse-Wishart), up to a constant."""
        weights_prior = dirichlet_log_prior(params["weights"], self.weight_concentration)
        return weights_prior + niw_log_prior(self, params)

    def objective(self, stats: Stats, params: Params) -> float:
        """``(log-likelihood + log-prior) / total weight`` at ``params``."""
        return (stats["loglik"] + self.log_prior(params)) / stats["weight"]

    # -- re-seeding ---------------------------------------------------------------
    def reseed(self, params: Params, empty: np.ndarray, sample: np.ndarray) -> Params:
        """Move each empty component onto the sample row the model explains worst.

        Its covariance becomes the sample covariance (in the family's form) and its
        weight ``1 / len(sample)``; the other weights are renormalized.
        """
        log_density, _ = log_normalize(self.weighted_log_prob(params, sample))
        order = np.argsort(log_density)
        weights = params["weights"].copy()
        means = params["means"].copy()
        covariances = params["covariances"].copy()
        n_features = sample.shape[1]
        spread = np.cov(sample, rowvar=False).reshape(n_features, n_features)
        pooled = {
            "full": spread,
            "diag": np.diag(spread),
            "spherical": np.trace(spread) / n_features,
        }
        for rank, k in enumerate(empty):
            means[k] = sample[order[rank % len(order)]]
            weights[k] = 1.0 / len(sample)
            if self.covariance_type != "tied":
                covariances[k] = pooled[self.covariance_type] + self.reg_covar * (
                    np.eye(n_features) if self.covariance_type == "full" else 1.0
                )
        return self.make_params(weights / weights.sum(), means, covariances=covariances)

    # -- sampling -----------------------------------------------------------------
    def sample_component(
        self, params: Params, k: int, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``n`` draws from component ``k``, shape (n, D)."""
        mean = params["means"][k]
        cov = params["covariances"]
        if self.covariance_type == "full":
            return rng.multivariate_normal(mean, cov[k], n)
        if self.covariance_type == "tied":
            return rng.multivariate_normal(mean, cov, n)
        scale = np.sqrt(cov[k])
        return mean + rng.standard_normal((n, len(mean))) * scale


def _neutral_covariance(covariance_type, n_features, reg):
    if covariance_type == "full":
        return np.eye(n_features) * max(reg, 1.0)
    return max(reg, 1.0)

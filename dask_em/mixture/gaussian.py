"""GaussianMixture: scikit-learn's estimator, fitted with EM on a Dask cluster."""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_em.families.base import Params
from dask_em.families.gaussian import (
    COVARIANCE_TYPES,
    GaussianFamily,
    cholesky_from_precisions,
    precisions_from_cholesky,
)
from dask_em.initialization import DEFAULT_SAMPLE_SIZE, INIT_METHODS
from dask_em.mixture._base import BaseMixture


class GaussianMixture(BaseMixture):
    """Gaussian mixture fitted by EM on data larger than memory.

    Parameters have scikit-learn's names and meaning.

    Parameters
    ----------
    n_components : int, default 1
    covariance_type : {"full", "tied", "diag", "spherical"}, default "full"
    tol : float, default 1e-3
        Stop when the mean log-likelihood per sample changes by less than this (nats),
        so the rule does not depend on the size of the data.
    reg_covar : float, default 1e-6
        Added to the diagonal of every covariance (MAP with a ``reg_covar * I`` floor).
    max_iter : int, default 100
    n_init : int, default 1
        Initializations; the one with the best final objective is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default "kmeans"
        How the initial centres are chosen, on a sample of ``init_sample_size`` rows drawn
        from across all blocks; the initial parameters then come from one distributed
        pass assigning every row to its nearest centre ("random": random
        responsibilities for every row, as scikit-learn; this starts every component
        near the overall mean, a saddle point EM leaves slowly, so it needs a small
        ``tol``).
    weights_init : (K,), means_init : (K, D), precisions_init : array, optional
        Initial values; shapes of ``precisions_init`` per covariance type as
        ``precisions_``.  When all three are given no initialization pass runs.
    random_state : int, numpy Generator or None
        Same seed and same chunking give bitwise identical results.
    warm_start : bool, default False
        Start the next ``fit`` from the fitted parameters (``n_init`` is then 1).
    verbose : int, default 0
        Log one line per iteration to stderr.
    cache : {"auto", "memory", "stream"}, default "auto"
        Persist the data in the cluster ("memory"), re-read it on every iteration
        ("stream", for data larger than the cluster's memory), or choose by size.
    init_sample_size : int, default 20000
        Rows sampled (across all blocks) for initialization and re-seeding.

    Attributes
    ----------
    weights_ : (K,)
    means_ : (K, D)
    covariances_ : (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical
    precisions_, precisions_cholesky_ : same shapes as ``covariances_``
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood per sample (per unit of sample weight) at the last E-step.
    lower_bounds_ : list of float
    history_ : list of dict
        ``iteration``, ``objective``, ``change``, ``seconds`` and ``reseeded`` per iteration.
    data_placement_ : {"memory", "stream"}
        Whether the last fit held the data in cluster memory or re-read it every pass.
    """

    _model_name = "gmm"

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        cache: str = "auto",
        init_sample_size: int = DEFAULT_SAMPLE_SIZE,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.cache = cache
        self.init_sample_size = init_sample_size

    def _family(self) -> GaussianFamily:
        return GaussianFamily(self.covariance_type, float(self.reg_covar))

    # -- validation ---------------------------------------------------------------
    def _check_hyperparameters(self, n_features: int) -> None:
        super()._check_hyperparameters(n_features)
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}"
            )
        if self.init_params not in INIT_METHODS:
            raise ValueError(f"init_params must be one of {INIT_METHODS}, got {self.init_params!r}")
        if not self.reg_covar >= 0:
            raise ValueError(f"reg_covar must be >= 0, got {self.reg_covar!r}")
        K = self.n_components
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (K,):
                raise ValueError(f"weights_init must have shape ({K},), got {w.shape}")
            if np.any(w < 0) or not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
                raise ValueError("weights_init must be non-negative and sum to 1")
        if self.means_init is not None:
            m = np.asarray(self.means_init, dtype=np.float64)
            if m.shape != (K, n_features):
                raise ValueError(f"means_init must have shape ({K}, {n_features}), got {m.shape}")
        if self.precisions_init is not None:
            p = np.asarray(self.precisions_init, dtype=np.float64)
            expected = {
                "full": (K, n_features, n_features),
                "tied": (n_features, n_features),
                "diag": (K, n_features),
                "spherical": (K,),
            }[self.covariance_type]
            if p.shape != expected:
                raise ValueError(
                    f"precisions_init must have shape {expected} for covariance_type="
                    f"{self.covariance_type!r}, got {p.shape}"
                )
            try:
                cholesky_from_precisions(p, self.covariance_type)
            except Exception:
                raise ValueError("precisions_init must be symmetric positive definite") from None
            if self.covariance_type in ("diag", "spherical") and np.any(p <= 0):
                raise ValueError("precisions_init must be positive")

    # -- initialization -----------------------------------------------------------
    def _given_init(self) -> dict[str, Any]:
        return {
            "weights": self.weights_init,
            "means": self.means_init,
            "precisions": self.precisions_init,
        }

    def _combine_init(self, computed: Params, given: dict[str, Any]) -> Params:
        family = self._family()
        weights = computed["weights"] if given["weights"] is None else given["weights"]
        means = computed["means"] if given["means"] is None else given["means"]
        if given["precisions"] is None:
            return family.make_params(weights, means, covariances=computed["covariances"])
        prec_chol = cholesky_from_precisions(
            np.asarray(given["precisions"], dtype=np.float64), self.covariance_type
        )
        return family.make_params(weights, means, precisions_cholesky=prec_chol)

    # -- fitted attributes --------------------------------------------------------
    def _set_fitted(self, params: Params) -> None:
        self.weights_ = params["weights"]
        self.means_ = params["means"]
        self.covariances_ = params["covariances"]
        self.precisions_cholesky_ = params["precisions_cholesky"]
        self.precisions_ = precisions_from_cholesky(self.precisions_cholesky_, self.covariance_type)

    def _fitted_params(self) -> Params:
        return self._family().make_params(
            self.weights_,
            self.means_,
            covariances=self.covariances_,
            precisions_cholesky=self.precisions_cholesky_,
        )

    # -- model files ----------------------------------------------------------------
    def _model_variables(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        dims = {
            "full": ("component", "feature", "feature_j"),
            "tied": ("feature", "feature_j"),
            "diag": ("component", "feature"),
            "spherical": ("component",),
        }[self.covariance_type]
        return {
            "weights": (("component",), self.weights_),
            "means": (("component", "feature"), self.means_),
            "covariances": (dims, self.covariances_),
            "precisions_cholesky": (dims, self.precisions_cholesky_),
        }

    def _restore_variables(self, variables: dict[str, np.ndarray]) -> None:
        self._set_fitted(
            self._family().make_params(
                variables["weights"],
                variables["means"],
                covariances=variables["covariances"],
                precisions_cholesky=variables["precisions_cholesky"],
            )
        )

    def to_xarray(self):
        """The fitted model as an xarray Dataset with named dims (what ``save`` writes)."""
        from dask_em.model_io import to_dataset

        return to_dataset(self)

"""GaussianMixture: scikit-learn's estimator, fitted with EM on a Dask cluster."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from dask_em.checks import FINITE, FiniteOrMissingCheck, ValueCheck
from dask_em.data import like_input
from dask_em.engine.row_order import RowOrder
from dask_em.estimators import gaussian
from dask_em.estimators.held import parse_names
from dask_em.estimators.params import Constraint, at_least, check_shape, one_of
from dask_em.families.base import Params
from dask_em.families.gaussian import (
    GaussianFamily,
    cholesky_from_precisions,
    precisions_from_cholesky,
)
from dask_em.families.gaussian_row_order import nan_pattern_order
from dask_em.initialization import DEFAULT_SAMPLE_SIZE
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
    params : None, a name or a sequence of names among "weights", "means",
        "covariances", default None (all)
        The parameters EM updates; the others keep their initial values (``*_init``, or
        computed) bitwise.  Covariances updated with the means held are the scatter
        about the held means (a partial M-step: the objective still never decreases).
    accelerate : {None, "squarem", "daarem", "newton"}, default None
        None: plain EM.  "squarem": SQUAREM-accelerated EM; "daarem": damped Anderson
        acceleration with restarts (fewer passes over the data on slowly converging
        fits; same optimum, objective still never decreasing).  "newton": Newton's
        method on the EM map, whose Jacobian each pass measures by one E-step per free
        coordinate (the fewest passes, for models of up to 256 such coordinates, at
        many E-steps a pass: for data that is slow to read).  ``max_iter`` then caps
        the points evaluated on the run's path (passes over the data, plus fallbacks
        evaluated in a proposal's pass; for "newton", its passes).  Every estimator
        takes it.
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
    client : distributed.Client, optional
        The cluster to fit on and to predict with (default: the active client).  Lazy
        outputs are then tied to it: compute them with ``client.compute(...)``,
        ``.compute(scheduler=client)`` or inside ``with client.as_current():``.  Small
        NumPy input (up to 32 MiB) is fitted in this process either way.
    init_sample_size : int, default 20000
        Rows sampled (across all blocks) for initialization and re-seeding.
    weight_concentration : float >= 1, default 1 (flat)
        Dirichlet concentration on the mixing weights (MAP: ``(N_k + alpha - 1) /
        (N + K (alpha - 1))``).
    mean_prior : (D,), default None (the mean of the initialization sample)
    mean_pseudocount : float >= 0, default 0
        Prior observations at ``mean_prior``; the mean update is
        ``(N_k xbar_k + kappa m0) / (N_k + kappa)``.
    covariance_prior : scalar, (D,) or (D, D), default None (the sample covariance)
    covariance_pseudocount : float >= 0, default 0
        Prior observations with covariance ``covariance_prior``; see
        :mod:`dask_em.families.gaussian` for the exact normal-inverse-Wishart update.
        ``history_`` then holds the penalized objective (log-likelihood + log-prior).
    missing : {"marginalize", "error"}, default "marginalize"
        NaN marks a missing value: the E-step uses the marginal density of each row's
        observed features and the M-step the conditional expectations of the missing
        ones (exact EM, Ghahramani & Jordan 1994; see
        :mod:`dask_em.families.gaussian_missing`).  Rows with every feature missing are
        left out with a warning.  "error" refuses NaN instead.
    dtype : {"float64", "float32"}, default "float64"
        Arithmetic of the E-step.  "float32" runs the log-densities and the per-slice
        matrix products of float32 data in float32 (float64 data is fitted in float64
        regardless), while the statistics still accumulate in float64.  The objective
        then carries about 1e-7 relative rounding, so the monotone check tolerates a
        fall of 1e-5 relative instead of 1e-10; on well-conditioned data the fitted
        parameters agree with float64 to about 1e-4 relative.

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
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        **gaussian.CONSTRAINTS,
        "missing": one_of(("marginalize", "error")),
        "dtype": one_of(("float64", "float32")),
        "weight_concentration": at_least(1.0, " (1 is the flat prior)"),
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        params: Any = None,
        accelerate: str | None = None,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        cache: str = "auto",
        client: Any = None,
        init_sample_size: int = DEFAULT_SAMPLE_SIZE,
        weight_concentration: float = 1.0,
        mean_prior: Any = None,
        mean_pseudocount: float = 0.0,
        covariance_prior: Any = None,
        covariance_pseudocount: float = 0.0,
        missing: str = "marginalize",
        dtype: str = "float64",
    ):
        self._store_params(locals())

    def _updatable(self) -> tuple[str, ...]:
        return ("weights", "means", "covariances")

    def _newton_coordinates(self, n_features: int) -> int:
        update = parse_names(self.params, self._updatable())
        return gaussian.newton_coordinates(
            self, n_features, "means" in update, "covariances" in update
        )

    def _family(self) -> GaussianFamily:
        return gaussian.family(self, self.weight_concentration)

    def _row_order(self) -> RowOrder | None:
        """How the engine orders each block's rows (:mod:`dask_em.engine.row_order`): the
        missing-value kernels of full and tied covariances read complete rows first and
        the others by NaN pattern fastest."""
        if self.missing == "marginalize" and self.covariance_type in ("full", "tied"):
            return nan_pattern_order
        return None

    def _value_check(self, fitting: bool = False) -> ValueCheck:
        if self.missing == "marginalize":
            return FiniteOrMissingCheck()
        return FINITE

    def impute(self, X: Any) -> Any:
        """X with every missing entry (NaN) replaced by its conditional mean.

        ``E[x_m | x_o] = sum_k P(k | x_o) E[x_m | x_o, k]`` under the fitted mixture;
        lazy (a dask array chunked like X) for dask input, NumPy for NumPy input.
        """
        imputed = self._apply(X, _impute, self.n_features_in_, np.float64)
        return like_input(X, imputed, "imputed", columns=None)

    def _learn_from_scan(self, scan: dict) -> None:
        """Default priors from the sample: its weighted mean and covariance."""
        gaussian.learn_priors(self, scan)

    def _scan_check(self):
        return gaussian.magnitude_check(self)

    # -- validation ---------------------------------------------------------------
    def _check_init(self, n_features: int) -> None:
        super()._check_init(n_features)
        gaussian.check_priors(self, n_features)
        K = self.n_components
        if self.means_init is not None:
            check_shape("means_init", self.means_init, (K, n_features))
        if self.precisions_init is not None:
            p = check_shape(
                "precisions_init",
                self.precisions_init,
                gaussian.covariance_shape(self.covariance_type, K, n_features),
                f" for covariance_type={self.covariance_type!r}",
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
        dims = gaussian.COVARIANCE_DIMS[self.covariance_type]
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


def _impute(family: GaussianFamily, params: Params, X: np.ndarray) -> np.ndarray:
    return family.impute(params, X)

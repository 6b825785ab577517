"""GaussianHMM: hidden Markov model with Gaussian emissions, over many sequences."""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_em.checks import FiniteOrMissingCheck, ValueCheck
from dask_em.estimators import gaussian
from dask_em.estimators.params import check_shape
from dask_em.families.base import Params
from dask_em.families.gaussian import GaussianFamily
from dask_em.hmm import parameters
from dask_em.hmm._base import BaseHMM
from dask_em.hmm.parameters import Parameter
from dask_em.initialization import DEFAULT_SAMPLE_SIZE


def full_covariances(covariances: np.ndarray, covariance_type: str, n_components: int):
    """Covariances in the family's shape -> (K, D, D) matrices (hmmlearn's ``covars_``)."""
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return np.broadcast_to(covariances, (n_components, *covariances.shape)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in covariances])
    raise ValueError("spherical covariances need n_features; use the family's shape")


class GaussianHMM(BaseHMM):
    """Hidden Markov model with Gaussian emissions (hmmlearn's ``GaussianHMM``).

    Parameters
    ----------
    n_components : int, number of states K.
    covariance_type : "diag" (default, as hmmlearn), "full", "tied" or "spherical".
    reg_covar : float >= 0, added to the diagonal of every covariance (default 1e-6).
    startprob_prior, transmat_prior : float >= 1, Dirichlet concentrations on the start
        probabilities and on each row of the transition matrix (1: flat; as hmmlearn,
        the M-step adds ``prior - 1`` to the expected counts).
    mean_prior, mean_pseudocount, covariance_prior, covariance_pseudocount :
        the conjugate Normal-inverse-Wishart prior of :class:`~dask_em.GaussianMixture`,
        with its data-derived defaults: ``mean_prior=None`` is the mean of the
        initialization sample, ``covariance_prior=None`` its covariance.
    estep : "exact" (forward-backward) or "sample" (forward-filtering backward-sampling
        of ``n_samples`` paths per sequence: a Monte Carlo approximation whose counts
        converge to the exact ones as ``n_samples`` grows; the objective is then no
        longer guaranteed to increase).
    tol : stop when the objective per step changes by less than this (nats; default 1e-6.
        hmmlearn's tol of 1e-2 on the total log-likelihood of T steps is 1e-2 / T here).
    max_iter : default 200; Baum-Welch often needs many iterations on weak signals.
    params : hmmlearn's letters of the parameters EM updates (default ``"stmc"``: start
        probabilities, transitions, means, covariances); the others keep their initial
        values bitwise.  Covariances updated with the means held are the scatter about
        the held means (as hmmlearn).
    init_params : the letters of the parameters the fit initializes itself (hmmlearn's
        ``init_params``; the others come from ``*_init`` or from the assigned attributes),
        or an initialization method of the emissions, ``"kmeans"`` (default, every
        letter), ``"k-means++"``, ``"random"``, ``"random_from_data"``.
    n_init, random_state, warm_start, verbose, cache, client,
    init_sample_size : as :class:`~dask_em.GaussianMixture`.
    startprob_init (K,), transmat_init (K, K), means_init (K, D), covars_init (in the
    covariance type's shape, as hmmlearn's ``covars_`` setter) : initial values.

    Attributes
    ----------
    startprob_ (K,), transmat_ (K, K), means_ (K, D), covars_ (K, D, D) full matrices
    for every covariance type (as hmmlearn), covariances_ (in the covariance type's
    shape), converged_, n_iter_, lower_bound_, history_, n_sequences_.  Every parameter
    may be assigned (``covars_`` in the covariance type's shape, as hmmlearn's setter);
    with all of them set (assigned or ``*_init``) the model predicts without a fit.
    Exact zeros in the start and transition probabilities stay zero through a fit.

    Missing values: a NaN feature is marginalized out of its step's emission density and
    completed in the statistics (exact EM); a step with every feature NaN has no
    emission term.
    """

    _model_name = "gaussian-hmm"
    _parameter_constraints = gaussian.CONSTRAINTS
    _emission_parameters = (
        Parameter("m", "means", "means_", "means_init"),
        Parameter("c", "covariances", "covariances_", "covars_init"),
    )

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "diag",
        reg_covar: float = 1e-6,
        startprob_prior: float = 1.0,
        transmat_prior: float = 1.0,
        mean_prior: Any = None,
        mean_pseudocount: float = 0.0,
        covariance_prior: Any = None,
        covariance_pseudocount: float = 0.0,
        estep: str = "exact",
        n_samples: int = 100,
        tol: float = 1e-6,
        max_iter: int = 200,
        n_init: int = 1,
        params: str = "stmc",
        accelerate: str | None = None,
        init_params: str = "kmeans",
        startprob_init: Any = None,
        transmat_init: Any = None,
        means_init: Any = None,
        covars_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        cache: str = "auto",
        client: Any = None,
        init_sample_size: int = DEFAULT_SAMPLE_SIZE,
    ):
        self._store_params(locals())

    def _emission_family(self) -> GaussianFamily:
        return gaussian.family(self)

    def _value_check(self, fitting: bool = False) -> ValueCheck:
        return FiniteOrMissingCheck()

    def _learn_from_scan(self, scan: dict) -> None:
        """Default priors from the sample: its weighted mean and covariance."""
        gaussian.learn_priors(self, scan)

    def _scan_check(self):
        return gaussian.magnitude_check(self)

    def _newton_coordinates(self, n_features: int) -> int:
        update = parameters.updated(self)
        emission = gaussian.newton_coordinates(self, n_features, "m" in update, "c" in update)
        return super()._newton_coordinates(n_features) + emission

    def _check_init(self, n_features: int) -> None:
        super()._check_init(n_features)
        gaussian.check_priors(self, n_features)
        K = self.n_components
        if self.means_init is not None:
            check_shape("means_init", self.means_init, (K, n_features))
        if self.covars_init is not None:
            check_shape(
                "covars_init",
                self.covars_init,
                gaussian.covariance_shape(self.covariance_type, K, n_features),
                f" for covariance_type={self.covariance_type!r}",
            )

    def _set_emission(self, params: Params) -> None:
        self.means_ = params["means"]
        self.covariances_ = params["covariances"]

    @property
    def covars_(self) -> np.ndarray:
        """(K, D, D) covariance matrices of the states, whatever the covariance type."""
        covariances = self.covariances_ if "covariances_" in vars(self) else self.covars_init
        if covariances is None:
            raise AttributeError("covars_ is not set: fit the model, or assign covars_")
        covariances = np.asarray(covariances, dtype=np.float64)
        if self.covariance_type == "spherical":
            means = self.means_ if "means_" in vars(self) else self.means_init
            return covariances[:, None, None] * np.eye(np.shape(means)[-1])
        return full_covariances(covariances, self.covariance_type, self.n_components)

    @covars_.setter
    def covars_(self, covars: Any) -> None:
        """Covariances in the covariance type's shape (as hmmlearn's setter): spherical
        (K,), diag (K, D), full (K, D, D), tied (D, D); positive (definite)."""
        self.covariances_ = gaussian.check_covariances(
            "covars_", covars, self.covariance_type, self.n_components
        )

    def _emission_variables(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        return {
            "means": (("component", "feature"), self.means_),
            "covariances": (gaussian.COVARIANCE_DIMS[self.covariance_type], self.covariances_),
        }

    def _restore_emission(self, variables: dict[str, np.ndarray]) -> None:
        self.means_ = variables["means"]
        self.covariances_ = variables["covariances"]

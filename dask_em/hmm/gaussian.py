"""GaussianHMM: hidden Markov model with Gaussian emissions, over many sequences."""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_em.data import FiniteOrMissingCheck, ValueCheck
from dask_em.families.base import Params
from dask_em.families.gaussian import COVARIANCE_TYPES, GaussianFamily
from dask_em.hmm._base import BaseHMM
from dask_em.initialization import DEFAULT_SAMPLE_SIZE

_COVARIANCE_DIMS = {
    "full": ("component", "feature", "feature_j"),
    "tied": ("feature", "feature_j"),
    "diag": ("component", "feature"),
    "spherical": ("component",),
}


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
        the conjugate Normal-inverse-Wishart prior of :class:`~dask_em.GaussianMixture`.
    estep : "exact" (forward-backward) or "sample" (forward-filtering backward-sampling
        of ``n_samples`` paths per sequence: a Monte Carlo approximation whose counts
        converge to the exact ones as ``n_samples`` grows; the objective is then no
        longer guaranteed to increase).
    tol : stop when the objective per step changes by less than this (nats; default 1e-6.
        hmmlearn's tol of 1e-2 on the total log-likelihood of T steps is 1e-2 / T here).
    max_iter : default 200; Baum-Welch often needs many iterations on weak signals.
    n_init, init_params, random_state, warm_start, verbose, cache,
    init_sample_size : as :class:`~dask_em.GaussianMixture`.
    startprob_init (K,), transmat_init (K, K), means_init (K, D), covars_init (in the
    covariance type's shape, as hmmlearn's ``covars_`` setter) : initial values.

    Attributes
    ----------
    startprob_ (K,), transmat_ (K, K), means_ (K, D), covars_ (K, D, D) full matrices
    for every covariance type (as hmmlearn), covariances_ (in the covariance type's
    shape), converged_, n_iter_, lower_bound_, history_, n_sequences_.

    Missing values: a NaN feature is marginalized out of its step's emission density and
    completed in the statistics (exact EM); a step with every feature NaN has no
    emission term.
    """

    _model_name = "gaussian-hmm"

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
        init_params: str = "kmeans",
        startprob_init: Any = None,
        transmat_init: Any = None,
        means_init: Any = None,
        covars_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        cache: str = "auto",
        init_sample_size: int = DEFAULT_SAMPLE_SIZE,
    ):
        self._store_params(locals())

    def _emission_family(self) -> GaussianFamily:
        return GaussianFamily(
            covariance_type=self.covariance_type,
            reg_covar=float(self.reg_covar),
            name=self._model_name,
            mean_prior=None if self.mean_prior is None else np.asarray(self.mean_prior, float),
            mean_pseudocount=float(self.mean_pseudocount),
            covariance_prior=self.covariance_prior,
            covariance_pseudocount=float(self.covariance_pseudocount),
        )

    def _value_check(self, fitting: bool = False) -> ValueCheck:
        return FiniteOrMissingCheck()

    def _check_hyperparameters(self, n_features: int) -> None:
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}"
            )
        if not self.reg_covar >= 0:
            raise ValueError(f"reg_covar must be >= 0, got {self.reg_covar!r}")
        super()._check_hyperparameters(n_features)
        K = self.n_components
        if self.means_init is not None and np.shape(self.means_init) != (K, n_features):
            raise ValueError(
                f"means_init must have shape ({K}, {n_features}), got {np.shape(self.means_init)}"
            )
        if self.covars_init is not None:
            expected = {
                "full": (K, n_features, n_features),
                "tied": (n_features, n_features),
                "diag": (K, n_features),
                "spherical": (K,),
            }[self.covariance_type]
            if np.shape(self.covars_init) != expected:
                raise ValueError(
                    f"covars_init must have shape {expected} for covariance_type="
                    f"{self.covariance_type!r}, got {np.shape(self.covars_init)}"
                )

    def _emission_init(self) -> dict[str, Any]:
        return {"means": self.means_init, "covariances": self.covars_init}

    def _set_emission(self, params: Params) -> None:
        self.means_ = params["means"]
        self.covariances_ = params["covariances"]

    def _emission_params(self) -> Params:
        K = self.n_components
        return self._emission_family().make_params(
            np.full(K, 1.0 / K), self.means_, covariances=self.covariances_
        )

    @property
    def covars_(self) -> np.ndarray:
        """(K, D, D) covariance matrices of the states, whatever the covariance type."""
        if self.covariance_type == "spherical":
            eye = np.eye(self.means_.shape[1])
            return self.covariances_[:, None, None] * eye
        return full_covariances(self.covariances_, self.covariance_type, self.n_components)

    def _emission_variables(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        return {
            "means": (("component", "feature"), self.means_),
            "covariances": (_COVARIANCE_DIMS[self.covariance_type], self.covariances_),
        }

    def _restore_emission(self, variables: dict[str, np.ndarray]) -> None:
        self.means_ = variables["means"]
        self.covariances_ = variables["covariances"]

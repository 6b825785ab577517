"""PoissonHMM and CategoricalHMM: hidden Markov models with discrete emissions."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from dask_em.checks import CountCheck, OrMissingCheck, ValueCheck
from dask_em.estimators.params import Constraint, check_shape, gamma_prior
from dask_em.estimators.symbols import CONSTRAINTS as SYMBOL_CONSTRAINTS
from dask_em.estimators.symbols import SymbolCount
from dask_em.families.base import Params
from dask_em.families.categorical import CategoricalFamily
from dask_em.families.poisson import PoissonFamily
from dask_em.hmm import parameters
from dask_em.hmm._base import BaseHMM
from dask_em.hmm.parameters import Parameter
from dask_em.initialization import DEFAULT_SAMPLE_SIZE


class PoissonHMM(BaseHMM):
    """Hidden Markov model with independent Poisson counts per feature (hmmlearn's
    ``PoissonHMM``).

    Parameters as :class:`~dask_em.GaussianHMM` (without the Gaussian ones), plus
    ``rate_prior`` (alpha, beta): a Gamma(alpha >= 1, beta >= 0) prior on every rate,
    M-step ``(alpha - 1 + sum gamma x) / (beta + sum gamma)`` (default flat), and
    ``lambdas_init`` (K, D), and hmmlearn's ``params`` letters (default ``"stl"``; ``l``
    the rates) and ``init_params`` (letters, or an initialization method).  Attributes:
    ``startprob_``, ``transmat_``, ``lambdas_`` (K, D), assignable (then no fit is
    needed to predict).  X holds non-negative integer counts; NaN marks a missing step.
    """

    _model_name = "poisson-hmm"
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {"rate_prior": gamma_prior}
    _emission_parameters = (Parameter("l", "rates", "lambdas_", "lambdas_init"),)

    def __init__(
        self,
        n_components: int = 1,
        *,
        startprob_prior: float = 1.0,
        transmat_prior: float = 1.0,
        rate_prior: tuple[float, float] = (1.0, 0.0),
        estep: str = "exact",
        n_samples: int = 100,
        tol: float = 1e-6,
        max_iter: int = 200,
        n_init: int = 1,
        params: str = "stl",
        accelerate: str | None = None,
        init_params: str = "kmeans",
        startprob_init: Any = None,
        transmat_init: Any = None,
        lambdas_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        cache: str = "auto",
        client: Any = None,
        init_sample_size: int = DEFAULT_SAMPLE_SIZE,
    ):
        self._store_params(locals())

    def _emission_family(self) -> PoissonFamily:
        alpha, beta = self.rate_prior
        return PoissonFamily(rate_alpha=float(alpha), rate_beta=float(beta), name=self._model_name)

    def _value_check(self, fitting: bool = False) -> ValueCheck:
        return OrMissingCheck(
            CountCheck(), "negative, non-integer or infinite counts (NaN marks a missing step)"
        )

    def _check_init(self, n_features: int) -> None:
        super()._check_init(n_features)
        if self.lambdas_init is not None:
            shape = (self.n_components, n_features)
            lambdas = check_shape("lambdas_init", self.lambdas_init, shape)
            if np.any(lambdas <= 0) or not np.all(np.isfinite(lambdas)):
                raise ValueError("lambdas_init must be positive and finite")

    def _set_emission(self, params: Params) -> None:
        self.lambdas_ = params["rates"]

    def _emission_variables(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        return {"lambdas": (("component", "feature"), self.lambdas_)}

    def _restore_emission(self, variables: dict[str, np.ndarray]) -> None:
        self.lambdas_ = variables["lambdas"]


class CategoricalHMM(BaseHMM):
    """Hidden Markov model with one categorical symbol per step (hmmlearn's
    ``CategoricalHMM``): X is (T, 1) integer symbols 0..M-1, NaN marks a missing step.

    Parameters as :class:`~dask_em.PoissonHMM`, with ``n_symbols`` M (default: one more
    than the largest symbol seen), ``pseudocount`` a >= 0 (a Dirichlet(1 + a) prior on
    every row of the emission matrix; M-step ``(C + a) / (sum gamma + M a)``) and
    ``emissionprob_init`` (K, M); ``params`` letters default ``"ste"`` (``e`` the
    emission probabilities).  Attributes: ``startprob_``, ``transmat_``, ``emissionprob_``
    (K, M), ``n_symbols_``; assigning ``emissionprob_`` sets ``n_symbols_``.
    """

    _model_name = "categorical-hmm"
    _parameter_constraints = SYMBOL_CONSTRAINTS
    _symbol_count = SymbolCount("emissionprob_init")
    #: The symbol count, learned from the scan, shapes the E-step: the scan pass always
    #: runs alone (:mod:`dask_em.estimators.first_pass`).
    _estep_needs_scan = True
    _emission_parameters = (Parameter("e", "probabilities", "emissionprob_", "emissionprob_init"),)

    def __init__(
        self,
        n_components: int = 1,
        *,
        n_symbols: int | None = None,
        startprob_prior: float = 1.0,
        transmat_prior: float = 1.0,
        pseudocount: float = 0.0,
        estep: str = "exact",
        n_samples: int = 100,
        tol: float = 1e-6,
        max_iter: int = 200,
        n_init: int = 1,
        params: str = "ste",
        accelerate: str | None = None,
        init_params: str = "kmeans",
        startprob_init: Any = None,
        transmat_init: Any = None,
        emissionprob_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        cache: str = "auto",
        client: Any = None,
        init_sample_size: int = DEFAULT_SAMPLE_SIZE,
    ):
        self._store_params(locals())

    def _emission_family(self) -> CategoricalFamily:
        return CategoricalFamily(
            n_symbols=int(self._symbol_count.current(self)),
            pseudocount=float(self.pseudocount),
            name=self._model_name,
        )

    def _value_check(self, fitting: bool = False) -> ValueCheck:
        inner = self._symbol_count.check(self, fitting)
        return OrMissingCheck(inner, inner.problem + " (NaN marks a missing step)")

    def _learn_from_scan(self, scan: dict) -> None:
        keeps_assigned = "e" not in parameters.init_plan(self)[0] and self.emissionprob_init is None
        if keeps_assigned and "_emissionprob" in vars(self):
            return  # the assigned emissionprob_ sets n_symbols_
        self._symbol_count.learn(self, scan)

    def _check_hyperparameters(self, n_features: int) -> None:
        if n_features != 1:
            raise ValueError(
                f"CategoricalHMM models one symbol per step: X must have shape (T, 1), got "
                f"{n_features} columns"
            )
        super()._check_hyperparameters(n_features)

    def _check_init(self, n_features: int) -> None:
        super()._check_init(n_features)
        if self.emissionprob_init is not None:
            expected = (self.n_components, self._symbol_count.declared(self))
            probabilities = check_shape("emissionprob_init", self.emissionprob_init, expected)
            if np.any(probabilities < 0) or not np.allclose(probabilities.sum(axis=1), 1.0):
                raise ValueError("emissionprob_init must be non-negative with rows summing to 1")

    def _soften_initial_emission(self, values: Params, scan: dict) -> Params:
        """Half k-means, half the overall symbol frequencies of the sample.

        k-means on one symbol per step starts every state on a single symbol, with
        probability zero for all the others, and under maximum likelihood a zero never
        moves again; the blend keeps every symbol possible in every state.
        """
        if self.emissionprob_init is not None:
            return values
        sample = scan["sample"][:, 0]
        symbols = np.clip(np.nan_to_num(sample), 0, self.n_symbols_ - 1).astype(np.intp)
        overall = np.bincount(symbols, minlength=self.n_symbols_) + 1.0
        overall /= overall.sum()
        return {"probabilities": 0.5 * values["probabilities"] + 0.5 * overall[None, None, :]}

    def _to_family(self, name: str, value: Any) -> np.ndarray:
        """(K, M) emission probabilities -> the family's (K, 1, M)."""
        return np.asarray(value, dtype=np.float64)[:, None, :]

    @property
    def emissionprob_(self) -> np.ndarray:
        """(K, M) probability of each symbol in each state."""
        if "_emissionprob" not in vars(self):
            raise AttributeError("emissionprob_ is not set: fit the model, or assign it")
        return self._emissionprob

    @emissionprob_.setter
    def emissionprob_(self, value: Any) -> None:
        probabilities = np.asarray(value, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[0] != self.n_components:
            raise ValueError(
                f"emissionprob_ must have shape (n_components={self.n_components}, "
                f"n_symbols), got {probabilities.shape}"
            )
        self._emissionprob = probabilities
        self.n_symbols_ = int(probabilities.shape[1])

    def _set_emission(self, params: Params) -> None:
        self.emissionprob_ = params["probabilities"][:, 0, :]

    def _emission_variables(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        return {"emissionprob": (("component", "symbol"), self.emissionprob_)}

    def _restore_emission(self, variables: dict[str, np.ndarray]) -> None:
        self.emissionprob_ = variables["emissionprob"]

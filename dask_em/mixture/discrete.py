"""PoissonMixture, CategoricalMixture and BernoulliMixture: mixtures of discrete data.

Each has GaussianMixture's surface (fit, predict, predict_proba, score_samples, score,
bic, aic, sample, save/load, history_, n_init, random_state, warm_start) on the same
engine, plus MAP priors: ``weight_concentration`` (Dirichlet on the mixing weights) and
the family's own prior (see :mod:`dask_em.families.poisson`, ``.categorical``,
``.bernoulli`` for the exact updates).  ``history_`` then holds the penalized objective.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from dask_em.checks import BinaryCheck, CountCheck, ValueCheck
from dask_em.estimators.params import Constraint, at_least, check_shape, gamma_prior
from dask_em.estimators.symbols import CONSTRAINTS as SYMBOL_CONSTRAINTS
from dask_em.estimators.symbols import SymbolCount
from dask_em.families.base import Params
from dask_em.families.bernoulli import BernoulliFamily
from dask_em.families.categorical import CategoricalFamily
from dask_em.families.poisson import PoissonFamily
from dask_em.initialization import DEFAULT_SAMPLE_SIZE
from dask_em.mixture._base import BaseMixture


class _DiscreteMixture(BaseMixture):
    """Shared by the discrete mixtures: one parameter array besides the weights."""

    #: name of the family's parameter array, of the fitted attribute (with "_") and of
    #: the initial value (with "_init")
    _parameter = "values"
    _parameter_dims: tuple[str, ...] = ("component", "feature")
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        "weight_concentration": at_least(1.0, " (1 is the flat prior)")
    }

    def _check_init(self, n_features: int) -> None:
        super()._check_init(n_features)
        name = f"{self._parameter}_init"
        values = getattr(self, name)
        if values is not None:
            values = check_shape(name, values, self._parameter_shape(n_features))
            self._check_parameter_values(values)

    def _parameter_shape(self, n_features: int) -> tuple[int, ...]:
        return (self.n_components, n_features)

    def _check_parameter_values(self, values: np.ndarray) -> None:
        """Raise ValueError if initial parameter values are out of range."""

    def _given_init(self) -> dict[str, Any]:
        return {
            "weights": self.weights_init,
            self._parameter: getattr(self, f"{self._parameter}_init"),
        }

    def _set_fitted(self, params: Params) -> None:
        self.weights_ = params["weights"]
        setattr(self, f"{self._parameter}_", params[self._parameter])

    def _fitted_params(self) -> Params:
        return self._family().make_params(
            self.weights_, **{self._parameter: getattr(self, f"{self._parameter}_")}
        )

    def _model_variables(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        return {
            "weights": (("component",), self.weights_),
            self._parameter: (self._parameter_dims, getattr(self, f"{self._parameter}_")),
        }

    def _restore_variables(self, variables: dict[str, np.ndarray]) -> None:
        self.weights_ = variables["weights"]
        setattr(self, f"{self._parameter}_", variables[self._parameter])


class PoissonMixture(_DiscreteMixture):
    """Mixture of independent Poisson counts, one rate per feature and component.

    Parameters (besides GaussianMixture's ``n_components``, ``tol``, ``max_iter``,
    ``n_init``, ``init_params``, ``weights_init``, ``random_state``, ``warm_start``,
    ``verbose``, ``cache``, ``client``, ``init_sample_size``)
    ----------
    rates_init : (K, D) positive, optional
    params : None (all), a name or a sequence of names among "weights" and "rates"
        The parameters EM updates (as GaussianMixture's ``params``); Bernoulli and
        categorical mixtures name "weights" and "probabilities".
    weight_concentration : float >= 1, default 1 (flat)
        Dirichlet concentration on the mixing weights.
    rate_prior : (alpha, beta), default (1, 0) (flat)
        Gamma(shape alpha >= 1, rate beta >= 0) prior on every rate; the M-step is
        ``(alpha - 1 + sum r x) / (beta + sum r)``.

    Attributes: ``weights_`` (K,), ``rates_`` (K, D), ``converged_``, ``n_iter_``,
    ``lower_bound_`` (penalized objective per unit of weight), ``history_``.
    X holds non-negative integer counts (any integer or whole-valued float dtype).
    """

    _model_name = "poisson"
    _parameter = "rates"
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {"rate_prior": gamma_prior}

    def __init__(
        self,
        n_components: int = 1,
        *,
        tol: float = 1e-3,
        max_iter: int = 100,
        n_init: int = 1,
        params: Any = None,
        accelerate: str | None = None,
        init_params: str = "kmeans",
        weights_init: Any = None,
        rates_init: Any = None,
        weight_concentration: float = 1.0,
        rate_prior: tuple[float, float] = (1.0, 0.0),
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        cache: str = "auto",
        client: Any = None,
        init_sample_size: int = DEFAULT_SAMPLE_SIZE,
    ):
        self._store_params(locals())

    def _family(self) -> PoissonFamily:
        alpha, beta = self.rate_prior
        return PoissonFamily(float(self.weight_concentration), float(alpha), float(beta))

    def _value_check(self, fitting: bool = False) -> ValueCheck:
        return CountCheck()

    def _check_parameter_values(self, values: np.ndarray) -> None:
        if np.any(values <= 0) or not np.all(np.isfinite(values)):
            raise ValueError("rates_init must be positive and finite")


class BernoulliMixture(_DiscreteMixture):
    """Mixture of independent binary features (X holds 0 and 1).

    Parameters as PoissonMixture, with ``probabilities_init`` (K, D) in (0, 1) and
    ``pseudocount`` a >= 0 (default 0): a Beta(1 + a, 1 + a) prior, M-step
    ``(sum r x + a) / (sum r + 2 a)``.  Attributes: ``weights_``, ``probabilities_``.
    """

    _model_name = "bernoulli"
    _parameter = "probabilities"
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {"pseudocount": at_least(0)}

    def __init__(
        self,
        n_components: int = 1,
        *,
        tol: float = 1e-3,
        max_iter: int = 100,
        n_init: int = 1,
        params: Any = None,
        accelerate: str | None = None,
        init_params: str = "kmeans",
        weights_init: Any = None,
        probabilities_init: Any = None,
        weight_concentration: float = 1.0,
        pseudocount: float = 0.0,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        cache: str = "auto",
        client: Any = None,
        init_sample_size: int = DEFAULT_SAMPLE_SIZE,
    ):
        self._store_params(locals())

    def _family(self) -> BernoulliFamily:
        return BernoulliFamily(float(self.weight_concentration), float(self.pseudocount))

    def _value_check(self, fitting: bool = False) -> ValueCheck:
        return BinaryCheck()

    def _check_parameter_values(self, values: np.ndarray) -> None:
        if np.any(values < 0) or np.any(values > 1):
            raise ValueError("probabilities_init must lie in [0, 1]")


class CategoricalMixture(_DiscreteMixture):
    """Mixture of independent categorical features (X holds integer symbols 0..M-1).

    Parameters as PoissonMixture, with ``n_symbols`` M (default: one more than the
    largest symbol in the data), ``probabilities_init`` (K, D, M) and ``pseudocount``
    a >= 0 (default 0): a Dirichlet(1 + a) prior on every ``[k, d, :]``, M-step
    ``(C + a) / (sum r + M a)``.  Attributes: ``weights_``, ``probabilities_``
    (K, D, M), ``n_symbols_``.
    """

    _model_name = "categorical"
    _parameter = "probabilities"
    _parameter_dims = ("component", "feature", "symbol")
    _parameter_constraints = SYMBOL_CONSTRAINTS
    _symbol_count = SymbolCount("probabilities_init")
    #: The symbol count, learned from the scan, shapes the E-step: the scan pass always
    #: runs alone (:mod:`dask_em.estimators.first_pass`).
    _estep_needs_scan = True

    def __init__(
        self,
        n_components: int = 1,
        *,
        n_symbols: int | None = None,
        tol: float = 1e-3,
        max_iter: int = 100,
        n_init: int = 1,
        params: Any = None,
        accelerate: str | None = None,
        init_params: str = "kmeans",
        weights_init: Any = None,
        probabilities_init: Any = None,
        weight_concentration: float = 1.0,
        pseudocount: float = 0.0,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        cache: str = "auto",
        client: Any = None,
        init_sample_size: int = DEFAULT_SAMPLE_SIZE,
    ):
        self._store_params(locals())

    def _family(self) -> CategoricalFamily:
        return CategoricalFamily(
            float(self.weight_concentration),
            int(self._symbol_count.current(self)),
            float(self.pseudocount),
        )

    def _value_check(self, fitting: bool = False) -> ValueCheck:
        return self._symbol_count.check(self, fitting)

    def _learn_from_scan(self, scan: dict) -> None:
        self._symbol_count.learn(self, scan)

    def _parameter_shape(self, n_features: int) -> tuple[int, ...]:
        return (self.n_components, n_features, self._symbol_count.declared(self))

    def _check_parameter_values(self, values: np.ndarray) -> None:
        if np.any(values < 0) or not np.allclose(values.sum(axis=-1), 1.0, atol=1e-6):
            raise ValueError("probabilities_init must be non-negative and sum to 1 over symbols")

    def _restore_variables(self, variables: dict[str, np.ndarray]) -> None:
        super()._restore_variables(variables)
        self.n_symbols_ = int(variables["probabilities"].shape[-1])

"""What every mixture estimator shares: its surface (fit, predict, score, sample, ...).

A subclass supplies the family (``_family``), the initial values the user gave
(``_given_init``) and how they complete the computed ones (``_combine_init``), and
the mapping between the parameter dict and its fitted attributes (``_set_fitted`` /
``_fitted_params``, ``_model_variables`` / ``_restore_variables`` for files).  The
fit itself is the fit driver's (:mod:`dask_em.estimators.driver`); prediction graphs
are the engine's (:func:`dask_em.engine.apply_blocks`).

``score`` is the mean log-likelihood per row, as scikit-learn's (a hidden Markov
model's is the total, as hmmlearn's; see :class:`dask_em.hmm._base.BaseHMM`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from dask_em.data import (
    FINITE,
    ValueCheck,
    as_float_matrix,
    as_row_chunked,
    as_sample_weight,
    is_lazy,
    like_input,
    n_rows,
)
from dask_em.em import IterationRecord
from dask_em.engine import CACHE_MODES, LOCAL_FIT_BYTES, apply_blocks, as_float
from dask_em.estimators import driver
from dask_em.estimators.base import Estimator
from dask_em.estimators.held import HeldParams, hold_discrete, hold_gaussian, parse_names
from dask_em.estimators.params import Constraint, at_least, check_distribution, integer, one_of
from dask_em.families.base import Params, log_normalize
from dask_em.initialization import INIT_METHODS
from dask_em.seeds import seed_from


class BaseMixture(Estimator):
    """Base class of dask_em's mixture estimators (scikit-learn's estimator surface)."""

    _model_name = "mixture"
    #: A component that loses all its data is re-seeded (with a warning).
    _reseeds_empty_components = True
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        "n_components": integer(1),
        "tol": at_least(0),
        "max_iter": integer(1),
        "n_init": integer(1),
        "cache": one_of(CACHE_MODES),
        "init_params": one_of(INIT_METHODS),
    }

    # -- subclass hooks -----------------------------------------------------------
    def _family(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _value_check(self, fitting: bool = False) -> ValueCheck:
        """Which values the model accepts (default: any finite number).

        ``fitting``: for the data being fitted (before anything is learned from it),
        rather than for data given to the fitted model.
        """
        return FINITE

    def _learn_from_scan(self, scan: dict) -> None:
        """Settle what the data decides before initialization (e.g. the symbol count)."""

    def _all_missing_message(self, count: int) -> str:
        return (
            f"{count} rows of X have every feature missing; they carry no information and "
            "are left out of the fit"
        )

    def _updatable(self) -> tuple[str, ...]:
        """The names ``params`` may list: the family's parameters (hook)."""
        return ("weights", self._parameter)

    def _check_init(self, n_features: int) -> None:
        parse_names(self.params, self._updatable())
        if getattr(self, "weights_init", None) is not None:
            K = self.n_components
            check_distribution("weights_init", self.weights_init, (K,), "sum to 1")

    def _initial_params(self, init_pass: Callable, scan: dict, rng) -> Params:
        """Initial parameters: given ``*_init`` values, the rest from ``init_pass(family)``
        (the driver's init pass over the data)."""
        given = self._given_init()
        computed: Params = {}
        if any(value is None for value in given.values()):
            computed = init_pass(self._family())
        return self._combine_init(computed, given)

    def _init_method(self) -> str:
        """How the driver's init pass picks its centres (scikit-learn's ``init_params``)."""
        return self.init_params

    def _held_family(self, family: Any, start: Params) -> Any:
        """``family`` with an M-step that updates only the parameters named in ``params``
        (:mod:`dask_em.estimators.held`); ``family`` itself when that is all of them."""
        update = parse_names(self.params, self._updatable())
        if update == frozenset(self._updatable()):
            return family
        return HeldParams(family, start, functools.partial(_hold, family, update))

    def _given_init(self) -> dict[str, Any]:
        """``{parameter: the user's initial value or None}``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _combine_init(self, computed: Params, given: dict[str, Any]) -> Params:
        """Parameters from the given initial values, completed by the computed ones."""
        values = {
            name: computed[name] if value is None else np.asarray(value, dtype=np.float64)
            for name, value in given.items()
        }
        return self._family().make_params(**values)

    # -- fitting ------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        y: Any = None,
        sample_weight: Any = None,
        *,
        storage_options: dict | None = None,
        strict_input: bool = False,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        callbacks: Sequence[Callable[[IterationRecord, Params], None]] = (),
    ) -> BaseMixture:
        """Estimate the parameters with EM, on the active Dask client if there is one.

        Parameters
        ----------
        X : array-like, dask array, xarray DataArray or Zarr path, (n_samples, n_features)
            A path may be an fsspec URL (``"s3://bucket/X.zarr"``).
        y : ignored (scikit-learn compatibility).
        sample_weight : (n_samples,) non-negative weights, or None.  An integer weight
            counts as that many copies of its row.
        storage_options : dict, optional
            fsspec options for opening the Zarr URL ``X``, e.g. ``{"key": ...,
            "secret": ..., "endpoint_url": ...}`` for S3.  The workers read the store
            with them and need no credentials of their own; secrets (keys, secrets,
            tokens, passwords) never enter the task graph: they reach the workers in a
            worker plugin (:mod:`dask_em.credentials`).  Only for a path or URL.
        strict_input : refuse a Zarr ``X`` with chunks absent from its store (they read
            as the fill value) instead of warning (:class:`~dask_em.InputGapWarning`).
            A store that dask_em wrote is always refused with an absent chunk.
        checkpoint : path of a Zarr store where the fit's state is written after every
            iteration (:mod:`dask_em.checkpoint`).  Refused if it exists, unless ``resume``.
        resume : continue from ``checkpoint`` if it exists (else start afresh); the
            result equals that of an uninterrupted fit.
        callbacks : called as ``callback(record, params)`` after every iteration.

        Runs ``n_init`` initializations and keeps the one with the best final objective.
        The first pass over the data checks it (NaN/inf, weights) and draws the sample
        used for initialization and re-seeding.
        """
        data = self._fit_data(
            X,
            sample_weight=sample_weight,
            storage_options=storage_options,
            strict_input=strict_input,
        )
        return self._run_fit(data, checkpoint, resume, callbacks)

    def _fit_data(
        self,
        X: Any,
        sample_weight: Any = None,
        storage_options: dict | None = None,
        strict_input: bool = False,
    ) -> driver.FitData:
        """X and the weights as the fit driver takes them, checked against this model's
        parameters (see :meth:`fit`), before any cluster work where possible."""
        if storage_options is not None and not isinstance(X, (str, os.PathLike)):
            raise ValueError(
                "storage_options apply only when X is the path or URL of a Zarr array, "
                f"not {type(X).__name__}"
            )
        in_memory = not is_lazy(X)
        given = X
        check = self._value_check(fitting=True)
        X = as_row_chunked(
            X,
            storage_options=storage_options,
            check=None,
            keep_integers=check.keeps_integers,
            strict_input=strict_input,
        )
        n_samples, n_features = X.shape
        self._check_hyperparameters(n_features)
        if in_memory:  # checked here, before any cluster work; lazy data in the scan pass
            as_float_matrix(
                given.data if hasattr(given, "dims") else given,
                check=check,
                keep_integers=check.keeps_integers,
            )
        if n_samples < self.n_components:
            raise ValueError(
                f"expected n_samples >= n_components, got n_samples={n_samples} and "
                f"n_components={self.n_components}"
            )
        return driver.FitData(
            X,
            weights=as_sample_weight(sample_weight, X),
            local=in_memory and X.nbytes <= LOCAL_FIT_BYTES,
            check=check,
        )

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """Fit, then label X with the fitted model (the labels of the final E-step)."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    # -- prediction ---------------------------------------------------------------
    def _apply(self, X: Any, kernel, out_columns: int | None, dtype) -> Any:
        """Apply ``kernel(family, params, block)`` to every block of X.

        NumPy in, NumPy out; dask array, dask DataFrame, DataArray over dask, or Zarr
        path in, a lazy dask array out, chunked like X along rows (on ``client`` if
        set).  The public methods label it like X (:func:`dask_em.data.like_input`).
        """
        self._check_fitted()
        family, params, check = self._family(), self._fitted_params(), self._value_check()
        if not is_lazy(X):
            X = as_float_matrix(X.data if hasattr(X, "dims") else X, check=check)
            self._check_n_features(X.shape[1])
            return kernel(family, params, X)
        X = as_row_chunked(X, check=check)
        self._check_n_features(X.shape[1])
        trailing = () if out_columns is None else (out_columns,)
        (result,) = apply_blocks(
            X,
            kernel,
            family,
            params,
            check,
            name=f"{kernel.__name__.strip('_')}-{self._model_name}",
            outputs=[("row", trailing, dtype)],
            client=self.client,
        )
        return result

    def predict(self, X: Any) -> Any:
        """Most likely component of each row, shape (n_samples,), int64.

        A DataArray X gives a DataArray on X's sample dim and coordinates (likewise
        ``predict_proba``, with a ``component`` dim, and ``score_samples``).
        """
        return like_input(X, self._apply(X, _predict, None, np.int64), "label")

    def predict_proba(self, X: Any) -> Any:
        """Posterior probability of each component, shape (n_samples, n_components)."""
        probabilities = self._apply(X, _predict_proba, self.n_components, np.float64)
        return like_input(X, probabilities, "probability")

    def score_samples(self, X: Any) -> Any:
        """Log-likelihood ``log p(x_i)`` of each row, shape (n_samples,) (nats)."""
        return like_input(X, self._apply(X, _score_samples, None, np.float64), "log_likelihood")

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per row (nats)."""
        return as_float(self._apply(X, _score_samples, None, np.float64).mean())

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on X (lower is better)."""
        return self.information_criteria(self.score(X), n_rows(X))[0]

    def aic(self, X: Any) -> float:
        """Akaike information criterion on X (lower is better)."""
        return self.information_criteria(self.score(X), n_rows(X))[1]

    def information_criteria(self, mean_score: float, n: int) -> tuple[float, float]:
        """``(BIC, AIC)`` of ``n`` rows whose mean log-likelihood is ``mean_score``."""
        n_parameters = self._n_parameters()
        bic = -2.0 * mean_score * n + n_parameters * math.log(n)
        aic = -2.0 * mean_score * n + 2.0 * n_parameters
        return bic, aic

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted model: ``(X (n, D), labels (n,))``."""
        self._check_fitted()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        family, params = self._family(), self._fitted_params()
        rng = np.random.default_rng(seed_from(self.random_state))
        counts = rng.multinomial(n_samples, params["weights"])
        X = np.vstack(
            [family.sample_component(params, k, int(c), rng) for k, c in enumerate(counts)]
        )
        labels = np.repeat(np.arange(len(counts)), counts)
        return X, labels


def _hold(family: Any, update: frozenset[str], new: Params, start: Params, stats) -> Params:
    if hasattr(family, "parameter"):
        return hold_discrete(family, new, start, update)
    return hold_gaussian(family, new, start, stats, update)


def _predict(family, params, X):
    return np.argmax(family.weighted_log_prob(params, X), axis=1)


def _predict_proba(family, params, X):
    return log_normalize(family.weighted_log_prob(params, X))[1]


def _score_samples(family, params, X):
    return log_normalize(family.weighted_log_prob(params, X))[0]

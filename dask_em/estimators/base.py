"""The estimator protocol every model shares (mixtures and hidden Markov models alike).

- parameters declared once (``__init__``'s signature, checked by the table
  ``_parameter_constraints``, :mod:`dask_em.estimators.params`), scikit-learn's
  ``get_params``/``set_params``/``repr``;
- registration: a class with its own ``_model_name`` joins :mod:`dask_em.registry` as
  it is defined;
- fitted checks, the fitted attributes a fit sets (``converged_``, ``n_iter_``,
  ``lower_bound_``, ``history_``, ``data_placement_``, ...), save/load.

What a fit does is the fit driver's (:mod:`dask_em.estimators.driver`); what a model
is and how it predicts is its base's (:class:`~dask_em.mixture._base.BaseMixture`,
:class:`~dask_em.hmm._base.BaseHMM`).
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from dask_em import model_io, registry
from dask_em.acceleration import ACCELERATE_METHODS, check_accelerate
from dask_em.acceleration.newton import check_coordinates
from dask_em.em import FitResult, IterationRecord
from dask_em.estimators import driver, params, sklearn_protocol
from dask_em.exceptions import ConvergenceWarning
from dask_em.families.base import Params


class Estimator:
    """Base of every dask_em estimator (see module docstring)."""

    #: Short model name: the command line's MODEL, task names (``estep-<name>``).
    _model_name: ClassVar[str] = "model"
    #: The data are many sequences (``fit(X, lengths)``), not independent rows.
    _sequences: ClassVar[bool] = False
    #: What the model learns from the scan pass changes its E-step (else a fit whose
    #: starts are all given runs the scan in its first EM pass: ``estimators.first_pass``).
    _estep_needs_scan: ClassVar[bool] = False

    def _scan_check(self) -> Callable[[dict], None] | None:
        """What ``_learn_from_scan`` refuses in the data, as a picklable function of a
        scan (the merged one or one block's) that raises ValueError; None if nothing.
        A block it refuses skips its E-step in a pass that is also the scan."""
        return None

    def _row_order(self) -> Callable | None:
        """How the engine orders each block's rows (:mod:`dask_em.engine.row_order`),
        for models whose rows are exchangeable and whose kernels read some order
        faster; None keeps every block as it comes."""
        return None

    #: ``{parameter: constraint}``, merged along the bases (see :mod:`.params`).
    _parameter_constraints: ClassVar[dict[str, params.Constraint]] = {
        "client": params.client,
        "accelerate": params.one_of(ACCELERATE_METHODS),
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_model_name" in cls.__dict__ and not cls.__name__.startswith(("_", "Base")):
            registry.register(cls, cls._model_name, sequences=cls._sequences)

    # -- scikit-learn parameter protocol ------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p.name for p in signature.parameters.values() if p.name != "self"]

    def _store_params(self, arguments: dict[str, Any]) -> None:
        """Keep the constructor's arguments as attributes (``self._store_params(locals())``).

        As in scikit-learn, ``__init__`` only stores; validation happens in ``fit``.
        """
        for name in self._param_names():
            setattr(self, name, arguments[name])

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters, as scikit-learn's ``BaseEstimator.get_params``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Estimator:
        """Set constructor parameters; unknown names raise ValueError."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        signature = inspect.signature(type(self).__init__).parameters
        shown = []
        for name, value in self.get_params().items():
            if isinstance(value, np.ndarray):
                shown.append(f"{name}=array{value.shape}")
            elif value is not signature[name].default and value != signature[name].default:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    # -- scikit-learn's tags, fitted check, clone, pickle (:mod:`.sklearn_protocol`) ----
    def __sklearn_tags__(self):
        """scikit-learn's tags (>= 1.6); only scikit-learn calls this."""
        return sklearn_protocol.sklearn_tags(self)

    def _more_tags(self) -> dict[str, Any]:
        """scikit-learn 1.5's tags."""
        return sklearn_protocol.legacy_tags(self)

    def _get_tags(self) -> dict[str, Any]:
        """scikit-learn 1.5's tags, its defaults included."""
        return sklearn_protocol.legacy_get_tags(self)

    def __sklearn_is_fitted__(self) -> bool:
        """For scikit-learn's ``check_is_fitted``."""
        return self._is_fitted()

    def __sklearn_clone__(self) -> Estimator:
        """For scikit-learn's ``clone``: the clone shares the client."""
        return sklearn_protocol.clone(self)

    def __getstate__(self) -> dict[str, Any]:
        return sklearn_protocol.state_without_client(self)

    def _check_hyperparameters(self, n_features: int) -> None:
        """The table of constraints, then the ``*_init`` arrays against the data's shape."""
        params.validate(self)
        check_accelerate(self.accelerate, getattr(self, "estep", "exact"))
        self._check_init(n_features)
        fitted_features = getattr(self, "n_features_in_", n_features)
        if (
            getattr(self, "warm_start", False)
            and self._is_fitted()
            and n_features != fitted_features
        ):
            raise ValueError(
                f"warm_start=True continues from parameters fitted to {fitted_features} "
                f"features, but X has {n_features}; fit with warm_start=False to start afresh"
            )
        if self.accelerate == "newton":  # before any pass, not after the init pass
            check_coordinates(self._newton_coordinates(n_features), f"{self!r}", at_least=True)

    def _newton_coordinates(self, n_features: int) -> int:
        """Coordinates ``accelerate="newton"`` differences in every pass whatever the data
        and the start hold (a lower bound, known before the data is read: the driver
        counts them all at the start; hook)."""
        return 0

    def _check_init(self, n_features: int) -> None:
        """Shapes and values of the ``*_init`` arrays (hook)."""

    # -- fitted state ---------------------------------------------------------------
    def _is_fitted(self) -> bool:
        return hasattr(self, "converged_")

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise sklearn_protocol.not_fitted_error(
                f"this {type(self).__name__} is not fitted yet; call fit(X) first"
            )

    def _check_n_features(self, n_features: int) -> None:
        if n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input (it was fitted with them)"
            )

    def _set_fitted(self, params: Params) -> None:  # pragma: no cover - abstract
        """Fitted attributes from the family's parameter dict."""
        raise NotImplementedError

    def _fitted_params(self) -> Params:  # pragma: no cover - abstract
        """The family's parameter dict from the fitted attributes."""
        raise NotImplementedError

    def _run_fit(
        self,
        data: driver.FitData,
        checkpoint: str | os.PathLike | None,
        resume: bool,
        callbacks: Sequence[Callable[[IterationRecord, Params], None]],
    ):
        """Fit with the fit driver, then set the fitted attributes; returns self."""
        outcome = driver.fit(self, data, checkpoint=checkpoint, resume=resume, callbacks=callbacks)
        self.data_placement_ = outcome.data_placement
        self._set_fit_result(outcome.best, data.shape[1], outcome.passes, outcome.bytes_read)
        return self

    def _set_fit_result(
        self, best: FitResult, n_features: int, passes: int = 0, bytes_read: int = 0
    ) -> None:
        """The fitted attributes of a finished fit (the best of its restarts).

        ``n_passes_``: every pass over the data the fit made (scan, initializations and
        EM passes of every restart; with a resumed fit, those its checkpoint recorded
        too); ``bytes_read_``: the bytes of data (X and weights) those passes read.
        """
        self._set_fitted(best.params)
        self.n_features_in_ = n_features
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best.lower_bound
        self.lower_bounds_ = [record.objective for record in best.history]
        self.history_ = [record.as_dict() for record in best.history]
        self.n_passes_ = passes
        self.bytes_read_ = bytes_read
        if not best.converged:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=4,
            )

    def _n_parameters(self) -> int:
        """Free parameters of the fitted model (for BIC and AIC)."""
        return self._family().n_parameters(self.n_components, self.n_features_in_)

    # -- model files ----------------------------------------------------------------
    def to_xarray(self):
        """The fitted model as an xarray Dataset with named dims (what ``save`` writes)."""
        return model_io.to_dataset(self)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the fitted model to a Zarr store through xarray (never pickle)."""
        model_io.save_model(self, path, overwrite=overwrite)

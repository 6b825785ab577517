"""Model-size sweeps: fit every candidate of a parameter grid sharing each pass.

Choosing the number of components (and, for Gaussian mixtures, the covariance type) by
BIC is the classic recipe (mclust; scikit-learn's "GMM model selection" example).  One
fit per candidate reads the data once per pass of each fit; a sweep here reads it once
per pass for all of them: one scan pass, one init pass for every initialization of
every candidate, EM for all candidates in lockstep (the sweep takes as many EM passes
as its slowest candidate), and one last pass that scores each fitted candidate::

    from dask_em import GaussianMixture, sweep

    search = sweep(GaussianMixture(random_state=0), "X.zarr",
                   n_components=range(1, 11), covariance_type=["full", "diag"])
    search.results_          # one row per candidate: K, type, BIC, AIC, passes, ...
    search.best_estimator_   # the fitted candidate with the lowest BIC

The shape follows scikit-learn's ``GridSearchCV``: a ``param_grid``, ``best_params_``,
``best_index_``, ``best_estimator_``, and a table of results (here a pandas DataFrame,
``results_``).  The criteria are in-sample (no cross-validation):
``BIC = -2 log L + p log n`` and ``AIC = -2 log L + 2 p`` with ``log L`` the
log-likelihood of the data at the fitted parameters (prior excluded), ``p`` the free
parameters and ``n`` the rows (the total weight with ``sample_weight``; the steps, for
hidden Markov models); lower is better.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from dask_em.estimators import driver, sklearn_protocol
from dask_em.zarr_source import InputGapWarning

CRITERIA = ("bic", "aic")


def parameter_grid(param_grid: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``param_grid``'s values, the first parameter varying
    slowest: ``{"n_components": [1, 2], "covariance_type": ["full", "diag"]}`` gives
    (1, full), (1, diag), (2, full), (2, diag)."""
    if not param_grid:
        raise ValueError("the parameter grid is empty: give at least one parameter and values")
    names, values = [], []
    for name, options in param_grid.items():
        options = [options] if isinstance(options, (str, bytes)) else list(options)
        if not options:
            raise ValueError(f"the grid gives no value for {name!r}")
        names.append(name)
        values.append(options)
    return [dict(zip(names, point, strict=True)) for point in itertools.product(*values)]


class ModelSweep:
    """Fit one estimator at every point of ``param_grid``, sharing each pass over the
    data, and keep the candidate with the lowest ``criterion``.

    Parameters
    ----------
    estimator : any dask_em estimator (mixture or hidden Markov model); each candidate
        is a clone of it with a point of the grid set.  Its ``random_state``, ``cache``,
        ``client`` and ``verbose`` serve the whole sweep.
    param_grid : ``{parameter: values}``; every combination is a candidate.
    criterion : ``"bic"`` (default) or ``"aic"``.

    Attributes (after :meth:`fit`)
    ------------------------------
    results_ : pandas DataFrame, one row per candidate in grid order: the grid's
        parameters, ``log_likelihood`` (total, nats), ``n_parameters``, ``bic``,
        ``aic``, ``lower_bound`` (the final mean objective), ``n_iter``, ``passes`` (the EM
        passes of the candidate's best initialization), ``converged``.
    estimators_ : the fitted candidates, in grid order; grid_points_ : their grid points.
    best_index_, best_params_, best_estimator_ : the candidate with the lowest criterion.
    n_passes_, bytes_read_ : passes over the data the whole sweep made (scan, init, EM,
        score) and the bytes they read.
    data_placement_ : where the data was held ("local", "memory" or "stream").
    """

    def __init__(
        self, estimator: Any, param_grid: Mapping[str, Iterable[Any]], *, criterion: str = "bic"
    ) -> None:
        self.estimator = estimator
        self.param_grid = param_grid
        self.criterion = criterion

    def fit(self, X: Any, *args: Any, **fit_params: Any) -> ModelSweep:
        """Fit every candidate to X.  ``args``/``fit_params`` are what the estimator's
        ``fit`` takes besides checkpoints: ``sample_weight``, ``storage_options`` and
        ``strict_input``;
        for hidden Markov models ``lengths`` too."""
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        points = parameter_grid(self.param_grid)
        candidates = [
            sklearn_protocol.clone(self.estimator).set_params(**point) for point in points
        ]
        for candidate in candidates:
            if getattr(candidate, "warm_start", False):
                raise ValueError("a sweep fits every candidate afresh: set warm_start=False")
        # every candidate checks the data against its own parameters, before any work;
        # what the input itself is told (absent chunks) is told once
        data = candidates[0]._fit_data(X, *args, **fit_params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputGapWarning)
            for candidate in candidates[1:]:
                candidate._fit_data(X, *args, **fit_params)
        outcome = driver.fit_candidates(candidates, data)
        rows = []
        for point, candidate, best, score in zip(
            points, candidates, outcome.best, outcome.scores, strict=True
        ):
            candidate.data_placement_ = outcome.data_placement
            candidate._set_fit_result(best, data.shape[1], outcome.passes, outcome.bytes_read)
            rows.append({**_shown(point), **_criteria(candidate, score, best)})
        self.results_ = pd.DataFrame(rows)
        self.estimators_ = candidates
        self.grid_points_ = points
        self.best_index_ = int(np.argmin(self.results_[self.criterion].to_numpy()))
        self.best_params_ = points[self.best_index_]
        self.best_estimator_ = candidates[self.best_index_]
        self.n_passes_ = outcome.passes
        self.bytes_read_ = outcome.bytes_read
        self.data_placement_ = outcome.data_placement
        return self


def _shown(point: dict[str, Any]) -> dict[str, Any]:
    """A grid point as table cells (numbers and names as they are, others as text)."""
    return {
        name: value if isinstance(value, (int, float, str, np.integer)) else repr(value)
        for name, value in point.items()
    }


def _criteria(candidate: Any, score: dict, best: Any) -> dict[str, Any]:
    """One row's numbers: log-likelihood at the fitted parameters, BIC, AIC, ..."""
    log_likelihood = float(score["loglik"])
    n = float(score["weight"])
    n_parameters = int(candidate._n_parameters())
    return {
        "log_likelihood": log_likelihood,
        "n_parameters": n_parameters,
        "bic": -2.0 * log_likelihood + n_parameters * math.log(n),
        "aic": -2.0 * log_likelihood + 2.0 * n_parameters,
        "lower_bound": best.lower_bound,
        "n_iter": best.n_iter,
        "passes": best.passes,
        "converged": bool(best.converged),
    }


def sweep(
    estimator: Any, X: Any, *args: Any, criterion: str = "bic", **grid_and_fit: Any
) -> ModelSweep:
    """``ModelSweep(estimator, grid, criterion=criterion).fit(X, *args, **fit_params)``,
    with the grid given as keywords: every keyword the estimator takes as a parameter is
    a grid axis (``n_components=range(1, 11)``); the others (``sample_weight``,
    ``lengths``, ``storage_options``) go to ``fit``."""
    names = set(estimator.get_params())
    grid = {name: values for name, values in grid_and_fit.items() if name in names}
    fit_params = {name: value for name, value in grid_and_fit.items() if name not in names}
    return ModelSweep(estimator, grid, criterion=criterion).fit(X, *args, **fit_params)

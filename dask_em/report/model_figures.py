"""Which pictures and which fitted arrays show each kind of model.

Gaussian mixture: weights, and the sample projected to 2-D with the components'
ellipses.  Poisson, Bernoulli, categorical mixtures: weights and a heatmap of the
parameters.  Hidden Markov models: the transition matrix, the state occupancy of the
sample, a decoded stretch of its first sequence, and the emissions (ellipses over the
sample, or a heatmap).  Pictures of the data need a :class:`ReportSample`; without
one only the parameters are drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_em import registry
from dask_em.report import discrete, gaussian, hmm
from dask_em.report.png import ReportFigure
from dask_em.report.sample import ReportSample

#: The fitted arrays the report prints as text, per model name.
SHOWN_ARRAYS = {
    "gmm": ("weights_", "means_"),
    "poisson": ("weights_", "rates_"),
    "bernoulli": ("weights_", "probabilities_"),
    "categorical": ("weights_",),
    "gaussian-hmm": ("startprob_", "transmat_", "means_"),
    "poisson-hmm": ("startprob_", "transmat_", "lambdas_"),
    "categorical-hmm": ("startprob_", "transmat_", "emissionprob_"),
}


def fitted_arrays(model: Any) -> dict[str, np.ndarray]:
    """The model's main fitted arrays (those of :data:`SHOWN_ARRAYS`), by attribute."""
    names = SHOWN_ARRAYS.get(registry.kind_of(model).name, ())
    return {name: np.asarray(getattr(model, name)) for name in names if hasattr(model, name)}


def model_figures(
    model: Any, sample: ReportSample | None, features: tuple[int, int] | None = None
) -> list[ReportFigure]:
    """The pictures of the fitted ``model`` (see module docstring); needs matplotlib."""
    kind = registry.kind_of(model)
    if kind.sequences:
        return _hmm_figures(model, kind.name, sample, features)
    return _mixture_figures(model, kind.name, sample, features)


def _complete_rows(sample: ReportSample) -> np.ndarray:
    values = np.asarray(sample.values, dtype=np.float64)
    return values[~np.isnan(values).any(axis=1)]


def _mixture_figures(model, name, sample, features) -> list[ReportFigure]:
    figures = [gaussian.weights_figure(np.asarray(model.weights_))]
    if name == "gmm":
        if sample is not None:
            rows = _complete_rows(sample)
            if len(rows):
                means = np.asarray(model.means_)
                covariances = gaussian.full_covariances(
                    model.covariances_, model.covariance_type, means.shape
                )
                labels = np.asarray(model.predict(rows))
                figures.append(
                    gaussian.projection_figure(rows, means, covariances, labels, features)
                )
    elif name == "poisson":
        figures.append(discrete.rates_figure(np.asarray(model.rates_)))
    elif name == "bernoulli":
        figures.append(discrete.bernoulli_figure(np.asarray(model.probabilities_)))
    elif name == "categorical":
        figures.append(discrete.categorical_figure(np.asarray(model.probabilities_)))
    return figures


def _hmm_figures(model, name, sample, features) -> list[ReportFigure]:
    transmat = np.asarray(model.transmat_)
    figures = [hmm.transition_figure(transmat, np.asarray(model.startprob_))]
    states = None
    if sample is not None:
        values, lengths = sample.values, sample.lengths
        posteriors = np.asarray(model.predict_proba(values, lengths))
        _, states = model.decode(values, lengths)
        states = np.asarray(states)
        stationary = hmm.stationary_distribution(transmat)
        figures.append(hmm.occupancy_figure(posteriors, states, stationary))
        first = int(lengths[0]) if lengths is not None else len(states)
        figures.append(
            hmm.decoded_stretch_figure(
                np.asarray(values[:first], dtype=np.float64), states[:first], model.n_components
            )
        )
    if name == "gaussian-hmm":
        if sample is not None:
            values = np.asarray(sample.values, dtype=np.float64)
            complete = ~np.isnan(values).any(axis=1)
            if complete.any():
                figures.append(
                    gaussian.projection_figure(
                        values[complete],
                        np.asarray(model.means_),
                        np.asarray(model.covars_),
                        states[complete],
                        features,
                        title="States over a data sample",
                    )
                )
    elif name == "poisson-hmm":
        figures.append(discrete.rates_figure(np.asarray(model.lambdas_), unit="state"))
    elif name == "categorical-hmm":
        figures.append(discrete.categorical_figure(np.asarray(model.emissionprob_), unit="state"))
    return figures

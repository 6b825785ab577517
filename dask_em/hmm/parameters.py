"""Where an HMM's parameters come from, in hmmlearn's terms: letters, ``*_init``, assignment.

Every parameter of a hidden Markov model has an hmmlearn letter (``s`` start
probabilities, ``t`` transition matrix, and the emission's: ``m``/``c`` Gaussian means
and covariances, ``l`` Poisson rates, ``e`` categorical emission probabilities), a
fitted attribute (``startprob_``, ``covariances_``, ...) that may be assigned, and an
initial value (``startprob_init``, ...).  A :class:`Parameter` ties them together.

- ``params`` (letters): what EM updates; the others stay bitwise as they started
  (:func:`hold`, a partial M-step, see :mod:`dask_em.estimators.held`).
- ``init_params`` (letters, or an initialization method, which means every letter):
  what a fit initializes itself; a parameter whose letter is missing starts from its
  ``*_init`` value, else from its assigned attribute, else the fit stops with an error
  saying so.  A ``*_init`` value is always used where given.
- A model whose every parameter is assigned or given by ``*_init`` predicts, decodes,
  scores and samples without a fit, as in hmmlearn (:func:`current_params`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_em.estimators.held import hold_gaussian, keep_zeros, parse_letters
from dask_em.families.base import Params, Stats
from dask_em.families.hmm import HMMFamily
from dask_em.initialization import INIT_METHODS

#: The initialization method used when ``init_params`` is given as letters (hmmlearn's).
DEFAULT_INIT_METHOD = "kmeans"


@dataclass(frozen=True)
class Parameter:
    """One parameter: its hmmlearn ``letter``, its ``name`` in the family's parameter
    dict, the ``attribute`` it is fitted to and its ``init`` constructor parameter."""

    letter: str
    name: str
    attribute: str
    init: str


START = Parameter("s", "startprob", "startprob_", "startprob_init")
TRANSITIONS = Parameter("t", "transmat", "transmat_", "transmat_init")


def table(estimator: Any) -> tuple[Parameter, ...]:
    """Every parameter of the model: start, transitions, then the emission's."""
    return (START, TRANSITIONS, *estimator._emission_parameters)


def letters(estimator: Any) -> str:
    """The model's hmmlearn letters, e.g. ``"stmc"``."""
    return "".join(p.letter for p in table(estimator))


def updated(estimator: Any) -> frozenset[str]:
    """The letters of ``params``: what EM updates."""
    return parse_letters(estimator.params, letters(estimator), "params")


def init_plan(estimator: Any) -> tuple[frozenset[str], str]:
    """``(letters initialized by the fit, initialization method)`` from ``init_params``."""
    value = estimator.init_params
    if value in INIT_METHODS:
        return frozenset(letters(estimator)), value
    try:
        return parse_letters(value, letters(estimator), "init_params"), DEFAULT_INIT_METHOD
    except ValueError:
        raise ValueError(
            f"init_params must be a string of the letters {letters(estimator)!r} (hmmlearn's "
            f"codes) or one of {INIT_METHODS}, got {value!r}"
        ) from None


def current(estimator: Any, parameter: Parameter) -> Any:
    """The assigned (or fitted) attribute, else the ``*_init`` value, else None."""
    value = getattr(estimator, parameter.attribute, None)
    return value if value is not None else getattr(estimator, parameter.init)


def all_set(estimator: Any) -> bool:
    """Whether every parameter is assigned, fitted or given by ``*_init``."""
    return all(current(estimator, p) is not None for p in table(estimator))


def current_params(estimator: Any) -> Params:
    """The family's parameter dict of the model as it stands (fitted or assigned)."""
    values = {p.name: current(estimator, p) for p in table(estimator)}
    return _as_family_params(estimator, values, seed=getattr(estimator, "estep_seed_", 0))


def initial_values(estimator: Any) -> dict[str, Any]:
    """``{name: value or None}``: None where the fit initializes the parameter itself."""
    initialized, _ = init_plan(estimator)
    values = {}
    for p in table(estimator):
        value = getattr(estimator, p.init)
        if value is None and p.letter not in initialized:
            value = getattr(estimator, p.attribute, None)
            if value is None:
                raise ValueError(
                    f"init_params={estimator.init_params!r} leaves {p.attribute} (letter "
                    f"{p.letter!r}) uninitialized: give {p.init} or assign {p.attribute}"
                )
        values[p.name] = value
    return values


def _as_family_params(estimator: Any, values: dict[str, Any], seed: int = 0) -> Params:
    K = estimator.n_components
    emission = {
        p.name: estimator._to_family(p.name, np.asarray(values[p.name], dtype=np.float64))
        for p in estimator._emission_parameters
    }
    return HMMFamily.make_params(
        values["startprob"],
        values["transmat"],
        estimator._emission_family().make_params(np.full(K, 1.0 / K), **emission),
        seed=seed,
    )


def hold(estimator: Any, new: Params, start: Params, stats: Stats | None) -> Params:
    """The M-step's ``new`` parameters with those outside ``params`` taken from ``start``,
    and the exact zeros of the start and transition probabilities kept."""
    update = updated(estimator)
    out = dict(new)
    for p in (START, TRANSITIONS):
        if p.letter in update:
            out[p.name] = keep_zeros(new[p.name], start[p.name])
        else:
            out[p.name] = start[p.name]
    names = frozenset(p.name for p in estimator._emission_parameters if p.letter in update)
    if not names:
        out["emission"] = start["emission"]
    elif len(names) < len(estimator._emission_parameters):  # Gaussian: means or covariances
        out["emission"] = hold_gaussian(
            estimator._emission_family(),
            new["emission"],
            start["emission"],
            None if stats is None else stats["emission"],
            names | {"weights"},
        )
    return out


def n_features(estimator: Any) -> int:
    """Features per step, from the set parameters (hmmlearn infers it the same way): the
    last axis of the first emission parameter (means, rates); 1 for categorical."""
    first = estimator._emission_parameters[0]
    if first.name == "probabilities":
        return 1
    return int(np.shape(current(estimator, first))[-1])


def chain_coordinates(estimator: Any) -> int:
    """The start and transition probabilities' coordinates ``accelerate="newton"``
    differences from the start: for each row EM updates (letters ``s``, ``t``), its
    nonzero entries less one (exact zeros stay zero; a row's centred log-ratios sum to
    zero).  The start is the fitted model's on a warm start, else the ``*_init`` values
    or assigned attributes, else uniform (as the fit takes it)."""
    K = estimator.n_components
    warm = estimator.warm_start and estimator._is_fitted()
    values = {} if warm else initial_values(estimator)
    update = updated(estimator)
    count = 0
    for p in (START, TRANSITIONS):
        if p.letter not in update:
            continue
        value = getattr(estimator, p.attribute) if warm else values[p.name]
        shape = (K,) if p is START else (K, K)
        rows = np.full(shape, 1.0 / K) if value is None else np.asarray(value, dtype=float)
        nonzero = np.count_nonzero(rows.reshape(-1, K), axis=1)
        count += int(np.maximum(nonzero - 1, 0).sum())
    return count

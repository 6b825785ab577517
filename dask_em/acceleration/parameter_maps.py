"""Parameter maps: every family's parameter dict <-> one unconstrained flat vector.

:func:`parameter_map` builds, for a family and the points of one extrapolation, a
:class:`ParameterMap` whose ``to_vector`` takes the arrays an EM step moves into the
coordinates of :mod:`dask_em.acceleration.coordinates` and whose ``to_params`` goes back
and completes the dict through the family's own ``make_params`` (so derived fields,
``center``, ``precisions_cholesky`` and ``covariances``, are recomputed as the M-step
would).  For the points the map was built from, ``to_params(to_vector(p))`` is ``p`` to
rounding (the held zeros exactly).

==================  =========================================  ========================
family              field (shape)                              coordinates
==================  =========================================  ========================
every mixture       weights (K,)                               centred log-ratios
Gaussian            means (K, D)                               free
Gaussian full       covariances (K, D, D)                      log-diagonal Cholesky
Gaussian tied       covariances (D, D)                         log-diagonal Cholesky
Gaussian diag       covariances (K, D)                         log
Gaussian spherical  covariances (K,)                           log
Poisson             rates (K, D)                               log
categorical         probabilities (K, D, M)                    centred log-ratios per row
Bernoulli           probabilities (K, D)                       logit
HMM                 startprob (K,), transmat (K, K) rows       centred log-ratios
HMM                 emission                                   the emission family's map
HMM                 seed                                       copied from the template
==================  =========================================  ========================

The HMM's Monte Carlo E-step (``estep="sample"``) is refused: its objective is a noisy
estimate, so the monotone safeguard of SQUAREM could not tell a bad extrapolation from
noise, and accepted points would not be guaranteed to improve.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from scipy import linalg

from dask_em.acceleration.coordinates import (
    CholeskyStack,
    FreeArray,
    InfeasiblePoint,
    PositiveArray,
    SimplexRows,
    UnitIntervalArray,
)
from dask_em.families.base import Params
from dask_em.families.bernoulli import BernoulliFamily
from dask_em.families.categorical import CategoricalFamily
from dask_em.families.gaussian import GaussianFamily
from dask_em.families.hmm import HMMFamily
from dask_em.families.poisson import PoissonFamily


class Coordinates(Protocol):
    """One field's map (see :mod:`dask_em.acceleration.coordinates`)."""

    @property
    def size(self) -> int: ...

    def forward(self, value: Any) -> np.ndarray: ...

    def inverse(self, vector: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class ParameterMap:
    """A parameter dict <-> a flat vector (module docstring).

    ``fields`` name the dict entries the vector holds, in order; ``rebuild`` turns the
    dict of their values into a complete parameter dict (the family's ``make_params``).
    ``unread`` names fields EM's image does not depend on (the HMM's emission weights:
    no HMM E-step weighs its states by them; the Gaussian kernels centre the data on
    ``weights @ means``, which changes the image by rounding only).
    """

    fields: tuple[tuple[str, Coordinates], ...]
    rebuild: Callable[[dict[str, Any]], Params]
    unread: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        return sum(coordinates.size for _, coordinates in self.fields)

    def to_vector(self, params: Params) -> np.ndarray:
        """The unconstrained coordinates of ``params``, shape (size,), float64."""
        parts = [coordinates.forward(params[name]) for name, coordinates in self.fields]
        return np.concatenate(parts) if parts else np.zeros(0)

    def to_params(self, vector: np.ndarray) -> Params:
        """The complete parameter dict at ``vector``; :class:`InfeasiblePoint` when the
        vector overflows, or the family rejects the result (e.g. a covariance that is not
        numerically positive definite)."""
        values = {
            name: coordinates.inverse(vector[start : start + coordinates.size])
            for name, coordinates, start in self._spans()
        }
        try:
            return self.rebuild(values)
        except (ValueError, linalg.LinAlgError, FloatingPointError) as error:
            raise InfeasiblePoint(str(error)) from error

    def simplex_rows(self) -> list[np.ndarray]:
        """The vector positions of every probability row's free entries (centred
        log-ratios: each row's coordinates sum to zero), nested maps included."""
        return [
            start + row
            for _, coordinates, start in self._spans()
            if hasattr(coordinates, "simplex_rows")
            for row in coordinates.simplex_rows()
        ]

    def unread_positions(self) -> np.ndarray:
        """The vector positions of the ``unread`` fields, nested maps included: the
        columns of EM's Jacobian there are zero."""
        found = []
        for name, coordinates, start in self._spans():
            if name in self.unread:
                found.append(np.arange(start, start + coordinates.size))
            elif hasattr(coordinates, "unread_positions"):
                found.append(start + coordinates.unread_positions())
        return np.concatenate(found) if found else np.zeros(0, dtype=np.intp)

    def _spans(self) -> Iterator[tuple[str, Coordinates, int]]:
        """``(name, coordinates, start)`` of each field: its coordinates are the vector's
        ``[start, start + coordinates.size)``."""
        start = 0
        for name, coordinates in self.fields:
            yield name, coordinates, start
            start += coordinates.size

    # a map is itself the coordinates of a nested dict (the HMM's emission)
    forward = to_vector
    inverse = to_params


def parameter_map(family: Any, points: Sequence[Params]) -> ParameterMap:
    """The map for ``family``'s parameter dicts, built from ``points`` (oldest first).

    Entries that are exactly zero in any point are held fixed at the last point's value.
    Raises TypeError for a family without a map and ValueError for the HMM's sampling
    E-step (module docstring).
    """
    if not points:
        raise ValueError("a parameter map needs at least one point")
    base = getattr(family, "base_family", None)
    if base is not None:  # an M-step that holds some parameters (estimators.held)
        inner = parameter_map(base, points)
        restore = family.restore_held
        return replace(inner, rebuild=lambda values: restore(inner.rebuild(values)))
    for kind, builder in _BUILDERS:
        if isinstance(family, kind):
            return builder(family, points)
    raise TypeError(
        f"no parameter map for {type(family).__name__}; "
        "add one to dask_em.acceleration.parameter_maps"
    )


def _field(points: Sequence[Params], name: str) -> list[np.ndarray]:
    return [np.asarray(p[name], dtype=np.float64) for p in points]


def _gaussian_map(family: GaussianFamily, points: Sequence[Params]) -> ParameterMap:
    covariance = {
        "full": CholeskyStack,
        "tied": CholeskyStack,
        "diag": PositiveArray,
        "spherical": PositiveArray,
    }[family.covariance_type]
    fields = (
        ("weights", SimplexRows.build(_field(points, "weights"))),
        ("means", FreeArray.build(_field(points, "means"))),
        ("covariances", covariance.build(_field(points, "covariances"))),
    )

    def rebuild(values: dict[str, Any]) -> Params:
        return family.make_params(
            values["weights"], values["means"], covariances=values["covariances"]
        )

    return ParameterMap(fields, rebuild)


def _discrete_map(family: Any, points: Sequence[Params], *, coordinates: Any) -> ParameterMap:
    name = family.parameter
    fields = (
        ("weights", SimplexRows.build(_field(points, "weights"))),
        (name, coordinates.build(_field(points, name))),
    )

    def rebuild(values: dict[str, Any]) -> Params:
        return family.make_params(values["weights"], **{name: values[name]})

    return ParameterMap(fields, rebuild)


def _hmm_map(family: HMMFamily, points: Sequence[Params]) -> ParameterMap:
    if family.estep != "exact":
        raise ValueError(
            f"accelerated EM needs the exact E-step, not estep={family.estep!r}: the "
            "sampled objective is noisy, so a worse extrapolation cannot be told from "
            "noise; use estep='exact' or plain EM"
        )
    emission = parameter_map(family.emission, [p["emission"] for p in points])
    if getattr(family.emission, "weight_concentration", 1.0) == 1.0:
        # the emission's mixing weights: EM's image does not depend on them (with a
        # prior on them, kept differenced all the same: the objective would)
        emission = replace(emission, unread=frozenset({"weights"}))
    fields = (
        ("startprob", SimplexRows.build(_field(points, "startprob"))),
        ("transmat", SimplexRows.build(_field(points, "transmat"))),
        ("emission", emission),
    )
    seed = points[-1]["seed"]

    def rebuild(values: dict[str, Any]) -> Params:
        return family.make_params(
            values["startprob"], values["transmat"], values["emission"], seed=seed
        )

    return ParameterMap(fields, rebuild)


#: Family class -> map builder; the first isinstance match wins.
_BUILDERS: tuple[tuple[type, Callable[[Any, Sequence[Params]], ParameterMap]], ...] = (
    (HMMFamily, _hmm_map),
    (GaussianFamily, _gaussian_map),
    (PoissonFamily, functools.partial(_discrete_map, coordinates=PositiveArray)),
    (CategoricalFamily, functools.partial(_discrete_map, coordinates=SimplexRows)),
    (BernoulliFamily, functools.partial(_discrete_map, coordinates=UnitIntervalArray)),
)

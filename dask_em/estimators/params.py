"""Hyperparameters declared once, in a table, as scikit-learn's ``_parameter_constraints``.

An estimator class lists ``{parameter: constraint}`` in ``_parameter_constraints``
(merged along its bases); :func:`validate` checks every one at the start of ``fit``,
before any cluster work.  A constraint is a callable ``(name, value)`` that raises
ValueError with the parameter's name.  Checks that need the data's shape (the
``*_init`` arrays) stay with the estimator (``_check_init``), using the helpers below.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Constraint = Callable[[str, Any], None]


def integer(minimum: int = 1, *, optional: bool = False, plain: bool = False) -> Constraint:
    """An integer >= ``minimum`` (None allowed with ``optional``).

    ``plain``: the message says ``must be >= minimum`` (for counts given as numbers).
    """

    def check(name: str, value: Any) -> None:
        if optional and value is None:
            return
        if plain:
            if not int(value) >= minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
            return
        if not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

    return check


def at_least(minimum: float, note: str = "") -> Constraint:
    """A number >= ``minimum`` (``note`` goes into the message, e.g. "(1 is flat)")."""

    def check(name: str, value: Any) -> None:
        if not value >= minimum:
            bound = f"{minimum:g}" if isinstance(minimum, float) else f"{minimum}"
            raise ValueError(f"{name} must be >= {bound}{note}, got {value!r}")

    return check


def one_of(options: Sequence[Any]) -> Constraint:
    """One of ``options`` (the message lists them)."""

    def check(name: str, value: Any) -> None:
        if value not in options:
            raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")

    return check


def gamma_prior(name: str, value: Any) -> None:
    """``(alpha >= 1, beta >= 0)`` of a Gamma prior."""
    alpha, beta = value
    if not (alpha >= 1.0 and beta >= 0.0):
        raise ValueError(f"{name} must be (alpha >= 1, beta >= 0), got {value}")


def client(name: str, value: Any) -> None:
    """None (the active client) or a ``distributed.Client`` (anything with ``compute``
    and ``scatter``)."""
    if value is not None and not (hasattr(value, "compute") and hasattr(value, "scatter")):
        raise ValueError(
            f"{name} must be a distributed.Client or None (the active client), "
            f"got {type(value).__name__}"
        )


def validate(estimator: Any) -> None:
    """Check every parameter ``type(estimator)`` declares (see module docstring)."""
    for name, constraint in constraints_of(type(estimator)).items():
        constraint(name, getattr(estimator, name))


def constraints_of(cls: type) -> dict[str, Constraint]:
    """The class's ``_parameter_constraints``, its bases' first."""
    table: dict[str, Constraint] = {}
    for klass in reversed(cls.__mro__):
        table.update(klass.__dict__.get("_parameter_constraints", {}))
    return table


# -- the ``*_init`` arrays --------------------------------------------------------------
def check_shape(name: str, value: Any, expected: tuple[int, ...], context: str = "") -> np.ndarray:
    """``value`` as float64, ValueError unless it has shape ``expected`` (``context``
    completes the message, e.g. " for covariance_type='full'")."""
    array = np.asarray(value, dtype=np.float64)
    if array.shape != expected:
        raise ValueError(f"{name} must have shape {expected}{context}, got {array.shape}")
    return array


def check_distribution(name: str, value: Any, expected: tuple[int, ...], what: str) -> None:
    """Probabilities of shape ``expected``, non-negative, summing to 1 along the last axis
    (``what`` completes the message, e.g. "sum to 1 (along each row)")."""
    array = check_shape(name, value, expected)
    if np.any(array < 0) or not np.allclose(array.sum(axis=-1), 1.0, rtol=0, atol=1e-6):
        raise ValueError(f"{name} must be non-negative and {what}")

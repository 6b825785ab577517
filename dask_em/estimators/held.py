"""EM that updates only some parameters (hmmlearn's ``params``, the mixtures' ``params``).

A fit may hold parameters fixed: hmmlearn's ``params="st"`` updates the start and
transition probabilities and keeps the emissions; a mixture's ``params=("means",)``
keeps the weights and covariances.  The EM loop does not know about it: the driver
hands it the family wrapped in :class:`HeldParams`, whose ``m_step`` (and ``reseed``)
puts the held parameters back, bitwise, from the values the run started from.  That
is a *partial* M-step: the updated parameters maximize the expected complete-data
log-likelihood given the held ones, so the objective still never decreases (a
generalized EM step).  Where an updated parameter depends on a held one, it is
computed given the held value: a Gaussian covariance updated while its mean is held is
the scatter about the held mean (:func:`stats_about_means`), as hmmlearn does.

Structural zeros: an entry that is exactly zero in the start (or transition)
probabilities the run started from stays exactly zero (:func:`keep_zeros`), also under a
Dirichlet prior (the MAP estimate restricted to the other entries).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from dask_em.families.base import Params, Stats

#: ``hold(new, start, stats) -> params``: the M-step's result with the held parts restored.
Hold = Callable[[Params, Params, Stats], Params]


class HeldParams:
    """``family`` whose M-step keeps the parameters ``hold`` restores (module docstring).

    Everything but ``m_step`` and ``reseed`` is the wrapped family's.
    """

    def __init__(self, family: Any, start: Params, hold: Hold):
        self.family = family
        self.start = start
        self.hold = hold

    def __getattr__(self, name: str) -> Any:
        if name in ("family", "start", "hold"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.family, name)

    @property
    def base_family(self) -> Any:
        """The wrapped family (accelerated EM maps its parameters, then :meth:`restore_held`)."""
        return self.family

    def restore_held(self, params: Params) -> Params:
        """``params`` with the held parameters put back (an extrapolated point keeps them)."""
        return self.hold(params, self.start, None)

    def m_step(self, stats: Stats) -> Params:
        return self.hold(self.family.m_step(stats), self.start, stats)

    def reseed(self, params: Params, empty: np.ndarray, sample: np.ndarray) -> Params:
        return self.hold(self.family.reseed(params, empty, sample), self.start, None)


def parse_names(value: Any, allowed: Iterable[str], what: str = "params") -> frozenset[str]:
    """A mixture's ``params``: None (all of ``allowed``), one name, a comma-separated
    string, or a sequence of names; ValueError naming the unknown ones."""
    allowed = tuple(allowed)
    if value is None:
        return frozenset(allowed)
    names = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    unknown = [n for n in names if n not in allowed]
    if unknown or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what} must name parameters among {allowed}; unknown: {unknown}")
    return frozenset(names)


def parse_letters(value: Any, letters: str, what: str) -> frozenset[str]:
    """hmmlearn's letter string (e.g. ``"st"``) as a set; ValueError on other letters."""
    if not isinstance(value, str) or set(value) - set(letters):
        raise ValueError(
            f"{what} must be a string of the letters {letters!r} (hmmlearn's codes), got {value!r}"
        )
    return frozenset(value)


def keep_zeros(new: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``new`` probabilities (last axis sums to 1) with the exact zeros of ``start`` kept.

    Without a prior the M-step keeps them already, and ``new`` comes back unchanged
    (bitwise); where a prior made them positive, they are set to zero and the row is
    renormalized over the other entries (the MAP estimate on that support).
    """
    zeros = start == 0
    if not np.any(new[zeros] != 0):
        return new
    out = np.where(zeros, 0.0, new)
    return out / out.sum(axis=-1, keepdims=True)


# -- Gaussian: covariances about held means -----------------------------------------------
def _add_outer(covariance_type: str, scatter, weight: np.ndarray, delta: np.ndarray):
    """``scatter + weight_k delta_k delta_k^T`` in the covariance type's form."""
    if covariance_type == "full":
        return scatter + weight[:, None, None] * delta[:, :, None] * delta[:, None, :]
    if covariance_type == "tied":
        return scatter + np.einsum("k,ki,kj->ij", weight, delta, delta)
    if covariance_type == "diag":
        return scatter + weight[:, None] * delta**2
    return scatter + weight * (delta**2).sum(axis=1)


def stats_about_means(family: Any, stats: Stats, means: np.ndarray) -> Stats:
    """Gaussian statistics recentred on held ``means`` (K, D): the family's M-step on them
    gives back ``means`` and the covariances that are optimal given them.

    The scatter about the held mean is the scatter about the weighted mean plus
    ``nk (xbar - mu)(xbar - mu)^T``; under a mean prior (pseudocount kappa, mean m0)
    the conditional MAP covariance also holds ``kappa (mu - m0)(mu - m0)^T``, of which the
    family's M-step adds ``kappa nk / (kappa + nk)``, so the rest is added here.
    """
    nk = stats["nk"]
    scatter = _add_outer(family.covariance_type, stats["scatter"], nk, stats["means"] - means)
    kappa = family.mean_pseudocount
    if kappa:
        prior_mean = np.asarray(family.mean_prior, dtype=np.float64)
        offset = means - np.broadcast_to(prior_mean, means.shape)
        scatter = _add_outer(family.covariance_type, scatter, kappa**2 / (kappa + nk), offset)
    return dict(stats, means=means, scatter=scatter)


def hold_gaussian(
    family: Any, new: Params, start: Params, stats: Stats | None, update: frozenset[str]
) -> Params:
    """Gaussian parameters with ``weights``, ``means``, ``covariances`` not in ``update``
    taken from ``start``."""
    if "covariances" in update and "means" not in update and stats is not None:
        new = family.m_step(stats_about_means(family, stats, start["means"]))

    def pick(name: str) -> Params:
        return new if name in update else start

    covariances = pick("covariances")
    return family.make_params(
        pick("weights")["weights"],
        pick("means")["means"],
        covariances=covariances["covariances"],
        precisions_cholesky=covariances["precisions_cholesky"],
    )


def hold_discrete(family: Any, new: Params, start: Params, update: frozenset[str]) -> Params:
    """A discrete family's parameters (``weights`` and ``family.parameter``) with those not
    in ``update`` taken from ``start``."""
    name = family.parameter
    weights = (new if "weights" in update else start)["weights"]
    return family.make_params(weights, **{name: (new if name in update else start)[name]})

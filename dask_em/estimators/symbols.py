"""The symbol count M of a categorical model (mixture or hidden Markov model).

M is ``n_symbols`` if set, else the last axis of the initial probabilities, else one
more than the largest symbol the scan pass saw (``n_symbols_``).  A plain helper: an
estimator holds one :class:`SymbolCount` and passes itself to its methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_em.checks import SymbolCheck
from dask_em.estimators.params import at_least, integer

CONSTRAINTS = {
    "pseudocount": at_least(0),
    "n_symbols": integer(2, optional=True, plain=True),
}


@dataclass(frozen=True)
class SymbolCount:
    """How an estimator's symbol count is found (see module docstring)."""

    #: name of the constructor parameter holding initial probabilities (..., M)
    init_parameter: str

    def declared(self, estimator: Any) -> int | None:
        """M as the user set it (``n_symbols`` or the shape of the initial values)."""
        if estimator.n_symbols is not None:
            return int(estimator.n_symbols)
        init = getattr(estimator, self.init_parameter)
        if init is not None:
            return int(np.shape(init)[-1])
        return None

    def current(self, estimator: Any) -> int | None:
        """M as learned from the data, else as declared."""
        return getattr(estimator, "n_symbols_", None) or self.declared(estimator)

    def check(self, estimator: Any, fitting: bool) -> SymbolCheck:
        """The values accepted: symbols 0..M-1 (any integer >= 0 while M is unknown)."""
        keep = estimator.warm_start and estimator._is_fitted()
        declared = fitting and not keep
        return SymbolCheck(self.declared(estimator) if declared else self.current(estimator))

    def learn(self, estimator: Any, scan: dict) -> None:
        """Set ``n_symbols_`` from the scan pass (unless a warm start keeps it)."""
        if estimator.warm_start and estimator._is_fitted():
            return
        observed = scan["column_max"]
        largest = int(np.nanmax(observed)) if np.isfinite(observed).any() else 0
        estimator.n_symbols_ = self.declared(estimator) or max(largest + 1, 2)

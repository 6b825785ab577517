"""Which values a model accepts: finite numbers, counts, symbols, 0/1, or missing (NaN).

A check finds the first bad entry of a block and says what is wrong with it; the
estimators choose one, the scan pass and the prediction tasks apply it block by block.
"""

from __future__ import annotations

import numpy as np


class ValueCheck:
    """Which values a family accepts; finds the first bad one and says what is wrong.

    The default accepts any finite number.  Subclasses narrow it (counts, symbols, 0/1).
    """

    #: Plural noun phrase for the error message.
    problem = "NaN or infinite values"
    #: Integer data keeps its dtype (the kernels cast one slice at a time).
    keeps_integers = False

    def bad(self, X: np.ndarray) -> np.ndarray:
        """Boolean mask of the entries of the block ``X`` that are not accepted."""
        return ~np.isfinite(X)

    def message(self, count: int, row: int, col: int, value: float, what: str = "X") -> str:
        return (
            f"{what} contains {count} {self.problem}; the first is at row {row}, "
            f"column {col} (value {value!r})"
        )

    def first_problem(self, X: np.ndarray, row_offset: int = 0):
        """``(count, row, col, value)`` of the bad entries of ``X``, or None."""
        bad = self.bad(X)
        count = int(bad.sum())
        if not count:
            return None
        r, c = np.argwhere(bad)[0]
        return count, row_offset + int(r), int(c), X[r, c].item()

    def raise_for(self, X: np.ndarray, row_offset: int = 0, what: str = "X") -> None:
        problem = self.first_problem(X, row_offset)
        if problem is not None:
            raise ValueError(self.message(*problem, what=what))


class CountCheck(ValueCheck):
    """Non-negative integers (Poisson counts); float data must hold whole numbers."""

    problem = "negative, non-integer, NaN or infinite counts"
    keeps_integers = True

    def bad(self, X: np.ndarray) -> np.ndarray:
        if np.issubdtype(X.dtype, np.integer):
            return X < 0
        return ~np.isfinite(X) | (X < 0) | (X != np.floor(X))


class SymbolCheck(ValueCheck):
    """Integer symbols in 0..n_symbols-1 (categorical data); None: any non-negative."""

    keeps_integers = True

    def __init__(self, n_symbols: int | None = None):
        self.n_symbols = n_symbols
        if n_symbols is None:
            self.problem = "values that are not symbols (whole numbers from 0 up)"
        else:
            self.problem = f"values that are not symbols 0..{n_symbols - 1} (n_symbols={n_symbols})"

    def bad(self, X: np.ndarray) -> np.ndarray:
        bad = CountCheck().bad(X)
        if self.n_symbols is not None:
            bad |= X >= self.n_symbols
        return bad


class BinaryCheck(ValueCheck):
    """Only 0 and 1 (Bernoulli data)."""

    problem = "values other than 0 and 1"
    keeps_integers = True

    def bad(self, X: np.ndarray) -> np.ndarray:
        return (X != 0) & (X != 1)


class FiniteOrMissingCheck(ValueCheck):
    """Finite numbers, or NaN for a missing value (Gaussian mixtures marginalize it)."""

    problem = "infinite values (NaN marks a missing value, but inf is not allowed)"

    def bad(self, X: np.ndarray) -> np.ndarray:
        return np.isinf(X)


class OrMissingCheck(ValueCheck):
    """Another check's values, or NaN for a missing observation (a step of a sequence
    that hidden Markov models skip)."""

    keeps_integers = True

    def __init__(self, inner: ValueCheck, problem: str):
        self.inner = inner
        self.problem = problem

    def bad(self, X: np.ndarray) -> np.ndarray:
        bad = self.inner.bad(X)
        if np.issubdtype(X.dtype, np.floating):
            bad &= ~np.isnan(X)
        return bad


FINITE = ValueCheck()

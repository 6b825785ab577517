"""The bounded data sample a report draws its pictures from.

The report reads the *first* rows of the input (at most ``max_rows``, 5,000 by
default): one bounded read of the first block(s), wherever the data lives.  For
sequence models the sample is whole sequences from the start (the first one cut to
``max_rows`` steps if it is longer), so that a decoded stretch is a real stretch of
one sequence.  Nothing here imports Dask: a lazy array is sliced, then turned into
NumPy with ``np.asarray`` (which computes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Rows (steps) a report reads at most.
MAX_SAMPLE_ROWS = 5_000


@dataclass(frozen=True)
class ReportSample:
    """``values`` (n, D) float64 rows from the start of the input; ``lengths`` (S,)
    the whole sequences they hold (sequence models), else None; ``source_rows`` the
    rows (steps) of the whole input."""

    values: np.ndarray
    lengths: np.ndarray | None
    source_rows: int


def data_sample(X: Any, lengths: Any = None, max_rows: int = MAX_SAMPLE_ROWS) -> ReportSample:
    """The first rows of ``X`` (NumPy, dask array, DataArray, or :class:`~dask_em.
    Sequences`), at most ``max_rows``; with ``lengths`` (or Sequences), whole sequences.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if hasattr(X, "lengths_array"):  # Sequences: values and their lengths
        X, lengths = X.values, X.lengths_array
    X = getattr(X, "data", X) if hasattr(X, "dims") else X  # a DataArray's array
    n_rows = int(X.shape[0])
    if lengths is not None:
        lengths = np.asarray(lengths, dtype=np.int64).ravel()
        ends = np.cumsum(lengths)
        whole = int(np.searchsorted(ends, max_rows, side="right"))
        if whole == 0:  # the first sequence alone is longer than max_rows: cut it
            kept = np.array([min(int(lengths[0]), max_rows)])
        else:
            kept = lengths[:whole]
        rows = int(kept.sum())
    else:
        kept, rows = None, min(n_rows, max_rows)
    values = np.asarray(X[:rows], dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    return ReportSample(values, kept, n_rows)

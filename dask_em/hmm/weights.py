"""Per-sequence weights of a hidden Markov model fit (``fit(X, lengths, sample_weight=w)``).

One weight per sequence, checked like the mixtures' per-row weights: finite,
non-negative, not all zero, one per sequence.  A weight scales everything the sequence
contributes to the statistics (its expected start, transition and emission counts and
its log-likelihood), so an integer weight counts as that many copies of the sequence.
The weights travel to the workers with the sequence lengths
(:func:`dask_em.sequences.weighted_lengths`), one table per block.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_sequence_weight(sample_weight: Any, n_sequences: int) -> np.ndarray | None:
    """``sample_weight`` as (S,) float64 (None stays None), or a one-line ValueError."""
    if sample_weight is None:
        return None
    if hasattr(sample_weight, "compute"):  # S numbers: small, read at once like the lengths
        sample_weight = sample_weight.compute()
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n_sequences,):
        raise ValueError(
            f"sample_weight must have one weight per sequence, shape ({n_sequences},), got "
            f"{w.shape}"
        )
    if not np.all(np.isfinite(w)):
        raise ValueError(
            "sample_weight contains NaN or infinite values; first at sequence "
            f"{int(np.argmin(np.isfinite(w)))}"
        )
    if np.any(w < 0):
        raise ValueError(
            "sample_weight must be non-negative; first negative at sequence "
            f"{int(np.argmax(w < 0))}"
        )
    if not w.sum() > 0:
        raise ValueError("sample_weight sums to zero")
    return w

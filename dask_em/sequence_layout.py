"""Where the blocks of a :class:`dask_em.sequences.Sequences` fall: pure NumPy.

Short sequences are grouped, whole, into blocks of about ``steps_per_block`` steps (as
they always were).  A sequence longer than ``steps_per_block`` is split into
``ceil(T_s / steps_per_block)`` *pieces* of near-equal length, each a block of its own;
the hidden Markov models then fit it exactly across the pieces
(:mod:`dask_em.families.hmm_split`).

A layout with split sequences describes its blocks by *segments*: a whole sequence, or
one piece of a split one.  The segments, in storage order, are a :data:`SEGMENT` table:

    length     steps of the segment
    weight     the weight of its sequence (1.0 unless the fit is weighted)
    sequence   the index of its sequence
    piece      its index among the pieces of that sequence (0 for a whole sequence)
    n_pieces   the pieces of that sequence (1 for a whole sequence)

and block b holds ``segments_per_block[b]`` consecutive segments: either whole sequences
only, or exactly one piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: One row per segment of a layout with split sequences (module docstring).
SEGMENT = np.dtype(
    [
        ("length", np.int64),
        ("weight", np.float64),
        ("sequence", np.int64),
        ("piece", np.int64),
        ("n_pieces", np.int64),
    ]
)


def block_boundaries(lengths: np.ndarray, steps_per_block: int) -> np.ndarray:
    """Sequences per block: consecutive sequences grouped into blocks of about
    ``steps_per_block`` steps (a longer sequence gets a block of its own)."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    block_of = starts // max(1, int(steps_per_block))
    _, counts = np.unique(block_of, return_counts=True)
    return counts


@dataclass(frozen=True)
class Layout:
    """The blocks of a set of sequences.

    Attributes
    ----------
    steps : (B,) int64, steps of each block.
    per_block : (B,) int64, entries of ``table`` in each block.
    table : (S,) int64 lengths when no sequence is split; else the (N,) :data:`SEGMENT`
        table of the segments.
    """

    steps: np.ndarray
    per_block: np.ndarray
    table: np.ndarray

    @property
    def split(self) -> bool:
        """True when some sequence is split across blocks."""
        return self.table.dtype == SEGMENT


def plan_layout(lengths: np.ndarray, steps_per_block: int) -> Layout:
    """The blocks of sequences of ``lengths`` (S,) with about ``steps_per_block`` steps
    each (module docstring).  Without a sequence longer than a block, exactly the
    blocks of :func:`block_boundaries`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    steps_per_block = max(1, int(steps_per_block))
    long = np.flatnonzero(lengths > steps_per_block)
    if long.size == 0:
        per_block = block_boundaries(lengths, steps_per_block)
        return Layout(_steps(lengths, per_block), per_block, lengths)
    segments, per_block = [], []
    previous = 0
    for s in [*long.tolist(), len(lengths)]:
        if s > previous:  # the run of short sequences before the long one
            run = block_boundaries(lengths[previous:s], steps_per_block)
            per_block.extend(run.tolist())
            segments.append(_whole(lengths[previous:s], previous))
        if s < len(lengths):
            n_pieces = -(-int(lengths[s]) // steps_per_block)
            piece_lengths = [len(p) for p in np.array_split(np.arange(lengths[s]), n_pieces)]
            table = np.zeros(n_pieces, dtype=SEGMENT)
            table["length"] = piece_lengths
            table["weight"] = 1.0
            table["sequence"] = s
            table["piece"] = np.arange(n_pieces)
            table["n_pieces"] = n_pieces
            segments.append(table)
            per_block.extend([1] * n_pieces)
        previous = s + 1
    table = np.concatenate(segments)
    per_block = np.asarray(per_block, dtype=np.int64)
    return Layout(_steps(table["length"], per_block), per_block, table)


def _whole(lengths: np.ndarray, first: int) -> np.ndarray:
    table = np.zeros(len(lengths), dtype=SEGMENT)
    table["length"] = lengths
    table["weight"] = 1.0
    table["sequence"] = np.arange(first, first + len(lengths))
    table["n_pieces"] = 1
    return table


def _steps(lengths: np.ndarray, per_block: np.ndarray) -> np.ndarray:
    """Steps per block from the lengths of the entries and the entries per block."""
    ends = np.cumsum(per_block)
    totals = np.concatenate([[0], np.cumsum(lengths)])
    return np.diff(totals[np.concatenate([[0], ends])])


def with_weights(table: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A :data:`SEGMENT` table with ``weights`` (S,), one per sequence, filled in."""
    out = table.copy()
    out["weight"] = np.asarray(weights, dtype=np.float64)[table["sequence"]]
    return out


def first_segments(table: np.ndarray) -> np.ndarray:
    """(S,) the index in ``table`` of the first segment of each sequence."""
    return np.flatnonzero(table["piece"] == 0)

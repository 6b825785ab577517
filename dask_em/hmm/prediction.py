"""Prediction graphs of the hidden Markov models: state posteriors and Viterbi per block.

Blocks of whole sequences run the kernel on their own.  A layout with sequences split
across blocks (:mod:`dask_em.sequence_layout`) first needs the summaries of the pieces
(one task per piece, computed at once) and the scan over them, whose boundary messages
travel with the parameters; the per-step outputs stay lazy, and a split sequence's
per-sequence output is read from its first piece (:mod:`dask_em.families.hmm_split`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from dask_em.engine import apply_blocks, block_results
from dask_em.families.base import Params
from dask_em.families.hmm import HMMFamily
from dask_em.families.hmm_split import max_scan, merge_summaries, sum_scan, summary_block
from dask_em.sequence_layout import first_segments
from dask_em.sequences import Sequences


def lazy_outputs(
    sequences: Sequences,
    kernel: Callable[..., Any],
    family: HMMFamily,
    params: Params,
    check: Any,
    *,
    name: str,
    client: Any = None,
) -> tuple[Any, Any]:
    """``(per sequence (S,), per step (T,) or (T, K))`` dask arrays of ``kernel``
    (:meth:`HMMFamily.state_posteriors` or :meth:`HMMFamily.decode`) over the blocks."""
    posteriors = kernel is HMMFamily.state_posteriors
    if sequences.split:
        params = with_pieces(sequences, family, params, "sum" if posteriors else "max", client)
    per_step = (len(params["startprob"]),) if posteriors else ()
    per_sequence, per_step_values = apply_blocks(
        sequences.values,
        kernel,
        family,
        params,
        check,
        name=name,
        outputs=[
            ("sequence", (), np.float64),
            ("row", per_step, np.float64 if per_step else np.int64),
        ],
        lengths=sequences.lengths,
        client=client,
    )
    if sequences.split:  # one entry per segment: keep each sequence's first
        per_sequence = per_sequence[first_segments(sequences.layout.table)]
    return per_sequence, per_step_values


def piece_blocks(sequences: Sequences) -> list[int]:
    """The blocks that hold one piece of a split sequence."""
    layout = sequences.layout
    first = np.concatenate([[0], np.cumsum(layout.per_block)[:-1]])
    single = layout.per_block == 1
    return np.flatnonzero(single & (layout.table["n_pieces"][first] > 1)).tolist()


def with_pieces(
    sequences: Sequences, family: HMMFamily, params: Params, kind: str, client: Any = None
) -> Params:
    """``params`` with the scan of the pieces' ``kind`` ("sum" or "max") summaries under
    ``"pieces"`` (one pass over the pieces, computed now)."""
    parts = block_results(
        sequences.values,
        sequences.lengths,
        functools.partial(_summary, family, kind),
        params,
        piece_blocks(sequences),
        client,
    )
    scan = sum_scan if kind == "sum" else max_scan
    return {**params, "pieces": scan(merge_summaries(*parts), params["startprob"])}


def _summary(family: HMMFamily, kind: str, params: Params, X: np.ndarray, table: np.ndarray):
    return summary_block(family, params, X, table, kind)

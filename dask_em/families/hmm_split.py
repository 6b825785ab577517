"""Exact Baum-Welch, state posteriors and Viterbi over sequences split across blocks.

A sequence longer than a block is stored as pieces, one block each
(:mod:`dask_em.sequence_layout`); a block's lengths are then a ``SEGMENT`` table.  One
E-step over such data takes two rounds:

1. *Summaries* (one task per piece, in parallel): the scaled product ``M_p`` of the
   piece's transition-emission matrices (:mod:`dask_em.families.hmm_pieces`), a K x K
   matrix and its log scale.
2. *Scan* (on the client, in order along each sequence; O(P K^2)): the forward message
   entering piece p, ``f_p = alpha_hat_{a-1}`` (the normalized forward vector at the
   step before the piece: ``f_{p+1} ∝ f_p^T M_p``), the backward message leaving it,
   ``g_p ∝ beta_e`` (``g_P = 1``, ``g_{p-1} ∝ M_p g_p``), and the sequence's
   log-likelihood ``log(pi^T M_1 ... M_P 1)`` with the scales added back.
3. *Statistics* (one task per piece, in parallel): forward-backward over the piece
   alone, started from ``s_p = f_p^T A`` (``pi`` for the first piece) and closed by
   ``g_p`` (added to the last step's log-density: the evidence of the steps after the
   piece).  Its state posteriors are then those of one forward-backward over the whole
   sequence, and its transition counts too, plus the transition that enters the piece,
   counted by the piece it enters (so exactly once):

       xi_{a-1}(i, j) = f_p(i) A_ij gamma_a(j) / s_p(j)       (Rabiner 1989, eq. 37)

Rounds 1 and 3 each read every piece, so an iteration over split sequences reads the
data twice (unless the fit persisted it in memory: ``cache="memory"``, or ``"auto"``
when it fits); nothing is kept on the workers between the rounds.  Viterbi runs the
same rounds in the (max, +) semiring: max-product summaries, a scan that picks the
state at the end of each piece (a backtrack that crosses pieces), and a Viterbi per
piece from the exact entering scores, forced to end in that state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_em.families import hmm_compiled
from dask_em.families.base import Params, Stats, rows_per_slice, sliced_stats
from dask_em.families.hmm_emissions import fused_emission
from dask_em.families.hmm_fused import fused_block_stats
from dask_em.families.hmm_kernels import TimeMajorLayout, _log
from dask_em.families.hmm_pieces_compiled import summaries
from dask_em.families.hmm_split_sampling import sample_piece


def is_segments(lengths: Any) -> bool:
    """True when a block's lengths are a ``SEGMENT`` table (a layout with split
    sequences)."""
    names = getattr(getattr(lengths, "dtype", None), "names", None)
    return bool(names) and "n_pieces" in names


def piece_of(table: np.ndarray) -> np.void | None:
    """The table's one row when the block is one piece of a split sequence, else None."""
    if len(table) == 1 and int(table["n_pieces"][0]) > 1:
        return table[0]
    return None


def _key(row: np.void) -> tuple[int, int]:
    return int(row["sequence"]), int(row["piece"])


# --------------------------------------------------------------------------- round 1
def summary_block(family: Any, params: Params, X: np.ndarray, table: np.ndarray, kind: str):
    """``{(sequence, piece): (n_pieces, log scale, (K, K) summary)}`` of a piece block
    (``kind`` "sum" or "max", :mod:`dask_em.families.hmm_pieces`); {} for other blocks."""
    row = piece_of(table) if is_segments(table) else None
    if row is None:
        return {}
    log_b = family.emission_log_prob(params, X)
    module = summaries(family.compiled)
    summarize = module.sum_product_summary if kind == "sum" else module.max_product_summary
    scale, matrix = summarize(log_b, params["transmat"], int(row["piece"]) == 0)
    return {_key(row): (int(row["n_pieces"]), scale, matrix)}


def merge_summaries(*parts: dict) -> dict:
    """The union of the summaries of several blocks."""
    out: dict = {}
    for part in parts:
        out.update(part)
    return out


def _by_sequence(merged: dict) -> dict[int, list]:
    """The summaries grouped by sequence, in piece order (every piece present)."""
    grouped: dict[int, list] = {}
    for (sequence, piece), (n_pieces, scale, matrix) in sorted(merged.items()):
        grouped.setdefault(sequence, []).append((piece, n_pieces, scale, matrix))
    for sequence, pieces in grouped.items():
        if [p for p, *_ in pieces] != list(range(pieces[0][1])):
            raise ValueError(f"sequence {sequence}: the summaries of some pieces are missing")
    return grouped


# --------------------------------------------------------------------------- round 2
def sum_scan(merged: dict, startprob: np.ndarray) -> dict:
    """Boundary messages and log-likelihoods from sum-product summaries (module docstring).

    Returns ``{"messages": {(sequence, piece): (f_p (K,) or None, g_p (K,))},
    "loglik": {sequence: log p(x)}}``.
    """
    messages, loglik = {}, {}
    for sequence, pieces in _by_sequence(merged).items():
        entering, v, total = [], np.asarray(startprob, dtype=np.float64), 0.0
        for piece, _, scale, matrix in pieces:
            entering.append(None if piece == 0 else v)
            w = v @ matrix  # alpha at the piece's last step, up to exp(total + scale)
            norm = w.sum()
            total += scale + float(np.log(norm)) if norm > 0 else -np.inf
            v = w / norm if norm > 0 else w
        loglik[sequence] = total
        g = np.ones(len(v))
        for piece in range(len(pieces) - 1, -1, -1):
            messages[(sequence, piece)] = (entering[piece], g)
            h = pieces[piece][3] @ g  # beta at the last step of the piece before
            peak = h.max()
            g = h / peak if peak > 0 else h
    return {"messages": messages, "loglik": loglik}


def max_scan(merged: dict, startprob: np.ndarray) -> dict:
    """Entering Viterbi scores and end states from max-product summaries.

    Returns ``{"entering": {(sequence, piece): d_p (K,) or None}, "end": {(sequence,
    piece): state at its last step}, "log_prob": {sequence: best path log-probability}}``
    where ``d_p(i)`` is the best log-probability of the steps before piece p ending in i.
    """
    entering, ends, log_prob = {}, {}, {}
    for sequence, pieces in _by_sequence(merged).items():
        d, scores = _log(np.asarray(startprob, dtype=np.float64)), []
        for piece, _, offset, matrix in pieces:
            entering[(sequence, piece)] = None if piece == 0 else d
            scores.append(d)
            d = (d[:, None] + matrix).max(axis=0) + offset  # Rabiner eq. 105, a piece at once
        state = int(np.argmax(d))
        log_prob[sequence] = float(d[state])
        for piece in range(len(pieces) - 1, -1, -1):  # the backtrack across pieces
            ends[(sequence, piece)] = state
            if piece:
                state = int(np.argmax(scores[piece] + pieces[piece][3][:, state]))
    return {"entering": entering, "end": ends, "log_prob": log_prob}


# --------------------------------------------------------------------------- round 3
def _piece_posteriors(family: Any, params: Params, X: np.ndarray, row: np.void):
    """Forward-backward over one piece from its boundary messages: ``(X (L, D) float64,
    Posteriors)`` with the transition into the piece added and no start counts after
    the first piece (module docstring)."""
    f, g = params["pieces"]["messages"][_key(row)]
    transmat = np.asarray(params["transmat"], dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    log_b = family.emission_log_prob(params, X)
    with np.errstate(divide="ignore"):
        log_b[-1] += np.log(g)  # the evidence after the piece, beta_e ∝ g
    start = params["startprob"] if f is None else f @ transmat
    layout = TimeMajorLayout.from_lengths(np.array([len(X)]))
    post = family.kernels.forward_backward(layout, log_b, start, transmat)
    if f is not None:
        ratio = np.divide(post.gamma[0], start, out=np.zeros(len(start)), where=start > 0)
        post.trans = post.trans + f[:, None] * transmat * ratio[None, :]
        post.start = np.zeros_like(post.start)
    return X, post


def piece_block_stats(family: Any, params: Params, X: np.ndarray, row: np.void) -> Stats:
    """Baum-Welch statistics of one piece (the fields of ``HMMFamily.block_stats``); the
    sequence's log-likelihood is counted by its first piece.  With ``estep="sample"``
    the counts are those of paths drawn across the pieces
    (:mod:`dask_em.families.hmm_split_sampling`)."""
    if family.estep == "sample":
        X = np.asarray(X, dtype=np.float64)
        seed = family._block_seed(params["seed"], X, np.array([len(X), *_key(row)]))
        log_b = family.emission_log_prob(params, X)
        post = sample_piece(family, params, log_b, _key(row), np.random.default_rng(seed))
    else:
        fused = _fused_piece_stats(family, params, X, row)
        if fused is not None:
            return fused
        X, post = _piece_posteriors(family, params, X, row)
    weight = float(row["weight"])
    gamma = post.gamma if weight == 1.0 else weight * post.gamma
    emission = sliced_stats(
        lambda X_slice, gamma_slice: family.emission.posterior_stats(
            params["emission"], X_slice, gamma_slice
        ),
        family.emission.merge,
        X,
        gamma,
        rows_per_slice=rows_per_slice(len(params["startprob"]) * max(X.shape[1], 2)),
    )
    first = int(row["piece"]) == 0
    loglik = params["pieces"]["loglik"][int(row["sequence"])] if first else 0.0
    return {
        "weight": weight * len(X),
        "n_rows": len(X),
        "n_sequences": int(first),
        "loglik": weight * loglik,
        "start": weight * post.start,
        "trans": weight * post.trans,
        "emission": emission,
        "seed": params["seed"],
    }


def _fused_piece_stats(family: Any, params: Params, X: np.ndarray, row: np.void):
    """:func:`piece_block_stats` by the compiled fused kernels
    (:func:`dask_em.families.hmm_fused.fused_block_stats`, the start vector ``s_p`` and
    the end message ``g_p`` given), or None where they do not apply: no numba, an
    emission without fused kernels, a weighted sequence, a normalizer that underflows."""
    fused = fused_emission(family.emission)
    if fused is None or family.kernels is not hmm_compiled or float(row["weight"]) != 1.0:
        return None
    f, g = params["pieces"]["messages"][_key(row)]
    transmat = np.asarray(params["transmat"], dtype=np.float64)
    start = np.asarray(params["startprob"], dtype=np.float64) if f is None else f @ transmat
    result = fused_block_stats(
        fused, {**params, "startprob": start}, X, np.array([len(X)]), end_message=g
    )
    if result is None:
        return None
    _, first_gamma, trans, emission = result
    first = f is None
    if not first:  # the transition into the piece (module docstring)
        ratio = np.divide(first_gamma, start, out=np.zeros(len(start)), where=start > 0)
        trans = trans + f[:, None] * transmat * ratio[None, :]
    return {
        "weight": float(len(X)),
        "n_rows": len(X),
        "n_sequences": int(first),
        "loglik": params["pieces"]["loglik"][int(row["sequence"])] if first else 0.0,
        "start": first_gamma if first else np.zeros_like(first_gamma),
        "trans": trans,
        "emission": emission,
        "seed": params["seed"],
    }


def piece_state_posteriors(family: Any, params: Params, X: np.ndarray, row: np.void):
    """``(log-likelihood (1,), gamma (L, K))`` of a piece; the log-likelihood is its
    sequence's (the same on every piece)."""
    _, post = _piece_posteriors(family, params, X, row)
    loglik = params["pieces"]["loglik"][int(row["sequence"])]
    return np.array([loglik]), np.ascontiguousarray(post.gamma)


def piece_decode(family: Any, params: Params, X: np.ndarray, row: np.void):
    """``(best path log-probability (1,), states (L,))`` of a piece: Viterbi from the
    exact entering scores, forced to end in the state the scan chose."""
    key = _key(row)
    pieces = params["pieces"]
    log_b = family.emission_log_prob(params, np.asarray(X, dtype=np.float64))
    d = pieces["entering"][key]
    transmat = np.asarray(params["transmat"], dtype=np.float64)
    if d is None:
        log_b[0] += _log(np.asarray(params["startprob"], dtype=np.float64))
    else:  # delta_a(j) = max_i d(i) + log A_ij + log b_a(j)
        log_b[0] += (d[:, None] + _log(transmat)).max(axis=0)
    end = np.full(log_b.shape[1], -np.inf)
    end[pieces["end"][key]] = 0.0
    log_b[-1] += end
    layout = TimeMajorLayout.from_lengths(np.array([len(log_b)]))
    ones = np.ones(log_b.shape[1])  # the start scores are in log_b[0] already
    _, states = family.kernels.viterbi(layout, log_b, ones, transmat)
    return np.array([pieces["log_prob"][int(row["sequence"])]]), states

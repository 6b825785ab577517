"""The Monte Carlo E-step (forward filtering, backward sampling) over split sequences.

A path of a split sequence is drawn in two stages, exactly from ``p(z | x)``:

1. On the client, the state at the last step of every piece, for each of the
   ``n_samples`` paths, backwards along the sequence from the piece summaries
   (:mod:`dask_em.families.hmm_split`; ``v_p`` the normalized forward vector at the end
   of piece p, ``M_p`` its summary):

       z_{e_P} ~ v_P,        p(z_{e_{p-1}} = i | z_{e_p} = j, x) ∝ v_{p-1}(i) M_p[i, j]

   (the Markov property: given ``z_{e_p}``, what comes after piece p says nothing
   more about the steps before it).
2. In each piece, in parallel: the steps between, given the states just before and at
   the end of the piece.  The samples sharing both states are one group, drawn by the
   block kernel's forward filtering, backward sampling started from ``A[i, :]`` (``pi``
   for the first piece) with the last step's density multiplied by the indicator of
   the end state (which conditions the path on it).  The transition into the piece is
   counted by the piece, once per path.

The counts are averages over the paths, as in the block kernel; the log-likelihood is
the exact one from the scan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_em.families.base import Params
from dask_em.families.hmm_kernels import Posteriors, TimeMajorLayout


def _draw(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One state per row of unnormalized ``weights`` (n, K)."""
    cumulative = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cumulative[:, -1]
    return np.minimum((u[:, None] > cumulative).sum(axis=1), weights.shape[1] - 1)


def sample_ends(merged: dict, messages: dict, n_samples: int, seed: int) -> dict:
    """``{(sequence, piece): (n_samples,) states at the piece's last step}`` (stage 1).

    ``merged``: the sum-product summaries; ``messages``: the scan's boundary messages
    (:func:`dask_em.families.hmm_split.sum_scan`)."""
    ends: dict = {}
    sequences = sorted({sequence for sequence, _ in merged})
    for sequence in sequences:
        n_pieces = merged[(sequence, 0)][0]
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(sequence), 1]))
        last = n_pieces - 1
        previous = messages[(sequence, last)][0]  # v_{P-1}, or None for one piece
        matrix = merged[(sequence, last)][2]
        final = (previous @ matrix) if previous is not None else matrix.sum(axis=0)
        state = _draw(np.broadcast_to(final, (n_samples, len(final))), rng)
        for piece in range(last, -1, -1):
            ends[(sequence, piece)] = state
            if piece:  # p(z_{e_{p-1}} = i | z_{e_p} = j) ∝ v_{p-1}(i) M_p[i, j]
                v = messages[(sequence, piece)][0]
                state = _draw(v[None, :] * merged[(sequence, piece)][2][:, state].T, rng)
    return ends


def sample_piece(
    family: Any, params: Params, log_b: np.ndarray, key: tuple[int, int], rng: np.random.Generator
) -> Posteriors:
    """Stage 2 for one piece: averaged state visits (L, K), start and transition counts
    (the transition into the piece included); ``loglik`` left empty (the scan's)."""
    pieces = params["pieces"]
    sequence, piece = key
    ends = pieces["ends"][key]
    before = pieces["ends"][(sequence, piece - 1)] if piece else np.full(len(ends), -1)
    transmat = np.asarray(params["transmat"], dtype=np.float64)
    n_states, n_samples = transmat.shape[0], len(ends)
    layout = TimeMajorLayout.from_lengths(np.array([len(log_b)]))
    gamma, start = np.zeros_like(log_b), np.zeros(n_states)
    trans = np.zeros((n_states, n_states))
    for i, j in sorted(set(zip(before.tolist(), ends.tolist(), strict=True))):
        count = int(np.sum((before == i) & (ends == j)))
        first = params["startprob"] if i < 0 else transmat[i]
        conditioned = log_b.copy()
        conditioned[-1] = np.where(np.arange(n_states) == j, log_b[-1, j], -np.inf)
        post = family.kernels.sample_paths(layout, conditioned, first, transmat, count, rng)
        share = count / n_samples
        gamma += share * np.asarray(post.gamma)
        trans += share * post.trans
        if i < 0:
            start += share * post.start
        else:  # the transition into the piece, from state i
            trans[i] += share * np.asarray(post.gamma)[0]
    return Posteriors(gamma, start, trans, np.zeros(1))

"""Sequences longer than a block: the layout splits them into pieces, and a fit, its
score, posteriors and Viterbi path over the pieces equal those over the whole sequence.

The kernels (summaries of a piece, compiled and reference) and the family's statistics
are checked without a cluster; the estimators on the session's LocalCluster, from a
Zarr store that mixes one long sequence (with NaN steps inside pieces and at their
boundaries) with many short ones.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dask_em import Sequences
from dask_em.families import hmm_pieces, hmm_pieces_compiled, hmm_split
from dask_em.families.gaussian import GaussianFamily
from dask_em.families.hmm import HMMFamily
from dask_em.sequence_layout import SEGMENT, plan_layout

K = 3


# -- the layout ----------------------------------------------------------------------
def test_layout_splits_only_sequences_longer_than_a_block():
    lengths = np.array([3, 4, 100, 2, 2, 250, 5])
    layout = plan_layout(lengths, 40)
    assert layout.split and layout.table.dtype == SEGMENT
    assert layout.steps.sum() == lengths.sum() and layout.steps.max() <= 40
    pieces = layout.table[layout.table["n_pieces"] > 1]
    assert pieces["sequence"].tolist() == [2] * 3 + [5] * 7
    assert pieces["piece"].tolist() == [0, 1, 2, *range(7)]
    # a piece is a block of its own; the short sequences keep their grouping
    first = np.concatenate([[0], np.cumsum(layout.per_block)[:-1]])
    for b, n in enumerate(layout.per_block):
        rows = layout.table[first[b] : first[b] + n]
        assert n == 1 or (rows["n_pieces"] == 1).all()
    # no long sequence: exactly the old layout (plain lengths)
    short = plan_layout(np.array([3, 4, 9, 2]), 10)
    assert not short.split and short.per_block.tolist() == [3, 1]


def test_sequences_from_zarr_keep_the_pieces_as_blocks(tmp_path):
    values = np.arange(2 * 500.0).reshape(-1, 2)
    Sequences(values, [20, 430, 50]).to_zarr(tmp_path / "s.zarr", chunk_rows=64)
    data = Sequences.from_zarr(tmp_path / "s.zarr", block_bytes=100 * 16)
    assert data.split and data.n_blocks == 1 + 5 + 1
    assert data.values.chunks[0] == (20, 86, 86, 86, 86, 86, 50)
    np.testing.assert_array_equal(data.values.compute(), values)
    np.testing.assert_array_equal(data.lengths_array, [20, 430, 50])


# -- the kernels -----------------------------------------------------------------------
@pytest.mark.parametrize("first", [True, False])
def test_compiled_summaries_match_the_reference(first):
    rng = np.random.default_rng(1)
    transmat = rng.random((4, 4)) + 0.05
    transmat /= transmat.sum(axis=1, keepdims=True)
    log_b = rng.normal(scale=30.0, size=(300, 4))
    log_b[7] = 0.0  # a missing step
    for name in ("sum_product_summary", "max_product_summary"):
        ref_scale, ref = getattr(hmm_pieces, name)(log_b, transmat, first)
        scale, matrix = getattr(hmm_pieces_compiled, name)(log_b, transmat, first)
        assert scale == pytest.approx(ref_scale, rel=1e-12)
        np.testing.assert_allclose(matrix, ref, rtol=1e-12, atol=1e-14)


def _family_case(covariance_type, seed=0, steps=6000):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(steps, 2))
    X[::5] += 2.5
    if steps > 3000:
        X[[10, 999, 1000, 1001, 2999]] = np.nan  # inside pieces and at their boundaries
        X[1500, 0] = np.nan  # one feature missing
    transmat = rng.random((K, K)) + 0.2
    transmat /= transmat.sum(axis=1, keepdims=True)
    covariances = np.ones((K, 2)) if covariance_type == "diag" else np.stack([np.eye(2)] * K)
    emission_family = GaussianFamily(covariance_type=covariance_type)
    emission = emission_family.make_params(
        np.full(K, 1 / K), means=rng.normal(size=(K, 2)), covariances=covariances
    )
    params = HMMFamily.make_params(np.array([0.5, 0.3, 0.2]), transmat, emission)
    return X, emission_family, params


def _blocks(X, steps_per_block):
    layout = plan_layout(np.array([len(X)]), steps_per_block)
    edges = np.concatenate([[0], np.cumsum(layout.steps)])
    return [(X[a:b], layout.table[i : i + 1]) for i, (a, b) in enumerate(itertools.pairwise(edges))]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_piece_statistics_equal_the_whole_sequence(covariance_type, compiled):
    X, emission_family, params = _family_case(covariance_type)
    whole = HMMFamily(emission_family, compiled=compiled)
    split = HMMFamily(emission_family, compiled=compiled, split_sequences=True)
    ref = whole.block_stats(params, X, np.array([len(X)]))
    blocks = _blocks(X, 1000)
    assert len(blocks) == 6
    merged = split.merge_preparation(*(split.preparation_block(params, *b) for b in blocks))
    prepared = split.prepared(params, merged)
    stats = split.merge(*(split.block_stats(prepared, *b) for b in blocks))
    assert stats["loglik"] == pytest.approx(ref["loglik"], rel=1e-12)
    assert stats["weight"] == ref["weight"] and stats["n_sequences"] == 1
    np.testing.assert_allclose(stats["start"], ref["start"], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(stats["trans"], ref["trans"], rtol=1e-11)
    for name, value in ref["emission"].items():
        if isinstance(value, np.ndarray):
            np.testing.assert_allclose(stats["emission"][name], value, rtol=1e-11, atol=1e-11)
    # the state posteriors and the Viterbi path, piece by piece
    loglik, gamma = whole.state_posteriors(params, X, np.array([len(X)]))
    pieces = [split.state_posteriors(prepared, *b) for b in blocks]
    np.testing.assert_allclose(np.concatenate([g for _, g in pieces]), gamma, atol=1e-12)
    assert pieces[3][0][0] == pytest.approx(loglik[0], rel=1e-12)
    log_prob, path = whole.decode(params, X, np.array([len(X)]))
    maxed = hmm_split.merge_summaries(
        *(hmm_split.summary_block(split, params, *b, "max") for b in blocks)
    )
    decoding = {**params, "pieces": hmm_split.max_scan(maxed, params["startprob"])}
    decoded = [split.decode(decoding, *b) for b in blocks]
    np.testing.assert_array_equal(np.concatenate([s for _, s in decoded]), path)
    assert decoded[0][0][0] == pytest.approx(log_prob[0], rel=1e-12)


def test_the_transition_across_a_boundary_is_counted_once():
    """Two one-step pieces: the only transition is the one between them."""
    X, emission_family, params = _family_case("diag", steps=2)
    whole = HMMFamily(emission_family)
    split = HMMFamily(emission_family, split_sequences=True)
    ref = whole.block_stats(params, X, np.array([2]))
    blocks = _blocks(X, 1)
    prepared = split.prepared(
        params, split.merge_preparation(*(split.preparation_block(params, *b) for b in blocks))
    )
    stats = split.merge(*(split.block_stats(prepared, *b) for b in blocks))
    assert stats["trans"].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(stats["trans"], ref["trans"], rtol=1e-12)


@pytest.mark.parametrize("compiled", [True, False])
def test_paths_sampled_across_pieces_average_to_the_exact_counts(compiled):
    """Forward filtering, backward sampling over 20 pieces of 2 steps: nearly every
    transition crosses a boundary, and the averaged counts of 4,000 paths match the
    exact expected ones within 0.15 (the largest error is about 0.04 here; boundary
    states drawn from the filter instead of the smoother miss by 0.38)."""
    X, emission_family, params = _family_case("diag", steps=40)
    exact = HMMFamily(emission_family).block_stats(params, X, np.array([40]))
    split = HMMFamily(
        emission_family, estep="sample", n_samples=4000, split_sequences=True, compiled=compiled
    )
    blocks = _blocks(X, 2)
    prepared = split.prepared(
        params, split.merge_preparation(*(split.preparation_block(params, *b) for b in blocks))
    )
    stats = split.merge(*(split.block_stats(prepared, *b) for b in blocks))
    assert stats["loglik"] == pytest.approx(exact["loglik"], rel=1e-12)  # exact, not sampled
    assert stats["trans"].sum() == pytest.approx(39.0)
    assert stats["start"].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(stats["trans"], exact["trans"], atol=0.15)
    np.testing.assert_allclose(stats["start"], exact["start"], atol=0.05)
    np.testing.assert_allclose(stats["emission"]["nk"], exact["emission"]["nk"], atol=0.15)
    # a second pass with the same parameters draws the same paths (seeded per piece)
    again = split.merge(*(split.block_stats(prepared, *b) for b in blocks))
    np.testing.assert_array_equal(again["trans"], stats["trans"])


def test_a_weighted_split_sequence_counts_its_weight_once_per_piece():
    X, emission_family, params = _family_case("diag", steps=3000)
    split = HMMFamily(emission_family, split_sequences=True)
    blocks = _blocks(X, 1000)
    prepared = split.prepared(
        params, split.merge_preparation(*(split.preparation_block(params, *b) for b in blocks))
    )
    plain = split.merge(*(split.block_stats(prepared, *b) for b in blocks))
    weighted_blocks = []
    for values, table in blocks:
        table = table.copy()
        table["weight"] = 3.0
        weighted_blocks.append((values, table))
    weighted = split.merge(*(split.block_stats(prepared, *b) for b in weighted_blocks))
    for name in ("loglik", "weight", "start", "trans"):
        np.testing.assert_allclose(weighted[name], 3.0 * np.asarray(plain[name]), rtol=1e-12)
    np.testing.assert_allclose(weighted["emission"]["nk"], 3.0 * plain["emission"]["nk"])
    assert weighted["n_sequences"] == 1

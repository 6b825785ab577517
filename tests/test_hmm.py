"""Hidden Markov models: the Sequences layout, recovery from Zarr on the cluster, missing
observations, the Monte Carlo E-step, model files and bad input."""

from __future__ import annotations

import itertools
import warnings

import dask.array as da
import numpy as np
import pytest

import dask_em
from dask_em import CategoricalHMM, GaussianHMM, PoissonHMM, Sequences
from tests.helpers import assert_monotone

TRUE_START = np.array([0.5, 0.3, 0.2])
TRUE_TRANS = np.array([[0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.05, 0.1, 0.85]])
TRUE_MEANS = np.array([[0.0, 0.0], [4.0, 1.0], [-2.0, 4.0]])
TRUE_VARS = np.array([[1.0, 0.5], [0.6, 1.0], [1.5, 0.8]])


def gaussian_sequences(n_sequences, seed, min_length=5, max_length=60):
    """Sequences drawn from the 3-state diagonal Gaussian HMM above: (values, lengths, states)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, max_length, size=n_sequences)
    total = int(lengths.sum())
    states = np.empty(total, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cumulative = np.cumsum(TRUE_TRANS, axis=1)
    current = rng.choice(3, size=n_sequences, p=TRUE_START)
    u = rng.random(total)
    for t in range(int(lengths.max())):
        alive = lengths > t
        rows = starts[alive] + t
        if t:
            current[alive] = (u[rows, None] > cumulative[current[alive]]).sum(axis=1)
        states[rows] = current[alive]
    values = TRUE_MEANS[states] + rng.standard_normal((total, 2)) * np.sqrt(TRUE_VARS[states])
    return values, lengths, states


def matched(fitted_means):
    """Permutation mapping the fitted states onto the true ones (by nearest means)."""
    best = min(
        itertools.permutations(range(3)),
        key=lambda p: np.abs(fitted_means[list(p)] - TRUE_MEANS).sum(),
    )
    return list(best)


# -- the layout ----------------------------------------------------------------------
@pytest.mark.slow
def test_sequences_blocks_hold_whole_sequences(tmp_path):
    values, lengths, _ = gaussian_sequences(300, seed=0)
    seqs = Sequences(values, lengths, block_bytes=4_000)
    assert seqs.n_blocks > 10
    ends = np.cumsum(seqs.values.chunks[0])
    boundaries = set(np.cumsum(lengths).tolist())
    assert set(ends.tolist()) <= boundaries
    block_totals = [int(np.asarray(da.compute(b)[0]).sum()) for b in seqs.lengths.blocks]
    assert block_totals == list(seqs.values.chunks[0])
    # written to Zarr and read back: same data, blocks again on sequence boundaries
    seqs.to_zarr(tmp_path / "seqs.zarr", chunk_rows=1000)
    back = Sequences.from_zarr(tmp_path / "seqs.zarr", block_bytes=4_000)
    np.testing.assert_array_equal(back.values.compute(), values)
    np.testing.assert_array_equal(back.lengths_array, lengths)
    assert set(np.cumsum(back.values.chunks[0]).tolist()) <= boundaries
    with pytest.raises(FileExistsError, match="overwrite"):
        seqs.to_zarr(tmp_path / "seqs.zarr")
    # a list of arrays, and dask chunks that already fall on boundaries are kept
    from_list = Sequences.from_arrays([values[:5], values[5:12]])
    np.testing.assert_array_equal(from_list.lengths_array, [5, 7])
    aligned = da.from_array(values, chunks=((*lengths[:150].tolist(), int(lengths[150:].sum())), 2))
    assert Sequences(aligned, lengths).values.chunks == aligned.chunks


@pytest.mark.parametrize(
    ("lengths", "match"),
    [
        ([10, 10], r"add up to 20 steps but values has 30 rows: ragged layout"),
        ([10, 0, 20], r"at least one step; lengths\[1\] is 0"),
        ([10.5, 19.5], r"integers; lengths\[0\] is 10.5"),
        ([[10, 20]], "1-D"),
    ],
)
def test_bad_lengths_are_named(lengths, match):
    with pytest.raises(ValueError, match=match):
        GaussianHMM(2).fit(np.zeros((30, 2)), lengths)


def test_unreadable_or_wrong_stores_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"nothing found|not a Zarr"):
        Sequences.from_zarr(tmp_path / "absent.zarr")
    import zarr

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("values", shape=(4, 1), dtype="f8")
    with pytest.raises(ValueError, match="must hold arrays 'values' and 'lengths'"):
        Sequences.from_zarr(tmp_path / "g.zarr")


def test_bad_values_are_named_before_any_cluster_work():
    X = np.ones((20, 1))
    X[13, 0] = -1
    with pytest.raises(ValueError, match="row 13, column 0"):
        PoissonHMM(2).fit(X, [10, 10])
    with pytest.raises(ValueError, match="one symbol per step"):
        CategoricalHMM(2).fit(np.zeros((10, 2)), [10])
    with pytest.raises(ValueError, match="transmat_init must be non-negative"):
        GaussianHMM(2, transmat_init=[[0.5, 0.6], [0.5, 0.5]]).fit(np.zeros((10, 1)))
    with pytest.raises(ValueError, match="transmat_prior must be >= 1"):
        GaussianHMM(2, transmat_prior=0.5).fit(np.zeros((10, 1)))


# -- fitting on the cluster -----------------------------------------------------------
@pytest.mark.slow
def test_recovers_a_known_hmm_from_10k_sequences_streamed_from_zarr(client, tmp_path):
    values, lengths, states = gaussian_sequences(10_000, seed=1)
    Sequences(values, lengths).to_zarr(tmp_path / "train.zarr")
    model = GaussianHMM(3, covariance_type="diag", cache="stream", random_state=0, tol=1e-6)
    model.fit(str(tmp_path / "train.zarr"))
    assert model.data_placement_ == "stream"
    assert model.n_sequences_ == 10_000
    assert_monotone(model.history_)
    p = matched(model.means_)
    print("steps:", len(values), "iterations:", model.n_iter_)
    print("startprob error:", np.abs(model.startprob_[p] - TRUE_START).max())
    print("transmat error:", np.abs(model.transmat_[np.ix_(p, p)] - TRUE_TRANS).max())
    np.testing.assert_allclose(model.startprob_[p], TRUE_START, atol=0.02)
    np.testing.assert_allclose(model.transmat_[np.ix_(p, p)], TRUE_TRANS, atol=0.01)
    np.testing.assert_allclose(model.means_[p], TRUE_MEANS, atol=0.02)
    np.testing.assert_allclose(model.covariances_[p], TRUE_VARS, rtol=0.03)
    # decoding from the same store is lazy and finds the true states almost everywhere
    decoded = model.predict(str(tmp_path / "train.zarr"))
    assert isinstance(decoded, da.Array)
    accuracy = (
        np.mean(np.asarray(p)[decoded.compute()] == states)
        if False
        else np.mean(np.argsort(p)[decoded.compute()] == states)
    )
    assert accuracy > 0.95


def test_poisson_hmm_recovers_rates_on_the_cluster(client):
    rng = np.random.default_rng(2)
    _, lengths, states = gaussian_sequences(2000, seed=2)
    rates = np.array([[1.0, 10.0], [6.0, 3.0], [15.0, 15.0]])
    counts = rng.poisson(rates[states])
    seqs = Sequences(da.from_array(counts, chunks=(20_000, 2)), lengths)
    model = PoissonHMM(3, random_state=0, tol=1e-7).fit(seqs)
    assert_monotone(model.history_)
    order = np.argsort(model.lambdas_[:, 1] - model.lambdas_[:, 0])
    np.testing.assert_allclose(
        model.lambdas_[order], rates[[0, 1, 2]][np.argsort(rates[:, 1] - rates[:, 0])], rtol=0.05
    )


@pytest.mark.slow
def test_length_one_and_very_long_sequences_fit_without_nan():
    values, _, _ = gaussian_sequences(1, seed=3, min_length=100_000, max_length=100_001)
    X = np.concatenate([values[:5], values])
    lengths = [1, 1, 1, 1, 1, len(values)]
    model = GaussianHMM(3, max_iter=5, random_state=0).fit(X, lengths)
    for name in ("startprob_", "transmat_", "means_", "covariances_"):
        assert np.all(np.isfinite(getattr(model, name)))
    assert np.isfinite(model.score(X, lengths))


# -- missing observations ------------------------------------------------------------
def test_a_missing_step_is_marginalized_out():
    """log p(x1, NaN, x3) = log sum_ij pi_i b_i(x1) (A^2)_ij b_j(x3)."""
    model = CategoricalHMM(
        2,
        max_iter=1,
        startprob_init=[0.6, 0.4],
        transmat_init=[[0.7, 0.3], [0.2, 0.8]],
        emissionprob_init=[[0.9, 0.1], [0.3, 0.7]],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dask_em.ConvergenceWarning)
        model.fit(np.array([[0.0], [1.0], [1.0], [0.0]]))
    X = np.array([[0.0], [np.nan], [1.0]])
    pi, A, B = model.startprob_, model.transmat_, model.emissionprob_
    expected = np.log(pi * B[:, 0] @ np.linalg.matrix_power(A, 2) @ B[:, 1])
    assert model.score(X) == pytest.approx(expected, rel=1e-12)


def test_gaussian_hmm_marginalizes_missing_features():
    """With feature 1 missing everywhere, the score is the HMM on feature 0 alone."""
    from hmmlearn import hmm

    values, lengths, _ = gaussian_sequences(50, seed=4)
    model = GaussianHMM(3, covariance_type="diag", random_state=0, max_iter=20).fit(values, lengths)
    holes = values.copy()
    holes[:, 1] = np.nan
    marginal = hmm.GaussianHMM(3, covariance_type="diag", init_params="")
    marginal.startprob_, marginal.transmat_ = model.startprob_, model.transmat_
    marginal.means_, marginal.covars_ = model.means_[:, :1], model.covariances_[:, :1]
    assert model.score(holes, lengths) == pytest.approx(
        marginal.score(values[:, :1], lengths), rel=1e-10
    )


@pytest.mark.slow
def test_fit_with_missing_values_recovers_the_truth(client):
    values, lengths, _ = gaussian_sequences(3000, seed=5)
    rng = np.random.default_rng(5)
    holes = values.copy()
    holes[rng.random(values.shape) < 0.2] = np.nan  # 20% of entries, ~4% whole steps
    with pytest.warns(UserWarning, match="steps have every feature missing"):
        model = GaussianHMM(3, random_state=0, tol=1e-6).fit(Sequences(holes, lengths))
    assert_monotone(model.history_)
    p = matched(model.means_)
    np.testing.assert_allclose(model.transmat_[np.ix_(p, p)], TRUE_TRANS, atol=0.02)
    np.testing.assert_allclose(model.means_[p], TRUE_MEANS, atol=0.05)
    np.testing.assert_allclose(model.covariances_[p], TRUE_VARS, rtol=0.06)


# -- Monte Carlo E-step ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.allow_objective_decrease  # a sampled E-step is not monotone
def test_monte_carlo_estep_lands_next_to_the_exact_fit():
    values, lengths, _ = gaussian_sequences(400, seed=6)
    common = dict(random_state=0, max_iter=30, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dask_em.ConvergenceWarning)
        exact = GaussianHMM(3, **common).fit(values, lengths)
        sampled = GaussianHMM(3, estep="sample", n_samples=50, **common).fit(values, lengths)
    np.testing.assert_allclose(sampled.transmat_, exact.transmat_, atol=0.02)
    np.testing.assert_allclose(sampled.means_, exact.means_, atol=0.05)
    assert sampled.score(values, lengths) == pytest.approx(exact.score(values, lengths), rel=1e-3)


# -- the rest of the surface ------------------------------------------------------------
def test_save_load_sample_and_restarts(tmp_path):
    values, lengths, _ = gaussian_sequences(200, seed=7)
    model = GaussianHMM(3, covariance_type="full", n_init=3, random_state=1).fit(values, lengths)
    single = [
        GaussianHMM(3, covariance_type="full", random_state=s).fit(values, lengths) for s in (1,)
    ]
    assert model.lower_bound_ >= single[0].lower_bound_ - 1e-12
    model.save(tmp_path / "hmm.zarr")
    loaded = dask_em.load(tmp_path / "hmm.zarr")
    assert type(loaded) is GaussianHMM
    for name in ("startprob_", "transmat_", "means_", "covariances_", "covars_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    np.testing.assert_array_equal(loaded.predict(values, lengths), model.predict(values, lengths))
    assert loaded.history_ == model.history_
    X, states = model.sample(500, random_state=3)
    assert X.shape == (500, 2) and states.shape == (500,)
    assert set(np.unique(states)) <= {0, 1, 2}
    log_prob, path = model.decode(values, lengths, algorithm="map")
    assert log_prob == pytest.approx(model.score(values, lengths))
    np.testing.assert_array_equal(path, model.predict_proba(values, lengths).argmax(axis=1))
    per_sequence = model.score_sequences(values, lengths)
    assert per_sequence.shape == (200,)
    assert per_sequence.sum() == pytest.approx(model.score(values, lengths))
    assert model.bic(values, lengths) > model.aic(values, lengths)

"""A sequence split into 1, 2, 7 or 50 pieces fits, scores and decodes like the whole
sequence: the same log-likelihood (1e-10 relative), the same parameters after 10 EM
iterations (1e-9) and the same Viterbi path, for Gaussian (diag, full), Poisson and
categorical emissions, on the session's LocalCluster, streamed from a Zarr store where
the long sequence (with NaN steps inside pieces and at their boundaries) sits among
many short ones.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dask_em
from dask_em import Sequences

K = 3
N_ITER = 10
TRANSMAT = np.array([[0.90, 0.06, 0.04], [0.05, 0.90, 0.05], [0.08, 0.07, 0.85]])
STARTPROB = np.array([0.5, 0.3, 0.2])


def _piece_edges(steps: int, n_pieces: int) -> np.ndarray:
    return np.cumsum([len(p) for p in np.array_split(np.arange(steps), n_pieces)])[:-1]


def _case(kind: str, steps: int, n_iter: int, seed: int = 0):
    """``(short sequences before, long sequence, short after, model factory)``."""
    rng = np.random.default_rng(seed)
    states = np.zeros(steps, dtype=np.int64)
    cumulative, u = TRANSMAT.cumsum(axis=1).tolist(), rng.random(steps).tolist()
    for t in range(1, steps):  # a slow chain: long runs in each state
        row, state = cumulative[states[t - 1]], 0
        while state < K - 1 and u[t] > row[state]:
            state += 1
        states[t] = state
    if kind == "categorical":
        probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
        draw = lambda s: (rng.random(len(s))[:, None] > probabilities[s].cumsum(1)).sum(1)  # noqa: E731
        to_rows = lambda s: draw(s).reshape(-1, 1).astype(np.float64)  # noqa: E731
        init = {"emissionprob_init": np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.3, 0.2, 0.5]])}
        model = lambda: dask_em.CategoricalHMM(K, n_symbols=3, **common, **init)  # noqa: E731
    elif kind == "poisson":
        rates = np.array([[1.0, 6.0], [4.0, 2.0], [9.0, 0.5]])
        to_rows = lambda s: rng.poisson(rates[s]).astype(np.float64)  # noqa: E731
        init = {"lambdas_init": np.array([[2.0, 4.0], [3.0, 3.0], [6.0, 1.0]])}
        model = lambda: dask_em.PoissonHMM(K, **common, **init)  # noqa: E731
    else:
        means = np.array([[0.0, 0.0], [2.5, 2.0], [-2.0, 2.5]])
        to_rows = lambda s: means[s] + rng.normal(size=(len(s), 2))  # noqa: E731
        covars = np.ones((K, 2)) if kind == "diag" else np.stack([np.eye(2) * 1.5] * K)
        init = {"means_init": means + 0.7, "covars_init": covars}
        model = lambda: dask_em.GaussianHMM(  # noqa: E731
            K, covariance_type=kind, reg_covar=0.0, **common, **init
        )
    common = {
        "max_iter": n_iter,
        "tol": 0.0,
        "startprob_init": STARTPROB,
        "transmat_init": np.full((K, K), 1 / K) * 0.4 + np.eye(K) * 0.6,
    }
    long = to_rows(states)
    missing = [17, steps // 3]  # inside pieces, and at the boundaries of every split
    for n_pieces in (2, 7, 50):
        for edge in _piece_edges(steps, n_pieces):
            missing += [edge - 1, edge]
    long[missing] = np.nan
    if kind in ("diag", "full"):
        long[steps // 5, 1] = np.nan  # one feature of a step missing
    short_lengths = rng.integers(2, 40, size=30)
    shorts = [to_rows(rng.integers(0, K, size=n)) for n in short_lengths]
    return shorts[:20], long, shorts[20:], model


def _store(tmp_path, kind, steps, n_iter=N_ITER):
    before, long, after, model = _case(kind, steps, n_iter)
    path = tmp_path / f"{kind}.zarr"
    Sequences.from_arrays([*before, long, *after]).to_zarr(path, chunk_rows=4096)
    return path, model, long.shape[1]


def _fitted(model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol=0 runs all iterations
        return model().fit(data)


def _params(model):
    names = ["startprob_", "transmat_"]
    names += [n for n in ("means_", "covars_", "lambdas_", "emissionprob_") if hasattr(model, n)]
    return {name: getattr(model, name) for name in names}


def _check_splits(tmp_path, kind, steps, splits, cache, n_iter=N_ITER, posteriors=True):
    """``splits``: numbers of pieces (>1) compared with the sequence in one piece;
    ``posteriors``: compare each sequence's score and the state posteriors too."""
    path, model, width = _store(tmp_path, kind, steps, n_iter)
    whole = Sequences.from_zarr(path, block_bytes=steps * width * 8)  # one piece
    assert not whole.split
    ref = _fitted(model, whole)
    ref_params = _params(ref)
    ref_score = ref.score(whole)
    ref_logprob, ref_path = ref.decode(whole)
    ref_path = np.asarray(ref_path)
    if posteriors:
        ref_sequences = np.asarray(ref.score_sequences(whole))
        ref_proba = np.asarray(ref.predict_proba(whole))
    for n_pieces in splits:
        data = Sequences.from_zarr(path, block_bytes=-(-steps // n_pieces) * width * 8)
        assert data.split
        fitted = _fitted(lambda: model().set_params(cache=cache), data)
        assert fitted.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-10)
        for name, value in _params(fitted).items():
            np.testing.assert_allclose(value, ref_params[name], rtol=1e-9, atol=1e-12)
        # scored, decoded and predicted with the reference model's parameters
        assert ref.score(data) == pytest.approx(ref_score, rel=1e-10)
        logprob, path_states = ref.decode(data)
        assert logprob == pytest.approx(ref_logprob, rel=1e-10)
        np.testing.assert_array_equal(np.asarray(path_states), ref_path)
        if posteriors:
            np.testing.assert_allclose(
                np.asarray(ref.score_sequences(data)), ref_sequences, rtol=1e-10
            )
            np.testing.assert_allclose(np.asarray(ref.predict_proba(data)), ref_proba, atol=1e-9)


def test_a_split_sequence_fits_like_the_whole(tmp_path):
    """The fast loop's check, small: whichever scheduler is active."""
    _check_splits(tmp_path, "diag", 3_000, (7,), cache="stream", n_iter=3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["diag", "categorical"])
def test_a_split_sequence_fits_like_the_whole_on_the_cluster(client, tmp_path, kind):
    _check_splits(tmp_path, kind, 20_000, (7,), cache="stream", n_iter=4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["diag", "full", "poisson", "categorical"])
def test_acceptance_one_hundred_thousand_steps_in_1_2_7_50_pieces(client, tmp_path, kind):
    # against 1 piece; each sequence's score and the posteriors: in the 20,000-step test
    _check_splits(tmp_path, kind, 100_000, (2, 7, 50), cache="auto", posteriors=False)

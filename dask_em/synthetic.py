"""Synthetic data from known models, written to Zarr in parallel (for demos and tests).

One function per model draws the true parameters (:data:`RANDOM_TRUTH`), one draws the
rows of one block from them; :func:`write_synthetic` writes the rows to a new Zarr array
block by block, each block from its own seed, with the truth in the array's attributes
(``truth``, JSON).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import dask.array as da
import numpy as np

from dask_em.seeds import blockwise_seeds
from dask_em.zarr_source import create_complete_array

#: Attribute that marks a store as written by this module (safe to replace).
SYNTHETIC_MARKER = "dask_em_synthetic"


@dataclass
class GaussianMixtureTruth:
    """Parameters of the mixture the data was drawn from."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    covariances: np.ndarray  # (K, D, D)


def random_gaussian_mixture(
    n_components: int, n_features: int, seed: int, separation: float = 4.0
) -> GaussianMixtureTruth:
    """A well separated mixture with random rotated covariances."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_components, 4.0))
    means = rng.normal(size=(n_components, n_features)) * separation
    covariances = np.empty((n_components, n_features, n_features))
    for k in range(n_components):
        Q, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
        scales = rng.uniform(0.3, 1.2, size=n_features)
        covariances[k] = (Q * scales**2) @ Q.T
    return GaussianMixtureTruth(weights, means, covariances)


def random_poisson_mixture(n_components: int, n_features: int, seed: int) -> dict:
    """Weights (K,) and rates (K, D) spread over 0.5..30 (log-uniform)."""
    rng = np.random.default_rng(seed)
    return {
        "weights": rng.dirichlet(np.full(n_components, 4.0)),
        "rates": np.exp(rng.uniform(np.log(0.5), np.log(30.0), size=(n_components, n_features))),
    }


def random_categorical_mixture(
    n_components: int, n_features: int, seed: int, n_symbols: int = 4
) -> dict:
    """Weights (K,) and probabilities (K, D, M), each ``[k, d, :]`` from Dirichlet(0.5)."""
    rng = np.random.default_rng(seed)
    return {
        "weights": rng.dirichlet(np.full(n_components, 4.0)),
        "probabilities": rng.dirichlet(np.full(n_symbols, 0.5), size=(n_components, n_features)),
    }


def random_bernoulli_mixture(n_components: int, n_features: int, seed: int) -> dict:
    """Weights (K,) and probabilities (K, D) from Beta(0.5, 0.5), kept within 0.02..0.98."""
    rng = np.random.default_rng(seed)
    return {
        "weights": rng.dirichlet(np.full(n_components, 4.0)),
        "probabilities": np.clip(rng.beta(0.5, 0.5, size=(n_components, n_features)), 0.02, 0.98),
    }


def _labels(rng: np.random.Generator, weights: np.ndarray, n_rows: int) -> np.ndarray:
    return rng.choice(len(weights), size=n_rows, p=weights)


def draw_gmm(truth: dict, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    labels = _labels(rng, truth["weights"], n_rows)
    chol = np.linalg.cholesky(truth["covariances"])
    noise = rng.standard_normal((n_rows, truth["means"].shape[1]))
    return truth["means"][labels] + np.einsum("nij,nj->ni", chol[labels], noise)


def draw_poisson(truth: dict, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    labels = _labels(rng, truth["weights"], n_rows)
    return rng.poisson(truth["rates"][labels]).astype(np.int32)


def draw_categorical(truth: dict, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    labels = _labels(rng, truth["weights"], n_rows)
    cumulative = np.cumsum(truth["probabilities"], axis=2)[labels]  # (n, D, M)
    symbols = (rng.random((n_rows, cumulative.shape[1], 1)) > cumulative).sum(axis=2)
    return np.minimum(symbols, cumulative.shape[2] - 1).astype(np.int16)


def draw_bernoulli(truth: dict, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    labels = _labels(rng, truth["weights"], n_rows)
    return (
        rng.random((n_rows, truth["probabilities"].shape[1])) < truth["probabilities"][labels]
    ).astype(np.int8)


#: model name -> (random truth (n_components, n_features, seed), block drawer, dtype)
SYNTHETIC_MODELS = {
    "gmm": (
        lambda k, d, seed: vars(random_gaussian_mixture(k, d, seed)),
        draw_gmm,
        np.float64,
    ),
    "poisson": (random_poisson_mixture, draw_poisson, np.int32),
    "categorical": (random_categorical_mixture, draw_categorical, np.int16),
    "bernoulli": (random_bernoulli_mixture, draw_bernoulli, np.int8),
}


def _draw_block(block, model: str, truth: dict, seeds, block_info=None):
    index = block_info[None]["chunk-location"][0]
    rng = np.random.default_rng(seeds[index])
    return SYNTHETIC_MODELS[model][1](truth, block.shape[0], rng)


def write_synthetic(
    path: str | os.PathLike,
    model: str,
    n_samples: int,
    truth: dict,
    *,
    seed: int = 0,
    chunk_rows: int = 250_000,
) -> da.Array:
    """Draw ``n_samples`` rows of ``model`` (a key of :data:`SYNTHETIC_MODELS`) from
    ``truth`` into a new Zarr array at ``path``.

    Blocks are drawn in parallel on the active Dask scheduler, each from its own seed, so
    the data depends only on ``seed`` and ``chunk_rows``.  Refuses to write over an
    existing path.  Returns the lazy array over the written store.
    """
    location = os.fspath(path)
    if os.path.exists(location):
        raise FileExistsError(f"{location} exists; choose a new path")
    draw_dtype = SYNTHETIC_MODELS[model][2]
    n_features = next(np.shape(v)[1] for name, v in truth.items() if name != "weights")
    template = da.empty((n_samples, n_features), chunks=(chunk_rows, n_features))
    seeds = blockwise_seeds(seed, template.numblocks[0])
    X = template.map_blocks(
        _draw_block, model, truth, seeds, dtype=draw_dtype, name=f"draw-{model}"
    )
    array = create_complete_array(
        location, shape=X.shape, dtype=X.dtype, chunks=(chunk_rows, n_features)
    )
    da.store(X, array, lock=False)
    array.attrs[SYNTHETIC_MARKER] = True
    array.attrs["truth"] = json.dumps(
        {
            "model": model,
            **{name: np.asarray(value).tolist() for name, value in truth.items()},
            "seed": seed,
        }
    )
    return da.from_zarr(location)


def write_gaussian_mixture(
    path: str | os.PathLike,
    n_samples: int,
    truth: GaussianMixtureTruth,
    *,
    seed: int = 0,
    chunk_rows: int = 250_000,
) -> da.Array:
    """Draw ``n_samples`` rows from ``truth`` into a new Zarr array at ``path``."""
    return write_synthetic(path, "gmm", n_samples, vars(truth), seed=seed, chunk_rows=chunk_rows)


# -- hidden Markov models -------------------------------------------------------------
SYNTHETIC_HMMS = ("gaussian-hmm", "poisson-hmm", "categorical-hmm")


def random_hmm(model: str, n_states: int, n_features: int, seed: int, n_symbols: int = 4):
    """True parameters of a ``model`` HMM (a key of :data:`SYNTHETIC_HMMS`): sticky
    transitions (about 0.9 on the diagonal), well separated emissions."""
    rng = np.random.default_rng(seed)
    transmat = 0.1 * rng.dirichlet(np.ones(n_states), size=n_states) + 0.9 * np.eye(n_states)
    truth = {"startprob": rng.dirichlet(np.full(n_states, 5.0)), "transmat": transmat}
    if model == "gaussian-hmm":
        truth["means"] = rng.uniform(-5, 5, size=(n_states, n_features))
        truth["variances"] = rng.uniform(0.3, 1.5, size=(n_states, n_features))
    elif model == "poisson-hmm":
        truth["rates"] = rng.uniform(0.5, 20.0, size=(n_states, n_features))
    elif model == "categorical-hmm":
        truth["emissionprob"] = rng.dirichlet(np.full(n_symbols, 0.5), size=n_states)
    else:
        raise ValueError(f"no synthetic HMM {model!r}; choose one of {SYNTHETIC_HMMS}")
    return truth


def draw_hmm(model: str, truth: dict, n_sequences: int, length: int, rng) -> np.ndarray:
    """``n_sequences`` sequences of ``length`` steps, back to back: (n * length, D)."""
    cumulative = np.cumsum(truth["transmat"], axis=1)
    states = np.empty((n_sequences, length), dtype=np.intp)
    states[:, 0] = rng.choice(len(truth["startprob"]), size=n_sequences, p=truth["startprob"])
    for t in range(1, length):  # every sequence in lockstep
        u = rng.random((n_sequences, 1))
        states[:, t] = np.minimum(
            (u > cumulative[states[:, t - 1]]).sum(axis=1), len(cumulative) - 1
        )
    states = states.ravel()
    if model == "gaussian-hmm":
        noise = rng.standard_normal((len(states), truth["means"].shape[1]))
        return truth["means"][states] + np.sqrt(truth["variances"][states]) * noise
    if model == "poisson-hmm":
        return rng.poisson(truth["rates"][states])
    cumulative = np.cumsum(truth["emissionprob"], axis=1)
    symbols = (rng.random((len(states), 1)) > cumulative[states]).sum(axis=1)
    return np.minimum(symbols, cumulative.shape[1] - 1)[:, None]


def _draw_hmm_block(block, model, truth, length, seeds, block_info=None):
    rng = np.random.default_rng(seeds[block_info[None]["chunk-location"][0]])
    return draw_hmm(model, truth, block.shape[0] // length, length, rng).astype(block.dtype)


def write_synthetic_sequences(
    path: str | os.PathLike,
    model: str,
    n_sequences: int,
    length: int,
    truth: dict,
    *,
    seed: int = 0,
    sequences_per_chunk: int = 1000,
) -> int:
    """Write ``n_sequences`` sequences of ``length`` steps from ``truth`` to a new Zarr
    group with arrays ``values`` and ``lengths`` (:class:`dask_em.Sequences`' layout),
    block by block in parallel; the truth goes in the group's attributes.  Returns the
    bytes of values written."""
    import zarr

    location = os.fspath(path)
    if os.path.exists(location):
        raise FileExistsError(f"{location} exists; choose a new path")
    n_features = (
        1
        if model == "categorical-hmm"
        else truth["means" if model == "gaussian-hmm" else "rates"].shape[1]
    )
    dtype = {"gaussian-hmm": np.float64, "poisson-hmm": np.int32, "categorical-hmm": np.int16}
    rows = sequences_per_chunk * length
    template = da.empty((n_sequences * length, n_features), chunks=(rows, n_features))
    seeds = blockwise_seeds(seed, template.numblocks[0])
    values = template.map_blocks(
        _draw_hmm_block, model, truth, length, seeds, dtype=dtype[model], name=f"draw-{model}"
    )
    group = zarr.open_group(location, mode="w-")
    stored = create_complete_array(
        group, name="values", shape=values.shape, dtype=values.dtype, chunks=(rows, n_features)
    )
    da.store(values, stored, lock=False)
    lengths = create_complete_array(
        group, name="lengths", shape=(n_sequences,), dtype=np.int64, chunks=(n_sequences,)
    )
    lengths[...] = length
    group.attrs[SYNTHETIC_MARKER] = True
    group.attrs["truth"] = json.dumps(
        {"model": model, **{k: np.asarray(v).tolist() for k, v in truth.items()}, "seed": seed}
    )
    return int(values.nbytes)

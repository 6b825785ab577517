"""Synthetic data from known models, written to Zarr in parallel (for demos and tests)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import dask.array as da
import numpy as np

from dask_em.engine import blockwise_seeds

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


def _draw_block(block, truth: GaussianMixtureTruth, seeds, block_info=None):
    index = block_info[None]["chunk-location"][0]
    rng = np.random.default_rng(seeds[index])
    n_rows = block.shape[0]
    labels = rng.choice(len(truth.weights), size=n_rows, p=truth.weights)
    chol = np.linalg.cholesky(truth.covariances)
    noise = rng.standard_normal((n_rows, truth.means.shape[1]))
    return truth.means[labels] + np.einsum("nij,nj->ni", chol[labels], noise)


def write_gaussian_mixture(
    path: str | os.PathLike,
    n_samples: int,
    truth: GaussianMixtureTruth,
    *,
    seed: int = 0,
    chunk_rows: int = 250_000,
) -> da.Array:
    """Draw ``n_samples`` rows from ``truth`` into a new Zarr array at ``path``.

    Blocks are drawn in parallel on the active Dask scheduler, each from its own seed, so
    the data depends only on ``seed`` and ``chunk_rows``.  Refuses to write over an
    existing path.  Returns the lazy array over the written store.
    """
    location = os.fspath(path)
    if os.path.exists(location):
        raise FileExistsError(f"{location} exists; choose a new path")
    n_features = truth.means.shape[1]
    template = da.empty((n_samples, n_features), chunks=(chunk_rows, n_features))
    seeds = blockwise_seeds(seed, template.numblocks[0])
    X = template.map_blocks(_draw_block, truth, seeds, dtype=np.float64, name="draw-gmm")
    X.to_zarr(location)
    import zarr

    array = zarr.open_array(location, mode="r+")
    array.attrs[SYNTHETIC_MARKER] = True
    array.attrs["truth"] = json.dumps(
        {
            "model": "gmm",
            "weights": truth.weights.tolist(),
            "means": truth.means.tolist(),
            "covariances": truth.covariances.tolist(),
            "seed": seed,
        }
    )
    return da.from_zarr(location)

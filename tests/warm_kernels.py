"""Compile the kernels the suite uses most, once, before its test processes start.

numba compiles a kernel in a process that calls it unless the on-disk cache already
holds it.  On a fresh clone the cache is empty, and the suite's first tests (two test
processes, each with a cluster of two workers, and the command line's subprocesses)
waited on compilations interleaved with their own work: a cold run's tests took 846 s
against 667 s with a warm cache on 2 cores.  ``conftest.pytest_sessionstart`` runs
this module's two halves in two processes side by side first (about 90 s on an empty
cache), so that every later process loads what they wrote; the tests then took 668 s.
Each half fits tiny models in this process (no cluster) through the estimators, as a
user would, so the kernels compiled are the versions the suite's fits ask for; a
kernel left out here is still compiled where it is first needed, as before.

Run ``python -m tests.warm_kernels gaussian-float64`` (or ``rest``) from the project's
root, so that it imports the same ``dask_em`` as the tests.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings

import numpy as np

#: The two halves, about as long as each other on an empty cache.
HALVES = ("gaussian-float64", "rest")


def _with_nan(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    X = X.copy()
    X[rng.random(X.shape) < 0.15] = np.nan
    return X


def _gaussian_mixtures(covariance_types: tuple[str, ...], dtypes: tuple[str, ...]) -> None:
    from dask_em import GaussianMixture

    rng = np.random.default_rng(0)
    complete = rng.normal(size=(400, 4)) + np.repeat([[0.0], [4.0]], 200, axis=0)
    for covariance_type in covariance_types:
        for dtype in dtypes:
            for X in (complete.astype(dtype), _with_nan(complete, rng).astype(dtype)):
                model = GaussianMixture(2, covariance_type=covariance_type, dtype=dtype)
                model.set_params(max_iter=2, random_state=0).fit(X)
                model.predict_proba(X)
                model.score_samples(X)


def _discrete_mixtures() -> None:
    from dask_em import BernoulliMixture, CategoricalMixture, PoissonMixture

    rng = np.random.default_rng(1)
    counts = rng.poisson(3.0, size=(300, 2))
    PoissonMixture(2, max_iter=2, random_state=0).fit(counts[:, :1])
    PoissonMixture(2, max_iter=2, random_state=0).fit(counts)
    CategoricalMixture(2, max_iter=2, random_state=0).fit(rng.integers(0, 3, size=(300, 2)))
    BernoulliMixture(2, max_iter=2, random_state=0).fit(rng.integers(0, 2, size=(300, 3)))


def _hidden_markov_models() -> None:
    from dask_em import CategoricalHMM, GaussianHMM, PoissonHMM

    rng = np.random.default_rng(2)
    lengths = [50] * 6
    X = rng.normal(size=(300, 2)) + np.repeat([[0.0], [3.0]] * 3, 50, axis=0)
    for covariance_type in ("diag", "full", "spherical", "tied"):
        for data in (X, _with_nan(X, rng)):
            model = GaussianHMM(2, covariance_type=covariance_type, max_iter=2, random_state=0)
            model.fit(data, lengths)
            model.predict(data, lengths)
            model.score(data, lengths)
    GaussianHMM(2, estep="sample", max_iter=2, random_state=0).fit(X, lengths)  # FFBS
    _split_sequence(X)
    for model, data in (
        (PoissonHMM(2, max_iter=2, random_state=0), rng.poisson(3.0, size=(300, 1))),
        (CategoricalHMM(2, max_iter=2, random_state=0), rng.integers(0, 3, size=(300, 1))),
    ):
        model.fit(data, lengths)
        model.predict(data, lengths)


def _split_sequence(X: np.ndarray) -> None:
    """A sequence longer than a block, fitted in pieces (the pieces' own kernels)."""
    from dask_em import GaussianHMM, Sequences

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/sequences.zarr"
        Sequences.from_arrays([X]).to_zarr(path, chunk_rows=64)
        pieces = Sequences.from_zarr(path, block_bytes=64 * X.shape[1] * 8)
        GaussianHMM(2, max_iter=2, random_state=0).fit(pieces)


def warm(half: str) -> None:
    """Compile one half of the kernels (:data:`HALVES`) in this process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two iterations do not converge: not the point
        if half == "gaussian-float64":
            _gaussian_mixtures(("full", "tied", "diag", "spherical"), ("float64",))
            _discrete_mixtures()
        elif half == "rest":
            _gaussian_mixtures(("full", "tied", "diag", "spherical"), ("float32",))
            _hidden_markov_models()
        else:
            raise SystemExit(f"unknown half {half!r}: one of {HALVES}")


if __name__ == "__main__":
    start = time.perf_counter()
    warm(sys.argv[1])
    print(f"{sys.argv[1]}: {time.perf_counter() - start:.1f} s")

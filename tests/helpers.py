"""Helpers shared by the tests: data from known mixtures, the monotone check."""

from __future__ import annotations

import itertools

import numpy as np


def assert_monotone(history, rtol: float = 1e-10) -> None:
    """The objective never decreases by more than ``rtol`` (relative) between iterations.

    Iterations right after a re-seeding are exempt: moving an empty component is not an
    EM step.
    """
    for before, after in itertools.pairwise(history):
        if before["reseeded"]:
            continue
        floor = before["objective"] - rtol * max(1.0, abs(before["objective"]))
        assert after["objective"] >= floor, (
            f"objective decreased at iteration {after['iteration']}: "
            f"{before['objective']!r} -> {after['objective']!r}"
        )


def make_blobs(
    n_samples: int,
    n_features: int,
    n_components: int,
    seed: int,
    spread: float = 6.0,
    anisotropic: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows drawn from a known Gaussian mixture: (X, labels, means)."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-spread, spread, size=(n_components, n_features))
    weights = rng.dirichlet(np.full(n_components, 5.0))
    labels = rng.choice(n_components, size=n_samples, p=weights)
    X = rng.standard_normal((n_samples, n_features))
    if anisotropic:
        for k in range(n_components):
            A = rng.normal(size=(n_features, n_features)) * 0.4 + np.eye(n_features)
            X[labels == k] = X[labels == k] @ A
    X += means[labels]
    return X, labels, means


def random_gaussian_params(family, n_components: int, n_features: int, rng, mean_scale=3.0):
    """Random valid parameters for a GaussianFamily of any covariance type."""
    weights = rng.dirichlet(np.ones(n_components))
    means = rng.normal(size=(n_components, n_features)) * mean_scale
    A = rng.normal(size=(n_components, n_features, n_features))
    full = A @ A.transpose(0, 2, 1) + np.eye(n_features)
    covariances = {
        "full": full,
        "tied": full[0],
        "diag": np.stack([np.diag(c) for c in full]),
        "spherical": np.array([np.trace(c) / n_features for c in full]),
    }[family.covariance_type]
    return family.make_params(weights, means, covariances=covariances)

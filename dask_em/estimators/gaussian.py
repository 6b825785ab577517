"""What the Gaussian estimators share (GaussianMixture and GaussianHMM's emissions):
their parameter checks, the family they build, and the data-derived default priors.

The normal-inverse-Wishart prior: ``mean_prior`` (default: the weighted mean of the
initialization sample) with ``mean_pseudocount`` prior observations, and
``covariance_prior`` (default: the sample's covariance) with ``covariance_pseudocount``;
a default is learned from the scan sample (``mean_prior_``, ``covariance_prior_``) and
used only where its pseudocount is non-zero.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from dask_em.estimators.params import at_least, one_of
from dask_em.families.gaussian import COVARIANCE_TYPES, GaussianFamily

#: Dims of the covariance arrays in model files, per covariance type.
COVARIANCE_DIMS = {
    "full": ("component", "feature", "feature_j"),
    "tied": ("feature", "feature_j"),
    "diag": ("component", "feature"),
    "spherical": ("component",),
}

CONSTRAINTS = {
    "covariance_type": one_of(COVARIANCE_TYPES),
    "reg_covar": at_least(0),
    "mean_pseudocount": at_least(0),
    "covariance_pseudocount": at_least(0),
}


def covariance_shape(covariance_type: str, n_components: int, n_features: int):
    """Shape of the covariances (or precisions) of one covariance type."""
    K, D = n_components, n_features
    return {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]


def check_priors(estimator: Any, n_features: int) -> None:
    """Shapes of ``mean_prior`` and ``covariance_prior``; the latter positive semi-definite."""
    if estimator.mean_prior is not None and np.shape(estimator.mean_prior) != (n_features,):
        raise ValueError(
            f"mean_prior must have shape ({n_features},), got {np.shape(estimator.mean_prior)}"
        )
    if estimator.covariance_prior is not None:
        prior = np.asarray(estimator.covariance_prior, dtype=np.float64)
        if prior.shape not in ((), (n_features,), (n_features, n_features)):
            raise ValueError(
                f"covariance_prior must be a scalar, ({n_features},) or "
                f"({n_features}, {n_features}), got shape {prior.shape}"
            )
        matrix = prior * np.eye(n_features) if prior.ndim < 2 else prior
        if np.any(np.linalg.eigvalsh((matrix + matrix.T) / 2) < 0):
            raise ValueError("covariance_prior must be positive semi-definite")


def check_magnitude(scan: dict, dtype: str = "float64") -> None:
    """ValueError when X holds values whose squares (and the products of the covariance
    updates) overflow the compute dtype: the user is told to rescale, not shown NaN."""
    largest = np.sqrt(np.finfo(np.dtype(dtype)).max) / 1e4  # 1.3e150 for float64
    magnitude = scan.get("magnitude")
    if magnitude is None or not len(magnitude) or not np.nanmax(magnitude) > largest:
        return
    column = int(np.nanargmax(magnitude))
    value = float(magnitude[column])
    raise ValueError(
        f"X holds values up to {value:.3g} in magnitude (column {column}); a Gaussian model "
        f"squares them and {dtype} overflows beyond about {largest:.1g}: rescale X (e.g. "
        f"divide it by {10 ** np.floor(np.log10(value)):.0e}) and fit again"
    )


def magnitude_check(estimator: Any) -> Callable[[dict], None]:
    """:func:`check_magnitude` at the estimator's compute dtype: what its
    ``_learn_from_scan`` refuses, as a function of a scan (``_scan_check``)."""
    return functools.partial(check_magnitude, dtype=getattr(estimator, "dtype", "float64"))


def learn_priors(estimator: Any, scan: dict) -> None:
    """Default priors from the scan sample: its weighted mean and covariance (after
    checking that the data's scale is one the model can compute with)."""
    check_magnitude(scan, getattr(estimator, "dtype", "float64"))
    sample, weight = scan["sample"], scan["sample_weight"]
    if weight.sum() > 0:
        estimator.mean_prior_ = np.average(sample, axis=0, weights=weight)
        centred = sample - estimator.mean_prior_
        estimator.covariance_prior_ = (centred * weight[:, None]).T @ centred / weight.sum()


def family(estimator: Any, weight_concentration: float = 1.0) -> GaussianFamily:
    """The estimator's Gaussian family, with the learned default priors where needed."""
    mean_prior = estimator.mean_prior
    covariance_prior = estimator.covariance_prior
    if estimator.mean_pseudocount and mean_prior is None:
        mean_prior = getattr(estimator, "mean_prior_", None)
    if estimator.covariance_pseudocount and covariance_prior is None:
        covariance_prior = getattr(estimator, "covariance_prior_", None)
    return GaussianFamily(
        estimator.covariance_type,
        float(estimator.reg_covar),
        name=estimator._model_name,
        weight_concentration=float(weight_concentration),
        mean_prior=None if mean_prior is None else np.asarray(mean_prior, dtype=float),
        mean_pseudocount=float(estimator.mean_pseudocount),
        covariance_prior=(
            None if covariance_prior is None else np.asarray(covariance_prior, dtype=float)
        ),
        covariance_pseudocount=float(estimator.covariance_pseudocount),
        dtype=getattr(estimator, "dtype", "float64"),  # GaussianMixture(dtype=); HMMs: float64
    )


def newton_coordinates(estimator: Any, n_features: int, means: bool, covariances: bool) -> int:
    """The coordinates of the means (K D) and covariances (the covariance type's count)
    that EM updates: ``accelerate="newton"`` differences every one of them in every pass
    (:meth:`dask_em.estimators.base.Estimator._newton_coordinates`)."""
    K = estimator.n_components
    family = GaussianFamily(estimator.covariance_type)
    covariance_count = family.n_parameters(K, n_features) - K * n_features - (K - 1)
    return K * n_features * int(means) + covariance_count * int(covariances)


def check_covariances(name: str, value: Any, covariance_type: str, n_components: int):
    """Covariances in the covariance type's shape, as float64: spherical (K,), diag
    (K, D), full (K, D, D), tied (D, D); positive, or symmetric positive definite."""
    array = np.asarray(value, dtype=np.float64)
    K = n_components
    shapes = {
        "spherical": ("(n_components,)", array.shape == (K,)),
        "diag": ("(n_components, n_features)", array.ndim == 2 and array.shape[0] == K),
        "full": (
            "(n_components, n_features, n_features)",
            array.ndim == 3 and array.shape[0] == K and array.shape[1] == array.shape[2],
        ),
        "tied": ("(n_features, n_features)", array.ndim == 2 and array.shape[0] == array.shape[1]),
    }
    expected, ok = shapes[covariance_type]
    if not ok:
        raise ValueError(
            f"{name} must have shape {expected} = {K} states for "
            f"covariance_type={covariance_type!r}, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    if covariance_type in ("spherical", "diag"):
        if np.any(array <= 0):
            raise ValueError(f"{name} must be positive")
    else:
        matrices = array.reshape(-1, *array.shape[-2:])
        if not np.allclose(matrices, np.swapaxes(matrices, 1, 2)) or np.any(
            np.linalg.eigvalsh(matrices) <= 0
        ):
            raise ValueError(f"{name} must be symmetric, positive-definite")
    return array

"""scikit-learn's estimator protocol, without scikit-learn as a dependency.

scikit-learn's meta-estimators and helpers (``clone``, ``GridSearchCV``, ``Pipeline``,
``check_is_fitted``, ``parametrize_with_checks``) ask an estimator for its *tags*:
``__sklearn_tags__()`` from scikit-learn 1.6 on, ``_get_tags()`` before.  Both are
answered here, importing scikit-learn only when scikit-learn itself asks (so only
when it is installed); dask_em never imports it otherwise.

What the tags say is derived, not declared twice: the input tags from the model's
:class:`~dask_em.checks.ValueCheck` (NaN allowed for the Gaussian mixture that
marginalizes it, non-negative integers for counts and symbols), the estimator type
from the model kind (a mixture is a density estimator, as scikit-learn's; a hidden
Markov model has none, as hmmlearn's).

Checks of scikit-learn's common suite that cannot apply to a model are listed with
the reason in :data:`EXPECTED_FAILED_CHECKS`, given both to
``parametrize_with_checks(expected_failed_checks=...)`` (scikit-learn >= 1.6) and as
the ``_xfail_checks`` tag (scikit-learn 1.5).
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import numpy as np

#: The constructor parameter that holds a connection, shared (never copied) by clones.
CLIENT_PARAMETER = "client"

_WEIGHTS_AS_REPEATS = (
    "integer weights count as repeated rows in every EM step, but the initialization "
    "sample is drawn from the rows, so repeating rows changes the draw and the fit ends "
    "at another optimum; from the same start the paths agree (the family contract test)"
)

_NOT_BINARY = (
    "the check's data are not 0/1 (scikit-learn has no tag for binary input); a "
    "Bernoulli mixture refuses them with a ValueError naming the first bad entry"
)

#: Checks whose data are integers from real values (scikit-learn's ``categorical``
#: tag), never only 0 and 1: every check that fits a BernoulliMixture.
_BERNOULLI_FITS = (
    "check_all_zero_sample_weights_error",
    "check_dict_unchanged",
    "check_dont_overwrite_parameters",
    "check_estimators_dtypes",
    "check_estimators_fit_returns_self",
    "check_estimators_nan_inf",
    "check_estimators_overwrite_params",
    "check_f_contiguous_array_estimator",
    "check_fit2d_1feature",
    "check_fit2d_1sample",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
    "check_fit_idempotent",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input",
    "check_sample_weights_not_an_array",
    "check_sample_weights_not_overwritten",
    "check_sample_weights_pandas_series",
    "check_sample_weights_shape",
)

_OWN_NEGATIVE_MESSAGE = (
    "negative data are refused before any fitting, with dask_em's message (the count "
    "and the first position of the bad entries), not scikit-learn's 'Negative values "
    "in data passed to' wording"
)

#: ``{model name: {check name: why it cannot apply}}`` (see module docstring).
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {
    "gmm": {"check_sample_weight_equivalence_on_dense_data": _WEIGHTS_AS_REPEATS},
    "poisson": {
        "check_sample_weight_equivalence_on_dense_data": _WEIGHTS_AS_REPEATS,
        "check_positive_only_tag_during_fit": _OWN_NEGATIVE_MESSAGE,
    },
    "categorical": {
        "check_sample_weight_equivalence_on_dense_data": _WEIGHTS_AS_REPEATS,
        "check_positive_only_tag_during_fit": _OWN_NEGATIVE_MESSAGE,
        "check_estimators_nan_inf": (
            "NaN is refused as a symbol with a message naming the value (nan) and its "
            "position, not the words 'NaN' or 'inf' the check looks for"
        ),
    },
    "bernoulli": {
        "check_sample_weight_equivalence_on_dense_data": _WEIGHTS_AS_REPEATS,
        **dict.fromkeys(_BERNOULLI_FITS, _NOT_BINARY),
    },
}


def expected_failed_checks(estimator: Any) -> dict[str, str]:
    """``{check name: reason}`` for scikit-learn's ``parametrize_with_checks``."""
    return dict(EXPECTED_FAILED_CHECKS.get(estimator._model_name, {}))


def input_properties(estimator: Any) -> dict[str, bool]:
    """What the model accepts, read off its value check: ``allow_nan``, ``positive_only``
    and ``categorical`` (non-negative integers only), as scikit-learn's input tags."""
    check = estimator._value_check(fitting=True)
    accepts = {
        name: not bool(check.bad(np.array([[value]], dtype=np.float64)).any())
        for name, value in (("nan", np.nan), ("negative", -1.0), ("fraction", 0.5))
    }
    return {
        "allow_nan": accepts["nan"],
        "positive_only": not accepts["negative"],
        "categorical": not accepts["fraction"],
    }


def sklearn_tags(estimator: Any):
    """``__sklearn_tags__``: scikit-learn's :class:`~sklearn.utils.Tags` (>= 1.6)."""
    from sklearn.utils import InputTags, Tags, TargetTags

    return Tags(
        estimator_type=None if estimator._sequences else "density_estimator",
        target_tags=TargetTags(required=False),
        requires_fit=True,
        non_deterministic=False,
        input_tags=InputTags(**input_properties(estimator)),
    )


def legacy_tags(estimator: Any) -> dict[str, Any]:
    """``_more_tags``: the same tags as scikit-learn 1.5's dictionary."""
    properties = input_properties(estimator)
    return {
        "allow_nan": properties["allow_nan"],
        "requires_positive_X": properties["positive_only"],
        "X_types": ["2darray", "categorical"] if properties["categorical"] else ["2darray"],
        "requires_y": False,
        "non_deterministic": False,
        "_xfail_checks": expected_failed_checks(estimator),
    }


def legacy_get_tags(estimator: Any) -> dict[str, Any]:
    """``_get_tags``: scikit-learn 1.5's defaults updated with :func:`legacy_tags`."""
    from sklearn.utils._tags import _DEFAULT_TAGS

    return {**_DEFAULT_TAGS, **legacy_tags(estimator)}


def clone(estimator: Any):
    """``__sklearn_clone__``: a new unfitted estimator with deep copies of the
    parameters, except the client, which the clone shares (a connection cannot be
    copied, and a grid search's clones should all run on the one cluster)."""
    params = estimator.get_params(deep=False)
    client = params.pop(CLIENT_PARAMETER, None)
    copied = {name: copy.deepcopy(value) for name, value in params.items()}
    if CLIENT_PARAMETER in estimator._param_names():
        copied[CLIENT_PARAMETER] = client
    return type(estimator)(**copied)


def not_fitted_error(message: str) -> ValueError:
    """The error a method of an unfitted estimator raises: scikit-learn's
    ``NotFittedError`` (a ValueError) when scikit-learn is already imported, as it is
    wherever scikit-learn calls the estimator; a plain ValueError otherwise."""
    exceptions = sys.modules.get("sklearn.exceptions")
    error_type = getattr(exceptions, "NotFittedError", ValueError)
    return error_type(message)


def state_without_client(estimator: Any) -> dict[str, Any]:
    """``__getstate__``: the attributes, the client left out (it cannot be pickled; the
    unpickled estimator uses the active client, as one built without ``client``)."""
    state = dict(estimator.__dict__)
    if CLIENT_PARAMETER in state:
        state[CLIENT_PARAMETER] = None
    return state

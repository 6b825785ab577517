"""scikit-learn's habits on NumPy input: tags, clone, GridSearchCV, Pipeline,
check_is_fitted, and scikit-learn's common checks on the mixtures (issue #13, item 1).

Everything here fits small in-memory data, which dask_em fits in this process (no
cluster)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
from sklearn import utils as sklearn_utils
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from dask_em import (
    BernoulliMixture,
    CategoricalHMM,
    CategoricalMixture,
    GaussianHMM,
    GaussianMixture,
    PoissonHMM,
    PoissonMixture,
)
from dask_em.estimators.sklearn_protocol import expected_failed_checks
from tests.helpers import make_blobs

RNG = np.random.default_rng(0)
GAUSSIAN_X = make_blobs(300, 2, 3, seed=0)[0]
COUNTS = RNG.poisson(3.0, size=(300, 2))
SYMBOLS = RNG.integers(0, 3, size=(300, 2))
BINARY = RNG.integers(0, 2, size=(300, 3))

#: Every estimator, unfitted, with data it accepts.
EVERY_ESTIMATOR = [
    (GaussianMixture(2, random_state=0), GaussianMixture, GAUSSIAN_X),
    (PoissonMixture(2, random_state=0), PoissonMixture, COUNTS),
    (CategoricalMixture(2, random_state=0), CategoricalMixture, SYMBOLS),
    (BernoulliMixture(2, random_state=0), BernoulliMixture, BINARY),
    (GaussianHMM(2, random_state=0), GaussianHMM, GAUSSIAN_X),
    (PoissonHMM(2, random_state=0), PoissonHMM, COUNTS),
    (CategoricalHMM(2, random_state=0), CategoricalHMM, SYMBOLS[:, :1]),
]
IDS = [cls.__name__ for _, cls, _ in EVERY_ESTIMATOR]


@pytest.mark.parametrize(("estimator", "cls", "X"), EVERY_ESTIMATOR, ids=IDS)
def test_check_is_fitted_before_and_after_fit(estimator, cls, X):
    model = clone(estimator)
    with pytest.raises(NotFittedError):
        check_is_fitted(model)
    model.fit(X)
    check_is_fitted(model)


@pytest.mark.parametrize(("estimator", "cls", "X"), EVERY_ESTIMATOR, ids=IDS)
def test_clone_is_an_unfitted_estimator_with_the_same_parameters(estimator, cls, X):
    fitted = clone(estimator).set_params(max_iter=5).fit(X)
    copy = clone(fitted)
    assert type(copy) is cls and copy is not fitted
    assert copy.get_params() == fitted.get_params()
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)


@pytest.mark.parametrize(("estimator", "cls", "X"), EVERY_ESTIMATOR, ids=IDS)
def test_tags_say_what_the_model_accepts(estimator, cls, X):
    get_tags = getattr(sklearn_utils, "get_tags", None)
    if get_tags is None:
        pytest.skip("scikit-learn < 1.6 has no Tags")
    tags = get_tags(estimator)
    assert tags.target_tags.required is False and tags.requires_fit
    assert tags.estimator_type == (None if "HMM" in cls.__name__ else "density_estimator")
    discrete = cls not in (GaussianMixture, GaussianHMM)
    assert tags.input_tags.positive_only == discrete
    assert tags.input_tags.categorical == discrete
    assert tags.input_tags.allow_nan == (cls is GaussianMixture or "HMM" in cls.__name__)
    assert get_tags(GaussianMixture(missing="error")).input_tags.allow_nan is False


def test_grid_search_over_n_components_selects_the_true_k():
    X, _, _ = make_blobs(900, 2, 3, seed=4, spread=8.0)
    search = GridSearchCV(
        GaussianMixture(random_state=0, n_init=2),
        {"n_components": [1, 2, 3, 4, 5]},
        cv=KFold(3, shuffle=True, random_state=0),
    ).fit(X)
    assert search.best_params_ == {"n_components": 3}
    scores = search.cv_results_["mean_test_score"]
    assert np.argmax(scores) == 2 and scores[2] > scores[1] + 0.1  # clearly better than K=2
    assert search.best_estimator_.n_components == 3
    assert search.score(X) == pytest.approx(search.best_estimator_.score(X))


def test_a_pipeline_with_a_scaler_fits_and_predicts():
    X, labels, _ = make_blobs(600, 3, 3, seed=5, spread=8.0)
    X = X * np.array([1.0, 100.0, 0.01])  # scales the scaler has to undo
    pipe = make_pipeline(StandardScaler(), GaussianMixture(3, random_state=0)).fit(X)
    check_is_fitted(pipe)
    predicted = pipe.predict(X)
    # the same as scaling by hand, then fitting and predicting
    scaled = StandardScaler().fit_transform(X)
    alone = GaussianMixture(3, random_state=0).fit(scaled)
    np.testing.assert_array_equal(predicted, alone.predict(scaled))
    assert pipe.score(X) == pytest.approx(alone.score(scaled), rel=1e-12)
    # and it finds the blobs: each true blob maps to one predicted component
    agreement = sum(np.bincount(predicted[labels == k]).max() for k in range(3)) / len(X)
    assert agreement > 0.95


@pytest.mark.slow
def test_the_package_imports_and_fits_without_scikit_learn():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import numpy as np\n"
        "from dask_em import GaussianMixture\n"
        "X = np.random.default_rng(0).normal(size=(50, 2))\n"
        "m = GaussianMixture(2, random_state=0).fit(X)\n"
        "assert hasattr(m, '__sklearn_tags__') and m.__sklearn_is_fitted__()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


# -- scikit-learn's common checks --------------------------------------------------------
# Seeded: the checks fit tiny random data (40 rows in 10 dimensions, say), where about
# one random start in 75 takes a first EM step whose objective falls by up to 3e-6
# relative: components of about ten rows in ten dimensions have nearly singular
# covariances, and ``reg_covar * I`` added after the M-step is not part of the
# objective (the family's module docstring).  Unseeded, the autouse monotone check
# failed at random, about once in 75 runs of the suite.
MIXTURES = [
    GaussianMixture(2, random_state=0),
    GaussianMixture(2, missing="error", random_state=0),
    PoissonMixture(2, random_state=0),
    CategoricalMixture(2, random_state=0),
    BernoulliMixture(2, random_state=0),
]

if "expected_failed_checks" in inspect.signature(parametrize_with_checks).parameters:
    _checks = parametrize_with_checks(MIXTURES, expected_failed_checks=expected_failed_checks)
else:  # scikit-learn 1.5: the same list, read from the ``_xfail_checks`` tag
    _checks = parametrize_with_checks(MIXTURES)


def only_the_first_estimator_fast(checks):
    """The same parameters (ids, xfail marks), those of every estimator but the first
    marked slow: the fast loop runs the common checks on GaussianMixture(2) only."""
    argnames, params = checks.args
    kept = []
    for param in params:
        if hasattr(param, "marks"):  # a pytest.param: an expected failure
            values, marks, id_ = param.values, param.marks, param.id
        else:
            values, marks, id_ = param, (), None
        if values[0] is not MIXTURES[0]:
            marks = (*marks, pytest.mark.slow)
        kept.append(pytest.param(*values, marks=marks, id=id_))
    return pytest.mark.parametrize(argnames, kept, **checks.kwargs)


@only_the_first_estimator_fast(_checks)
def test_scikit_learn_common_checks(estimator, check):
    check(estimator)

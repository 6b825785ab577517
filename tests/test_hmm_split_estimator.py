"""A split sequence through the estimator's other paths: a fit stopped and resumed from
its checkpoint, and the Monte Carlo E-step, on the session's cluster."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dask_em import Sequences
from tests.test_checkpoint import Stop, stop_after
from tests.test_hmm_split_fit import _fitted, _params, _store

pytestmark = pytest.mark.slow


def _split(path, steps: int, width: int, n_pieces: int) -> Sequences:
    data = Sequences.from_zarr(path, block_bytes=-(-steps // n_pieces) * width * 8)
    assert data.split
    return data


@pytest.mark.parametrize("stop", [1, 4])
def test_a_split_fit_stopped_and_resumed_from_its_checkpoint_equals_the_uninterrupted(
    client, tmp_path, stop
):
    steps = 20_000
    path, model, width = _store(tmp_path, "diag", steps, n_iter=6)
    data = _split(path, steps, width, 7)
    reference = _fitted(model, data)
    checkpoint = tmp_path / "fit.ckpt.zarr"
    with warnings.catch_warnings(), pytest.raises(Stop):
        warnings.simplefilter("ignore")
        model().fit(data, checkpoint=checkpoint, callbacks=[stop_after(stop)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = model().fit(data, checkpoint=checkpoint, resume=True)
    # 1e-12, not bitwise: stopped after iteration 1, one objective of the resumed fit
    # differed by one unit in the last place (cause not traced; the fit itself repeats
    # bitwise, and mixtures resume bitwise)
    np.testing.assert_allclose(resumed.lower_bounds_, reference.lower_bounds_, rtol=1e-12)
    for name, value in _params(resumed).items():
        np.testing.assert_allclose(value, _params(reference)[name], rtol=1e-12, atol=1e-14)


def test_the_monte_carlo_e_step_on_a_split_sequence_approaches_exact_em(client, tmp_path):
    """Sampled paths that cross the pieces: with many paths, the parameters after a few
    iterations are those of exact EM on the same split data, within Monte Carlo error;
    with few paths, further away."""
    steps = 20_000
    path, model, width = _store(tmp_path, "diag", steps, n_iter=3)
    data = _split(path, steps, width, 7)
    exact = _params(_fitted(model, data))
    errors = {}
    for n_samples in (2, 64):
        sampled = _fitted(
            lambda n=n_samples: model().set_params(estep="sample", n_samples=n, random_state=0),
            data,
        )
        errors[n_samples] = max(
            np.max(np.abs(value - exact[name])) for name, value in _params(sampled).items()
        )
    assert errors[64] < 0.02, errors
    assert errors[64] < errors[2], errors

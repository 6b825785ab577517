"""Model-size sweeps: every candidate fitted sharing each pass, the table's criteria
equal the fitted models' own ``bic``/``aic``, the true size is chosen, and
``dask-em sweep`` writes the table, the models, the plot and the report."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from dask_em import GaussianHMM, GaussianMixture, ModelSweep, PoissonMixture, load, sweep
from dask_em.cli import main
from dask_em.sweep import parameter_grid
from tests.test_hmm import gaussian_sequences

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")


@pytest.fixture(scope="module")
def four_component_store(tmp_path_factory):
    from dask_em.synthetic import random_gaussian_mixture, write_gaussian_mixture

    store = str(tmp_path_factory.mktemp("sweep") / "X.zarr")
    truth = random_gaussian_mixture(4, 3, seed=11, separation=2.5)
    write_gaussian_mixture(store, 30_000, truth, seed=11, chunk_rows=5_000)
    return store


@pytest.mark.slow
def test_a_sweep_streamed_from_zarr_picks_the_true_k_reading_the_data_about_once(
    client, four_component_store
):
    search = sweep(
        GaussianMixture(random_state=0, cache="stream", tol=1e-4, max_iter=300),
        four_component_store,
        n_components=range(1, 9),
    )
    table = search.results_
    assert list(table["n_components"]) == list(range(1, 9))
    assert search.best_params_ == {"n_components": 4} and search.best_estimator_.n_components == 4
    assert search.data_placement_ == "stream"
    # one scan, one init pass for all, EM passes of the slowest candidate, one score pass
    assert search.n_passes_ == 1 + 1 + table["passes"].max() + 1
    slowest_alone = 1 + 1 + table["passes"].max()  # its scan, init and EM passes
    assert search.n_passes_ <= 1.3 * slowest_alone
    assert search.bytes_read_ == search.n_passes_ * 30_000 * 3 * 8
    # the table's criteria are the fitted models' own (each computed in a pass of its own)
    for model, bic, aic in zip(search.estimators_, table["bic"], table["aic"], strict=True):
        assert model.bic(four_component_store) == pytest.approx(bic, rel=1e-9)
        assert model.aic(four_component_store) == pytest.approx(aic, rel=1e-9)
    assert table["converged"].all()


def test_a_sweep_of_hmm_sizes_picks_the_true_number_of_states():
    values, lengths, _ = gaussian_sequences(150, seed=2)
    search = ModelSweep(
        GaussianHMM(random_state=1, n_init=2, tol=1e-6), {"n_components": [1, 2, 3, 4, 5]}
    )
    search.fit(values, lengths)
    assert search.best_params_ == {"n_components": 3}
    np.testing.assert_allclose(
        search.results_["bic"], [m.bic(values, lengths) for m in search.estimators_], rtol=1e-9
    )


def test_a_sweep_over_two_parameters_and_by_aic_with_weights():
    rng = np.random.default_rng(4)
    rates = np.array([[1.0, 9.0], [8.0, 2.0]])
    X = rng.poisson(rates[rng.integers(0, 2, 4000)])
    w = rng.integers(1, 3, size=len(X)).astype(float)
    search = sweep(
        PoissonMixture(random_state=0),
        X,
        criterion="aic",
        sample_weight=w,
        n_components=[1, 2, 3],
        tol=[1e-3, 1e-6],
    )
    assert len(search.results_) == 6 and search.best_params_["n_components"] == 2
    assert search.results_.columns[:2].tolist() == ["n_components", "tol"]
    # with integer weights the criteria count each row as its weight in copies
    repeated = np.repeat(X, w.astype(int), axis=0)
    for model, aic in zip(search.estimators_, search.results_["aic"], strict=True):
        assert model.aic(repeated) == pytest.approx(aic, rel=1e-9)


def test_the_grid_and_its_refusals():
    assert parameter_grid({"n_components": [1, 2], "covariance_type": ["full", "diag"]}) == [
        {"n_components": 1, "covariance_type": "full"},
        {"n_components": 1, "covariance_type": "diag"},
        {"n_components": 2, "covariance_type": "full"},
        {"n_components": 2, "covariance_type": "diag"},
    ]
    X = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError, match="no value for 'n_components'"):
        sweep(GaussianMixture(), X, n_components=[])
    with pytest.raises(ValueError, match="criterion must be one of"):
        sweep(GaussianMixture(), X, criterion="loglik", n_components=[1, 2])
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        sweep(GaussianMixture(), X, n_components=[2, 60])
    with pytest.raises(ValueError, match="covariance_type"):
        sweep(GaussianMixture(), X, n_components=[2], covariance_type=["full", "wide"])


@pytest.mark.slow
def test_dask_em_sweep_writes_the_table_the_models_the_plot_and_the_report(
    client, four_component_store, tmp_path, capsys
):
    out = tmp_path / "sweep"
    args = ["sweep", "gmm", four_component_store, "-k", "2:5", "--covariance-types", "full,diag"]
    args += ["--out", str(out), "--tol", "1e-4", "--scheduler", client.scheduler.address]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "lowest BIC: n_components=4, covariance_type=full" in printed
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(int(r["n_components"]), r["covariance_type"]) for r in rows] == [
        (k, t) for k in range(2, 6) for t in ("full", "diag")
    ]
    for row in rows:
        name = f"n_components-{row['n_components']}_covariance_type-{row['covariance_type']}"
        model = load(out / "models" / f"{name}.zarr")
        assert model.n_components == int(row["n_components"])
        assert model.bic(four_component_store) == pytest.approx(float(row["bic"]), rel=1e-9)
    report = (out / "report.html").read_text()
    assert "models/n_components-4_covariance_type-full.zarr" in report
    if (out / "bic.png").exists():  # with matplotlib (the plot extra)
        assert "data:image/png;base64," in report
    before = sorted(os.listdir(out))
    assert main(args) == 2  # an existing --out is refused ...
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before  # ... and left as it was
    bad = ["sweep", "gmm", four_component_store, "-k", "0:3", "--out", str(tmp_path / "x")]
    assert main(bad) == 2 and not (tmp_path / "x").exists()
    poisson = ["sweep", "poisson", four_component_store, "-k", "1:2", "--covariance-types", "full"]
    assert main([*poisson, "--out", str(tmp_path / "y")]) == 2
    assert "--covariance-types does not apply to poisson" in capsys.readouterr().err

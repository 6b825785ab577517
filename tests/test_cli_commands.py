"""``dask-em fit``, ``predict``, ``score``, ``info`` and ``make-data``.

One flow runs as a user runs it (subprocesses); the rest calls ``main`` in this process,
against the session's LocalCluster (``--scheduler``), which is the same code path minus
the interpreter start-up.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

from dask_em import load
from dask_em.cli import main
from dask_em.registry import model_kinds

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")


def dask_em(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dask_em.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def gmm_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "gmm.zarr"
    assert (
        main(["make-data", "gmm", str(path), "--n-samples", "30000", "--chunk-rows", "7500"]) == 0
    )
    return path


def scheduler(client) -> list[str]:
    return ["--scheduler", client.scheduler.address]


@pytest.mark.slow
def test_make_data_fit_info_predict_score_as_a_user_runs_them(client, tmp_path, capsys):
    store, out, labels = tmp_path / "counts.zarr", tmp_path / "model.zarr", tmp_path / "labels.zarr"
    assert main(["make-data", "poisson", str(store), "--n-samples", "20000", "-k", "2"]) == 0
    assert capsys.readouterr().out.startswith("wrote 20,000 rows x 4 features")
    truth = json.loads(zarr.open_array(str(store), mode="r").attrs["truth"])
    fit = dask_em("fit", "poisson", str(store), "-k", "2", "--out", str(out), *scheduler(client))
    assert fit.returncode == 0, fit.stderr
    lines = fit.stdout.splitlines()
    assert lines[0].startswith("Dask dashboard: http://")
    assert any(line.startswith("poisson iteration 1: objective") for line in lines)
    assert lines[-3].startswith("fitted poisson in ") and "converged=True" in lines[-3]
    assert lines[-1] == f"wrote {tmp_path}/model.report.html and {tmp_path}/model.convergence.png"
    model = load(out)
    order = np.argsort(model.weights_)
    np.testing.assert_allclose(model.weights_[order], np.sort(truth["weights"]), atol=0.02)

    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "model PoissonMixture" in info and "array rates (component=2, feature=4)" in info
    predicted = dask_em("predict", str(out), str(store), "--out", str(labels), *scheduler(client))
    assert predicted.returncode == 0, predicted.stderr
    written = zarr.open_array(str(labels), mode="r")
    np.testing.assert_array_equal(written[:], model.predict(zarr.open_array(str(store))[:]))
    scored = dask_em("score", str(out), str(store), *scheduler(client))
    assert scored.returncode == 0, scored.stderr
    score = float(next(x for x in scored.stdout.splitlines() if x.startswith("score ")).split()[1])
    np.testing.assert_allclose(score, model.score(zarr.open_array(str(store))[:]), rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gmm", "poisson", "categorical", "bernoulli"])
def test_every_model_kind_makes_data_and_fits_it(client, tmp_path, capsys, name):
    store, out = tmp_path / "data.zarr", tmp_path / "model.zarr"
    assert main(["make-data", name, str(store), "--n-samples", "8000", "-k", "2"]) == 0
    args = ["fit", name, str(store), "-k", "2", "--out", str(out), "--no-report", "--n-init", "2"]
    assert main([*args, *scheduler(client)]) == 0
    model = load(out)
    assert type(model) is model_kinds()[name].estimator and model.converged_
    truth = json.loads(zarr.open_array(str(store), mode="r").attrs["truth"])
    np.testing.assert_allclose(np.sort(model.weights_), np.sort(truth["weights"]), atol=0.03)
    assert not (tmp_path / "model.report.html").exists()


@pytest.mark.slow
def test_fit_reads_a_group_member_an_xarray_dataset_and_an_fsspec_url(
    client, tmp_path, gmm_store, capsys
):
    X = zarr.open_array(str(gmm_store), mode="r")[:]
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.create_array("X", data=X, chunks=(10_000, 4))
    dataset = tmp_path / "dataset.zarr"
    xr.Dataset({"measurements": (("sample", "feature"), X)}).chunk({"sample": 10_000}).to_zarr(
        dataset, consolidated=False
    )
    url = "file://" + str(tmp_path / "group.zarr")
    fits = {
        "member": [str(tmp_path / "group.zarr"), "--variable", "X"],
        "dataset": [str(dataset), "--variable", "measurements"],
        "url": [url, "--variable", "X", "--storage-option", "auto_mkdir=false"],
    }
    for label, source in fits.items():
        out = tmp_path / f"fitted-{label}.zarr"
        args = ["fit", "gmm", *source, "-k", "3", "--out", str(out), "--no-report", "-q"]
        status = main([*args, *scheduler(client)])
        assert status == 0, capsys.readouterr().err
    fitted = [load(tmp_path / f"fitted-{label}.zarr") for label in fits]
    for other in fitted[1:]:
        np.testing.assert_array_equal(other.means_, fitted[0].means_)


@pytest.mark.slow
def test_overwrite_replaces_the_model_and_its_report(client, tmp_path, gmm_store, capsys):
    out = tmp_path / "model.zarr"
    base = ["fit", "gmm", str(gmm_store), "-k", "2", "--out", str(out), "--tol", "0"]
    base += scheduler(client)
    assert main([*base, "--max-iter", "2"]) == 0
    assert main([*base, "--max-iter", "3"]) == 2  # the model exists
    assert load(out).n_iter_ == 2
    assert main([*base, "--max-iter", "3", "--overwrite"]) == 0
    assert load(out).n_iter_ == 3
    assert sorted(os.listdir(tmp_path)) == [
        "model.convergence.png",
        "model.report.html",
        "model.zarr",
    ]


def test_a_progress_bar_on_a_terminal(client, tmp_path, gmm_store, capsys, monkeypatch):
    class Terminal:
        def __init__(self, stream):
            self.stream = stream

        def isatty(self):
            return True

        def __getattr__(self, name):
            return getattr(self.stream, name)

    monkeypatch.setattr(sys, "stderr", Terminal(sys.stderr))
    out = tmp_path / "model.zarr"
    args = ["fit", "gmm", str(gmm_store), "-k", "2", "--out", str(out), "--no-report"]
    assert main([*args, "--max-iter", "3", "--tol", "0", *scheduler(client)]) == 0
    captured = capsys.readouterr()
    assert "\r\x1b[Kfit gmm [########----------------] 1/3  objective" in captured.err
    assert "gmm iteration 3: objective" in captured.out  # log lines stay on stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "gmm", "{store}", "-k", "2"], "the following arguments are required: --out"),
        (["fit", "gmm", "{store}", "-k", "0", "--out", "{out}"], "must be a positive integer"),
        (["fit", "hmm", "{store}", "-k", "2", "--out", "{out}"], "invalid choice: 'hmm'"),
        (["fit", "gmm", "{tmp}/missing.zarr", "-k", "2", "--out", "{out}"], "does not exist"),
        (["fit", "gmm", "{group}", "-k", "2", "--out", "{out}"], "is a Zarr group; choose one"),
        (["fit", "gmm", "{group}", "--variable", "Y", "-k", "2", "--out", "{out}"], "has no 'Y'"),
        (["fit", "gmm", "{store}", "-k", "2", "--out", "{existing}"], "exists; pass --overwrite"),
        (["fit", "gmm", "{store}", "-k", "2", "--out", "{out}", "--resume"], "needs --checkpoint"),
        (
            ["fit", "gmm", "{store}", "-k", "2", "--out", "{out}", "--checkpoint", "{existing}"],
            "exists; add --resume to continue from it",
        ),
        (
            ["fit", "poisson", "{store}", "-k", "2", "--out", "{out}", "--covariance-type", "full"],
            "--covariance-type does not apply to poisson models",
        ),
        (
            ["fit", "gmm", "{store}", "-k", "2", "--out", "{out}", "--storage-option", "anon=1"],
            "--storage-option applies to URLs",
        ),
        (
            [
                "fit",
                "gmm",
                "{store}",
                "-k",
                "2",
                "--out",
                "{out}",
                "--scheduler",
                "x:1",
                "--n-workers",
                "2",
            ],
            "do not combine with --scheduler",
        ),
        (["fit", "gmm", "{inf}", "-k", "2", "--out", "{out}", "@"], "X contains 1 infinite"),
        (["fit", "poisson", "{store}", "-k", "2", "--out", "{out}", "@"], "non-integer"),
        (["predict", "{store}", "{store}", "--out", "{out}"], "not a dask_em model file"),
        (["info", "{store}"], "not a dask_em model file or checkpoint"),
        (["make-data", "gmm", "{existing}"], "never writes over a path"),
    ],
)
def test_bad_usage_and_bad_input_exit_2_with_one_line(
    client, tmp_path, gmm_store, capsys, args, message
):
    existing = tmp_path / "existing.zarr"
    existing.mkdir()
    (existing / "precious").write_text("mine")
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.create_array("X", data=np.ones((10, 2)))
    inf = tmp_path / "inf.zarr"
    values = np.ones((100, 2))
    values[17, 1] = np.inf
    zarr.create_array(str(inf), data=values, chunks=(50, 2))
    names = {
        "store": gmm_store,
        "out": tmp_path / "out.zarr",
        "tmp": tmp_path,
        "group": tmp_path / "group.zarr",
        "existing": existing,
        "inf": inf,
    }
    argv = [a.format(**names) for a in args if a != "@"]
    if "@" in args:  # these need the cluster (the data is checked in the scan pass)
        argv += scheduler(client)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err and err.startswith("dask-em")
    assert (existing / "precious").read_text() == "mine"
    assert not (tmp_path / "out.zarr").exists()


def test_argparse_errors_are_one_line_too(capsys):
    assert main(["fit", "gmm"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "(see dask-em fit --help)" in err


def test_an_unreachable_scheduler_is_a_cluster_failure_exit_3(tmp_path, gmm_store, capsys):
    address = f"tcp://127.0.0.1:{free_port()}"
    args = ["fit", "gmm", str(gmm_store), "-k", "2", "--out", str(tmp_path / "model.zarr")]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main([*args, "--scheduler", address]) == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"dask-em: cluster error: cannot reach the scheduler at {address}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gaussian-hmm", "poisson-hmm", "categorical-hmm"])
def test_every_hmm_makes_sequences_fits_predicts_and_scores(client, tmp_path, capsys, name):
    store, out = tmp_path / "sequences.zarr", tmp_path / "hmm.zarr"
    made = ["make-data", name, str(store), "--n-samples", "60000", "-k", "2"]
    assert (
        main([*made, "--sequence-length", "150", "--n-features", "2", "--chunk-rows", "15000"]) == 0
    )
    group = zarr.open_group(str(store), mode="r")
    assert group["values"].shape[0] == 60_000 and group["lengths"].shape == (400,)
    truth = json.loads(group.attrs["truth"])
    args = ["fit", name, str(store), "-k", "2", "--out", str(out), "--no-report"]
    checkpoint = tmp_path / "hmm.checkpoint.zarr"
    assert main([*args, "--checkpoint", str(checkpoint), *scheduler(client)]) == 0
    model = load(out)
    assert type(model) is model_kinds()[name].estimator and model.converged_
    assert model.n_sequences_ == 400
    np.testing.assert_allclose(
        np.sort(np.diag(model.transmat_)), np.sort(np.diag(truth["transmat"])), atol=0.03
    )
    labels = tmp_path / "states.zarr"
    assert main(["predict", str(out), str(store), "--out", str(labels), *scheduler(client)]) == 0
    assert zarr.open_array(str(labels), mode="r").shape == (60_000,)
    capsys.readouterr()
    assert main(["score", str(out), str(store), *scheduler(client)]) == 0
    printed = capsys.readouterr().out
    score = float(next(x for x in printed.splitlines() if x.startswith("score ")).split()[1])
    assert score == pytest.approx(model.score(str(store)), rel=1e-10)


@pytest.mark.slow
def test_a_model_of_another_kind_is_refused_on_the_first_rows_before_any_task(
    client, tmp_path, gmm_store
):
    """A categorical model given Gaussian data: one line naming row 0, exit 2, no worker
    log lines (no task ran), nothing written."""
    model, labels = tmp_path / "symbols.zarr", tmp_path / "labels.zarr"
    X = np.random.default_rng(0).integers(0, 4, size=(500, 4))
    from dask_em import CategoricalMixture

    CategoricalMixture(2, random_state=0).fit(X).save(model)
    for command in (["predict", str(model), str(gmm_store), "--out", str(labels)],
                    ["score", str(model), str(gmm_store)]):  # fmt: skip
        done = dask_em(*command, *scheduler(client))
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            f"dask-em: error: INPUT {gmm_store} (its first 7,500 rows) contains 30000 values "
            "that are not symbols 0..3 (n_symbols=4); the first is at row 0, column 0 "
            f"(value {done.stderr.split('(value ')[1]}"[:-1]
        ]
    assert not labels.exists()


def test_direct_passes_flag_fits_the_same_model_as_graph_passes(
    client, tmp_path, gmm_store, caplog
):
    base = ["fit", "gmm", str(gmm_store), "-k", "2", "--tol", "0", "--max-iter", "4"]
    base += ["--cache", "memory", *scheduler(client)]
    assert main([*base, "--out", str(tmp_path / "graph.zarr")]) == 0
    with caplog.at_level("INFO", logger="dask_em.engine"):
        assert main([*base, "--out", str(tmp_path / "direct.zarr"), "--direct-passes"]) == 0
    assert "passes run directly on" in caplog.text
    graph, direct = load(tmp_path / "graph.zarr"), load(tmp_path / "direct.zarr")
    assert direct.lower_bounds_ == graph.lower_bounds_
    np.testing.assert_array_equal(direct.means_, graph.means_)
    assert not dask.config.get("dask_em.direct-passes", False)  # set for that run only
    with dask.config.set({"dask_em.direct-passes": True}), caplog.at_level("INFO"):
        caplog.clear()
        out = str(tmp_path / "off.zarr")
        assert main([*base, "--out", out, "--no-direct-passes"]) == 0
    assert "passes run directly on" not in caplog.text  # the flag wins over the config

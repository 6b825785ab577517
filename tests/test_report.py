"""The fit report: a self-contained HTML page whose embedded PNGs show convergence and
the fitted model, for every model; its bounded data sample; ``dask-em score`` on HMMs."""

from __future__ import annotations

import base64
import struct
import sys
import warnings
from html.parser import HTMLParser

import dask.array as da
import numpy as np
import pytest
import zarr
from matplotlib.image import imread

from dask_em import (
    BernoulliMixture,
    CategoricalHMM,
    CategoricalMixture,
    GaussianHMM,
    GaussianMixture,
    PoissonHMM,
    PoissonMixture,
    Sequences,
)
from dask_em.cli import main
from dask_em.report import data_sample, report_paths, write_report
from dask_em.report.gaussian import full_covariances, projection_axes
from dask_em.report.hmm import stationary_distribution

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LENGTHS = [150] * 4


def _data(name: str, rng: np.random.Generator) -> np.ndarray:
    """600 rows in two well separated groups (rows 0-299 and 300-599)."""
    group = np.repeat([0, 1], 300)
    if name in ("gmm", "gaussian-hmm"):
        return rng.normal(0, 1, (600, 3)) + 5.0 * group[:, None]
    if name in ("poisson", "poisson-hmm"):
        return rng.poisson(np.array([[1, 6, 2], [7, 1, 3]])[group]).astype(float)
    if name == "bernoulli":
        return (rng.random((600, 5)) < np.array([0.1, 0.85])[group][:, None]).astype(float)
    probabilities = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])[group]  # categorical
    draws = (rng.random((600, 1)) > probabilities[:, :1]).astype(int)
    draws += rng.random((600, 1)) > probabilities[:, :1] + probabilities[:, 1:2]
    return draws.astype(float) if name == "categorical-hmm" else np.hstack([draws, draws])


MODELS = {
    "gmm": (GaussianMixture, 3),
    "poisson": (PoissonMixture, 3),
    "categorical": (CategoricalMixture, 3),
    "bernoulli": (BernoulliMixture, 3),
    "gaussian-hmm": (GaussianHMM, 5),
    "poisson-hmm": (PoissonHMM, 5),
    "categorical-hmm": (CategoricalHMM, 5),
}  # model name -> (class, pictures: convergence + the model's)


class _Images(HTMLParser):
    """Collects every <img src> and every link of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        for key in ("href",):
            if key in attrs:
                self.links.append(attrs[key])


def _embedded_pngs(page: str) -> list[bytes]:
    parser = _Images()
    parser.feed(page)
    assert parser.links == []
    prefix = "data:image/png;base64,"
    assert all(src.startswith(prefix) for src in parser.sources), "a picture is not embedded"
    return [base64.b64decode(src[len(prefix) :], validate=True) for src in parser.sources]


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.fixture(scope="module", params=list(MODELS))
def fitted(request):
    name = request.param
    cls, _ = MODELS[name]
    X = _data(name, np.random.default_rng(7))
    lengths = LENGTHS if name.endswith("hmm") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls(2, max_iter=8, random_state=0)
        model.fit(X) if lengths is None else model.fit(X, lengths)
    return name, model, X, lengths


@pytest.mark.slow
def test_the_report_of_every_model_embeds_pngs_of_convergence_and_the_model(tmp_path, fitted):
    name, model, X, lengths = fitted
    path = tmp_path / "model.zarr"
    notices = write_report(model, path, {"input": "synthetic"}, sample=data_sample(X, lengths))
    assert notices == []
    png_path, page_path = report_paths(path)
    page = open(page_path, encoding="utf-8").read()
    pngs = _embedded_pngs(page)
    assert len(pngs) == MODELS[name][1]
    for png in pngs:
        width, height = _png_size(png)
        assert 300 <= width <= 1500 and 200 <= height <= 1200, (width, height)
        pixels = imread(__import__("io").BytesIO(png), format="png")
        assert pixels.shape[:2] == (height, width)
        assert pixels[..., :3].std() > 0.05  # something is drawn, not a blank canvas
    assert pngs[0] == open(png_path, "rb").read()  # the convergence plot, also beside it
    assert "the first 600 " in page and "synthetic" in page
    assert page.count("<figcaption>") == len(pngs)
    if name.endswith("hmm"):
        assert "Transition matrix" in page and "Decoded stretch" in page
        assert "State occupancy" in page and "transmat_" in page
    else:
        assert "weights_" in page
    if name in ("gmm", "gaussian-hmm"):
        assert "first two principal axes" in page  # the projection's caption


def test_the_report_without_matplotlib_is_written_without_pictures_and_says_so(
    tmp_path, fitted, monkeypatch
):
    _, model, X, lengths = fitted
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # the import fails
    notices = write_report(model, tmp_path / "model.zarr", sample=data_sample(X, lengths))
    assert len(notices) == 1 and "matplotlib is not installed" in notices[0]
    page = open(report_paths(tmp_path / "model.zarr")[1], encoding="utf-8").read()
    assert _embedded_pngs(page) == [] and "the report has no pictures" in page
    assert not (tmp_path / "model.convergence.png").exists()


def test_the_sample_is_the_first_rows_bounded():
    X = da.from_array(np.arange(40_000.0).reshape(20_000, 2), chunks=(3_000, 2))
    sample = data_sample(X)
    assert sample.values.shape == (5_000, 2) and sample.source_rows == 20_000
    np.testing.assert_array_equal(sample.values, np.arange(10_000.0).reshape(5_000, 2))
    assert sample.lengths is None
    whole = data_sample(np.zeros((10, 2)), [3, 4, 3], max_rows=8)  # whole sequences only
    assert whole.values.shape == (7, 2) and whole.lengths.tolist() == [3, 4]
    cut = data_sample(np.zeros((10, 1)), [9, 1], max_rows=5)  # the first one cut
    assert cut.values.shape == (5, 1) and cut.lengths.tolist() == [5]
    values = np.arange(12.0).reshape(6, 2)
    sequences = data_sample(Sequences(values, [2, 2, 2]), max_rows=5)  # what the CLI reads
    np.testing.assert_array_equal(sequences.values, values[:4])
    assert sequences.lengths.tolist() == [2, 2] and sequences.source_rows == 6


def test_projection_axes_are_the_named_features_or_the_principal_axes():
    rng = np.random.default_rng(3)
    direction = np.array([3.0, 4.0, 0.0]) / 5.0
    sample = rng.normal(0, 10, (2_000, 1)) * direction + rng.normal(0, 0.1, (2_000, 3))
    _, axes, labels = projection_axes(sample, None)
    assert abs(abs(axes[:, 0] @ direction) - 1) < 1e-3 and labels[0].startswith("principal")
    np.testing.assert_allclose(axes.T @ axes, np.eye(2), atol=1e-12)
    _, axes, labels = projection_axes(sample, (2, 0))
    np.testing.assert_array_equal(axes, [[0, 1], [0, 0], [1, 0]])
    assert labels == ["feature 2", "feature 0"]
    with pytest.raises(ValueError, match="two different indices"):
        projection_axes(sample, (1, 1))


def test_full_covariances_of_every_covariance_type():
    full = full_covariances(np.array([[1.0, 2.0], [3.0, 4.0]]), "diag", (2, 2))
    np.testing.assert_array_equal(full, [np.diag([1, 2]), np.diag([3, 4])])
    np.testing.assert_array_equal(
        full_covariances(np.array([2.0, 5.0]), "spherical", (2, 3))[1], 5 * np.eye(3)
    )
    tied = full_covariances(np.eye(2) * 7, "tied", (3, 2))
    assert tied.shape == (3, 2, 2) and (tied == 7 * np.eye(2)).all()


def test_stationary_distribution():
    np.testing.assert_allclose(
        stationary_distribution(np.array([[0.9, 0.1], [0.2, 0.8]])), [2 / 3, 1 / 3]
    )
    assert stationary_distribution(np.eye(2)) is None  # reducible: not unique


def test_score_on_an_hmm_prints_labelled_figures_with_bic_and_aic(client, tmp_path, capsys):
    store, out = tmp_path / "sequences.zarr", tmp_path / "hmm.zarr"
    made = ["make-data", "gaussian-hmm", str(store), "--n-samples", "3000", "-k", "2"]
    assert main([*made, "--sequence-length", "100", "--n-features", "2"]) == 0
    group = zarr.open_group(str(store), mode="r")
    X, lengths = group["values"][:], group["lengths"][:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GaussianHMM(2, max_iter=5, random_state=0).fit(X, lengths)
    model.save(out)
    capsys.readouterr()
    assert main(["score", str(out), str(store), "--scheduler", client.scheduler.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Dask dashboard: ")
    printed = dict(line.split(" ", 1) for line in lines[1:])
    labels = ["score", "mean-per-step", "sequences", "steps", "parameters", "bic", "aic"]
    assert list(printed) == labels
    figure = {key: float(text.split()[0]) for key, text in printed.items()}
    assert figure["score"] == pytest.approx(model.score(X, lengths), rel=1e-10)
    assert "total log-likelihood" in printed["score"]
    assert figure["sequences"] == 30 and figure["steps"] == 3000
    assert figure["mean-per-step"] == pytest.approx(figure["score"] / 3000, rel=1e-12)
    assert figure["bic"] == pytest.approx(model.bic(X, lengths), rel=1e-10)
    assert figure["aic"] == pytest.approx(model.aic(X, lengths), rel=1e-10)

"""Model files that detect damage (issue #15, item 1): every way of damaging a saved
model is refused by ``load`` with one line naming the store and the array, and the
files are left byte-identical; ``dask-em score`` then exits 2 with that one line.

Each kind of model is fitted once in-process (small NumPy input, no cluster) and saved;
every damage case works on a fresh copy of that store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from dask_em import (
    CategoricalHMM,
    CategoricalMixture,
    GaussianHMM,
    GaussianMixture,
    PoissonMixture,
    files,
    load,
)
from dask_em.cli import main
from dask_em.integrity import MANIFEST_ATTR, ModelFileError

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")

RNG = np.random.default_rng(15)
GAUSSIAN = np.concatenate([RNG.normal(0, 1, (150, 2)), RNG.normal(4, 1, (150, 2))])
COUNTS = np.concatenate([RNG.poisson(1.0, (150, 3)), RNG.poisson(6.0, (150, 3))])
SYMBOLS = RNG.integers(0, 3, size=(300, 4))
SEQUENCE_SYMBOLS = RNG.integers(0, 3, size=(300, 1))
LENGTHS = [100, 120, 80]


def fit_model(kind: str, k: int):
    """A small fitted model of ``kind`` with ``k`` components."""
    common = {"max_iter": 4, "random_state": 0}
    if kind == "gmm-full":
        return GaussianMixture(k, covariance_type="full", **common).fit(GAUSSIAN)
    if kind == "gmm-diag":
        return GaussianMixture(k, covariance_type="diag", **common).fit(GAUSSIAN)
    if kind == "poisson":
        return PoissonMixture(k, **common).fit(COUNTS)
    if kind == "categorical":
        return CategoricalMixture(k, **common).fit(SYMBOLS)
    if kind == "gaussian-hmm":
        return GaussianHMM(k, **common).fit(GAUSSIAN, LENGTHS)
    if kind == "categorical-hmm":
        return CategoricalHMM(k, **common).fit(SEQUENCE_SYMBOLS, LENGTHS)
    raise AssertionError(kind)


KINDS = ["gmm-full", "gmm-diag", "poisson", "categorical", "gaussian-hmm", "categorical-hmm"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, Path, object]]:
    """Per kind: the saved model (K=2), a saved model of the same kind with K=3, and the
    fitted K=2 estimator."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for kind in KINDS:
        model = fit_model(kind, 2)
        model.save(root / f"{kind}.zarr")
        fit_model(kind, 3).save(root / f"{kind}-k3.zarr")
        out[kind] = (root / f"{kind}.zarr", root / f"{kind}-k3.zarr", model)
    return out


# -- the damage ------------------------------------------------------------------------
def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes)."""
    return {
        str(file.relative_to(path)): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def arrays_of(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if (p / "zarr.json").exists())


def chunk_files(store: Path, name: str) -> list[Path]:
    return sorted(p for p in (store / name).rglob("*") if p.is_file() and p.name != "zarr.json")


def edit_root_attributes(store: Path, edit: Callable[[dict], None]) -> None:
    """Change the root attributes by rewriting the root zarr.json, as a user would."""
    meta = json.loads((store / "zarr.json").read_text())
    edit(meta["attributes"])
    (store / "zarr.json").write_text(json.dumps(meta))


def flip_byte(file: Path, position: int) -> None:
    data = bytearray(file.read_bytes())
    data[position % len(data)] ^= 0xFF
    file.write_bytes(bytes(data))


def truncate(file: Path, keep: int) -> None:
    file.write_bytes(file.read_bytes()[:keep])


def write_value(store: Path, name: str, value: float) -> None:
    array = zarr.open_array(str(store / name), mode="r+")
    array[(0,) * array.ndim] = value


def swap_in(store: Path, other: Path, names: list[str]) -> None:
    for name in names:
        shutil.rmtree(store / name)
        shutil.copytree(other / name, store / name)


def parameter_arrays(store: Path) -> list[str]:
    """The float parameter arrays (not the history, not integer coordinates)."""
    return [
        name
        for name in arrays_of(store)
        if not name.startswith("history_")
        and json.loads((store / name / "zarr.json").read_text())["data_type"] == "float64"
    ]


def damage_cases(pristine: Path, other_k: Path) -> list[tuple[str, str, Callable[[Path], None]]]:
    """``(case id, what the message must name, damage(store))`` for one saved model."""
    cases = []
    for name in arrays_of(pristine):
        for chunk in chunk_files(pristine, name):
            rel = chunk.relative_to(pristine)
            size = chunk.stat().st_size
            cases += [
                (f"delete {rel}", name, lambda s, r=rel: (s / r).unlink()),
                (f"truncate {rel} to half", name, lambda s, r=rel, n=size: truncate(s / r, n // 2)),
                (f"flip first byte of {rel}", name, lambda s, r=rel: flip_byte(s / r, 0)),
                (
                    f"flip middle byte of {rel}",
                    name,
                    lambda s, r=rel, n=size: flip_byte(s / r, n // 2),
                ),
            ]
        meta = Path(name) / "zarr.json"
        cases += [
            (f"delete {meta}", name, lambda s, m=meta: (s / m).unlink()),
            (f"truncate {meta}", name, lambda s, m=meta: truncate(s / m, 40)),
        ]
    cases += [
        ("delete the root zarr.json", "zarr.json", lambda s: (s / "zarr.json").unlink()),
        ("truncate the root zarr.json", "zarr.json", lambda s: truncate(s / "zarr.json", 60)),
    ]
    version = "dask_em_format_version"
    for bad in (0, -5, 1.9, "2", True, None):
        cases.append(
            (
                f"version set to {bad!r}",
                version,
                lambda s, b=bad: edit_root_attributes(s, lambda a: a.update({version: b})),
            )
        )
    cases += [
        ("version removed", version, lambda s: edit_root_attributes(s, lambda a: a.pop(version))),
        (
            "version set to 1",
            version,
            lambda s: edit_root_attributes(s, lambda a: a.update({version: 1})),
        ),
        (
            "manifest removed",
            MANIFEST_ATTR,
            lambda s: edit_root_attributes(s, lambda a: a.pop(MANIFEST_ATTR)),
        ),
        (
            "manifest cut short",
            MANIFEST_ATTR,
            lambda s: edit_root_attributes(
                s, lambda a: a.update({MANIFEST_ATTR: a[MANIFEST_ATTR][:50]})
            ),
        ),
        (
            "n_features_in changed",
            "n_features_in",
            lambda s: edit_root_attributes(
                s, lambda a: a.update(n_features_in=a["n_features_in"] + 1)
            ),
        ),
        (
            "params changed",
            "params",
            lambda s: edit_root_attributes(
                s,
                lambda a: a.update(
                    params=a["params"].replace('"n_components": 2', '"n_components": 3')
                ),
            ),
        ),
    ]
    parameters = parameter_arrays(pristine)
    for name in parameters:
        cases += [
            (f"NaN written into {name}", name, lambda s, n=name: write_value(s, n, np.nan)),
            (f"inf written into {name}", name, lambda s, n=name: write_value(s, n, np.inf)),
            (f"{name} copied from the K=3 model", name, lambda s, n=name: swap_in(s, other_k, [n])),
        ]
    swapped = [*parameters, "component"]
    cases.append(
        (
            "every parameter and the component coordinate from the K=3 model",
            "|".join(swapped),
            lambda s: swap_in(s, other_k, swapped),
        )
    )
    return cases


def assert_refused(path: Path, names: str) -> str:
    """``load(path)`` raises a one-line ModelFileError naming the store and one of
    ``names`` (``|``-separated); the files are byte-identical after.  The message."""
    before = snapshot(path)
    with pytest.raises(ModelFileError) as refusal:
        load(path)
    message = str(refusal.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    assert re.search(rf"(?<![\w])({names})(?![\w])", message), (names, message)
    assert snapshot(path) == before
    return message


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_damaged_model_file_is_refused_naming_the_array(saved, tmp_path, kind):
    pristine, other_k, model = saved[kind]
    assert type(load(pristine)) is type(model)  # the undamaged store loads
    cases = damage_cases(pristine, other_k)
    assert len(cases) > 60
    failures = []
    for number, (case, names, damage) in enumerate(cases):
        store = tmp_path / f"case-{number}.zarr"
        shutil.copytree(pristine, store)
        damage(store)
        try:
            assert_refused(store, names)
        except AssertionError as error:  # collect them all, to see every case that fails
            failures.append(f"{case}: {' '.join(str(error).split())[:300]}")
        shutil.rmtree(store)
    assert failures == [], f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)


def test_stores_that_are_not_model_files_are_named_as_such(saved, tmp_path):
    array_store = tmp_path / "data.zarr"
    zarr.create_array(str(array_store), shape=(10, 2), dtype="f8")[:] = 1.0
    group_store = tmp_path / "group.zarr"
    xr.Dataset({"X": (("sample", "feature"), np.ones((10, 2)))}).to_zarr(
        group_store, consolidated=False
    )
    checkpoint = tmp_path / "ck.zarr"
    GaussianMixture(2, max_iter=2, random_state=0).fit(GAUSSIAN, checkpoint=checkpoint)
    for path, what in [
        (array_store, "a single Zarr array"),
        (group_store, "no dask_em_format attribute .it holds X; a data store"),
        (checkpoint, "it is a dask_em checkpoint"),
        (tmp_path / "nothing.zarr", "nothing exists at that path"),
    ]:
        message = assert_refused(path, what) if path.exists() else None
        if message is None:
            with pytest.raises(ModelFileError, match=what):
                load(path)
        else:
            assert f"{path} is not a dask_em model file" in message


def make_version_1(store: Path) -> None:
    """A model file as version 1 wrote it: no manifest."""

    def edit(attrs):
        attrs.pop(MANIFEST_ATTR)
        attrs["dask_em_format_version"] = 1

    edit_root_attributes(store, edit)


def test_version_1_files_still_load_and_their_damage_is_still_found(saved, tmp_path):
    pristine, _, model = saved["gmm-full"]
    old = tmp_path / "old.zarr"
    shutil.copytree(pristine, old)
    make_version_1(old)
    loaded = load(old)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    # without a manifest: a deleted chunk still reads as NaN, and a NaN is refused
    (old / "means" / "c" / "0" / "0").unlink()
    assert "holds 4 NaN or infinite values of 4" in assert_refused(old, "means")
    shutil.rmtree(old)
    shutil.copytree(pristine, old)
    make_version_1(old)
    shutil.rmtree(old / "weights")
    shutil.copytree(saved["gmm-full"][1] / "weights", old / "weights")
    assert_refused(old, "weights")


def damaged_write(monkeypatch, victim: str) -> None:
    """Every Zarr store written from now on loses its first chunk of ``victim`` on disk
    right after it is written (a write that did not reach the disk intact)."""
    real_write = files.write_zarr_files

    def write_zarr_files(ds, folder):
        real_write(ds, folder)
        chunk_files(Path(folder), victim)[0].unlink()

    monkeypatch.setattr(files, "write_zarr_files", write_zarr_files)


def test_a_model_that_does_not_read_back_never_replaces_the_previous_one(
    saved, tmp_path, monkeypatch
):
    pristine, _, model = saved["gmm-diag"]
    path = tmp_path / "model.zarr"
    shutil.copytree(pristine, path)
    before = snapshot(path)
    damaged_write(monkeypatch, "means")
    with pytest.raises(ModelFileError, match=r"does not read back intact.*array 'means'"):
        model.save(path, overwrite=True)
    assert snapshot(path) == before
    assert sorted(os.listdir(tmp_path)) == ["model.zarr"]  # nothing left beside it


# -- the command line -------------------------------------------------------------------
CLI_CASES = {
    "chunk of means deleted": ("means", lambda s: chunk_files(s, "means")[0].unlink()),
    "chunk of weights truncated": ("weights", lambda s: truncate(chunk_files(s, "weights")[0], 9)),
    "means/zarr.json deleted": ("means", lambda s: (s / "means" / "zarr.json").unlink()),
    "version 1.9": (
        "dask_em_format_version",
        lambda s: edit_root_attributes(s, lambda a: a.update(dask_em_format_version=1.9)),
    ),
    "NaN in weights": ("weights", lambda s: write_value(s, "weights", np.nan)),
}


@pytest.mark.slow
def test_dask_em_score_exits_2_with_one_line_naming_the_array(saved, tmp_path, capsys):
    """The first damage as a user meets it (a process); the others through ``main`` in
    this process, the same code path minus the interpreter's start-up."""
    pristine, _, _ = saved["gmm-full"]
    data = tmp_path / "data.zarr"
    zarr.create_array(str(data), shape=GAUSSIAN.shape, dtype="f8")[:] = GAUSSIAN
    data_before = snapshot(data)
    for i, (case, (name, damage)) in enumerate(CLI_CASES.items()):
        store = tmp_path / f"{case.replace(' ', '-').replace('/', '-')}.zarr"
        shutil.copytree(pristine, store)
        damage(store)
        before = snapshot(store)
        argv = ["score", str(store), str(data)]
        if i == 0:
            done = subprocess.run(
                [sys.executable, "-m", "dask_em.cli", *argv],
                capture_output=True,
                text=True,
                timeout=120,
            )
            status, out, err = done.returncode, done.stdout, done.stderr
        else:
            status = main(argv)
            out, err = capsys.readouterr()
        lines = err.splitlines()
        assert status == 2, (case, err)
        assert len(lines) == 1 and lines[0].startswith("dask-em: error: model file"), (case, err)
        assert str(store) in lines[0] and name in lines[0], (case, lines[0])
        assert out == ""
        assert snapshot(store) == before and snapshot(data) == data_before


@pytest.mark.slow
def test_dask_em_info_exits_2_for_a_deleted_chunk(saved, tmp_path):
    store = tmp_path / "model.zarr"
    shutil.copytree(saved["gmm-full"][0], store)
    chunk_files(store, "means")[0].unlink()
    done = subprocess.run(
        [sys.executable, "-m", "dask_em.cli", "info", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "'means'" in done.stderr

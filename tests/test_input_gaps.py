"""Chunks absent from an input store: reported, refused when strict, and always refused
in a store that dask_em wrote complete, before the fit and during it."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from dask_em import GaussianHMM, GaussianMixture, InputGapWarning, Sequences
from dask_em.checkpoint import progress
from dask_em.zarr_source import (
    STORED_CHUNKS_ATTR,
    ZarrSource,
    create_complete_array,
    find_gaps,
)
from tests.test_cli_safety import dask_em as dask_em_cli
from tests.test_cli_safety import snapshot

ROWS, CHUNK = 8_000, 1_000


def two_clusters(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(-3, 1, (ROWS // 2, 3)), rng.normal(3, 1, (ROWS // 2, 3))])
    return X[rng.permutation(ROWS)]


def foreign_store(path: Path, X: np.ndarray) -> Path:
    """A store as another writer makes it: Zarr's defaults (absent = fill value)."""
    zarr.create_array(store=str(path), data=X, chunks=(CHUNK, X.shape[1]))
    return path


def dask_em_store(path: Path, X: np.ndarray) -> Path:
    array = create_complete_array(str(path), shape=X.shape, dtype=X.dtype, chunks=(CHUNK, 3))
    array[...] = X
    return path


# -- foreign stores: told, or refused when strict ----------------------------------------
def test_a_deleted_chunk_of_a_foreign_store_is_one_warning_with_counts(tmp_path):
    store = foreign_store(tmp_path / "X.zarr", two_clusters())
    os.remove(store / "c" / "3" / "0")
    with pytest.warns(InputGapWarning) as caught:
        model = GaussianMixture(2, random_state=0, max_iter=5).fit(str(store))
    gaps = [w for w in caught if issubclass(w.category, InputGapWarning)]
    assert len(gaps) == 1
    text = str(gaps[0].message)
    assert f"1 of the 8 chunks of the Zarr array {store} is absent" in text, text
    assert "1,000 of its 8,000 rows read as the fill value 0.0" in text, text
    assert "rows 3000:4000 (chunk 3/0)" in text, text
    assert model.n_iter_ >= 1  # told, not refused: the writer may have meant it


def test_strict_input_refuses_it_before_any_work(tmp_path):
    store = foreign_store(tmp_path / "X.zarr", two_clusters())
    for chunk in ("2", "5"):
        os.remove(store / "c" / chunk / "0")
    with pytest.raises(ValueError, match=r"2 of the 8 chunks .* absent") as raised:
        GaussianMixture(2).fit(str(store), strict_input=True)
    assert "rows 2000:3000 (chunk 2/0), rows 5000:6000 (chunk 5/0)" in str(raised.value)
    assert "strict_input=True" in str(raised.value)


def test_a_chunk_left_out_for_being_all_fill_value_is_reported_too(tmp_path):
    X = two_clusters()
    X[4000:5000] = 0.0  # Zarr does not store this chunk by default
    store = foreign_store(tmp_path / "X.zarr", X)
    gaps = find_gaps(zarr.open_array(str(store), mode="r"), str(store))
    assert gaps is not None and gaps.absent == ((4, 0),)


def test_a_complete_foreign_store_gives_no_warning(tmp_path):
    store = foreign_store(tmp_path / "X.zarr", two_clusters())
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputGapWarning)
        GaussianMixture(2, random_state=0, max_iter=3).fit(str(store))


@pytest.mark.slow
def test_the_command_line_warns_in_one_line_and_refuses_with_strict_input(tmp_path):
    store = foreign_store(tmp_path / "X.zarr", two_clusters())
    os.remove(store / "c" / "6" / "0")
    before = snapshot(store)
    common = ["gmm", str(store), "-k", "2", "--max-iter", "3", "--no-report", "-q"]
    common += ["--n-workers", "1", "--threads-per-worker", "1", "--dashboard-address", ":0"]
    told = dask_em_cli("fit", *common, "--out", str(tmp_path / "m.zarr"))
    assert told.returncode == 0, told.stderr
    warning = [line for line in told.stderr.splitlines() if "absent" in line]
    assert len(warning) == 1 and warning[0].startswith("dask-em: warning: 1 of the 8 chunks")
    assert "rows 6000:7000 (chunk 6/0)" in warning[0] and "--strict-input" in warning[0]

    refused = dask_em_cli("fit", *common, "--out", str(tmp_path / "n.zarr"), "--strict-input")
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "under --strict-input" in lines[0], refused.stderr
    assert "Dask dashboard" not in refused.stdout  # refused before a cluster started
    assert not (tmp_path / "n.zarr").exists()
    assert snapshot(store) == before


# -- stores dask_em wrote: every chunk stored, an absent one is damage --------------------
def test_stores_dask_em_writes_hold_every_chunk_and_say_so(tmp_path):
    X = np.zeros((3000, 3))  # every chunk equals the fill value
    array = create_complete_array(
        str(tmp_path / "z.zarr"), shape=X.shape, dtype=X.dtype, chunks=(1000, 3)
    )
    array[...] = X
    assert array.attrs[STORED_CHUNKS_ATTR] == 3
    assert find_gaps(array, "z.zarr") is None
    lengths = np.array([1000, 2000])
    Sequences(np.zeros((3000, 2)), lengths).to_zarr(tmp_path / "s.zarr", chunk_rows=500)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert group["values"].attrs[STORED_CHUNKS_ATTR] == 6
    assert find_gaps(group["values"], "values") is None


def test_make_data_writes_every_chunk(tmp_path):
    out = tmp_path / "data.zarr"
    made = dask_em_cli(
        "make-data", "poisson", str(out), "--n-samples", "4000", "--chunk-rows", "1000"
    )
    assert made.returncode == 0, made.stderr
    array = zarr.open_array(str(out), mode="r")
    assert array.attrs[STORED_CHUNKS_ATTR] == 4
    assert len(list((out / "c").rglob("*"))) >= 4


def test_an_absent_chunk_of_a_dask_em_store_is_refused_before_the_fit(tmp_path):
    store = dask_em_store(tmp_path / "X.zarr", two_clusters())
    os.remove(store / "c" / "4" / "0")
    with pytest.raises(ValueError, match=r"rows 4000:5000 \(chunk 4/0\).*dask_em wrote every"):
        GaussianMixture(2).fit(str(store))


def test_a_chunk_that_disappears_during_a_fit_stops_it_and_keeps_the_checkpoint(tmp_path):
    store = dask_em_store(tmp_path / "X.zarr", two_clusters())
    checkpoint = tmp_path / "fit.ckpt.zarr"

    def delete_after_iteration_3(record, params):
        if record.iteration == 3:
            os.remove(store / "c" / "5" / "0")

    model = GaussianMixture(2, random_state=0, tol=0.0, max_iter=20, cache="stream")
    with pytest.raises(ValueError) as raised:
        model.fit(str(store), checkpoint=checkpoint, callbacks=[delete_after_iteration_3])
    text = str(raised.value)
    assert f"chunk 5/0 (rows 5000:6000) of the Zarr array {store} is absent" in text, text
    assert progress(checkpoint)["iteration"] == 3  # the last finished iteration, kept


def test_a_sequence_store_written_by_dask_em_refuses_a_lost_chunk(tmp_path):
    rng = np.random.default_rng(1)
    lengths = np.array([700, 1300, 900, 1100])
    values = rng.normal(size=(lengths.sum(), 2))
    Sequences(values, lengths).to_zarr(tmp_path / "s.zarr", chunk_rows=1000)
    os.remove(tmp_path / "s.zarr" / "values" / "c" / "2" / "0")
    with pytest.raises(ValueError, match=r"rows 2000:3000 \(chunk 2/0\).*dask_em wrote every"):
        GaussianHMM(2).fit(str(tmp_path / "s.zarr"))


# -- the reader a task holds ---------------------------------------------------------------
def test_the_task_reader_reads_what_zarr_reads_and_pickles_small(tmp_path):
    X = two_clusters()
    store = dask_em_store(tmp_path / "X.zarr", X)
    source = pickle.loads(pickle.dumps(ZarrSource(zarr.open_array(str(store)), str(store))))
    np.testing.assert_array_equal(source[(slice(1500, 4200), slice(0, 3))], X[1500:4200])
    np.testing.assert_array_equal(source[(slice(0, 1), slice(0, 3))], X[:1])


def test_the_task_reader_refuses_an_absent_chunk_inside_a_block_that_spans_chunks(tmp_path):
    X = two_clusters()
    X[2000:3000] = 0.0  # stored anyway: present, all fill value, and fine
    store = dask_em_store(tmp_path / "X.zarr", X)
    source = ZarrSource(zarr.open_array(str(store)), str(store))
    np.testing.assert_array_equal(source[(slice(1500, 3500), slice(0, 3))], X[1500:3500])
    os.remove(store / "c" / "3" / "0")
    with pytest.raises(ValueError, match=r"chunk 3/0 \(rows 3000:4000\)"):
        source[(slice(2500, 4500), slice(0, 3))]


@pytest.mark.slow
def test_the_command_line_stops_with_one_line_when_a_chunk_disappears_mid_fit(tmp_path):
    from tests.test_checkpoint import wait_for_line

    store = dask_em_store(tmp_path / "X.zarr", two_clusters())
    checkpoint, out = tmp_path / "fit.ckpt.zarr", tmp_path / "model.zarr"
    command = [sys.executable, "-m", "dask_em.cli", "fit", "gmm", str(store), "-k", "2"]
    command += ["--out", str(out), "--checkpoint", str(checkpoint), "--cache", "stream"]
    command += ["--max-iter", "500", "--tol", "0", "--no-report", "--n-workers", "1"]
    command += ["--threads-per-worker", "1", "--dashboard-address", ":0"]
    fit = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert wait_for_line(fit.stdout, "gmm iteration 3:", timeout=180), "no iteration 3"
        os.remove(store / "c" / "7" / "0")
        status = fit.wait(120)
        err = fit.stderr.read()
    finally:
        fit.kill()
        fit.stdout.close()
        fit.stderr.close()
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"chunk 7/0 (rows 7000:8000) of the Zarr array {store} is absent" in lines[0]
    assert 2 <= progress(checkpoint)["iteration"] < 500  # the last finished one, kept
    assert not out.exists()


def test_a_chunk_of_a_foreign_store_that_disappears_mid_fit_stops_it(tmp_path):
    X = two_clusters()
    X[1000:2000] = 0.0  # absent from the start: told once, then read as zeros
    store = foreign_store(tmp_path / "X.zarr", X)

    def delete_after_iteration_3(record, params):
        if record.iteration == 3:
            os.remove(store / "c" / "6" / "0")

    model = GaussianMixture(2, random_state=0, tol=0.0, max_iter=20, cache="stream")
    with pytest.warns(InputGapWarning), pytest.raises(ValueError) as raised:
        model.fit(str(store), callbacks=[delete_after_iteration_3])
    text = str(raised.value)
    assert f"chunk 6/0 (rows 6000:7000) of the Zarr array {store} is absent" in text, text
    assert "it was there when the input was opened" in text


def test_a_sweep_tells_of_the_gaps_once(tmp_path):
    from dask_em import sweep

    store = foreign_store(tmp_path / "X.zarr", two_clusters())
    os.remove(store / "c" / "2" / "0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweep(GaussianMixture(max_iter=3, random_state=0), str(store), n_components=[1, 2, 3])
    assert sum(issubclass(w.category, InputGapWarning) for w in caught) == 1


def test_the_command_line_refuses_a_damaged_dask_em_store_before_any_cluster(tmp_path, capsys):
    from dask_em.cli import main

    store = tmp_path / "data.zarr"
    assert (
        main(["make-data", "gmm", str(store), "--n-samples", "4000", "--chunk-rows", "1000"]) == 0
    )
    os.remove(store / "c" / "2" / "0")
    before = snapshot(store)
    capsys.readouterr()
    status = main(["fit", "gmm", str(store), "-k", "2", "--out", str(tmp_path / "m.zarr")])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("dask-em: error: 1 of the 4 chunks of the Zarr array"), line
    assert "rows 2000:3000 (chunk 2/0)" in line and "dask_em wrote every chunk" in line
    assert "Dask dashboard" not in captured.out
    assert snapshot(store) == before and not (tmp_path / "m.zarr").exists()

"""``dask-em info MODEL.zarr``: describe a saved model or a checkpoint."""

from __future__ import annotations

import argparse
import json
import os

from dask_em import checkpoint as checkpoint_io
from dask_em import model_io
from dask_em.cli.common import UsageError
from dask_em.integrity import open_verified_as_any


def add_parser(commands) -> None:
    info = commands.add_parser("info", help="describe a saved model (or a checkpoint)")
    info.add_argument("model", metavar="MODEL", help="a model file or checkpoint")
    info.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = args.model
    if not os.path.exists(path):
        raise UsageError(f"MODEL {path} does not exist")
    # verified as what it says it is: a damaged store is refused (ModelFileError, exit 2)
    found, ds = open_verified_as_any(path, [model_io.MODEL_FILE, checkpoint_io.CHECKPOINT])
    fmt = found.name
    attrs = ds.attrs
    if fmt == model_io.FORMAT_NAME:
        print(f"model {attrs['model']}  ({fmt} version {attrs['dask_em_format_version']})")
        print(f"written by dask_em {attrs.get('dask_em_version', '?')}")
        params = json.loads(attrs["params"])
        print("parameters " + ", ".join(f"{k}={v!r}" for k, v in params.items() if v is not None))
        print(f"features {attrs['n_features_in']}")
        print(f"converged {attrs['converged']} after {attrs['n_iter']} iterations")
        print(f"objective {attrs['lower_bound']!r}  (mean per row)")
        for name, variable in ds.data_vars.items():
            if not name.startswith("history_"):
                shape = ", ".join(
                    f"{d}={n}" for d, n in zip(variable.dims, variable.shape, strict=True)
                )
                print(f"array {name} ({shape})")
        if "weights" in ds:
            print("weights " + " ".join(f"{w:.4f}" for w in ds["weights"].values))
    elif fmt == checkpoint_io.FORMAT_NAME:
        found = json.loads(attrs["fingerprint"])
        version = attrs["dask_em_format_version"]
        print(f"checkpoint of a {attrs['model']} fit  ({fmt} version {version})")
        print(f"data shape {found['shape']}, {len(found['row_chunks'])} blocks, {found['dtype']}")
        n_runs = int(attrs.get("n_runs", 0))
        prefixes = [f"run{r}" for r in range(n_runs)]
        if not n_runs:  # before version 4: the running initialization
            prefixes, n_runs = ["current"], found["params"].get("n_init", 1)
        for r, prefix in enumerate(prefixes):
            history = ds[f"{prefix}_history"].values
            which = r + 1 if n_runs == len(prefixes) else int(attrs["attempt"]) + 1
            line = f"initialization {which} of {n_runs}: "
            if not len(history):
                print(line + "no iteration yet")
                continue
            done = " (converged)" if attrs.get(f"{prefix}_converged") else ""
            print(
                line + f"iteration {int(history[-1, 0])}, objective {float(history[-1, 1])!r}{done}"
            )
    else:
        raise UsageError(f"{path} is not a dask_em model file or checkpoint")
    return 0

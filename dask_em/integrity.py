"""Stores that detect damage: a manifest written with every model file and checkpoint,
checked in full before anything is built from the store.

The manifest is one JSON attribute of the store's root group (:data:`MANIFEST_ATTR`):

- ``format``, ``version``, ``model``: what the root attributes say, recorded again;
- ``arrays``: per array (data variables and coordinates), its ``dims``, ``shape``,
  ``dtype``, the SHA-256 of its values (C order, little-endian, every NaN written as
  the same NaN) and ``finite``, whether all its values were finite when saved;
- ``attributes``: per root attribute, the SHA-256 of its JSON.

SHA-256 rather than a CRC: a model file is a few kilobytes to a few megabytes, hashed
once per save and load, so the cost is nothing next to opening the store; a CRC-32
would also catch the random damage of a disk, but not a chunk deliberately copied in
from another model with the same shape, which is a mix-up this check is for.

:func:`open_verified` reads a store and checks it: the root metadata, the format name,
the format version (a whole number from 1 to the newest this dask_em reads), the
manifest, each array's metadata, dims, shape, dtype, values and hash, each attribute,
that no parameter array holds a NaN or an infinity unless the manifest says it did
when saved, and that the ``component`` and ``feature`` dims have the sizes the
parameters say.  Stores of versions before the manifest (model files of version 1)
get every check that needs no manifest.  Anything wrong raises :class:`ModelFileError`
(a ``ValueError``), whose one-line message names the store, the array or attribute,
what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import xarray as xr
import zarr

MANIFEST_ATTR = "dask_em_manifest"
FORMAT_ATTR = "dask_em_format"
VERSION_ATTR = "dask_em_format_version"

#: The formats of dask_em stores, for naming a store of the wrong kind.
KNOWN_FORMATS = {"dask_em.model": "model file", "dask_em.checkpoint": "checkpoint"}


class ModelFileError(ValueError):
    """A model file or checkpoint is damaged, mixed up, of another kind, or not one."""


@dataclass(frozen=True)
class StoreFormat:
    """One kind of dask_em store.

    name, version: the ``dask_em_format`` attribute and the newest version read.
    noun: what a user calls it (``"model file"``).
    manifest_since: the first version written with a manifest.
    advice: what to do about a damaged store (the end of every message).
    is_parameter: which arrays hold parameters (checked to be finite).
    expected_sizes: root attributes -> ``{dim: size}`` the parameters imply.
    """

    name: str
    version: int
    noun: str
    manifest_since: int
    advice: str
    is_parameter: Callable[[str], bool]
    expected_sizes: Callable[[Mapping[str, Any]], dict[str, int]]


def array_digest(values: np.ndarray) -> str:
    """SHA-256 (hex) of ``values``: C order, little-endian, every NaN the same NaN."""
    values = np.asarray(values)
    if values.dtype.kind in "fc":
        values = np.where(np.isnan(values), np.array(np.nan, dtype=values.dtype), values)
    little = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    return hashlib.sha256(little.tobytes()).hexdigest()


def _attribute_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _all_finite(values: np.ndarray) -> bool:
    return values.dtype.kind not in "fc" or bool(np.isfinite(values).all())


def add_manifest(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with :data:`MANIFEST_ATTR` set from its variables and attributes.

    The attributes are read as JSON will give them back (``json.loads(json.dumps(.))``).
    """
    attrs = json.loads(json.dumps({k: v for k, v in ds.attrs.items() if k != MANIFEST_ATTR}))
    arrays = {}
    for name, variable in ds.variables.items():
        values = np.asarray(variable.values)
        arrays[str(name)] = {
            "dims": list(variable.dims),
            "shape": list(values.shape),
            "dtype": values.dtype.str.replace(">", "<"),
            "sha256": array_digest(values),
            "finite": _all_finite(values),
        }
    manifest = {
        "format": attrs.get(FORMAT_ATTR),
        "version": attrs.get(VERSION_ATTR),
        "model": attrs.get("model"),
        "arrays": arrays,
        "attributes": {key: _attribute_digest(value) for key, value in attrs.items()},
    }
    out = ds.copy()
    out.attrs = {**attrs, MANIFEST_ATTR: json.dumps(manifest, sort_keys=True)}
    return out


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Check:
    """The store at ``location`` being checked as ``fmt``: builds the error messages."""

    def __init__(self, location: str, fmt: StoreFormat) -> None:
        self.location, self.fmt = location, fmt

    def not_ours(self, why: str) -> ModelFileError:
        return ModelFileError(f"{self.location} is not a dask_em {self.fmt.noun}: {why}")

    def damaged(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.fmt.noun} {self.location}: {what}; {self.fmt.advice}")


def _open_root(check: _Check) -> zarr.Group:
    location = check.location
    if "://" not in location and not os.path.exists(location):
        raise check.not_ours("nothing exists at that path")
    try:
        return zarr.open_group(location, mode="r")
    except zarr.errors.ContainsArrayError:
        raise check.not_ours(
            "it holds a single Zarr array (a data store?), not a group of model arrays"
        ) from None
    except zarr.errors.GroupNotFoundError:
        raise check.not_ours(
            "its root metadata file zarr.json is missing (not a Zarr group, or one whose "
            f"metadata was deleted); {check.fmt.advice}"
        ) from None
    except Exception as error:  # zarr raises many types for unreadable metadata
        raise check.not_ours(
            f"its root metadata file zarr.json cannot be read ({_one_line(error)})"
        ) from None


def _check_header(check: _Check, attrs: Mapping[str, Any], group: zarr.Group) -> dict | None:
    """Format name and version; the parsed manifest (None for a version before it)."""
    fmt = check.fmt
    found = attrs.get(FORMAT_ATTR)
    if found != fmt.name:
        if found in KNOWN_FORMATS:
            raise check.not_ours(f"it is a dask_em {KNOWN_FORMATS[found]}")
        if found is None:
            try:
                held = ", ".join(sorted(group.array_keys())[:5]) or "no arrays"
            except Exception:  # an unreadable member
                held = "arrays"
            raise check.not_ours(
                f"it has no {FORMAT_ATTR} attribute (it holds {held}; a data store?)"
            )
        raise check.not_ours(f"its {FORMAT_ATTR} attribute is {found!r}")
    if VERSION_ATTR not in attrs:
        raise check.damaged(f"the format version attribute {VERSION_ATTR} is missing")
    version = attrs[VERSION_ATTR]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise check.damaged(
            f"the format version attribute {VERSION_ATTR} is {version!r}, not a whole "
            f"number from 1 to {fmt.version}"
        )
    if version > fmt.version:
        raise ModelFileError(
            f"{fmt.noun} {check.location} has format version {version}, newer than this "
            f"dask_em reads ({fmt.version}); upgrade dask_em"
        )
    if MANIFEST_ATTR not in attrs:
        if version >= fmt.manifest_since:
            raise check.damaged(f"the manifest attribute {MANIFEST_ATTR} is missing")
        return None
    try:
        manifest = json.loads(attrs[MANIFEST_ATTR])
        if not {"arrays", "attributes"} <= set(manifest):
            raise ValueError("it lacks 'arrays' or 'attributes'")
    except (TypeError, ValueError) as error:
        raise check.damaged(
            f"the manifest attribute {MANIFEST_ATTR} cannot be read ({_one_line(error)})"
        ) from None
    for key, attr in (("format", FORMAT_ATTR), ("version", VERSION_ATTR), ("model", "model")):
        if manifest.get(key) != attrs.get(attr):
            raise check.damaged(
                f"the attribute {attr} is {attrs.get(attr)!r} but the manifest recorded "
                f"{manifest.get(key)!r}"
            )
    return manifest


def _check_layout(check: _Check, ds: xr.Dataset, manifest: dict) -> None:
    """Every array the manifest lists is there with its dims and shape, and no other."""
    for name, entry in manifest["arrays"].items():
        if name not in ds.variables:
            raise check.damaged(
                f"array '{name}' is missing (its metadata file {name}/zarr.json is gone)"
            )
        variable = ds.variables[name]
        _compare(check, name, "dims", list(variable.dims), entry["dims"])
        _compare(check, name, "shape", list(variable.shape), entry["shape"])
    extra = sorted(set(map(str, ds.variables)) - set(manifest["arrays"]))
    if extra:
        raise check.damaged(f"array '{extra[0]}' is not in the manifest (added after saving)")


def _compare(check: _Check, name: str, what: str, found: Any, recorded: Any) -> None:
    if found != recorded:
        raise check.damaged(
            f"array '{name}' has {what} {tuple(found)} but was saved with {tuple(recorded)} "
            "(arrays from another model?)"
        )


def _name_the_unreadable_array(check: _Check, group: zarr.Group, manifest: dict | None) -> None:
    """After xarray failed to open the store: raise naming the first array that cannot be
    read on its own (metadata or values) or whose shape differs from the manifest."""
    names = list(manifest["arrays"]) if manifest is not None else []
    if "://" not in check.location:  # a local store: its arrays are its folders
        names += sorted(set(os.listdir(check.location)) - set(names))
    for name in names:
        if "://" not in check.location and not os.path.isdir(os.path.join(check.location, name)):
            continue
        try:
            array = group[name]
        except KeyError:
            raise check.damaged(
                f"array '{name}' is missing (its metadata file {name}/zarr.json is gone)"
            ) from None
        except Exception as error:  # zarr raises many types for unreadable metadata
            raise check.damaged(
                f"array '{name}' has unreadable metadata {name}/zarr.json ({_one_line(error)})"
            ) from None
        if not isinstance(array, zarr.Array):
            raise check.damaged(f"'{name}' is a group, not an array")
        if manifest is not None and name in manifest["arrays"]:
            _compare(check, name, "shape", list(array.shape), manifest["arrays"][name]["shape"])
        try:
            array[...]
        except Exception as error:  # a chunk the codec cannot decode, cut short, ...
            raise check.damaged(
                f"array '{name}' cannot be read: a chunk is damaged ({_one_line(error)})"
            ) from None


def _read_arrays(check: _Check, group: zarr.Group, manifest: dict | None) -> xr.Dataset:
    """The store as a loaded Dataset (NumPy-backed, no dask)."""
    try:
        ds = xr.open_zarr(check.location, consolidated=False, chunks=None)
    except Exception as error:  # a damaged array, or arrays whose dims disagree in size
        _name_the_unreadable_array(check, group, manifest)
        raise check.damaged(f"its arrays cannot be opened together ({_one_line(error)})") from None
    with ds:
        if manifest is not None:
            _check_layout(check, ds, manifest)
        for name, variable in ds.variables.items():
            try:
                variable.load()  # in place: ``ds`` holds the values afterwards
            except Exception as error:  # a chunk the codec cannot decode, cut short, ...
                raise check.damaged(
                    f"array '{name}' cannot be read: a chunk is damaged ({_one_line(error)})"
                ) from None
    return ds


def _check_values(check: _Check, values: dict[str, np.ndarray], manifest: dict | None) -> None:
    for name, array in values.items():
        entry = None if manifest is None else manifest["arrays"].get(name)
        if entry is not None:
            if array.dtype.str.replace(">", "<") != entry["dtype"]:
                raise check.damaged(
                    f"array '{name}' has dtype {array.dtype} but was saved as {entry['dtype']}"
                )
            if array_digest(array) != entry["sha256"]:
                raise check.damaged(
                    f"array '{name}' does not match the SHA-256 recorded when it was saved "
                    "(a chunk was deleted, damaged or written over)"
                )
        finite_when_saved = True if entry is None else entry["finite"]
        if finite_when_saved and check.fmt.is_parameter(name) and not _all_finite(array):
            count = int(np.size(array) - np.isfinite(array).sum())
            raise check.damaged(
                f"parameter array '{name}' holds {count} NaN or infinite values of "
                f"{np.size(array)} (a missing chunk reads as NaN)"
            )


def _check_attributes(check: _Check, attrs: Mapping[str, Any], manifest: dict) -> None:
    recorded = manifest["attributes"]
    for key in sorted(set(attrs) - {MANIFEST_ATTR} | set(recorded)):
        if key not in attrs:
            raise check.damaged(f"the attribute {key} is missing")
        if recorded.get(key) != _attribute_digest(attrs[key]):
            raise check.damaged(f"the attribute {key} differs from what was saved")


def _check_sizes(check: _Check, ds: xr.Dataset) -> None:
    try:
        expected = check.fmt.expected_sizes(ds.attrs)
    except (KeyError, TypeError, ValueError) as error:
        raise check.damaged(f"its attributes cannot be read ({_one_line(error)})") from None
    for dim, size in expected.items():
        if dim in ds.sizes and ds.sizes[dim] != size:
            name = next(n for n, v in ds.variables.items() if dim in v.dims)
            raise check.damaged(
                f"array '{name}' has {ds.sizes[dim]} along {dim} but the model's parameters "
                f"say {size} (arrays from another model?)"
            )


def open_verified(location: str | os.PathLike, fmt: StoreFormat) -> xr.Dataset:
    """The store at ``location``, loaded, after every check of the module docstring.

    Raises :class:`ModelFileError` for anything wrong (one line naming the array).
    """
    check = _Check(os.fspath(location), fmt)
    with warnings.catch_warnings():  # zarr warns about unrecognized objects it skips
        warnings.simplefilter("ignore")
        group = _open_root(check)
        attrs = dict(group.attrs)
        manifest = _check_header(check, attrs, group)
        if manifest is not None:
            _check_attributes(check, attrs, manifest)
        ds = _read_arrays(check, group, manifest)
        values = {str(name): np.asarray(v.values) for name, v in ds.variables.items()}
        _check_values(check, values, manifest)
        _check_sizes(check, ds)
    return ds


def verify_written(staging: str, destination: str, fmt: StoreFormat) -> None:
    """Check a store just written at ``staging`` before it replaces ``destination``."""
    try:
        open_verified(staging, fmt)
    except ModelFileError as error:
        raise ModelFileError(
            f"the {fmt.noun} written for {destination} does not read back intact, so it was "
            f"not put in place and what was at {destination} is kept ({error})"
        ) from None


def open_verified_as_any(
    location: str | os.PathLike, formats: Sequence[StoreFormat]
) -> tuple[StoreFormat, xr.Dataset]:
    """The store verified as whichever of ``formats`` its format attribute names (for a
    reader of several kinds, such as ``dask-em info``); anything else is refused as none
    of them ("not a dask_em model file or checkpoint").  Returns the format and the
    loaded Dataset."""
    any_of = replace(formats[0], noun=" or ".join(f.noun for f in formats))
    check = _Check(os.fspath(location), any_of)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = _open_root(check).attrs.get(FORMAT_ATTR)
    fmt = next((f for f in formats if f.name == found), any_of)
    return fmt, open_verified(location, fmt)

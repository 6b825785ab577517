"""Zarr arrays read by tasks: named read errors, chunks that are absent, no secrets.

:class:`ZarrSource` stands in a task graph for an opened Zarr array.  It carries what a
worker needs to open the array again (the URL, the public storage options and a
reference to the secret ones, :mod:`dask_em.credentials`), never the secrets.

**Absent chunks.**  Zarr does not store a chunk that equals the fill value (unless the
array was written with ``write_empty_chunks``), and reads an absent chunk as the fill
value without a word.  In a store written by someone else an absent chunk may be
legitimate, so :func:`check_gaps` lists them when the input is opened and warns (or
refuses, with ``strict``).  Stores that dask_em writes (:func:`create_complete_array`)
store every chunk and record their count in :data:`STORED_CHUNKS_ATTR`; in them an
absent chunk is damage, refused when the store is opened.  In any store, a chunk that
was there when the input was opened and is gone when a task reads it (the store changed
under a running fit) is refused in that task.
"""

from __future__ import annotations

import itertools
import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from dask_em import credentials

#: Attribute of an array that dask_em wrote with every chunk stored: how many stored
#: objects (chunks, or shards for sharded arrays) it has.
STORED_CHUNKS_ATTR = "dask_em_stored_chunks"


class InputGapWarning(UserWarning):
    """Chunks of an input array are absent from its store: their rows read as the fill
    value."""


# -- the storage grid -------------------------------------------------------------------
def _storage_shape(node: Any) -> tuple[int, ...]:
    """Shape of one stored object: a shard for a sharded array, else a chunk."""
    return tuple(node.shards or node.chunks)


def _grid(node: Any) -> tuple[int, ...]:
    unit = _storage_shape(node)
    return tuple(math.ceil(size / step) for size, step in zip(node.shape, unit, strict=True))


def _key(node: Any, coords: tuple[int, ...]) -> str:
    """The store key of the stored object at grid ``coords``."""
    relative = node.metadata.encode_chunk_key(coords)
    prefix = node.store_path.path
    return f"{prefix}/{relative}" if prefix else relative


def stored_keys(node: Any) -> set[str]:
    """Keys of the objects stored under ``node``'s path (one listing of the store)."""
    from zarr.core.sync import collect_aiterator

    prefix = node.store_path.path
    listing = node.store_path.store.list_prefix(f"{prefix}/" if prefix else "")
    return set(collect_aiterator(listing))


def _rows_of(node: Any, coords: tuple[int, ...]) -> tuple[int, int]:
    step = _storage_shape(node)[0]
    return coords[0] * step, min(node.shape[0], (coords[0] + 1) * step)


@dataclass(frozen=True)
class Gaps:
    """The stored objects absent from an array's store.

    ``absent``: their grid coordinates, in order; ``n_objects``: how many the grid has;
    ``rows``: how many rows hold at least one value read as the fill value.
    """

    location: str
    absent: tuple[tuple[int, ...], ...]
    n_objects: int
    rows: int
    n_rows: int
    fill_value: Any
    what: str  # "chunk" or "shard"

    def where(self, node: Any, n_shown: int = 3) -> str:
        shown = [
            "rows {}:{} ({} {})".format(*_rows_of(node, c), self.what, "/".join(map(str, c)))
            for c in self.absent[:n_shown]
        ]
        more = f" and {len(self.absent) - n_shown} more" if len(self.absent) > n_shown else ""
        return ", ".join(shown) + more

    def describe(self, node: Any) -> str:
        n = len(self.absent)
        return (
            f"{n} of the {self.n_objects} {self.what}s of the Zarr array {self.location} "
            f"{'is' if n == 1 else 'are'} absent from its store: {self.rows:,} of its "
            f"{self.n_rows:,} rows read as the fill value {self.fill_value!r}; the first at "
            f"{self.where(node)}"
        )


def find_gaps(node: Any, location: str) -> Gaps | None:
    """The absent stored objects of the opened Zarr array ``node``, or None."""
    if node.size == 0:
        return None
    present = stored_keys(node)
    absent = tuple(
        coords
        for coords in itertools.product(*(range(n) for n in _grid(node)))
        if _key(node, coords) not in present
    )
    if not absent:
        return None
    row_objects = sorted({coords[0] for coords in absent})
    rows = sum(_rows_of(node, (r,))[1] - _rows_of(node, (r,))[0] for r in row_objects)
    return Gaps(
        location=location,
        absent=absent,
        n_objects=math.prod(_grid(node)),
        rows=rows,
        n_rows=node.shape[0],
        fill_value=_plain(node.fill_value),
        what="shard" if node.shards else "chunk",
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def written_complete(node: Any) -> bool:
    """Whether dask_em wrote ``node`` with every chunk stored."""
    return STORED_CHUNKS_ATTR in node.attrs


#: Above this many absent chunks, a reader does not watch for more disappearing (the
#: list of those known absent would weigh on every task).
MAX_WATCHED_GAPS = 10_000


def check_gaps(node: Any, location: str, strict: bool = False) -> Gaps | None:
    """Warn (:class:`InputGapWarning`) when chunks of ``node`` are absent from its store;
    ValueError instead when ``strict`` or when dask_em wrote the array complete.
    Returns the gaps found (None for none)."""
    gaps = find_gaps(node, location)
    if gaps is None:
        return None
    if written_complete(node):
        raise ValueError(
            f"{gaps.describe(node)}. dask_em wrote every chunk of this array, so the store "
            "is damaged: write it again"
        )
    text = gaps.describe(node)
    if strict:
        raise ValueError(f"{text}; refused because strict_input=True")
    warnings.warn(
        f"{text}. Zarr leaves out chunks equal to the fill value, so this may be what the "
        "writer meant; with strict_input=True such input is refused",
        InputGapWarning,
        stacklevel=2,
    )
    return gaps


def create_complete_array(store: Any, **create: Any) -> Any:
    """``zarr.create_array(store, **create)`` storing every chunk, even one that equals
    the fill value, and marked so (:data:`STORED_CHUNKS_ATTR`): readers then refuse an
    absent chunk.  ``store`` may be a path or an open group (``name=`` the member)."""
    import zarr

    config = {**create.pop("config", {}), "write_empty_chunks": True}
    if isinstance(store, zarr.Group):
        array = store.create_array(config=config, **create)
    else:
        array = zarr.create_array(store=store, config=config, **create)
    array.attrs[STORED_CHUNKS_ATTR] = int(math.prod(_grid(array)))
    return array


# -- the task-side reader ---------------------------------------------------------------
_OPENED: dict[tuple, Any] = {}
_OPENED_LOCK = threading.Lock()


class ZarrSource:
    """A Zarr array as a task reads it (``shape``, ``dtype``, ``ndim``, ``[index]``).

    Pickled into the graph in place of the array: a local store as it is; an fsspec
    store as its URL, array path, public options and credential reference.  A read that
    fails becomes one ValueError naming the store, the rows and the chunk; so does a
    chunk that is absent but was not among ``absent`` (the grid coordinates of those
    absent when the input was opened; None: do not watch).
    """

    def __init__(
        self, node: Any, location: str, absent: tuple[tuple[int, ...], ...] | None = ()
    ) -> None:
        self.location = location
        self.shape = tuple(node.shape)
        self.dtype = node.dtype
        self.ndim = len(self.shape)
        self.chunks = tuple(node.chunks)
        self.storage_shape = _storage_shape(node)
        self.fill_value = node.fill_value
        self.complete = written_complete(node)
        self.absent = None if absent is None else frozenset(absent)
        store = node.store_path.store
        filesystem = getattr(store, "fs", None)
        if filesystem is None:  # a local or in-memory store: nothing secret in it
            self._node = node
            self._recipe = None
        else:
            options = dict(getattr(filesystem, "storage_options", {}) or {})
            options.pop("asynchronous", None)
            public, secret = credentials.split_storage_options(options)
            url = filesystem.unstrip_protocol(store.path)
            self._node = None
            self._recipe = (url, node.path, public, credentials.register(secret))

    # -- pickling: the recipe only, never the opened array of an fsspec store ----------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._recipe is not None:
            state["_node"] = None
        return state

    def array(self) -> Any:
        """The opened Zarr array (opened once per process for a remote store)."""
        if self._node is not None:
            return self._node
        url, path, public, reference = self._recipe
        key = (url, path, tokenize(public), reference)
        with _OPENED_LOCK:
            found = _OPENED.get(key)
        if found is None:
            import zarr

            options = {**public, **credentials.lookup(reference, self.location)}
            found = zarr.open_array(store=url, path=path, mode="r", storage_options=options)
            with _OPENED_LOCK:
                _OPENED[key] = found
        return found

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            block = np.asarray(self.array()[index])
        except Exception as error:
            raise ValueError(
                f"cannot read {self._where(index)} of the Zarr array {self.location}"
                f"{self._chunk(index)} ({type(error).__name__}: {error}); the store is "
                "damaged or was changed while it was read"
            ) from None
        if self.absent is not None:
            self._refuse_absent(index, block)
        return block

    def _where(self, index: Any) -> str:
        rows = index[0] if isinstance(index, tuple) and index else index
        return f"rows {rows.start}:{rows.stop}" if isinstance(rows, slice) else str(index)

    def _chunk(self, index: Any) -> str:
        rows = index[0] if isinstance(index, tuple) and index else index
        if not isinstance(rows, slice):
            return ""
        return f", chunk {(rows.start or 0) // self.chunks[0]} along the rows"

    def _refuse_absent(self, index: Any, block: np.ndarray) -> None:
        """ValueError if a stored object under ``block`` is absent (cheap unless a whole
        object's part of the block equals the fill value: then one existence check)."""
        starts = [s.start or 0 for s in index] if isinstance(index, tuple) else [0]
        if len(starts) != self.ndim or block.size == 0:
            return
        ranges = [
            range(start // step, (start + size - 1) // step + 1)
            for start, size, step in zip(starts, block.shape, self.storage_shape, strict=True)
        ]
        for coords in itertools.product(*ranges):
            part = tuple(
                slice(max(0, c * step - start), max(0, min(size, (c + 1) * step - start)))
                for c, step, start, size in zip(
                    coords, self.storage_shape, starts, block.shape, strict=True
                )
            )
            if (
                coords not in self.absent
                and _all_fill(block[part], self.fill_value)
                and not self._stored(coords)
            ):
                first, last = _rows_span(coords[0], self.storage_shape[0], self.shape[0])
                why = (
                    "dask_em wrote every chunk of this array"
                    if self.complete
                    else "it was there when the input was opened"
                )
                raise ValueError(
                    f"chunk {'/'.join(map(str, coords))} (rows {first}:{last}) of the Zarr "
                    f"array {self.location} is absent from its store; {why}, so the store "
                    "was damaged or changed while it was read"
                )

    def _stored(self, coords: tuple[int, ...]) -> bool:
        from zarr.core.sync import sync

        node = self.array()
        return bool(sync(node.store_path.store.exists(_key(node, coords))))


def _rows_span(coord: int, step: int, n_rows: int) -> tuple[int, int]:
    return coord * step, min(n_rows, (coord + 1) * step)


def _all_fill(values: np.ndarray, fill: Any) -> bool:
    if values.size == 0:
        return False
    first = values.flat[0]
    if fill is None:
        return False
    fill_is_nan = isinstance(fill, (float, np.floating)) and np.isnan(fill)
    if fill_is_nan:
        return bool(np.isnan(first)) and bool(np.isnan(values).all())
    return bool(first == fill) and bool((values == fill).all())


def lazy_zarr(
    node: Any, location: str, chunks: Any = None, name: Any = None, *, strict: bool = False
) -> da.Array:
    """A dask array over the opened Zarr array ``node`` (chunked as stored unless
    ``chunks``) whose tasks read it through a :class:`ZarrSource`.  Absent chunks are
    reported first (:func:`check_gaps`)."""
    gaps = check_gaps(node, location, strict)
    absent = () if gaps is None else gaps.absent
    source = ZarrSource(node, location, absent if len(absent) <= MAX_WATCHED_GAPS else None)
    chunks = node.chunks if chunks is None else chunks
    if name is None:
        name = "from-zarr-" + tokenize(location, node.shape, str(node.dtype), chunks)
    meta = np.empty((0,) * len(node.shape), dtype=node.dtype)
    credentials.deliver_to()  # to the active client's workers, if there is one
    return da.from_array(source, chunks=chunks, name=name, meta=meta, asarray=False)

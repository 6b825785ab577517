"""Many sequences in one array: the data layout of dask_em's hidden Markov models.

``Sequences`` holds ``values`` (T, D), the steps of every sequence back to back, and
``lengths`` (S,), the number of steps of each sequence (T = sum of lengths), as
hmmlearn's ``fit(X, lengths)`` does.  On disk it is a Zarr group with the arrays
``values`` and ``lengths``.

Blocks hold whole sequences: the row chunks of ``values`` fall on sequence
boundaries, and ``lengths`` is chunked so that its block b lists the sequences of
``values``' block b.  The layout chooses those boundaries itself (about
``block_bytes`` of values per block), so the E-step of a block can run
forward-backward without looking at any other block.  A sequence longer than a block
is the exception: it is split into pieces of about a block each, one block per piece,
and ``lengths`` is then a table of segments (whole sequences and pieces, see
:mod:`dask_em.sequence_layout`); the hidden Markov models fit such a sequence exactly
across its pieces (:mod:`dask_em.families.hmm_split`).  The lengths (8 bytes per
sequence) are read into memory; the values stay lazy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence as SequenceABC
from typing import Any

import dask.array as da
import numpy as np

from dask_em.data import as_row_chunked, open_zarr_node
from dask_em.sequence_layout import Layout, plan_layout, with_weights
from dask_em.zarr_source import check_gaps, create_complete_array, lazy_zarr

#: Target size of one block of values when the layout chooses the boundaries.
DEFAULT_BLOCK_BYTES = 8 * 2**20


def check_lengths(lengths: Any, n_steps: int) -> np.ndarray:
    """``lengths`` as (S,) int64, or ValueError saying what is wrong with them."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D (one entry per sequence), got shape {lengths.shape}")
    if lengths.size == 0:
        raise ValueError("lengths is empty: there must be at least one sequence")
    if not (np.issubdtype(lengths.dtype, np.integer) or np.issubdtype(lengths.dtype, np.floating)):
        raise ValueError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if np.issubdtype(lengths.dtype, np.floating):
        whole = np.isfinite(lengths) & (lengths == np.floor(lengths))
        if not whole.all():
            first = int(np.argmin(whole))
            raise ValueError(
                f"lengths must hold integers; lengths[{first}] is {lengths[first].item()!r}"
            )
    lengths = lengths.astype(np.int64)
    if lengths.min() < 1:
        first = int(np.argmax(lengths < 1))
        raise ValueError(
            f"every sequence needs at least one step; lengths[{first}] is {lengths[first]}"
        )
    total = int(lengths.sum())
    if total != n_steps:
        raise ValueError(
            f"the lengths add up to {total} steps but values has {n_steps} rows: "
            "ragged layout (values must hold the sequences back to back)"
        )
    return lengths


class Sequences:
    """Sequences stored back to back (module docstring).

    Parameters
    ----------
    values : (T, D) NumPy or dask array, xarray DataArray, or Zarr array path.
    lengths : (S,) positive integers summing to T; None for one sequence.
    block_bytes : target bytes of values per block when the layout rechunks.

    Attributes
    ----------
    values : dask array (T, D), row chunks on sequence boundaries (or on the pieces of a
        sequence longer than a block).
    lengths : dask array (S,) int64, block b = the lengths of the sequences in block b;
        when a sequence is split, the (N,) :data:`~dask_em.sequence_layout.SEGMENT` table
        of the segments instead, block b = the segments of block b.
    """

    def __init__(
        self,
        values: Any,
        lengths: Any = None,
        *,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        check_values=None,
        keep_integers: bool = False,
    ):
        chunked_by_caller = isinstance(values, (da.Array, str, os.PathLike)) or hasattr(
            getattr(values, "data", None), "chunks"
        )
        values = as_row_chunked(values, check=check_values, keep_integers=keep_integers)
        if lengths is None:
            lengths = np.array([values.shape[0]])
        elif isinstance(lengths, da.Array):
            lengths = lengths.compute()
        lengths = check_lengths(lengths, values.shape[0])
        row_bytes = values.shape[1] * values.dtype.itemsize
        layout = plan_layout(lengths, block_bytes // max(1, row_bytes))
        per_block = _aligned_blocks(values.chunks[0], lengths) if chunked_by_caller else None
        if per_block is not None and not layout.split:
            layout = Layout(np.asarray(values.chunks[0]), per_block, lengths)
        elif tuple(values.chunks[0]) != tuple(int(n) for n in layout.steps):
            values = values.rechunk((tuple(int(n) for n in layout.steps), values.shape[1]))
        self.values = values
        self.layout = layout
        self.lengths = da.from_array(
            layout.table, chunks=(tuple(int(c) for c in layout.per_block),)
        )
        self._lengths = lengths

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def from_arrays(cls, sequences: SequenceABC, **kwargs: Any) -> Sequences:
        """From a list of (T_s, D) or (T_s,) arrays, one per sequence."""
        arrays = [np.asarray(s) for s in sequences]
        if not arrays:
            raise ValueError("no sequences given")
        arrays = [a.reshape(-1, 1) if a.ndim == 1 else a for a in arrays]
        widths = {a.shape[1] for a in arrays}
        if len(widths) != 1:
            raise ValueError(f"the sequences have different numbers of features: {sorted(widths)}")
        lengths = np.array([len(a) for a in arrays])
        return cls(np.concatenate(arrays), lengths, **kwargs)

    @classmethod
    def from_zarr(
        cls,
        path: str | os.PathLike,
        *,
        storage_options: dict | None = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        strict_input: bool = False,
        **kwargs: Any,
    ) -> Sequences:
        """From a Zarr group (local path or fsspec URL) with arrays ``values`` and ``lengths``.

        Each block reads exactly its rows of ``values``; the lengths are read at once.
        Chunks absent from the store are reported (a warning, or ValueError with
        ``strict_input``; see :func:`dask_em.zarr_source.check_gaps`).
        """
        import zarr

        location = os.fspath(path)
        group = open_zarr_node(location, storage_options, "group of sequences")
        if not isinstance(group, zarr.Group):
            raise ValueError(
                f"{location!r} is a Zarr array, not a group of sequences (arrays 'values' "
                "and 'lengths'); pass its lengths with it"
            )
        return cls.from_group(
            group, block_bytes=block_bytes, where=location, strict_input=strict_input, **kwargs
        )

    @classmethod
    def from_group(
        cls,
        group: Any,
        *,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        where: str = "",
        strict_input: bool = False,
        **kwargs: Any,
    ) -> Sequences:
        """From an open Zarr group with arrays ``values`` and ``lengths`` (absent chunks
        reported as :meth:`from_zarr` says)."""
        location = where or str(getattr(group, "store_path", "the group"))
        members = {name for name, _ in group.arrays()}
        if not {"values", "lengths"} <= members:
            raise ValueError(
                f"{location!r} must hold arrays 'values' and 'lengths'; it holds {sorted(members)}"
            )
        values, lengths = group["values"], group["lengths"]
        if len(values.shape) != 2:
            raise ValueError(
                f"{location}/values must be 2-D (steps, features), got shape {values.shape}"
            )
        check_gaps(lengths, f"{location}/lengths", strict_input)
        lengths = check_lengths(lengths[...], values.shape[0])
        row_bytes = values.shape[1] * values.dtype.itemsize
        steps = plan_layout(lengths, block_bytes // max(1, row_bytes)).steps
        lazy = lazy_zarr(
            values,
            f"{location}/values",
            (tuple(int(n) for n in steps), values.shape[1]),
            False,
            strict=strict_input,
        )
        return cls(lazy, lengths, block_bytes=block_bytes, **kwargs)

    # -- properties -----------------------------------------------------------------
    @property
    def n_sequences(self) -> int:
        return len(self._lengths)

    @property
    def n_steps(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.values.shape[1])

    @property
    def lengths_array(self) -> np.ndarray:
        """The lengths (S,) as a NumPy array."""
        return self._lengths

    @property
    def split(self) -> bool:
        """True when some sequence is longer than a block and split into pieces."""
        return self.layout.split

    @property
    def n_blocks(self) -> int:
        return self.values.numblocks[0]

    def __repr__(self) -> str:
        return (
            f"Sequences({self.n_sequences} sequences, {self.n_steps} steps, "
            f"{self.n_features} features, {self.n_blocks} blocks)"
        )

    # -- writing --------------------------------------------------------------------
    def to_zarr(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        chunk_rows: int | None = None,
        storage_options: dict | None = None,
    ) -> None:
        """Write a Zarr group with arrays ``values`` and ``lengths``.

        An existing store is replaced only with ``overwrite``.  ``chunk_rows``: rows per
        Zarr chunk of values (default: about 8 MiB).  Every chunk is stored, and its
        count recorded, so that readers refuse the store if one goes missing
        (:func:`dask_em.zarr_source.create_complete_array`).
        """
        import zarr

        location = os.fspath(path)
        mode = "w" if overwrite else "w-"
        try:
            group = zarr.open_group(store=location, mode=mode, storage_options=storage_options)
        except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
            raise FileExistsError(f"{location} exists; pass overwrite=True to replace it") from None
        rows = chunk_rows or max(1, DEFAULT_BLOCK_BYTES // (self.n_features * 8))
        values = create_complete_array(
            group,
            name="values",
            shape=self.values.shape,
            dtype=self.values.dtype,
            chunks=(rows, self.n_features),
        )
        lengths = create_complete_array(
            group,
            name="lengths",
            shape=(self.n_sequences,),
            dtype=np.int64,
            chunks=(max(1, 2**20),),
        )
        lengths[...] = self._lengths
        da.store(self.values.rechunk((rows, self.n_features)), values, lock=False)


#: One row per sequence: its length and its weight (what :func:`weighted_lengths` holds).
WEIGHTED_LENGTH = np.dtype([("length", np.int64), ("weight", np.float64)])


def weighted_lengths(sequences: Sequences, weights: np.ndarray) -> da.Array:
    """The lengths with one weight per sequence, a (S,) :data:`WEIGHTED_LENGTH` table
    chunked like ``sequences.lengths``: what a fit's block function receives in the
    lengths' place when the sequences are weighted (``table["length"]``,
    ``table["weight"]``); the :data:`~dask_em.sequence_layout.SEGMENT` table with its
    weights filled in when a sequence is split."""
    if sequences.split:  # the segment table has a weight field already
        table = with_weights(sequences.layout.table, weights)
        return da.from_array(table, chunks=sequences.lengths.chunks)
    table = np.empty(sequences.n_sequences, dtype=WEIGHTED_LENGTH)
    table["length"] = sequences.lengths_array
    table["weight"] = weights
    return da.from_array(table, chunks=sequences.lengths.chunks)


def as_sequences(X: Any, lengths: Any = None, **kwargs: Any) -> Sequences:
    """``X`` (with hmmlearn's ``lengths``) as :class:`Sequences`.

    X may be a Sequences (``lengths`` must then be None), a Zarr group path with arrays
    ``values`` and ``lengths``, a list of per-sequence arrays, or a (T, D) array.
    """
    if isinstance(X, Sequences):
        if lengths is not None:
            raise ValueError("pass lengths only with a values array, not with Sequences")
        return X
    storage_options = kwargs.pop("storage_options", None)
    strict_input = kwargs.pop("strict_input", False)
    if isinstance(X, (str, os.PathLike)):  # opened once: a group of sequences, or values
        import zarr

        node = open_zarr_node(X, storage_options, "array or group of sequences")
        if isinstance(node, zarr.Group):
            if lengths is not None:
                raise ValueError(
                    f"{os.fspath(X)!r} is a group of sequences with its own 'lengths'; "
                    "pass lengths only with a values array"
                )
            return Sequences.from_group(
                node, where=os.fspath(X), strict_input=strict_input, **kwargs
            )
        X = lazy_zarr(node, os.fspath(X), strict=strict_input)
    if isinstance(X, (list, tuple)) and lengths is None:
        return Sequences.from_arrays(X, **kwargs)
    return Sequences(X, lengths, **kwargs)


def _aligned_blocks(row_chunks: tuple[int, ...], lengths: np.ndarray) -> np.ndarray | None:
    """Sequences per block if the row chunks fall on sequence boundaries, else None."""
    ends = np.cumsum(row_chunks)
    boundaries = np.cumsum(lengths)
    positions = np.searchsorted(boundaries, ends)
    if positions.max() >= len(boundaries) or not np.array_equal(boundaries[positions], ends):
        return None
    counts = np.diff(np.concatenate([[-1], positions]))
    if np.any(counts < 1):
        return None
    return counts

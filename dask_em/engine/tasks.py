"""The functions the engine runs inside tasks, one per kind of task.

Each is small and module-level, so that wrapping one (thread limits, timing) is a
one-line change where the engine names it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def extra_args(extra: Any) -> tuple[int, ...]:
    """A block's extra arguments as Python ints (a row of a pass's ``per_block``)."""
    return () if extra is None else tuple(int(v) for v in np.ravel(extra))


def estep_block_task(X, w, shared, extra, *, block_func):
    """One block of a pass (``estep``, ``scan``, ``init``): its statistics, boxed in a
    1x1 object array (a cell of the blockwise layer)."""
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = block_func(shared, X, w, *extra_args(extra))
    return cell


def unboxed(part):
    """A block's statistics out of the cell of :func:`estep_block_task`; a merged part
    (anything else) as it is."""
    if isinstance(part, np.ndarray) and part.dtype == object and part.shape == (1, 1):
        return part[0, 0]
    return part


def reduce_task(merge, *parts):
    """One node of the reduction tree; leaves arrive boxed from :func:`estep_block_task`."""
    return merge(*map(unboxed, parts))


def predict_block_task(X, lengths, shared, extra):
    """One block of a prediction: the values checked, then the kernel's outputs, boxed.

    ``shared`` is ``(kernel, family, params, check)``; ``extra`` holds the block's first
    row.  ``lengths`` (sequence models) are the lengths of the block's sequences, or None.
    """
    kernel, family, params, check = shared
    (offset,) = extra_args(extra)
    check.raise_for(X, offset, what=f"X[{offset}:{offset + len(X)}]")
    if lengths is None:
        outputs = (kernel(family, params, X),)
    else:
        outputs = tuple(kernel(family, params, X, np.asarray(lengths)))
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = outputs
    return cell


def pick_output_task(cell, index: int):
    """Output ``index`` of a block's prediction (see :func:`predict_block_task`)."""
    return cell[0, 0][index]

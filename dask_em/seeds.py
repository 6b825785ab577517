"""Seeds: one integer from whatever ``random_state`` holds, and one seed per block."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def seed_from(random_state: Any) -> int:
    """An integer seed from an int, None, a NumPy Generator or RandomState."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(2, np.uint32).view(np.uint64)[0] >> 1)
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31 - 1))
    raise ValueError(
        f"random_state must be None, an int or a NumPy generator, got {random_state!r}"
    )


def blockwise_seeds(seed: int, n_blocks: int) -> list[int]:
    """Independent 63-bit seeds, one per block, derived from one seed."""
    children = np.random.SeedSequence(seed).spawn(n_blocks)
    return [int(child.generate_state(2, np.uint32).view(np.uint64)[0] >> 1) for child in children]

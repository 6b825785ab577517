"""Whether an accelerated run speculates: the Dask config ``dask_em.speculate``.

After a rejected extrapolation, an accelerated driver offers the point it would fall
back to if its next proposal is rejected too (:meth:`dask_em.acceleration.PlainEM.speculative`),
to be evaluated in the same pass: two E-steps on each block as it is read.  That
saves a pass for each such rejection and wastes an E-step when the proposal is
accepted instead.  Where every pass reads the data from its source (a Zarr store or
object storage streamed, ``cache="stream"``, or left there by ``"auto"``), a pass
saved is a read saved; over data held in memory a pass costs little more than its
E-steps, so the wasted ones are not worth it.
"""

from __future__ import annotations

from typing import Any

import dask

from dask_em.engine.direct import config_flag

#: ``"auto"`` (the default): speculate where passes read the data from its source;
#: True or False: always, never.
CONFIG_KEY = "dask_em.speculate"


def speculates(engine: Any) -> bool:
    """Whether the runs of a fit on ``engine`` (an :class:`~dask_em.engine.EMEngine`)
    speculate, by the config (module docstring)."""
    value = dask.config.get(CONFIG_KEY, "auto")
    if isinstance(value, str) and value.strip().lower() == "auto":
        return not engine.local and not engine.persisted
    return config_flag(CONFIG_KEY, False)

"""Warnings and errors dask_em raises."""


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the objective changed by less than ``tol``."""


class EmptyComponentWarning(UserWarning):
    """A component lost all its data and was re-seeded."""


class ClusterError(Exception):
    """The cluster failed (unreachable scheduler, lost connection)."""


class MemoryStallError(ClusterError):
    """Workers paused for memory and the fit stopped waiting on them.

    Raised when, for ``dask_em.stall-timeout`` seconds (Dask config; ``--stall-timeout``
    on the command line), workers were paused at their memory limit and no task of the
    pass finished.  The message gives the block size against the workers' memory limit
    and what to do (smaller chunks, more memory, ``cache="stream"``).
    """

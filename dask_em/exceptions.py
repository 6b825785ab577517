"""Warnings and errors dask_em raises."""


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the objective changed by less than ``tol``."""


class EmptyComponentWarning(UserWarning):
    """A component lost all its data and was re-seeded."""


class ClusterError(Exception):
    """The cluster failed (unreachable scheduler, lost connection)."""

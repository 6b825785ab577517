"""Warnings dask_em emits."""


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the objective changed by less than ``tol``."""


class EmptyComponentWarning(UserWarning):
    """A component lost all its data and was re-seeded."""

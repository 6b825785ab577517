"""The one registry of models, filled as their classes are defined.

An estimator class registers itself (:meth:`dask_em.estimators.base.Estimator.
__init_subclass__`) under its class name, which model files and checkpoints record,
and under its model name (``_model_name``: ``gmm``, ``gaussian-hmm``, ...), which the
command line takes and task names show.  Nothing here imports an estimator, so model
files, checkpoints and the command line can read the registry without import cycles.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelKind:
    """One model: its name (command line, task names) and its estimator class."""

    name: str
    estimator: type
    sequences: bool = False  # its data are many sequences (hidden Markov models)


_BY_CLASS_NAME: dict[str, ModelKind] = {}
_BY_NAME: dict[str, ModelKind] = {}


def register(cls: type, name: str, *, sequences: bool = False) -> None:
    """Add the estimator class ``cls`` under ``name`` (and under its class name)."""
    kind = ModelKind(name, cls, sequences)
    for table, key in ((_BY_CLASS_NAME, cls.__name__), (_BY_NAME, name)):
        known = table.get(key)
        if known is not None and known.estimator.__qualname__ != cls.__qualname__:
            raise ValueError(f"two models named {key!r}: {known.estimator} and {cls}")
        table[key] = kind


def model_kinds() -> dict[str, ModelKind]:
    """Model names -> :class:`ModelKind`: the mixtures, then the sequence models, each
    alphabetically."""
    return {kind.name: kind for kind in sorted(_BY_NAME.values(), key=_order)}


def _order(kind: ModelKind) -> tuple[bool, str]:
    return kind.sequences, kind.name


def estimator_class(class_name: str) -> type:
    """The estimator class a model file names; ValueError for an unknown one."""
    kind = _BY_CLASS_NAME.get(class_name)
    if kind is None:
        raise ValueError(f"unknown model class {class_name!r} in model file")
    return kind.estimator


def kind_of(estimator: object) -> ModelKind:
    """The registry entry of an estimator (instance); ValueError if it has none."""
    kind = _BY_CLASS_NAME.get(type(estimator).__name__)
    if kind is None or kind.estimator is not type(estimator):
        raise ValueError(f"dask_em does not know models of type {type(estimator).__name__}")
    return kind

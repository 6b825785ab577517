"""What every mixture estimator shares: the fit loop around the engine, prediction, scoring.

A subclass supplies the family (:meth:`BaseMixture._family`), the initial parameters
from the scan sample (:meth:`BaseMixture._initial_params`), and the mapping between the
parameter dict and its fitted attributes (``_set_fitted`` / ``_fitted_params``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np

from dask_em.checkpoint import FitState, fingerprint, load_state, save_state
from dask_em.data import (
    FINITE,
    ValueCheck,
    as_float_matrix,
    as_row_chunked,
    as_sample_weight,
    merge_scans,
    raise_for_scan_problems,
    row_offsets,
    scan_block,
)
from dask_em.engine import CACHE_MODES, EMEngine, FitResult, IterationRecord, blockwise_seeds
from dask_em.exceptions import ConvergenceWarning, EmptyComponentWarning
from dask_em.families.base import Params, Stats, log_normalize
from dask_em.initialization import INIT_METHODS, init_block_stats, initial_centers

logger = logging.getLogger(__name__)

#: In-memory NumPy input up to this size is fitted in this process, without the cluster:
#: shipping it would cost more than the arithmetic (EM can need thousands of passes).
LOCAL_FIT_BYTES = 32 * 2**20


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


@contextlib.contextmanager
def verbose_logging(verbose: int):
    """Show the per-iteration log lines on stderr while ``verbose`` is set."""
    if not verbose:
        yield
        return
    package_logger = logging.getLogger("dask_em")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous)


def _is_lazy(X: Any) -> bool:
    if isinstance(X, (da.Array, str, os.PathLike)):
        return True
    return hasattr(X, "dims") and isinstance(getattr(X, "data", None), da.Array)


class BaseMixture:
    """Base class of dask_em's mixture estimators (scikit-learn's estimator surface)."""

    _model_name = "mixture"

    # -- scikit-learn parameter protocol ------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p.name for p in signature.parameters.values() if p.name != "self"]

    def _store_params(self, arguments: dict[str, Any]) -> None:
        """Keep the constructor's arguments as attributes (``self._store_params(locals())``).

        As in scikit-learn, ``__init__`` only stores; validation happens in ``fit``.
        """
        for name in self._param_names():
            setattr(self, name, arguments[name])

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters, as scikit-learn's ``BaseEstimator.get_params``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> BaseMixture:
        """Set constructor parameters; unknown names raise ValueError."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        signature = inspect.signature(type(self).__init__).parameters
        shown = []
        for name, value in self.get_params().items():
            if isinstance(value, np.ndarray):
                shown.append(f"{name}=array{value.shape}")
            elif value is not signature[name].default and value != signature[name].default:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    # -- subclass hooks -----------------------------------------------------------
    def _family(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _value_check(self, fitting: bool = False) -> ValueCheck:
        """Which values the model accepts (default: any finite number).

        ``fitting``: for the data being fitted (before anything is learned from it),
        rather than for data given to the fitted model.
        """
        return FINITE

    def _learn_from_scan(self, scan: dict) -> None:
        """Settle what the data decides before initialization (e.g. the symbol count)."""

    def _check_hyperparameters(self, n_features: int) -> None:
        """Validate constructor parameters (before any cluster work)."""
        if not isinstance(self.n_components, numbers.Integral) or self.n_components < 1:
            raise ValueError(f"n_components must be an integer >= 1, got {self.n_components!r}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")
        if not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if not isinstance(self.n_init, numbers.Integral) or self.n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.init_params not in INIT_METHODS:
            raise ValueError(f"init_params must be one of {INIT_METHODS}, got {self.init_params!r}")
        K = self.n_components
        if getattr(self, "weights_init", None) is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (K,):
                raise ValueError(f"weights_init must have shape ({K},), got {w.shape}")
            if np.any(w < 0) or not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
                raise ValueError("weights_init must be non-negative and sum to 1")

    def _initial_params(self, engine: EMEngine, scan: dict, rng: np.random.Generator) -> Params:
        """Initial parameters: given ``*_init`` values, the rest from an init pass."""
        given = self._given_init()
        computed: Params = {}
        if any(value is None for value in given.values()):
            computed = self._init_pass(engine, scan, rng)
        return self._combine_init(computed, given)

    def _given_init(self) -> dict[str, Any]:
        """``{parameter: the user's initial value or None}``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _combine_init(self, computed: Params, given: dict[str, Any]) -> Params:
        """Parameters from the given initial values, completed by the computed ones."""
        values = {
            name: computed[name] if value is None else np.asarray(value, dtype=np.float64)
            for name, value in given.items()
        }
        return self._family().make_params(**values)

    def _init_pass(
        self, engine: EMEngine, scan: dict, rng: np.random.Generator, family=None
    ) -> Params:
        """Centres on the scan sample, then one pass of responsibilities and an M-step
        (of ``family``, default the model's own)."""
        family = family or self._family()
        features = family.init_features(scan["sample"])
        centers = initial_centers(
            self.init_params, features, scan["sample_weight"], self.n_components, rng
        )
        shared = {
            "family": family,
            "centers": centers,
            "n_components": self.n_components,
            "fill": scan["fill"],
        }
        seeds = blockwise_seeds(int(rng.integers(2**63 - 1)), engine.n_blocks)
        stats = engine.map_reduce(
            self._data_pass(init_block_stats),
            family.merge,
            shared,
            stage="init",
            per_block=[(s,) for s in seeds],
        )
        params = family.m_step(stats)
        params, _ = BaseMixture._make_repair(family, scan["sample"])(params, stats)
        return params

    @staticmethod
    def _all_missing_message(count: int) -> str:
        return (
            f"{count} rows of X have every feature missing; they carry no information and "
            "are left out of the fit"
        )

    @staticmethod
    def _data_pass(block_func):
        """A ``block_func(shared, X, w, ...)`` as the engine should run it over our data
        (the identity here; hidden Markov models drop the sequence lengths)."""
        return block_func

    def _set_fitted(self, params: Params) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def _fitted_params(self) -> Params:
        raise NotImplementedError  # pragma: no cover - abstract

    def _is_fitted(self) -> bool:
        return hasattr(self, "converged_")

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    # -- fitting ------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        y: Any = None,
        sample_weight: Any = None,
        *,
        storage_options: dict | None = None,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        callbacks: Sequence[Callable[[IterationRecord, Params], None]] = (),
    ) -> BaseMixture:
        """Estimate the parameters with EM, on the active Dask client if there is one.

        Parameters
        ----------
        X : array-like, dask array, xarray DataArray or Zarr path, (n_samples, n_features)
            A path may be an fsspec URL (``"s3://bucket/X.zarr"``).
        y : ignored (scikit-learn compatibility).
        sample_weight : (n_samples,) non-negative weights, or None.  An integer weight
            counts as that many copies of its row.
        storage_options : dict, optional
            fsspec options for opening the Zarr URL ``X``, e.g. ``{"key": ...,
            "secret": ..., "endpoint_url": ...}`` for S3.  They travel with the task
            graph, so the workers read the store with them and need no credentials of
            their own (use TLS between client, scheduler and workers to keep them
            private).  Only for a path or URL.
        checkpoint : path of a Zarr store where the fit's state is written after every
            iteration (:mod:`dask_em.checkpoint`).  Refused if it exists, unless ``resume``.
        resume : continue from ``checkpoint`` if it exists (else start afresh); the
            result equals that of an uninterrupted fit.
        callbacks : called as ``callback(record, params)`` after every iteration.

        Runs ``n_init`` initializations and keeps the one with the best final objective.
        The first pass over the data checks it (NaN/inf, weights) and draws the sample
        used for initialization and re-seeding.
        """
        if storage_options is not None and not isinstance(X, (str, os.PathLike)):
            raise ValueError(
                "storage_options apply only when X is the path or URL of a Zarr array, "
                f"not {type(X).__name__}"
            )
        in_memory = not _is_lazy(X)
        given = X
        check = self._value_check(fitting=True)
        X = as_row_chunked(
            X,
            storage_options=storage_options,
            check=None,
            keep_integers=check.keeps_integers,
        )
        n_samples, n_features = X.shape
        self._check_hyperparameters(n_features)
        if in_memory:  # checked here, before any cluster work; lazy data in the scan pass
            check.raise_for(np.asarray(given.data if hasattr(given, "dims") else given))
        local = in_memory and X.nbytes <= LOCAL_FIT_BYTES
        if n_samples < self.n_components:
            raise ValueError(
                f"expected n_samples >= n_components, got n_samples={n_samples} and "
                f"n_components={self.n_components}"
            )
        weights = as_sample_weight(sample_weight, X)
        return self._fit_engine(
            lambda: EMEngine(X, weights, model=self._model_name, cache=self.cache, local=local),
            check,
            local,
            (n_samples, n_features),
            self._checkpointing(checkpoint, resume, X, weights),
            callbacks,
        )

    def _fit_engine(
        self,
        make_engine,
        check: ValueCheck,
        local: bool,
        shape: tuple[int, int],
        checkpointing: tuple = (None, None),
        callbacks: Sequence[Callable[[IterationRecord, Params], None]] = (),
    ):
        """Scan, initialize and run EM on the engine ``make_engine()`` builds; set the
        fitted attributes from the best of the ``n_init`` runs.

        ``shape``: (n_samples, n_features) of the data; ``checkpointing``: the saved
        state to resume from (or None) and the saver, from :meth:`_checkpointing`.
        """
        n_samples, n_features = shape
        state, saver = checkpointing
        seed = state.seed if state is not None else seed_from(self.random_state)
        rng = np.random.default_rng(seed)
        with verbose_logging(self.verbose):
            engine = make_engine()
            self.data_placement_ = "local" if local else "memory" if engine.persisted else "stream"
            try:
                with engine.fit_span(
                    estimator=type(self).__name__,
                    n_samples=n_samples,
                    n_features=n_features,
                    data_placement=self.data_placement_,
                    max_iter=self.max_iter,
                    resumed_at=state.current.n_iter if state is not None else 0,
                ) as fit_end:
                    scan = self._scan(engine, rng, check)
                    self._learn_from_scan(scan)
                    best = self._fit_restarts(
                        engine, scan, rng, seed, state=state, saver=saver, callbacks=callbacks
                    )
                    fit_end.update(
                        converged=best.converged, n_iter=best.n_iter, lower_bound=best.lower_bound
                    )
            finally:
                engine.release()
        self._set_fitted(best.params)
        self.n_features_in_ = n_features
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best.lower_bound
        self.lower_bounds_ = [record.objective for record in best.history]
        self.history_ = [record.as_dict() for record in best.history]
        if not best.converged:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return self

    def _scan(self, engine: EMEngine, rng: np.random.Generator, check: ValueCheck) -> dict:
        sizes = np.asarray(engine.X.chunks[0])
        n_samples = int(sizes.sum())
        total = min(n_samples, self.init_sample_size)
        picks = rng.multivariate_hypergeometric(sizes, total)
        seeds = blockwise_seeds(int(rng.integers(2**63 - 1)), engine.n_blocks)
        per_block = list(zip(picks.tolist(), seeds, row_offsets(engine.X), strict=True))
        scan = engine.map_reduce(
            self._data_pass(scan_block), merge_scans, check, stage="scan", per_block=per_block
        )
        raise_for_scan_problems(scan, check)
        if scan["n_all_missing"]:
            warnings.warn(
                self._all_missing_message(scan["n_all_missing"]), UserWarning, stacklevel=4
            )
        sample = scan["sample"]
        scan["fill"] = None
        if np.isnan(sample).any():  # initialization and re-seeding need complete rows
            fill = np.nan_to_num(_nanmean_columns(sample))
            scan["sample"] = np.where(np.isnan(sample), fill, sample)
            scan["fill"] = fill
        return scan

    def _checkpointing(self, path, resume: bool, X: da.Array, weights):
        """The saved state to resume from (or None) and the function that saves one."""
        if path is None:
            if resume:
                raise ValueError("resume=True needs a checkpoint path")
            return None, None
        expected = fingerprint(self, X, weights)
        if resume:
            state = load_state(path, self, expected)
        elif os.path.exists(path):
            raise FileExistsError(
                f"the checkpoint {os.fspath(path)} exists; resume from it, or remove it"
            )
        else:
            state = None

        def save(attempt, rng_state, current, best, seed):
            save_state(path, self, FitState(seed, attempt, rng_state, current, best, expected))

        return state, save

    def _fit_restarts(
        self,
        engine: EMEngine,
        scan: dict,
        rng: np.random.Generator,
        seed: int,
        *,
        state=None,
        saver=None,
        callbacks: Sequence[Callable[[IterationRecord, Params], None]] = (),
    ) -> FitResult:
        """Run the initializations; with ``state``, continue the one it was saved in."""
        family = self._family()
        repair = self._make_repair(family, scan["sample"])
        warm = self.warm_start and self._is_fitted()
        best: FitResult | None = state.best if state is not None else None
        first = state.attempt if state is not None else 0
        for attempt in range(first, 1 if warm else self.n_init):
            resume = None
            if state is not None and attempt == state.attempt:
                rng.bit_generator.state = state.rng_state
                params, resume = None, state.current
                logger.info(
                    "resuming initialization %d after iteration %d", attempt + 1, resume.n_iter
                )
            elif warm:
                params = self._fitted_params()
            else:
                params = self._initial_params(engine, scan, rng)
            hooks = list(callbacks)
            if saver is not None:
                hooks.insert(0, self._saver_hook(saver, attempt, rng, resume, best, seed))
            result = engine.run(
                family,
                params,
                max_iter=self.max_iter,
                tol=self.tol,
                repair=repair,
                callbacks=hooks,
                resume=resume,
            )
            logger.info("initialization %d: objective %.10g", attempt + 1, result.lower_bound)
            if best is None or result.lower_bound > best.lower_bound:
                best = result
        return best

    @staticmethod
    def _saver_hook(saver, attempt, rng, resume, best, seed):
        """The callback that checkpoints the loop state after each iteration."""
        rng_state = rng.bit_generator.state  # right after this attempt's initialization
        history = list(resume.history) if resume is not None else []

        def save(record: IterationRecord, params: Params) -> None:
            history.append(record)
            saver(attempt, rng_state, FitResult(params, list(history)), best, seed)

        return save

    @staticmethod
    def _make_repair(family, sample: np.ndarray):
        def repair(params: Params, stats: Stats) -> tuple[Params, tuple[int, ...]]:
            empty = family.empty_components(stats)
            if empty.size == 0:
                return params, ()
            warnings.warn(
                f"component(s) {empty.tolist()} lost all their data and were re-seeded on "
                "the sample rows the model explained worst",
                EmptyComponentWarning,
                stacklevel=2,
            )
            return family.reseed(params, empty, sample), tuple(int(k) for k in empty)

        return repair

    # -- prediction ---------------------------------------------------------------
    def _apply(self, X: Any, kernel, out_columns: int | None, dtype) -> Any:
        """Apply ``kernel(family, params, block)`` to every block of X.

        NumPy in, NumPy out; dask array, DataArray over dask, or Zarr path in, a lazy
        dask array out, chunked like X along rows.
        """
        self._check_fitted()
        family, params, check = self._family(), self._fitted_params(), self._value_check()
        if not _is_lazy(X):
            X = as_float_matrix(X.data if hasattr(X, "dims") else X, check=check)
            self._check_n_features(X.shape[1])
            return kernel(family, params, X)
        X = as_row_chunked(X, check=check)
        self._check_n_features(X.shape[1])
        name = f"{kernel.__name__.strip('_')}-{self._model_name}"

        def block(X_block, block_info=None):
            offset = block_info[0]["array-location"][0][0] if block_info else 0
            what = f"X[{offset}:{offset + len(X_block)}]"
            check.raise_for(X_block, offset, what=what)
            return kernel(family, params, X_block)

        if out_columns is None:
            return X.map_blocks(block, drop_axis=1, dtype=dtype, name=name, meta=np.empty(0, dtype))
        return X.map_blocks(
            block,
            chunks=(X.chunks[0], (out_columns,)),
            dtype=dtype,
            name=name,
            meta=np.empty((0, 0), dtype),
        )

    def _check_n_features(self, n_features: int) -> None:
        if n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but {type(self).__name__} was fitted with "
                f"{self.n_features_in_} features"
            )

    def predict(self, X: Any) -> Any:
        """Most likely component of each row, shape (n_samples,), int64."""
        return self._apply(X, _predict, None, np.int64)

    def predict_proba(self, X: Any) -> Any:
        """Posterior probability of each component, shape (n_samples, n_components)."""
        return self._apply(X, _predict_proba, self.n_components, np.float64)

    def score_samples(self, X: Any) -> Any:
        """Log-likelihood ``log p(x_i)`` of each row, shape (n_samples,) (nats)."""
        return self._apply(X, _score_samples, None, np.float64)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per row (nats)."""
        scores = self.score_samples(X)
        return float(scores.mean().compute() if isinstance(scores, da.Array) else scores.mean())

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """Fit, then label X with the fitted model (the labels of the final E-step)."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def _n_parameters(self) -> int:
        return self._family().n_parameters(self.n_components, self.n_features_in_)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on X (lower is better)."""
        n = _n_rows(X)
        return -2.0 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion on X (lower is better)."""
        n = _n_rows(X)
        return -2.0 * self.score(X) * n + 2.0 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted model: ``(X (n, D), labels (n,))``."""
        self._check_fitted()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        family, params = self._family(), self._fitted_params()
        rng = np.random.default_rng(seed_from(self.random_state))
        counts = rng.multinomial(n_samples, params["weights"])
        X = np.vstack(
            [family.sample_component(params, k, int(c), rng) for k, c in enumerate(counts)]
        )
        labels = np.repeat(np.arange(len(counts)), counts)
        return X, labels

    # -- model files --------------------------------------------------------------
    def to_xarray(self):
        """The fitted model as an xarray Dataset with named dims (what ``save`` writes)."""
        from dask_em.model_io import to_dataset

        return to_dataset(self)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the fitted model to a Zarr store through xarray (never pickle)."""
        from dask_em.model_io import save_model

        save_model(self, path, overwrite=overwrite)


def _nanmean_columns(sample: np.ndarray) -> np.ndarray:
    """Column means over the observed entries (0 for a column with none)."""
    observed = ~np.isnan(sample)
    totals = np.where(observed, sample, 0.0).sum(axis=0)
    return totals / np.maximum(observed.sum(axis=0), 1)


def _n_rows(X: Any) -> int:
    if isinstance(X, (str, os.PathLike)):
        return as_row_chunked(X).shape[0]
    return int(np.shape(X)[0]) if not hasattr(X, "shape") else int(X.shape[0])


def _predict(family, params, X):
    return np.argmax(family.weighted_log_prob(params, X), axis=1)


def _predict_proba(family, params, X):
    return log_normalize(family.weighted_log_prob(params, X))[1]


def _score_samples(family, params, X):
    return log_normalize(family.weighted_log_prob(params, X))[0]

"""What every hidden Markov model estimator shares: fit over many sequences, decoding,
state posteriors, scoring and sampling, shaped like hmmlearn's ``BaseHMM``.

The fit loop, the scan pass, initialization and ``n_init`` restarts are the mixtures'
(:class:`dask_em.mixture._base.BaseMixture`); the engine runs the Baum-Welch statistics
of :class:`dask_em.families.hmm.HMMFamily` over blocks of whole sequences
(:mod:`dask_em.sequences`).  A subclass names its emission family and the emission
parameters' fitted attributes.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from dask_em.data import ValueCheck
from dask_em.engine import EMEngine, IterationRecord
from dask_em.families.base import Params
from dask_em.families.hmm import ESTEP_METHODS, HMMFamily
from dask_em.mixture._base import LOCAL_FIT_BYTES, BaseMixture, seed_from
from dask_em.sequences import Sequences, as_sequences

DECODE_ALGORITHMS = ("viterbi", "map")


def _without_lengths(block_func, shared, X, lengths, *args):
    """Run a mixture's block function on a block of sequences, ignoring the lengths."""
    return block_func(shared, X, None, *args)


class BaseHMM(BaseMixture):
    """Base class of dask_em's hidden Markov models (hmmlearn's surface, many sequences).

    Subclasses define ``_emission_family()``, ``_emission_init()`` (``{name: initial
    value or None}`` in the emission family's terms), ``_set_emission(params)``,
    ``_emission_params()`` and ``_emission_variables()``.
    """

    _model_name = "hmm"

    # -- hooks --------------------------------------------------------------------
    def _family(self) -> HMMFamily:
        return HMMFamily(
            self._emission_family(),
            float(self.startprob_prior),
            float(self.transmat_prior),
            self.estep,
            int(self.n_samples),
            name=self._model_name,
        )

    @staticmethod
    def _data_pass(block_func):
        return functools.partial(_without_lengths, block_func)

    @staticmethod
    def _all_missing_message(count: int) -> str:
        return (
            f"{count} steps have every feature missing; they contribute no emission term "
            "(the chain still runs through them)"
        )

    @staticmethod
    def _make_repair(family, sample):
        return None  # a state keeps its parameters even when no step visits it

    def _check_hyperparameters(self, n_features: int) -> None:
        super()._check_hyperparameters(n_features)
        K = self.n_components
        for name in ("startprob_prior", "transmat_prior"):
            if not getattr(self, name) >= 1.0:
                raise ValueError(
                    f"{name} must be >= 1 (a Dirichlet concentration; 1 is flat), "
                    f"got {getattr(self, name)!r}"
                )
        if self.estep not in ESTEP_METHODS:
            raise ValueError(f"estep must be one of {ESTEP_METHODS}, got {self.estep!r}")
        if not isinstance(self.n_samples, numbers.Integral) or self.n_samples < 1:
            raise ValueError(f"n_samples must be an integer >= 1, got {self.n_samples!r}")
        for name, shape in (("startprob_init", (K,)), ("transmat_init", (K, K))):
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
            if np.any(value < 0) or not np.allclose(value.sum(axis=-1), 1.0, rtol=0, atol=1e-6):
                raise ValueError(f"{name} must be non-negative and sum to 1 (along each row)")

    # -- initialization -----------------------------------------------------------
    def _initial_params(self, engine: EMEngine, scan: dict, rng: np.random.Generator) -> Params:
        """``*_init`` values where given; otherwise uniform start and transition
        probabilities (as hmmlearn) and emissions from k-means on the scan sample."""
        K = self.n_components
        emission_family = self._emission_family()
        given = self._emission_init()
        computed: Params = {}
        if any(value is None for value in given.values()):
            computed = self._init_pass(engine, scan, rng, family=emission_family)
        values = {
            name: computed[name] if value is None else np.asarray(value, dtype=np.float64)
            for name, value in given.items()
        }
        if computed:
            values = self._soften_initial_emission(values, scan)
        emission = emission_family.make_params(np.full(K, 1.0 / K), **values)
        startprob = self.startprob_init if self.startprob_init is not None else np.full(K, 1 / K)
        transmat = (
            self.transmat_init if self.transmat_init is not None else np.full((K, K), 1.0 / K)
        )
        return HMMFamily.make_params(
            startprob, transmat, emission, seed=int(rng.integers(2**63 - 1))
        )

    def _soften_initial_emission(self, values: Params, scan: dict) -> Params:
        """Adjust emission parameters computed by the init pass (hook; unchanged here)."""
        return values

    # -- fitted parameters --------------------------------------------------------
    def _set_fitted(self, params: Params) -> None:
        self.startprob_ = params["startprob"]
        self.transmat_ = params["transmat"]
        self._set_emission(params["emission"])
        self.estep_seed_ = int(params["seed"])  # the Monte Carlo E-step's next stream

    def _fitted_params(self) -> Params:
        return HMMFamily.make_params(
            self.startprob_,
            self.transmat_,
            self._emission_params(),
            seed=getattr(self, "estep_seed_", 0),
        )

    def _model_variables(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        variables = {
            "startprob": (("component",), self.startprob_),
            "transmat": (("component", "component_to"), self.transmat_),
            "estep_seed": ((), np.asarray(getattr(self, "estep_seed_", 0), dtype=np.int64)),
            "n_sequences": ((), np.asarray(getattr(self, "n_sequences_", 0), dtype=np.int64)),
        }
        variables.update(self._emission_variables())
        return variables

    def _restore_variables(self, variables: dict[str, np.ndarray]) -> None:
        self.startprob_ = variables["startprob"]
        self.transmat_ = variables["transmat"]
        if "n_sequences" in variables:
            self.n_sequences_ = int(np.asarray(variables["n_sequences"]))
        if "estep_seed" in variables:
            self.estep_seed_ = int(np.asarray(variables["estep_seed"]))
        self._restore_emission(variables)

    @property
    def n_features(self) -> int:
        """Number of features per step (hmmlearn's name for ``n_features_in_``)."""
        self._check_fitted()
        return self.n_features_in_

    # -- fitting ------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        lengths: Any = None,
        *,
        storage_options: dict | None = None,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        callbacks: Sequence[Callable[[IterationRecord, Params], None]] = (),
    ):
        """Estimate the parameters with Baum-Welch over many sequences.

        Parameters
        ----------
        X : :class:`~dask_em.Sequences`, a Zarr group path (arrays ``values`` and
            ``lengths``), a list of (T_s, D) arrays, or a (T, D) array with ``lengths``.
        lengths : (S,) sequence lengths summing to T (hmmlearn's form); None with a
            (T, D) array means one sequence.
        storage_options : fsspec options for a Zarr URL (s3://...).
        checkpoint, resume, callbacks : as :meth:`dask_em.GaussianMixture.fit`; a
            checkpoint is tied to the block layout (the sequence boundaries per block).
        """
        check = self._value_check(fitting=True)
        in_memory = isinstance(X, (np.ndarray, list, tuple))
        sequences = as_sequences(
            X,
            lengths,
            check_values=None,
            keep_integers=check.keeps_integers,
            storage_options=storage_options,
        )
        n_steps, n_features = sequences.values.shape
        self._check_hyperparameters(n_features)
        if in_memory:  # checked here, before any cluster work; lazy data in the scan pass
            check.raise_for(sequences.values.compute(scheduler="sync"), what="X")
        if n_steps < self.n_components:
            raise ValueError(
                f"expected at least n_components={self.n_components} steps, got {n_steps}"
            )
        local = in_memory and sequences.values.nbytes <= LOCAL_FIT_BYTES
        self.n_sequences_ = sequences.n_sequences
        return self._fit_engine(
            lambda: EMEngine(
                sequences.values,
                lengths=sequences.lengths,
                model=self._model_name,
                cache=self.cache,
                local=local,
            ),
            check,
            local,
            (n_steps, n_features),
            self._checkpointing(checkpoint, resume, sequences.values, None),
            callbacks,
        )

    # -- prediction ---------------------------------------------------------------
    def _per_block(self, X: Any, lengths: Any, kernel) -> tuple[Any, Any]:
        """``kernel(family, params, values_block, lengths_block)`` on every block.

        ``kernel`` is :meth:`HMMFamily.state_posteriors` or :meth:`HMMFamily.decode`: it
        returns one array with a row per sequence (S,) and one with a row per step (T, ...).
        Both come back as NumPy arrays for in-memory input, else as lazy dask arrays over
        the same per-block tasks.
        """
        self._check_fitted()
        family, params, check = self._family(), self._fitted_params(), self._value_check()
        in_memory = isinstance(X, (np.ndarray, list, tuple))
        sequences = as_sequences(X, lengths, check_values=None, keep_integers=True)
        self._check_n_features(sequences.n_features)
        if in_memory:
            values = sequences.values.compute(scheduler="sync")
            check.raise_for(values, what="X")
            return kernel(family, params, values, sequences.lengths_array)
        block_lengths = np.split(
            sequences.lengths_array, np.cumsum(sequences.lengths.chunks[0])[:-1]
        )
        offsets = np.concatenate([[0], np.cumsum(sequences.values.chunks[0])])
        name = f"{kernel.__name__}-{self._model_name}"
        per_step = (self.n_components,) if kernel is HMMFamily.state_posteriors else ()
        step_dtype = np.float64 if per_step else np.int64
        per_sequence_pieces, per_step_pieces = [], []
        for i, (block, block_len) in enumerate(
            zip(sequences.values.to_delayed().ravel(), block_lengths, strict=True)
        ):
            task = dask.delayed(_checked_kernel, pure=True, nout=2)(
                kernel,
                family,
                params,
                check,
                block,
                block_len,
                int(offsets[i]),
                f"X[{offsets[i]}:{offsets[i + 1]}]",
                dask_key_name=f"{name}-{i}-{dask.base.tokenize(block, params)}",
            )
            per_sequence_pieces.append(
                da.from_delayed(task[0], shape=(len(block_len),), dtype=np.float64)
            )
            rows = int(offsets[i + 1] - offsets[i])
            per_step_pieces.append(
                da.from_delayed(task[1], shape=(rows, *per_step), dtype=step_dtype)
            )
        return da.concatenate(per_sequence_pieces), da.concatenate(per_step_pieces)

    def predict_proba(self, X: Any, lengths: Any = None) -> Any:
        """State posteriors ``p(z_t = k | x)`` of every step, shape (T, n_components)."""
        return self._per_block(X, lengths, HMMFamily.state_posteriors)[1]

    def score_sequences(self, X: Any, lengths: Any = None) -> Any:
        """Log-likelihood ``log p(x_1..T_s)`` of each sequence, shape (S,) (nats)."""
        return self._per_block(X, lengths, HMMFamily.state_posteriors)[0]

    def score(self, X: Any, lengths: Any = None) -> float:
        """Total log-likelihood of all the sequences (nats), as hmmlearn's ``score``."""
        return _total(self.score_sequences(X, lengths))

    def score_samples(self, X: Any, lengths: Any = None) -> tuple[float, Any]:
        """``(total log-likelihood, state posteriors (T, K))``, as hmmlearn."""
        loglik, posteriors = self._per_block(X, lengths, HMMFamily.state_posteriors)
        return _total(loglik), posteriors

    def decode(self, X: Any, lengths: Any = None, algorithm: str = "viterbi") -> tuple[float, Any]:
        """``(log-probability, states (T,))`` of the most likely state sequences.

        ``viterbi``: the jointly most likely path of each sequence, and the sum of their
        log-probabilities; ``map``: the most likely state of each step on its own, and
        the total log-likelihood (as hmmlearn).
        """
        if algorithm not in DECODE_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {DECODE_ALGORITHMS}, got {algorithm!r}")
        if algorithm == "map":
            loglik, posteriors = self._per_block(X, lengths, HMMFamily.state_posteriors)
            return _total(loglik), posteriors.argmax(axis=1)
        log_probs, states = self._per_block(X, lengths, HMMFamily.decode)
        return _total(log_probs), states

    def predict(self, X: Any, lengths: Any = None) -> Any:
        """Most likely state of every step along the Viterbi path, shape (T,), int64."""
        return self._per_block(X, lengths, HMMFamily.decode)[1]

    def _n_parameters(self) -> int:
        return self._family().n_parameters(self.n_components, self.n_features_in_)

    def bic(self, X: Any, lengths: Any = None) -> float:
        """Bayesian information criterion (lower is better), with n = number of steps."""
        n = as_sequences(X, lengths).n_steps
        return -2.0 * self.score(X, lengths) + self._n_parameters() * math.log(n)

    def aic(self, X: Any, lengths: Any = None) -> float:
        """Akaike information criterion (lower is better)."""
        return -2.0 * self.score(X, lengths) + 2.0 * self._n_parameters()

    def sample(
        self, n_samples: int = 1, random_state: Any = None, currstate: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One sequence of ``n_samples`` steps: ``(X (n, D), states (n,))``, as hmmlearn."""
        self._check_fitted()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        rng = np.random.default_rng(
            seed_from(self.random_state if random_state is None else random_state)
        )
        K = self.n_components
        states = np.empty(n_samples, dtype=np.int64)
        cumulative_start = np.cumsum(self.startprob_)
        cumulative_trans = np.cumsum(self.transmat_, axis=1)
        uniforms = rng.random(n_samples)
        state = (
            int(currstate)
            if currstate is not None
            else min(
                int(np.searchsorted(cumulative_start, uniforms[0] * cumulative_start[-1])), K - 1
            )
        )
        states[0] = state
        for t in range(1, n_samples):
            row = cumulative_trans[state]
            state = min(int(np.searchsorted(row, uniforms[t] * row[-1])), K - 1)
            states[t] = state
        family = self._emission_family()
        params = self._emission_params()
        X = np.empty((n_samples, self.n_features_in_))
        for k in range(K):
            where = np.flatnonzero(states == k)
            if where.size:
                X[where] = family.sample_component(params, k, where.size, rng)
        return X, states


def _checked_kernel(kernel, family, params, check: ValueCheck, values, lengths, offset, what):
    check.raise_for(values, offset, what=what)
    return kernel(family, params, values, lengths)


def _total(values: Any) -> float:
    """Sum of a NumPy or dask array, as a float (computed)."""
    total = values.sum()
    return float(total.compute() if isinstance(total, da.Array) else total)


__all__ = ["BaseHMM", "Sequences"]

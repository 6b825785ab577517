"""What every hidden Markov model estimator shares: fit over many sequences, decoding,
state posteriors, scoring and sampling, shaped like hmmlearn's ``BaseHMM``.

A sibling of :class:`dask_em.mixture._base.BaseMixture` on the same estimator base and
fit driver (:mod:`dask_em.estimators.driver`: scan pass, initialization, ``n_init``
restarts, checkpoints); the engine runs the Baum-Welch statistics of
:class:`dask_em.families.hmm.HMMFamily` over blocks of whole sequences
(:mod:`dask_em.sequences`).  A subclass names its emission family and the emission
parameters' fitted attributes.

The surface is hmmlearn's: ``fit(X, lengths)``, ``fit_predict(X, lengths)``, and
``score`` the *total* log-likelihood of all the sequences (a mixture's ``score`` is the
mean per row, as scikit-learn's).  ``lower_bound_`` and ``tol`` are per step.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from dask_em.data import is_lazy, like_input
from dask_em.em import IterationRecord
from dask_em.engine import CACHE_MODES, LOCAL_FIT_BYTES, as_float
from dask_em.estimators import driver
from dask_em.estimators.base import Estimator
from dask_em.estimators.held import HeldParams
from dask_em.estimators.params import Constraint, at_least, check_distribution, integer, one_of
from dask_em.families.base import Params
from dask_em.families.hmm import ESTEP_METHODS, HMMFamily
from dask_em.hmm import parameters
from dask_em.hmm.parameters import Parameter
from dask_em.hmm.prediction import lazy_outputs
from dask_em.hmm.weights import as_sequence_weight
from dask_em.seeds import seed_from
from dask_em.sequences import Sequences, as_sequences, weighted_lengths

DECODE_ALGORITHMS = ("viterbi", "map")


class BaseHMM(Estimator):
    """Base class of dask_em's hidden Markov models (hmmlearn's surface, many sequences).

    Subclasses define ``_emission_family()``, ``_emission_parameters`` (their hmmlearn
    letters, fitted attributes and ``*_init`` names, :mod:`dask_em.hmm.parameters`),
    ``_to_family(name, value)`` (an attribute's value in the family's terms),
    ``_set_emission(params)``, ``_emission_variables()`` and ``_restore_emission()``.
    """

    _model_name = "hmm"
    _sequences = True
    #: A state keeps its parameters even when no step visits it.
    _reseeds_empty_components = False
    #: The emission's parameters (hmmlearn letter, family name, attribute, ``*_init``).
    _emission_parameters: ClassVar[tuple[Parameter, ...]] = ()
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        "n_components": integer(1),
        "tol": at_least(0),
        "max_iter": integer(1),
        "n_init": integer(1),
        "cache": one_of(CACHE_MODES),
        "startprob_prior": at_least(1.0, " (a Dirichlet concentration; 1 is flat)"),
        "transmat_prior": at_least(1.0, " (a Dirichlet concentration; 1 is flat)"),
        "estep": one_of(ESTEP_METHODS),
        "n_samples": integer(1),
    }

    # -- hooks --------------------------------------------------------------------
    def _family(self) -> HMMFamily:
        return HMMFamily(
            self._emission_family(),
            float(self.startprob_prior),
            float(self.transmat_prior),
            self.estep,
            int(self.n_samples),
            name=self._model_name,
            split_sequences=getattr(self, "_split_sequences", False),
        )

    def _value_check(self, fitting: bool = False):  # pragma: no cover - abstract
        raise NotImplementedError

    def _learn_from_scan(self, scan: dict) -> None:
        """Settle what the data decides before initialization (hook)."""

    def _all_missing_message(self, count: int) -> str:
        return (
            f"{count} steps have every feature missing; they contribute no emission term "
            "(the chain still runs through them)"
        )

    def _newton_coordinates(self, n_features: int) -> int:
        return parameters.chain_coordinates(self)  # the emission's: subclasses add theirs

    def _check_init(self, n_features: int) -> None:
        parameters.updated(self)  # ``params`` and ``init_params``: letters the model has
        parameters.init_plan(self)
        K = self.n_components
        what = "sum to 1 (along each row)"
        if self.startprob_init is not None:
            check_distribution("startprob_init", self.startprob_init, (K,), what)
        if self.transmat_init is not None:
            check_distribution("transmat_init", self.transmat_init, (K, K), what)

    # -- initialization -----------------------------------------------------------
    def _initial_params(self, init_pass: Callable, scan: dict, rng: np.random.Generator) -> Params:
        """``*_init`` values where given; for a letter missing from ``init_params``, the
        assigned attribute; otherwise uniform start and transition probabilities (as
        hmmlearn) and emissions from k-means on the scan sample."""
        K = self.n_components
        # drawn before the init pass: every draw of an initialization precedes its pass,
        # so the driver can run the passes of all restarts as one (estimators.driver)
        seed = int(rng.integers(2**63 - 1))
        given = parameters.initial_values(self)
        emission = {p.name: given[p.name] for p in self._emission_parameters}
        computed: Params = {}
        if any(value is None for value in emission.values()):
            computed = init_pass(self._emission_family())
        values = {
            name: computed[name] if value is None else self._to_family(name, value)
            for name, value in emission.items()
        }
        if computed:
            values = self._soften_initial_emission(values, scan)
        emission_params = self._emission_family().make_params(np.full(K, 1.0 / K), **values)
        startprob = given["startprob"] if given["startprob"] is not None else np.full(K, 1 / K)
        transmat = given["transmat"] if given["transmat"] is not None else np.full((K, K), 1 / K)
        return HMMFamily.make_params(startprob, transmat, emission_params, seed=seed)

    def _init_method(self) -> str:
        """How the emissions are initialized (the driver's init pass)."""
        return parameters.init_plan(self)[1]

    def _held_family(self, family: HMMFamily, start: Params) -> HeldParams:
        """``family`` with an M-step that updates only the letters of ``params``."""
        return HeldParams(family, start, functools.partial(parameters.hold, self))

    def _to_family(self, name: str, value: Any) -> np.ndarray:
        """An attribute's (or ``*_init``'s) value in the emission family's terms (hook)."""
        return np.asarray(value, dtype=np.float64)

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
        return parameters.current_params(self)

    def _emission_params(self) -> Params:
        return self._fitted_params()["emission"]

    def _is_fitted(self) -> bool:
        """Fitted, or every parameter assigned or given by ``*_init`` (as hmmlearn)."""
        return hasattr(self, "converged_") or parameters.all_set(self)

    def _check_fitted(self) -> None:
        super()._check_fitted()
        if not hasattr(self, "converged_"):  # parameters set by hand: D from them
            self.n_features_in_ = parameters.n_features(self)

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
        sample_weight: Any = None,
        *,
        storage_options: dict | None = None,
        strict_input: bool = False,
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
        sample_weight : (S,) non-negative weight of each sequence, or None.  An integer
            weight counts as that many copies of its sequence.
        storage_options, strict_input : as :meth:`dask_em.GaussianMixture.fit`.
        checkpoint, resume, callbacks : as :meth:`dask_em.GaussianMixture.fit`; a
            checkpoint is tied to the block layout (the sequence boundaries per block).

        A sequence longer than a block is split into pieces and fitted exactly
        (:mod:`dask_em.families.hmm_split`): each iteration is then two passes, the
        pieces' summaries and the statistics, so each piece is read twice unless the
        data is persisted (``cache``); nothing is kept on the workers between them.
        """
        data = self._fit_data(X, lengths, sample_weight, storage_options, strict_input)
        return self._run_fit(data, checkpoint, resume, callbacks)

    def _fit_data(
        self,
        X: Any,
        lengths: Any = None,
        sample_weight: Any = None,
        storage_options: dict | None = None,
        strict_input: bool = False,
    ) -> driver.FitData:
        """The sequences as the fit driver takes them, checked against this model's
        parameters (see :meth:`fit`), before any cluster work where possible."""
        check = self._value_check(fitting=True)
        in_memory = not is_lazy(X)
        sequences = as_sequences(
            X,
            lengths,
            check_values=None,
            keep_integers=check.keeps_integers,
            storage_options=storage_options,
            strict_input=strict_input,
        )
        n_steps, n_features = sequences.values.shape
        self._check_hyperparameters(n_features)
        if in_memory:  # checked here, before any cluster work; lazy data in the scan pass
            check.raise_for(sequences.values.compute(scheduler="sync"), what="X")
        if n_steps < self.n_components:
            raise ValueError(
                f"expected at least n_components={self.n_components} steps, got {n_steps}"
            )
        self.n_sequences_ = sequences.n_sequences
        self._split_sequences = sequences.split  # the E-step then needs a summary pass
        weights = as_sequence_weight(sample_weight, sequences.n_sequences)
        return driver.FitData(
            sequences.values,
            lengths=sequences.lengths if weights is None else weighted_lengths(sequences, weights),
            local=in_memory and sequences.values.nbytes <= LOCAL_FIT_BYTES,
            check=check,
        )

    def fit_predict(
        self, X: Any, lengths: Any = None, sample_weight: Any = None, **fit_params: Any
    ) -> Any:
        """Fit, then the most likely state of every step (Viterbi), shape (T,)."""
        return self.fit(X, lengths, sample_weight, **fit_params).predict(X, lengths)

    # -- prediction ---------------------------------------------------------------
    def _per_block(self, X: Any, lengths: Any, kernel) -> tuple[Any, Any]:
        """``kernel(family, params, values_block, lengths_block)`` on every block.

        ``kernel`` is :meth:`HMMFamily.state_posteriors` or :meth:`HMMFamily.decode`: it
        returns one array with a row per sequence (S,) and one with a row per step (T, ...).
        Both come back as NumPy arrays for in-memory input, else as lazy dask arrays over
        the same per-block tasks (on ``client`` if set); the per-step one as a DataArray
        for a DataArray X (:func:`dask_em.data.like_input`).
        """
        self._check_fitted()
        family, params, check = self._family(), self._fitted_params(), self._value_check()
        in_memory = not is_lazy(X)
        sequences = as_sequences(X, lengths, check_values=None, keep_integers=True)
        self._check_n_features(sequences.n_features)
        if in_memory:
            values = sequences.values.compute(scheduler="sync")
            check.raise_for(values, what="X")
            per_sequence, per_step = kernel(family, params, values, sequences.lengths_array)
            return per_sequence, like_input(X, per_step, _step_output_name(per_step))
        per_sequence, per_step_values = lazy_outputs(
            sequences,
            kernel,
            family,
            params,
            check,
            name=f"{kernel.__name__}-{self._model_name}",
            client=self.client,
        )
        return per_sequence, like_input(X, per_step_values, _step_output_name(per_step_values))

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
        model = self._fitted_params()
        states = np.empty(n_samples, dtype=np.int64)
        cumulative_start = np.cumsum(model["startprob"])
        cumulative_trans = np.cumsum(model["transmat"], axis=1)
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
        params = model["emission"]
        X = np.empty((n_samples, self.n_features_in_))
        for k in range(K):
            where = np.flatnonzero(states == k)
            if where.size:
                X[where] = family.sample_component(params, k, where.size, rng)
        return X, states


def _step_output_name(per_step: Any) -> str:
    return "state" if np.ndim(per_step) == 1 else "state_probability"


def _total(values: Any) -> float:
    """Sum of a NumPy or dask array, as a float (computed)."""
    return as_float(values.sum())


__all__ = ["BaseHMM", "Sequences"]

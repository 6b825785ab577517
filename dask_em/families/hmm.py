"""Hidden Markov model kernels: Baum-Welch statistics of one block of whole sequences.

Parameters: ``startprob`` (K,), ``transmat`` (K, K) (rows sum to one), ``emission``
(the parameter dict of an emission family: Gaussian, Poisson or categorical, whose
mixing weights are unused) and ``seed`` (the Monte Carlo E-step's random stream).

The statistics of a block (additive across blocks, so any chunking on sequence
boundaries gives the same sums):

    start (K,)      sum over sequences of gamma_1(k)
    trans (K, K)    sum over sequences and steps of xi_t(i, j)
    emission        the emission family's statistics under the weights gamma_t(k)
    loglik          sum over sequences of log p(x_1..T)

M-step (Baum-Welch; MAP under symmetric Dirichlet priors, ``startprob_concentration``
and ``transmat_concentration`` a >= 1, a = 1 flat): ``startprob = (start + a - 1) /
sum``, each row of ``transmat`` likewise from ``trans``; the emission family's own M-step
(and prior) on its statistics.  A row with no counts and a flat prior (a state never
left) becomes uniform.  The objective is ``(loglik + log-prior) / number of steps``.

Missing observations: a step with NaN in a discrete model, or with every feature NaN in
a Gaussian one, has emission density 1 (log 0) in every state; a Gaussian step with
some NaN features uses the marginal density of the others, and its completed moments.

Kernels: with numba (``compiled=True``, the default) the recursions are compiled
(:mod:`dask_em.families.hmm_compiled`), and for diagonal/spherical Gaussian, Poisson and
categorical emissions the exact E-step runs fused with the emission densities and
statistics (:mod:`dask_em.families.hmm_fused`; Gaussian steps with NaN too,
:mod:`dask_em.families.hmm_emissions_missing`); full and tied Gaussians use the emission
family's own densities and ``posterior_stats``.  The
pure-NumPy kernels of :mod:`dask_em.families.hmm_kernels` are the reference and the
fallback.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_em.families import hmm_compiled, hmm_kernels, hmm_split
from dask_em.families.base import Params, Stats, Workspace, rows_per_slice, sliced_stats
from dask_em.families.discrete import safe_log
from dask_em.families.hmm_emissions import fused_emission
from dask_em.families.hmm_fused import fused_block_stats
from dask_em.families.hmm_kernels import Posteriors, TimeMajorLayout
from dask_em.families.hmm_split_sampling import sample_ends
from dask_em.families.jit import HAVE_NUMBA

ESTEP_METHODS = ("exact", "sample")


def dirichlet_rows(counts: np.ndarray, concentration: float) -> np.ndarray:
    """MAP probabilities along the last axis under Dirichlet(concentration); a row with
    nothing in it becomes uniform."""
    numerator = counts + (concentration - 1.0)
    total = numerator.sum(axis=-1, keepdims=True)
    uniform = np.full_like(numerator, 1.0 / numerator.shape[-1])
    return np.divide(numerator, total, out=uniform, where=total > 0)


@dataclass(frozen=True)
class HMMFamily:
    """Baum-Welch kernels over an emission family (see module docstring)."""

    emission: Any
    startprob_concentration: float = 1.0
    transmat_concentration: float = 1.0
    estep: str = "exact"
    n_samples: int = 100
    name: str = "hmm"
    #: Run the compiled kernels (:mod:`dask_em.families.hmm_compiled`,
    #: :mod:`dask_em.families.hmm_emissions`) when numba is available; False runs the
    #: pure-NumPy reference kernels of :mod:`dask_em.families.hmm_kernels`.
    compiled: bool = True
    #: The data hold sequences split across blocks: every E-step then first runs a
    #: summary pass (:meth:`preparation_block`, :mod:`dask_em.families.hmm_split`).
    split_sequences: bool = False

    def __post_init__(self):
        if self.estep not in ESTEP_METHODS:
            raise ValueError(f"estep must be one of {ESTEP_METHODS}, got {self.estep!r}")

    @property
    def kernels(self):
        """The module whose forward_backward, viterbi and sample_paths this family runs."""
        return hmm_compiled if self.compiled and HAVE_NUMBA else hmm_kernels

    # -- parameters ---------------------------------------------------------------
    @staticmethod
    def make_params(
        startprob: np.ndarray, transmat: np.ndarray, emission: Params, seed: int = 0
    ) -> Params:
        return {
            "startprob": np.asarray(startprob, dtype=np.float64),
            "transmat": np.asarray(transmat, dtype=np.float64),
            "emission": emission,
            "seed": int(seed),
        }

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters (for BIC/AIC): start, transitions and emissions."""
        emission = self.emission.n_parameters(n_components, n_features) - (n_components - 1)
        return (n_components - 1) + n_components * (n_components - 1) + emission

    # -- emissions ------------------------------------------------------------------
    def emission_log_prob(self, params: Params, X: np.ndarray) -> np.ndarray:
        """``log p(x_t | k)`` (n, K); missing steps get 0 (module docstring).

        Computed a cache-sized slice of rows at a time, with scratch reused across slices.
        """
        X = np.asarray(X, dtype=np.float64)
        n_components = len(params["startprob"])
        step = rows_per_slice(n_components * max(X.shape[1], 2))
        if len(X) <= step:
            return self._emission_log_prob_slice(params, X, Workspace())
        out = np.empty((len(X), n_components))
        work = Workspace()
        for start in range(0, len(X), step):
            out[start : start + step] = self._emission_log_prob_slice(
                params, X[start : start + step], work
            )
        return out

    def _emission_log_prob_slice(self, params: Params, X: np.ndarray, work: Workspace):
        if self.emission.handles_missing:  # e.g. the Gaussian marginalizes NaN itself
            return self.emission.log_component_prob(params["emission"], X, work)
        missing = np.isnan(X).any(axis=1)
        if not missing.any():
            return self.emission.log_component_prob(params["emission"], X)
        log_b = self.emission.log_component_prob(params["emission"], np.where(np.isnan(X), 0, X))
        log_b[missing] = 0.0
        return log_b

    # -- E-step -------------------------------------------------------------------
    def posteriors(
        self, params: Params, X: np.ndarray, layout: TimeMajorLayout
    ) -> tuple[np.ndarray, Posteriors]:
        """Time-major X (T, D) float64 and the E-step's posteriors for one block."""
        X_tm = np.asarray(X, dtype=np.float64)[layout.perm]
        log_b = self.emission_log_prob(params, X_tm)
        kernels = self.kernels
        if self.estep == "exact":
            return X_tm, kernels.forward_backward(
                layout, log_b, params["startprob"], params["transmat"]
            )
        rng = np.random.default_rng(self._block_seed(params["seed"], X, layout.lengths))
        posteriors = kernels.sample_paths(
            layout, log_b, params["startprob"], params["transmat"], self.n_samples, rng
        )
        return X_tm, posteriors

    @staticmethod
    def _block_seed(seed: int, X: np.ndarray, lengths: np.ndarray) -> np.random.SeedSequence:
        """A stream for this iteration and this block (blocks differ in their data)."""
        digest = zlib.crc32(np.ascontiguousarray(lengths).view(np.uint8))
        digest = zlib.crc32(np.ascontiguousarray(X).view(np.uint8), digest)
        return np.random.SeedSequence([int(seed), int(digest), len(X)])

    # -- sequences split across blocks (dask_em.families.hmm_split) -------------------
    @property
    def needs_preparation(self) -> bool:
        """Whether an E-step needs the summary pass first (:mod:`dask_em.preparation`)."""
        return self.split_sequences

    def preparation_block(self, params: Params, X: np.ndarray, lengths: np.ndarray) -> dict:
        """Round 1 on one block: the sum-product summary of a piece ({} for other blocks)."""
        return hmm_split.summary_block(self, params, X, lengths, "sum")

    def merge_preparation(self, *parts: dict) -> dict:
        return hmm_split.merge_summaries(*parts)

    def prepared(self, params: Params, merged: dict) -> Params:
        """``params`` with the boundary messages of every piece (round 2, the scan), and
        for the Monte Carlo E-step the paths' states at the pieces' ends."""
        pieces = hmm_split.sum_scan(merged, params["startprob"])
        if self.estep == "sample":
            pieces["ends"] = sample_ends(merged, pieces["messages"], self.n_samples, params["seed"])
        return {**params, "pieces": pieces}

    def block_stats(self, params: Params, X: np.ndarray, lengths: np.ndarray) -> Stats:
        """Baum-Welch statistics of one block: ``X`` (T, D), ``lengths`` (S,) summing to T,
        or a table with fields ``length`` and ``weight`` (weighted sequences), or a
        ``SEGMENT`` table (:mod:`dask_em.sequence_layout`; a piece of a split sequence
        needs ``params`` from :meth:`prepared`)."""
        if hmm_split.is_segments(lengths):
            row = hmm_split.piece_of(lengths)
            if row is not None:
                return hmm_split.piece_block_stats(self, params, X, row)
            if np.all(lengths["weight"] == 1.0):
                return self.block_stats(params, X, np.array(lengths["length"]))
            return self._weighted_block_stats(params, X, lengths["length"], lengths["weight"])
        if getattr(lengths, "dtype", None) is not None and lengths.dtype.names:
            return self._weighted_block_stats(params, X, lengths["length"], lengths["weight"])
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != len(X):
            raise ValueError(
                f"a block has {len(X)} steps but its sequence lengths add up to "
                f"{int(lengths.sum())}; blocks must hold whole sequences"
            )
        fused = fused_emission(self.emission)
        if fused is not None and self.estep == "exact" and self.kernels is hmm_compiled:
            result = fused_block_stats(fused, params, X, lengths)
            if result is not None:
                loglik, start, trans, emission = result
                return self._stats(X, lengths, loglik, start, trans, emission, params)
        layout = TimeMajorLayout.from_lengths(lengths)
        X_tm, post = self.posteriors(params, X, layout)
        emission = sliced_stats(
            lambda X_slice, gamma_slice: self.emission.posterior_stats(
                params["emission"], X_slice, gamma_slice
            ),
            self.emission.merge,
            X_tm,
            post.gamma,
            rows_per_slice=rows_per_slice(len(params["startprob"]) * max(X.shape[1], 2)),
        )
        loglik = float(post.loglik.sum())
        return self._stats(X, lengths, loglik, post.start, post.trans, emission, params)

    @staticmethod
    def _stats(X, lengths, loglik, start, trans, emission, params) -> Stats:
        return {
            "weight": float(len(X)),
            "n_rows": len(X),
            "n_sequences": len(lengths),
            "loglik": loglik,
            "start": start,
            "trans": trans,
            "emission": emission,
            "seed": params["seed"],
        }

    def _weighted_block_stats(self, params, X, lengths, weights) -> Stats:
        """Statistics with sequence s counted ``weights[s]`` times: the E-step runs once
        per distinct weight u (on the sequences weighing u), and u scales their start and
        transition counts, log-likelihood, steps and state posteriors (so the emission
        statistics)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        K = len(params["startprob"])
        steps, posteriors = [X[:0].astype(np.float64)], [np.zeros((0, K))]
        start, trans, loglik, weight = np.zeros(K), np.zeros((K, K)), 0.0, 0.0
        for u in np.unique(weights[weights > 0]).tolist():  # Python floats: the sums stay so
            pick = weights == u
            layout = TimeMajorLayout.from_lengths(lengths[pick])
            X_tm, post = self.posteriors(params, X[np.repeat(pick, lengths)], layout)
            start += u * post.start
            trans += u * post.trans
            loglik += u * float(post.loglik.sum())
            weight += u * layout.n_steps
            steps.append(X_tm)
            posteriors.append(u * post.gamma)
        X_all = np.concatenate(steps)
        emission = sliced_stats(
            lambda X_slice, gamma_slice: self.emission.posterior_stats(
                params["emission"], X_slice, gamma_slice
            ),
            self.emission.merge,
            X_all,
            np.concatenate(posteriors),
            rows_per_slice=rows_per_slice(K * max(X.shape[1], 2)),
        )
        return {
            "weight": weight,
            "n_rows": len(X),
            "n_sequences": len(lengths),
            "loglik": loglik,
            "start": start,
            "trans": trans,
            "emission": emission,
            "seed": params["seed"],
        }

    def merge(self, *parts: Stats) -> Stats:
        out = dict(parts[0])
        for part in parts[1:]:
            for key in ("weight", "n_rows", "n_sequences", "loglik", "start", "trans"):
                out[key] = out[key] + part[key]
            out["emission"] = self.emission.merge(out["emission"], part["emission"])
        return out

    # -- M-step and objective -----------------------------------------------------
    def m_step(self, stats: Stats) -> Params:
        """Baum-Welch / MAP update (module docstring).

        The emission's mixing weights, which nothing reads, are set uniform, as the
        estimators build them from ``*_init`` values, hand-set attributes and a
        checkpoint: a resumed fit then continues from exactly the parameters it saved
        (the Gaussian's ``center``, which shifts each block, derives from them).
        """
        startprob = dirichlet_rows(stats["start"], self.startprob_concentration)
        emission = self.emission.m_step(stats["emission"])
        uniform = np.full(len(startprob), 1.0 / len(startprob))
        return self.make_params(
            startprob,
            dirichlet_rows(stats["trans"], self.transmat_concentration),
            self.emission.with_weights(emission, uniform),
            seed=int(stats["seed"]) + 1,
        )

    def log_prior(self, params: Params) -> float:
        """Dirichlet log-priors of start and transition probabilities, plus the emission
        family's (up to constants; 0 when flat)."""
        total = self.emission.log_prior(params["emission"])
        for concentration, probabilities in (
            (self.startprob_concentration, params["startprob"]),
            (self.transmat_concentration, params["transmat"]),
        ):
            if concentration != 1.0:
                total += float((concentration - 1.0) * safe_log(probabilities).sum())
        return total

    def objective(self, stats: Stats, params: Params) -> float:
        """``(log-likelihood + log-prior) / number of steps`` at ``params``."""
        return (stats["loglik"] + self.log_prior(params)) / stats["weight"]

    # -- prediction kernels (block order in, block order out) ---------------------
    def state_posteriors(self, params: Params, X: np.ndarray, lengths: np.ndarray):
        """``(log-likelihood of each sequence (S,), gamma (T, K))`` in block order (for a
        piece of a split sequence: its sequence's log-likelihood (1,), with ``params``
        from :meth:`prepared`)."""
        if hmm_split.is_segments(lengths):
            row = hmm_split.piece_of(lengths)
            if row is not None:
                return hmm_split.piece_state_posteriors(_exact(self), params, X, row)
            lengths = np.array(lengths["length"])
        layout = TimeMajorLayout.from_lengths(lengths)
        _, post = _exact(self).posteriors(params, X, layout)
        loglik = np.empty_like(post.loglik)
        loglik[layout.order] = post.loglik
        return loglik, layout.to_block_order(post.gamma)

    def decode(self, params: Params, X: np.ndarray, lengths: np.ndarray):
        """Viterbi: ``(log-probability of each best path (S,), states (T,))``, block order
        (for a piece of a split sequence: its sequence's (1,), with ``params`` from
        :func:`dask_em.families.hmm_split.max_scan` under ``"pieces"``)."""
        if hmm_split.is_segments(lengths):
            row = hmm_split.piece_of(lengths)
            if row is not None:
                return hmm_split.piece_decode(self, params, X, row)
            lengths = np.array(lengths["length"])
        layout = TimeMajorLayout.from_lengths(lengths)
        log_b = self.emission_log_prob(params, np.asarray(X, dtype=np.float64)[layout.perm])
        log_prob, states = self.kernels.viterbi(
            layout, log_b, params["startprob"], params["transmat"]
        )
        ordered = np.empty_like(log_prob)
        ordered[layout.order] = log_prob
        return ordered, layout.to_block_order(states)


def _exact(family: HMMFamily) -> HMMFamily:
    """The same family with the exact E-step (prediction never samples)."""
    return family if family.estep == "exact" else dataclasses.replace(family, estep="exact")

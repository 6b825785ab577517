"""Newton's method on the EM map (``accelerate="newton"``,
:mod:`dask_em.acceleration.newton`): the EM map's Jacobian measured by forward
differences in the pass, candidate steps from EM's to Newton's, the best taken.

Shown here: the same optimum as plain EM and SQUAREM in far fewer passes; accepted
objectives never decrease; the measured Jacobian is EM's rate matrix (its largest
eigenvalue is the rate plain EM crawls at); a run resumed from its state (driver, or an
estimator's checkpoint) equals the uninterrupted one bit for bit; restarts in lockstep
equal each alone; a model with too many coordinates is refused before any pass where
its estimator can count them without the data, at its start otherwise."""

from __future__ import annotations

import itertools
from dataclasses import replace

import dask.array as da
import numpy as np
import pytest
import zarr

from dask_em import (
    CategoricalMixture,
    GaussianHMM,
    GaussianMixture,
    PoissonMixture,
    em,
    sweep,
)
from dask_em.acceleration import EMNewton, PlainEM, family_evaluate, parameter_map, run_em
from dask_em.acceleration.newton import NO_CENTRE
from dask_em.families.gaussian import COVARIANCE_TYPES, GaussianFamily
from dask_em.families.hmm import HMMFamily
from dask_em.shared_passes import pass_each
from tests.test_accelerated_fits import overlapping_data, stopped_and_resumed
from tests.test_acceleration import (
    assert_accepted_never_decrease,
    categorical_mixture,
    gaussian_with_missing,
    hmm_with_priors,
    overlapping_gmm,
    squarem,
    sticky_hmm,
)
from tests.test_lockstep import blocks_map_reduce
from tests.test_speculation import overlapping_blocks_and_starts


def newton(family, start, **keywords):
    return EMNewton(start, lambda points: parameter_map(family, points), **keywords)


def largest_difference(a: dict, b: dict) -> float:
    """The largest relative difference over the floating-point arrays of two parameter
    dicts (nested for the HMM's emission)."""
    worst = 0.0
    for name, value in b.items():
        if isinstance(value, dict):
            worst = max(worst, largest_difference(a[name], value))
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            worst = max(worst, float(np.max(np.abs(a[name] - value)) / np.max(np.abs(value))))
    return worst


def relabelled(params: dict, order: tuple[int, ...]) -> dict:
    """``params`` with the components (states) in ``order``: every array whose leading
    axis has one entry a component, and the HMM's transition matrix on both axes."""
    k = len(order)
    out = {}
    for name, value in params.items():
        if isinstance(value, dict):
            out[name] = relabelled(value, order)
        elif isinstance(value, np.ndarray) and value.ndim and value.shape[0] == k:
            value = value[list(order)]
            out[name] = value[:, list(order)] if name == "transmat" else value
        else:
            out[name] = value
    return out


def difference_up_to_labels(a: dict, b: dict) -> float:
    """:func:`largest_difference` for the best matching of the components: a run may
    end at the optimum with its components in another order (the same likelihood)."""
    k = len(b["startprob"] if "startprob" in b else b["weights"])
    return min(largest_difference(relabelled(a, o), b) for o in itertools.permutations(range(k)))


PROBLEMS = {"overlapping gmm": overlapping_gmm, "categorical": categorical_mixture}
PROBLEMS["sticky hmm"] = sticky_hmm


@pytest.mark.parametrize("problem", PROBLEMS)
def test_newton_reaches_the_optimum_in_a_fraction_of_plain_ems_passes(problem):
    family, pass_stats, start = PROBLEMS[problem]()
    evaluate = family_evaluate(family, pass_stats)
    optimum = run_em(squarem(family, start, tol=1e-15), evaluate, max_passes=5000).params
    plain = run_em(PlainEM(start, tol=1e-8), evaluate, max_passes=100_000)
    # a change of the objective below 1e-10 still leaves 1e-5 in the parameters on the
    # overlapping mixture; Newton's next step goes from there to 2e-9
    fast, e_steps = newton_run(newton(family, start, tol=1e-12), evaluate)
    assert fast.converged
    # Newton's steps may carry a run across to the same optimum with its components in
    # another order (the categorical mixture here)
    assert difference_up_to_labels(fast.params, optimum) < 1e-6
    assert fast.passes * 5 < plain.passes
    objectives = [p.objective for p in fast.history]
    # candidates are taken only above F(x); EM steps never fall, up to rounding
    assert all(b >= a - 1e-13 * abs(a) for a, b in itertools.pairwise(objectives))
    assert sum(p.kind == "extrapolated" for p in fast.history) > fast.passes // 2
    # E-steps a pass: the EM point and the differences (one per coordinate, but one per
    # probability row fewer, and none for the HMM's emission weights), then also the
    # candidates (at most 7)
    mapping = parameter_map(family, [start])
    skipped = {row[-1] for row in mapping.simplex_rows()} | set(mapping.unread_positions())
    measured = mapping.size - len(skipped)
    assert e_steps[0] == 1 + measured
    assert all(1 + measured < n <= 1 + 7 + measured for n in e_steps[1:-1])
    assert fast.companions() == []  # converged


def newton_run(driver, evaluate, max_passes=1000):
    """:func:`run_em` for a Newton driver, counting each pass's E-steps."""
    e_steps = []
    while not driver.converged and driver.passes < max_passes:
        point, companions = driver.ask(), driver.companions()
        e_steps.append(1 + len(companions))
        driver.tell(*evaluate(point), companions=[evaluate(p) for p in companions])
    return driver, e_steps


def test_the_measured_jacobian_is_ems_rate_matrix():
    """Near the optimum, plain EM's steps shrink by the largest eigenvalue of the EM
    map's Jacobian (Dempster, Laird and Rubin 1977, sec. 3); the Jacobian the driver
    measures by differences must show the same rate."""
    family, pass_stats, start = categorical_mixture()
    evaluate = family_evaluate(family, pass_stats)
    plain = PlainEM(start, tol=0.0)
    points = []
    while plain.passes < 400:  # the asymptotic regime, far from rounding (steps ~1e-5)
        point = plain.ask()
        plain.tell(*evaluate(point))
        points.append(point)
    mapping = parameter_map(family, points[-3:])
    u = [mapping.to_vector(p) for p in points[-3:]]
    rate = np.linalg.norm(u[2] - u[1]) / np.linalg.norm(u[1] - u[0])
    driver = newton(family, points[-1], tol=0.0)
    objective, image, stats = evaluate(driver.ask())
    driver.tell(objective, image, stats, companions=[evaluate(p) for p in driver.companions()])
    jacobian = driver.state.arrays["jacobian"]
    assert jacobian.shape == (mapping.size, mapping.size)
    largest = max(abs(np.linalg.eigvals(jacobian)))
    assert 0.5 < rate < 1.0
    assert largest == pytest.approx(rate, rel=1e-4)


def test_a_resumed_driver_proposes_what_the_uninterrupted_one_does():
    family, pass_stats, start = sticky_hmm()
    evaluate = family_evaluate(family, pass_stats)
    whole = run_em(newton(family, start, tol=1e-12), evaluate, max_passes=60)
    for stop in (1, 3, 6):
        first = run_em(newton(family, start, tol=1e-12), evaluate, max_passes=stop)
        state = first.state
        assert state.arrays["jacobian"].shape[0] > 0
        rest = run_em(newton(family, None, tol=1e-12, resume=state), evaluate, max_passes=60)
        assert [p.as_dict() for p in rest.history] == [p.as_dict() for p in whole.history]
        for name in ("startprob", "transmat"):
            np.testing.assert_array_equal(rest.params[name], whole.params[name])


def test_a_reseeded_image_drops_the_jacobian():
    """A repaired image is no EM image: the next pass measures the map again and tries
    no step from the old Jacobian."""
    family, pass_stats, start = overlapping_gmm()
    evaluate = family_evaluate(family, pass_stats)
    repaired = []

    def repair(image, stats):
        if len(repaired) == 2:
            repaired.append(True)
            return image, (0,)
        repaired.append(False)
        return image, ()

    driver = newton(family, start, tol=1e-10, repair=repair)
    for _ in range(3):
        point = driver.ask()
        driver.tell(*evaluate(point), companions=[evaluate(p) for p in driver.companions()])
    assert driver.history[-1].reseeded == (0,)
    assert driver.state.arrays["jacobian"].size == 0
    assert driver.state.arrays["centre_damping"][0] == NO_CENTRE
    mapping = parameter_map(family, [driver.ask()])
    differences = mapping.size - len(mapping.simplex_rows())
    assert len(driver.companions()) == differences  # no candidate
    run_em(driver, evaluate, max_passes=500)
    assert driver.converged


def test_tell_needs_every_companion():
    family, pass_stats, start = overlapping_gmm()
    driver = newton(family, start, tol=1e-8)
    with pytest.raises(ValueError, match="every point of companions"):
        driver.tell(*family_evaluate(family, pass_stats)(start))


def unreadable(n_rows: int, n_features: int) -> da.Array:
    """A dask array whose every block raises when read: a fit that touches it fails
    with RuntimeError, one refused before any pass with its own error."""

    def refuse(block):
        raise RuntimeError("the data was read")

    zeros = da.zeros((n_rows, n_features), chunks=(n_rows // 2, n_features))
    return zeros.map_blocks(refuse, dtype=np.float64)


def test_a_model_with_too_many_coordinates_is_refused_before_any_pass():
    model = GaussianMixture(6, accelerate="newton", random_state=0)  # 48 + 216 (+ 5)
    with pytest.raises(
        ValueError, match=r"accelerate='newton'.*n_components=6.*has 264 or more \(at"
    ):
        model.fit(unreadable(200, 8))


def test_a_sweep_refuses_its_oversized_candidate_before_any_pass():
    with pytest.raises(ValueError, match=r"GaussianMixture\(.*n_components=6.*has 264 or more"):
        sweep(GaussianMixture(accelerate="newton"), unreadable(200, 8), n_components=[2, 6])


def test_a_model_the_count_before_the_data_misses_is_refused_at_its_start():
    """A model whose differenced coordinates depend on the data (a categorical mixture:
    the symbols) is still refused, once its start is known (after the init pass)."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 6, size=(300, 12)).astype(float)
    model = CategoricalMixture(5, accelerate="newton", random_state=0)  # up to 5 * 12 * 5 + 4
    # (less one for each probability the init pass left at exactly zero)
    with pytest.raises(ValueError, match=r"accelerate='newton'.*this model has 3\d\d \(at"):
        model.fit(X)


def driver_coordinates(family, start) -> int:
    """The coordinates an EMNewton driver differences at ``start``."""
    driver = newton(family, start, tol=1e-8, max_coordinates=10**6)
    return len(driver._plan.differences.columns)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_the_count_before_the_data_is_the_drivers(covariance_type):
    """What a Gaussian model is refused for before any pass is what its driver
    differences at the start: exactly, for an HMM (its chain from the start's
    probabilities, exact zeros of a left-right chain included); less the K - 1 weights,
    for a mixture (they may start at zero)."""
    rng = np.random.default_rng(1)
    K, D = 3, 4
    covariances = {
        "full": np.stack([np.eye(D) * 1.5] * K),
        "tied": np.eye(D) * 1.5,
        "diag": np.full((K, D), 1.5),
        "spherical": np.full(K, 1.5),
    }[covariance_type]
    family = GaussianFamily(covariance_type)
    start = family.make_params(np.full(K, 1 / K), rng.normal(size=(K, D)), covariances=covariances)
    mixture = GaussianMixture(K, covariance_type=covariance_type, accelerate="newton")
    early = mixture._newton_coordinates(D)
    assert early == driver_coordinates(family, start) - (K - 1)
    assert GaussianMixture(K, params="weights")._newton_coordinates(D) == 0
    left_right = np.array([[0.8, 0.2, 0.0], [0.0, 0.7, 0.3], [0.0, 0.0, 1.0]])
    for transmat, startprob in [
        (None, None),  # uniform, as the fit starts without them
        (np.full((K, K), 0.1) + 0.7 * np.eye(K), np.array([0.2, 0.3, 0.5])),
        (left_right, np.array([1.0, 0.0, 0.0])),  # 0 + (1 + 1 + 0)
    ]:
        hmm = GaussianHMM(
            K,
            covariance_type=covariance_type,
            accelerate="newton",
            startprob_init=startprob,
            transmat_init=transmat,
        )
        hmm_start = HMMFamily.make_params(
            np.full(K, 1 / K) if startprob is None else startprob,
            np.full((K, K), 1 / K) if transmat is None else transmat,
            start,
        )
        assert hmm._newton_coordinates(D) == driver_coordinates(HMMFamily(family), hmm_start)
    held = dict(covariance_type=covariance_type, accelerate="newton")
    assert GaussianHMM(K, params="st", **held)._newton_coordinates(D) == 2 + 6
    assert GaussianHMM(K, params="mc", **held)._newton_coordinates(D) == early


def test_an_hmm_too_large_with_its_chain_is_refused_before_any_pass():
    """16 states on one feature: 32 emission coordinates, 15 + 240 of the chain."""
    model = GaussianHMM(16, covariance_type="diag", accelerate="newton")
    with pytest.raises(ValueError, match=r"GaussianHMM\(.*has 287 or more \(at most 256"):
        model.fit(unreadable(400, 1), lengths=[200, 200])


def test_held_parameters_cost_no_differences():
    """With the covariances and weights held (``params="means"``) only the 48 means
    move: their differences are all a pass measures, so the model is not refused, and
    the held fields stay as given, bit for bit."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(6, 8))
    X = centres[rng.choice(6, size=1200)] + rng.standard_normal((1200, 8))
    given = dict(weights_init=np.full(6, 1 / 6), precisions_init=np.stack([np.eye(8)] * 6))
    params = dict(params="means", means_init=centres + 0.5, tol=1e-10, random_state=0, **given)
    fast = GaussianMixture(6, **params, accelerate="newton", max_iter=200).fit(X)
    plain = GaussianMixture(6, **params, max_iter=5000).fit(X)
    assert fast.converged_ and fast.n_passes_ < plain.n_passes_
    np.testing.assert_array_equal(fast.covariances_, np.stack([np.eye(8)] * 6))
    np.testing.assert_array_equal(fast.weights_, given["weights_init"])
    np.testing.assert_allclose(fast.means_, plain.means_, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")
def test_newton_fits_reach_the_hasselblad_optimum_through_the_estimators():
    days = np.array([162, 267, 271, 185, 111, 61, 27, 8, 3, 1], dtype=np.float64)
    X = np.arange(10.0)[:, None]
    params = dict(weights_init=[0.3, 0.7], rates_init=[[1.0], [2.5]])
    optimum = PoissonMixture(2, **params, tol=1e-15, max_iter=5000, accelerate="squarem")
    optimum.fit(X, sample_weight=days)
    plain = PoissonMixture(2, **params, tol=1e-10, max_iter=100_000).fit(X, sample_weight=days)
    fast = PoissonMixture(2, **params, tol=1e-10, max_iter=200, accelerate="newton")
    fast.fit(X, sample_weight=days)
    assert plain.converged_ and fast.converged_
    np.testing.assert_allclose(fast.rates_, optimum.rates_, rtol=1e-5)
    np.testing.assert_allclose(fast.weights_, optimum.weights_, rtol=1e-5)
    # plain EM stops on the flat approach, further away, after hundreds of passes
    assert np.max(np.abs(plain.rates_ - optimum.rates_)) > 1e-5
    assert fast.n_passes_ * 50 < plain.n_passes_
    # Hasselblad's optimum (Varadhan and Roland 2008, table 2)
    np.testing.assert_allclose(np.sort(fast.rates_.ravel()), [1.256, 2.663], atol=1e-3)
    assert [h["passes"] for h in fast.history_] == list(range(1, fast.n_iter_ + 1))


def test_an_hmm_over_split_sequences_prepares_every_point_of_a_pass_at_once():
    """Sequences split across blocks need a preliminary pass before each E-step
    (dask_em.preparation): a Newton pass prepares its EM point, candidates and
    differences in one preliminary pass, and reaches what the run over the whole
    sequence reaches, in as many passes."""
    from tests.test_hmm_split import _blocks, _family_case

    X, emission, params = _family_case("diag", steps=3000)
    X = X[~np.isnan(X).any(axis=1)]
    results, stages = {}, []
    for split in (True, False):
        family = HMMFamily(emission, split_sequences=split)
        blocks = _blocks(X, 500) if split else [(X, np.array([len(X)]))]
        if split:
            assert len(blocks) > 4

        def map_reduce(block_func, merge, shared, *, stage, blocks=blocks, split=split):
            if split:
                stages.append(stage)
            return merge(*(block_func(shared, *block) for block in blocks))

        run = em.EMRun(family, params, max_iter=300, tol=1e-9, accelerate="newton")
        (results[split],) = em.lockstep(map_reduce, [run])
    split, whole = results[True], results[False]
    assert split.converged and whole.converged
    assert stages.count("summary") == stages.count("estep") == split.passes
    assert split.passes == whole.passes
    assert split.lower_bound == pytest.approx(whole.lower_bound, rel=1e-9)
    assert largest_difference(split.params, whole.params) < 1e-6


def test_runs_in_lockstep_each_equal_the_run_alone():
    """Newton runs beside SQUAREM and plain EM in one lockstep pass (each block read
    once for every run's points): each run's result as alone, bit for bit."""
    family, blocks, starts = overlapping_blocks_and_starts(3)
    methods = ["newton", "squarem", "newton"]

    def runs(which=range(3)):
        return [
            em.EMRun(family, starts[i], max_iter=2000, tol=1e-10, accelerate=methods[i])
            for i in which
        ]

    passes: list = []
    together = em.lockstep(blocks_map_reduce(blocks, passes), runs())
    assert len(passes) == max(r.passes for r in together)
    for i, result in enumerate(together):
        (alone,) = em.lockstep(blocks_map_reduce(blocks, []), runs([i]))
        assert result.converged and alone.converged
        assert [r.as_dict() | {"seconds": 0} for r in result.history] == [
            r.as_dict() | {"seconds": 0} for r in alone.history
        ]
        for name in alone.params:
            np.testing.assert_array_equal(result.params[name], alone.params[name])
    assert together[0].passes < together[1].passes


@pytest.mark.slow
def test_a_stopped_newton_fit_resumes_to_the_uninterrupted_result(tmp_path):
    X, w = overlapping_data(4, n=400)
    params = dict(n_components=2, tol=1e-9, max_iter=300, random_state=2, accelerate="newton")
    reference = GaussianMixture(**params).fit(X, sample_weight=w)
    assert reference.converged_
    moves = [h["move"] for h in reference.history_]
    assert "extrapolated" in moves
    # after the start (only a Jacobian), after a Newton-type step, and later
    stops = (1, moves.index("extrapolated") + 1, len(moves) - 2)
    for resumed in stopped_and_resumed(tmp_path, params, X, w, reference, stops):
        assert resumed.n_passes_ == reference.n_passes_  # the scan rides in its first pass


@pytest.mark.slow
def test_newton_over_a_streamed_store_on_the_cluster(client, tmp_path):
    """Each block read once a pass, however many points the pass evaluates; the fit
    reaches what the one over the same rows in this process reaches."""
    X, _ = overlapping_data(2, n=1200)
    store = tmp_path / "x.zarr"
    zarr.create_array(store, shape=X.shape, chunks=(300, 2), dtype="f8")[:] = X
    params = dict(n_components=3, tol=1e-10, max_iter=300, random_state=0, accelerate="newton")
    streamed = GaussianMixture(**params, cache="stream").fit(da.from_zarr(str(store)))
    local = GaussianMixture(**params).fit(X)
    plain = GaussianMixture(**(params | {"accelerate": None, "max_iter": 20_000})).fit(X)
    assert streamed.converged_ and streamed.n_passes_ * 4 < plain.n_passes_
    assert streamed.bytes_read_ == streamed.n_passes_ * X.size * 8
    assert streamed.n_passes_ == local.n_passes_
    # blocks of 300 rows sum in another order than one block: rounding that the
    # differences of the Jacobian (h = 1e-6) magnify to about 1e-10 in it, and that
    # leaves the two converged fits some 1e-8 apart
    np.testing.assert_allclose(streamed.means_, local.means_, rtol=1e-6)
    assert abs(streamed.lower_bound_ - local.lower_bound_) < 1e-10


def test_a_sweep_with_newton_picks_the_true_number_of_components():
    rng = np.random.default_rng(7)
    means = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    X = means[rng.choice(3, size=900)] + rng.standard_normal((900, 2))
    search = sweep(
        GaussianMixture(random_state=0, accelerate="newton", tol=1e-8),
        X,
        n_components=range(1, 5),
    )
    assert search.best_params_["n_components"] == 3
    assert all(search.results_["converged"])


@pytest.mark.parametrize("command", [["fit", "gmm"], ["sweep", "gmm"]])
def test_the_command_line_offers_newton(command):
    from dask_em.cli import build_parser

    k = "2" if command[0] == "fit" else "1:3"
    argv = [*command, "data.zarr", "-k", k, "--out", "out", "--accelerate", "newton"]
    assert build_parser().parse_args(argv).accelerate == "newton"


def test_a_companion_whose_m_step_fails_is_passed_over():
    """A trial point far out may leave a component without weight, and its M-step may
    fail: the loop reports it as (-inf, None), the driver never takes it, and a
    Jacobian that needs its image is not measured."""
    family, pass_stats, start = overlapping_gmm()
    evaluate = family_evaluate(family, pass_stats)
    driver = newton(family, start, tol=1e-10)
    run_em(driver, evaluate, max_passes=3)
    assert len(driver.companions()) > parameter_map(family, [start]).size  # candidates
    objective, image, stats = evaluate(driver.ask())
    results = [evaluate(p) for p in driver.companions()]
    failed = [(-np.inf, None, s) for _, _, s in results]
    failed[0] = (objective + 1.0, None, results[0][2])  # a higher objective, no image
    before = driver.state.arrays["jacobian"].copy()
    point = driver.tell(objective, image, stats, companions=failed)
    assert point.kind == "em" and point.objective == objective
    # not measured: the last J, carried by the secant update to the point taken
    after = driver.state.arrays["jacobian"]
    assert after.shape == before.shape and not np.array_equal(after, before)
    assert driver.companions()  # candidates from it in the next pass

    class FailingMStep(type(family)):
        def m_step(self, stats):
            raise np.linalg.LinAlgError("a covariance is not positive definite")

    run = em.EMRun(FailingMStep("full"), start, max_iter=10, tol=1e-8)
    objective, image, stats = run._companion(pass_stats(start), start)
    assert objective == -np.inf and image is None


def planned_driver(tol):
    """A Newton driver three passes into the overlapping mixture (a Jacobian known, so
    its next pass has candidates), the results at its next points, and how many of
    those are candidates."""
    family, pass_stats, start = overlapping_gmm()
    evaluate = family_evaluate(family, pass_stats)
    driver, _ = newton_run(newton(family, start, tol=tol), evaluate, max_passes=3)
    mapping = parameter_map(family, [driver.ask()])
    n_candidates = len(driver.companions()) - (mapping.size - len(mapping.simplex_rows()))
    assert n_candidates > 0
    main = evaluate(driver.ask())
    return driver, main, [evaluate(p) for p in driver.companions()], n_candidates


def with_objective(result, value):
    return (value, *result[1:])


def test_a_candidate_below_the_em_point_is_not_taken():
    driver, main, companions, k = planned_driver(tol=1e-12)
    last = driver.lower_bound
    assert main[0] > last
    # every candidate between L(x) and L(F(x)): above the last point, below EM's
    companions[:k] = [with_objective(r, (last + main[0]) / 2) for r in companions[:k]]
    point = driver.tell(*main, companions=companions)
    assert point.kind == "em" and point.objective == main[0] and not driver.converged


def test_convergence_needs_both_the_em_step_and_the_best_candidate_below_tol():
    tol = 1e-6
    driver, main, companions, k = planned_driver(tol)
    last = driver.lower_bound
    crawling = with_objective(main, last + tol / 10)  # EM's step: below tol
    moving = [with_objective(r, last + 10 * tol) for r in companions[:k]]
    point = driver.tell(*crawling, companions=moving + companions[k:])
    assert point.kind == "extrapolated" and not driver.converged

    driver, main, companions, k = planned_driver(tol)
    last = driver.lower_bound
    near = [with_objective(r, last + tol / 2) for r in companions[:k]]
    point = driver.tell(*with_objective(main, last + tol / 10), companions=near + companions[k:])
    assert point.kind == "em" and driver.converged and driver.companions() == []


def test_a_far_candidate_whose_m_step_fails_does_not_stop_a_lockstep_fit():
    """The loop's companion guard (EMRun.tell_points): a trial point with one
    component's means 1e10 away leaves it no weight, and an M-step that refuses an
    empty component (as the HMM's does: "ill-defined empirical covariance") raises
    there.  The fit goes on and converges where the run converges without that point."""

    class StrictGaussian(GaussianFamily):
        def m_step(self, stats):
            if np.any(stats["nk"] == 0.0):
                raise ValueError("ill-defined empirical covariance: a component is empty")
            return super().m_step(stats)

    _, blocks, (start,) = overlapping_blocks_and_starts(1)
    family = StrictGaussian("full")

    def newton_run_of(start):
        return em.EMRun(family, start, max_iter=500, tol=1e-10, accelerate="newton")

    (alone,) = em.lockstep(blocks_map_reduce(blocks, []), [newton_run_of(start)])
    run = newton_run_of(start)
    map_reduce = blocks_map_reduce(blocks, [])
    while run.passes < 4:
        run.tell_points(pass_each(map_reduce, [(family, p) for p in run.points()]))
    plan = run.driver._plan  # replace its first candidate by one far out
    first = plan.candidates[0]
    means = first.point["means"].copy()
    means[0] += 1e10
    far = replace(first, point=dict(first.point, means=means))
    run.driver._plan = replace(plan, candidates=(far, *plan.candidates[1:]))
    with pytest.raises(ValueError, match="ill-defined"):  # what the guard catches
        family.m_step(family.block_stats(far.point, np.concatenate(blocks)))
    (result,) = em.lockstep(map_reduce, [run])
    assert result.converged
    assert largest_difference(result.params, alone.params) < 1e-6


@pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")
def test_a_probability_that_reaches_zero_is_held_and_newton_goes_on():
    """A symbol absent from one feature: its probabilities become exactly 0 in the first
    M-step and stay there (held out of the coordinates, so the map shrinks); the first
    Jacobian, measured with them free, is dropped, and the next pass measures one."""
    from dask_em import CategoricalMixture

    rng = np.random.default_rng(5)
    table = rng.dirichlet(np.full(4, 2.0), size=(2, 3))
    labels = rng.choice(2, size=2000, p=[0.6, 0.4])
    X = (rng.random((2000, 3, 1)) > np.cumsum(table[labels], axis=2)).sum(axis=2).clip(0, 3)
    X[X[:, 0] == 3, 0] = 2  # no symbol 3 in the first feature
    start = dict(weights_init=[0.5, 0.5], probabilities_init=rng.dirichlet(np.full(4, 5.0), (2, 3)))
    params = dict(n_components=2, n_symbols=4, **start)
    # a flat optimum: plain EM is 2e-2 away after 3000 passes; SQUAREM gets within 1e-6
    optimum = CategoricalMixture(**params, tol=0.0, max_iter=3000, accelerate="squarem").fit(X)
    fast = CategoricalMixture(**params, tol=1e-12, max_iter=300, accelerate="newton").fit(X)
    assert fast.converged_ and fast.n_passes_ < 100
    assert np.all(fast.probabilities_[:, 0, 3] == 0.0)
    np.testing.assert_allclose(fast.probabilities_, optimum.probabilities_, atol=1e-5)
    assert fast.lower_bound_ >= optimum.lower_bound_ - 1e-12


def test_a_run_resumed_right_after_a_reseed_continues_as_the_run_does():
    family, pass_stats, start = overlapping_gmm()
    evaluate = family_evaluate(family, pass_stats)
    seen = []

    def repair(image, stats):
        seen.append(None)
        return image, (1,) if len(seen) == 4 else ()

    first = newton(family, start, tol=1e-10, repair=repair)
    newton_run(first, evaluate, max_passes=4)
    assert first.history[-1].reseeded == (1,) and first.state.arrays["jacobian"].size == 0
    state = first.state
    newton_run(first, evaluate)
    resumed = newton(family, None, tol=1e-10, repair=lambda image, stats: (image, ()), resume=state)
    newton_run(resumed, evaluate)
    assert [p.as_dict() for p in resumed.history] == [p.as_dict() for p in first.history]


# ---------------------------------------------------------------- every model and prior
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_newton_with_priors_weights_and_missing_values_reaches_the_optimum(covariance_type):
    """Every covariance type, with priors on every parameter, row weights and 10% of
    the entries missing: the penalized objective never falls and the optimum is
    SQUAREM's, in far fewer passes than plain EM."""
    family, pass_stats, start = gaussian_with_missing(covariance_type, np.random.default_rng(5))
    evaluate = family_evaluate(family, pass_stats)
    optimum = run_em(squarem(family, start, tol=1e-15), evaluate, max_passes=5000).params
    plain = run_em(PlainEM(start, tol=1e-8), evaluate, max_passes=100_000)
    fast, _ = newton_run(newton(family, start, tol=1e-13), evaluate, max_passes=300)
    assert fast.converged and fast.passes < plain.passes
    assert_accepted_never_decrease(fast.history)
    assert difference_up_to_labels(fast.params, optimum) < 1e-5


def test_no_candidate_with_a_covariance_singular_in_float64_is_taken():
    """On this start (another draw of the problem above) a candidate's covariance had
    correlations within rounding of a singular matrix: it rounded to an indefinite one,
    the "objective" there was +5.9e11, and the run took it and then fell back to -5.16.
    Such points are infeasible now (coordinates.MAX_CHOLESKY_CONDITION)."""
    family, pass_stats, start = gaussian_with_missing("full", np.random.default_rng(100))
    evaluate = family_evaluate(family, pass_stats)
    driver = run_em(newton(family, start, tol=1e-13), evaluate, max_passes=300)
    assert driver.converged
    assert_accepted_never_decrease(driver.history)
    assert max(p.objective for p in driver.history) < 0.0


@pytest.mark.parametrize("kind", ["poisson", "categorical", "bernoulli", "full"])
def test_newton_hmms_with_priors_reach_the_optimum(kind):
    """Every HMM emission, with Dirichlet priors on the chain: as above."""
    family, start, X, lengths = hmm_with_priors(kind, np.random.default_rng(7))
    evaluate = family_evaluate(family, lambda p: family.block_stats(p, X, lengths))
    optimum = run_em(squarem(family, start, tol=1e-15), evaluate, max_passes=5000)
    fast, _ = newton_run(newton(family, start, tol=1e-13), evaluate, max_passes=300)
    assert fast.converged
    assert_accepted_never_decrease(fast.history)
    assert fast.lower_bound >= optimum.lower_bound - 1e-10
    assert difference_up_to_labels(fast.params, optimum.params) < 1e-5


@pytest.mark.parametrize("kind", ["diag", "poisson", "categorical"])
def test_the_hmms_emission_weights_are_not_differenced_since_em_does_not_read_them(kind):
    """Moving an HMM's emission weights changes neither the objective nor any field of
    EM's image but the weights themselves (beyond rounding: the Gaussian kernels centre
    the data on weights @ means): their columns of J are 0, so Newton spends no E-step
    on them (20 of the 27 coordinates of this 3-state two-feature HMM)."""
    family, start, X, lengths = hmm_with_priors(kind, np.random.default_rng(7))
    evaluate = family_evaluate(family, lambda p: family.block_stats(p, X, lengths))
    mapping = parameter_map(family, [start])
    unread = mapping.unread_positions()
    assert len(unread) == 3  # the emission's K weights
    u = mapping.to_vector(start)
    objective, image, _ = evaluate(mapping.to_params(u))
    for j in unread:
        moved = u.copy()
        moved[j] += 0.3
        moved_objective, moved_image, _ = evaluate(mapping.to_params(moved))
        exact = kind != "diag"
        assert abs(moved_objective - objective) <= (0.0 if exact else 1e-14 * abs(objective))
        moved_image["emission"]["weights"] = image["emission"]["weights"]
        assert largest_difference(moved_image, image) <= (0.0 if exact else 1e-13)
    driver = newton(family, start, tol=1e-8)
    columns = set(driver._plan.differences.columns.tolist())
    assert not columns & set(unread.tolist())
    if kind == "diag":
        assert (mapping.size, len(columns)) == (27, 20)  # 2 + 6 + 6 + 6: not the weights

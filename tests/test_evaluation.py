"""Tests of l2l_tf.evaluation: grids, statistics, tuning, comparisons."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import evaluation, networks, problems, unroll


def test_lr_grid_default_is_half_decades_from_1e_4_to_10():
    want = [1e-4, 10**-3.5, 1e-3, 10**-2.5, 1e-2, 10**-1.5, 0.1, 10**-0.5,
            1.0, 10**0.5, 10.0]
    grid = evaluation.lr_grid()
    assert len(grid) == 11
    np.testing.assert_allclose(grid, want, rtol=1e-12, atol=0)
    assert all(isinstance(lr, float) for lr in grid)


@pytest.mark.parametrize("lo, hi, want", [
    (1e-2, 1.0, [1e-2, 10**-1.5, 0.1, 10**-0.5, 1.0]),
    (0.02, 0.5, [10**-1.5, 0.1, 10**-0.5]),
    (0.1, 0.1, [0.1]),
])
def test_lr_grid_bounds(lo, hi, want):
    np.testing.assert_allclose(evaluation.lr_grid(lo, hi), want, rtol=1e-12)


def test_seed_ranges_do_not_overlap():
    groups = [set(evaluation.seeds(b, 1000)) for b in (
        evaluation.TRAIN_SEED_BASE, evaluation.VALIDATION_SEED_BASE,
        evaluation.TUNING_SEED_BASE, evaluation.TEST_SEED_BASE)]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == 4000


def test_summarize_against_numpy():
    curves = np.array([[1.0, 2.0, 0.5], [3.0, 4.0, 0.5], [5.0, 9.0, 0.5]])
    stats = evaluation.summarize(curves)
    np.testing.assert_allclose(stats["mean"], [3.0, 5.0, 0.5])
    # Hand-computed: sample stddevs 2, sqrt(13), 0; over sqrt(3).
    np.testing.assert_allclose(
        stats["stderr"], [2.0 / math.sqrt(3), math.sqrt(13.0 / 3.0), 0.0],
        rtol=1e-12)
    np.testing.assert_allclose(
        stats["stderr"], curves.std(axis=0, ddof=1) / math.sqrt(3))


def test_summarize_maps_nan_and_inf_to_inf():
    curves = np.array([[1.0, np.nan, np.inf], [2.0, 3.0, 1.0]])
    stats = evaluation.summarize(curves)
    assert stats["mean"][0] == 1.5
    assert stats["mean"][1] == np.inf and stats["mean"][2] == np.inf
    assert stats["stderr"][0] == pytest.approx(0.5)
    assert stats["stderr"][1] == np.inf and stats["stderr"][2] == np.inf


def test_summarize_single_seed_has_zero_stderr():
    stats = evaluation.summarize(np.array([[4.0, 2.0]]))
    np.testing.assert_array_equal(stats["mean"], [4.0, 2.0])
    np.testing.assert_array_equal(stats["stderr"], [0.0, 0.0])


# ---------------------------------------------------------------------------
# Tuning, checked against plain numpy gradient descent.

_TUNE_LRS = [0.03, 0.1, 0.13, 0.16, 0.2, 10.0]
_TUNE_HORIZONS = [1, 5, 20]


def _numpy_sgd_curves(problem, lr, seed_list, num_steps):
    """Mean-over-functions loss at steps 0..num_steps of float64 numpy SGD."""
    curves = []
    for seed in seed_list:
        (theta,), (w, y) = problem.init(seed)
        theta, w, y = (x.numpy().astype(np.float64) for x in (theta, w, y))
        curve = []
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(num_steps + 1):
                residual = np.einsum("kij,kj->ki", w, theta) - y
                curve.append(np.mean(np.sum(residual**2, axis=1)))
                theta = theta - lr * 2.0 * np.einsum("kji,kj->ki", w,
                                                     residual)
        curves.append(curve)
    return np.array(curves)


def test_tune_picks_the_best_learning_rate_per_horizon():
    problem = problems.Quadratic(dim=2, num_functions=4)
    tuning_seeds = evaluation.seeds(evaluation.TUNING_SEED_BASE, 3)
    best = evaluation.tune(networks.SGD(), problem, _TUNE_HORIZONS,
                           _TUNE_LRS, tuning_seeds)
    assert sorted(best) == _TUNE_HORIZONS

    means = {lr: _numpy_sgd_curves(problem, lr, tuning_seeds,
                                   max(_TUNE_HORIZONS)).mean(axis=0)
             for lr in _TUNE_LRS}
    for h in _TUNE_HORIZONS:
        ranked = sorted(_TUNE_LRS, key=lambda lr, h=h: means[lr][h])
        # The numpy answer is clear-cut (no float32-vs-float64 coin flip).
        assert means[ranked[1]][h] > 1.02 * means[ranked[0]][h]
        assert best[h] == ranked[0], (h, {lr: means[lr][h] for lr in ranked})
    # The best learning rate grows with the horizon on this family, so a
    # single choice for all horizons would fail this test.
    assert len(set(best.values())) == 3
    assert 10.0 not in best.values()


def test_run_curves_match_numpy_sgd_and_diverged_runs_are_not_finite():
    problem = problems.Quadratic(dim=2, num_functions=4)
    seed_list = [5, 6]
    run_fn = unroll.make_run_fn(networks.SGD(), problem, 20)
    for lr in (0.03, 0.13):
        got = evaluation.run_curves(
            run_fn, {"learning_rate": tf.constant(lr)}, seed_list)
        assert got.shape == (2, 21)
        np.testing.assert_allclose(
            got, _numpy_sgd_curves(problem, lr, seed_list, 20), rtol=1e-4)
    diverged = evaluation.run_curves(
        run_fn, {"learning_rate": tf.constant(10.0)}, seed_list)
    assert not np.any(np.isfinite(diverged[:, -1]))
    assert run_fn.experimental_get_tracing_count() == 1


# ---------------------------------------------------------------------------
# Comparisons and tables, on hand-made results.


def _entry(per_horizon):
    return {"per_horizon": {
        str(h): {"final_mean": m, "final_stderr": s, "learning_rate": lr}
        for h, (m, s, lr) in per_horizon.items()}}


def _results():
    return {
        "horizons": [10, 100],
        "optimizers": {
            # stderr 3 against 4: the difference has stderr exactly 5.
            "learned": dict(_entry({10: (10.0, 3.0, 1.0),
                                    100: (1.0, 3.0, 1.0)}), kind="learned"),
            "sgd": dict(_entry({10: (15.0, 4.0, 0.1), 100: (6.001, 4.0, 0.3)}),
                        kind="baseline"),
            "adam": dict(_entry({10: (12.0, 0.0, 0.0316),
                                 100: (0.5, 0.0, 3.16)}), kind="baseline"),
        },
    }


def test_compare_beats_exactly_when_margin_exceeds_stderr():
    out = evaluation.compare(_results())
    assert sorted(out) == ["learned/adam/10", "learned/adam/100",
                           "learned/sgd/10", "learned/sgd/100"]
    # margin 5 == stderr 5: not a win (strictly greater is required).
    assert out["learned/sgd/10"]["margin"] == 5.0
    assert out["learned/sgd/10"]["stderr"] == 5.0
    assert out["learned/sgd/10"]["beats"] is False
    assert out["learned/sgd/10"]["ratio"] == pytest.approx(10.0 / 15.0)
    # margin 5.001 > 5: a win.
    assert out["learned/sgd/100"]["margin"] == pytest.approx(5.001)
    assert out["learned/sgd/100"]["beats"] is True
    # stderr 3 against 0: margin 2 < 3 loses; margin -0.5 loses.
    assert out["learned/adam/10"]["stderr"] == 3.0
    assert out["learned/adam/10"]["beats"] is False
    assert out["learned/adam/100"]["margin"] == pytest.approx(-0.5)
    assert out["learned/adam/100"]["beats"] is False
    assert out["learned/adam/100"]["ratio"] == pytest.approx(2.0)


def test_compare_uses_the_sqrt_of_summed_variances():
    results = _results()
    opts = results["optimizers"]
    opts["learned"]["per_horizon"]["10"]["final_stderr"] = 0.6
    opts["sgd"]["per_horizon"]["10"].update(final_mean=10.9, final_stderr=0.8)
    # margin 0.9 < sqrt(0.36 + 0.64) = 1, though > each stderr alone.
    c = evaluation.compare(results)["learned/sgd/10"]
    assert c["stderr"] == pytest.approx(1.0)
    assert c["beats"] is False
    opts["sgd"]["per_horizon"]["10"]["final_mean"] = 11.1
    assert evaluation.compare(results)["learned/sgd/10"]["beats"] is True


def test_format_table_lists_optimizers_and_learning_rates():
    results = _results()
    results["comparisons"] = evaluation.compare(results)
    table = evaluation.format_table(results)
    lines = table.splitlines()
    assert "step 10" in lines[0] and "step 100" in lines[0]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert sorted(rows) == ["adam", "learned", "sgd"]
    assert "(lr 0.1)" in rows["sgd"] and "(lr 0.3)" in rows["sgd"]
    assert "(lr 0.0316)" in rows["adam"] and "(lr 3.16)" in rows["adam"]
    assert "lr" not in rows["learned"]
    assert "10.0000 +- 3.0000" in rows["learned"]
    assert "6.0010 +- 4.0000" in rows["sgd"]
    assert "learned vs sgd at step 100: beats" in table
    assert "learned vs sgd at step 10: does not beat" in table


# ---------------------------------------------------------------------------
# The whole protocol on a tiny problem.


def test_evaluate_end_to_end_is_consistent():
    problem = problems.Quadratic(dim=2, num_functions=3)
    rule = networks.CoordinatewiseLSTM(hidden_sizes=(2,))
    phi = rule.init_phi(seed=0)
    lrs = [0.01, 0.1]
    results = evaluation.evaluate(
        problem, None, {"learned": (rule, phi)}, horizons=[4, 2],
        num_seeds=2, num_tuning_seeds=2, baselines=("sgd",),
        learning_rates=lrs)
    json.dumps(results)  # JSON-ready.
    assert results["horizons"] == [2, 4]
    report_seeds = evaluation.seeds(evaluation.TEST_SEED_BASE, 2)

    learned = results["optimizers"]["learned"]
    want = evaluation.run_curves(
        unroll.make_run_fn(rule, problem, 4),
        {k: tf.constant(v) for k, v in phi.items()}, report_seeds)
    np.testing.assert_allclose(learned["curves"], want, rtol=1e-6)
    assert learned["per_horizon"]["4"]["final_mean"] == pytest.approx(
        want[:, 4].mean(), rel=1e-6)

    sgd = results["optimizers"]["sgd"]
    best = evaluation.tune(networks.SGD(), problem, [2, 4], lrs,
                           evaluation.seeds(evaluation.TUNING_SEED_BASE, 2))
    for h in (2, 4):
        entry = sgd["per_horizon"][str(h)]
        assert entry["learning_rate"] == best[h]
        curves = np.array(sgd["curves_by_lr"][repr(best[h])])
        sgd_want = _numpy_sgd_curves(problem, best[h], report_seeds, 4)
        np.testing.assert_allclose(curves, sgd_want, rtol=1e-4)
        assert entry["final_mean"] == pytest.approx(curves[:, h].mean())
        assert entry["final_stderr"] == pytest.approx(
            curves[:, h].std(ddof=1) / math.sqrt(2))
    assert sorted(results["comparisons"]) == ["learned/sgd/2",
                                              "learned/sgd/4"]


def test_format_markdown_rows_hold_the_final_figures():
    results = {"horizons": [2], "optimizers": {
        "learned": {"kind": "learned", "per_horizon": {"2": {
            "learning_rate": 1.0, "final_mean": 0.12345,
            "final_stderr": 0.01}}},
        "adam": {"kind": "baseline", "per_horizon": {"2": {
            "learning_rate": 0.0316227766, "final_mean": 0.5,
            "final_stderr": 0.02}}}}}
    lines = evaluation.format_markdown(results).splitlines()
    assert lines[0] == "| optimizer | step 2 | lr |"
    assert lines[2] == "| learned | 0.1235 ± 0.0100 | as trained |"
    assert lines[3] == "| adam | 0.5000 ± 0.0200 | 0.0316 |"

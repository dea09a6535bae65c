"""Tests of the generalization study and of the figures."""

import json
import os

import matplotlib.image
import numpy as np
import pytest

from configs import mnist_generalization
from l2l_tf import evaluation, figures, generalization


class _Evaluated(Exception):
    pass


def _no_evaluation(*args, **kwargs):
    raise _Evaluated(args, kwargs)


def _results(learned, baselines, horizons=(2,)):
    """A results dict shaped as evaluation.evaluate's: finals per horizon."""
    opts = {"learned": {"kind": "learned", "mean": [3.0, 2.0, learned[0]],
                        "stderr": [0.0, 0.1, learned[1]], "per_horizon": {
                            str(h): {"learning_rate": 1.0,
                                     "final_mean": learned[0],
                                     "final_stderr": learned[1]}
                            for h in horizons}}}
    for name, (lr, mean, se) in baselines.items():
        per = {str(h): {"learning_rate": lr, "final_mean": mean,
                        "final_stderr": se, "mean": [3.0, 2.5, mean],
                        "stderr": [0.0, 0.1, se]} for h in horizons}
        opts[name] = {"kind": "baseline", "per_horizon": per,
                      "mean": [3.0, 2.5, mean], "stderr": [0.0, 0.1, se]}
    return {"horizons": list(horizons), "optimizers": opts}


def test_summarize_picks_the_best_baseline_and_its_ratio():
    results = _results((0.5, 0.03), {"sgd": (0.1, 1.0, 0.05),
                                     "adam": (0.01, 0.8, 0.04)})
    s = generalization.summarize(results)["2"]
    assert s["best_baseline"] == "adam" and s["best_learning_rate"] == 0.01
    assert s["ratio"] == pytest.approx(0.5 / 0.8)
    assert s["beats_all"]  # 0.3 > sqrt(0.03^2 + 0.04^2) = 0.05.
    close = generalization.summarize(
        _results((0.77, 0.03), {"adam": (0.01, 0.8, 0.04)}))["2"]
    assert not close["beats_all"]  # 0.03 < 0.05.


def test_variant_config_overrides_only_known_fields():
    config = mnist_generalization.get_config()
    v = generalization.variant_config(config, {"hidden_sizes": [40, 40]},
                                      horizons=(100, 200), num_seeds=3)
    assert v.problem_kwargs.hidden_sizes == (40, 40)
    assert v.evaluation.horizons == (100, 200) and v.evaluation.num_seeds == 3
    assert "study" not in v
    assert config.problem_kwargs.hidden_sizes == (20,)  # Not mutated.
    with pytest.raises(ValueError, match=r"problem_kwargs.hidden_units"):
        generalization.variant_config(config, {"hidden_units": 40})


def test_the_shipped_study_plans_every_paper_variant_and_the_grid():
    jobs = generalization.plan(mnist_generalization.get_config())
    names = {j["name"] for j in jobs}
    assert {"base", "steps_200", "hidden_40", "two_layers", "relu"} <= names
    assert sum(j["cell"] is not None for j in jobs) == 4 * 3
    by_name = {j["name"]: j["config"] for j in jobs}
    assert by_name["relu"].problem_kwargs.activation == "relu"
    assert by_name["steps_200"].evaluation.horizons == (100, 200)
    assert by_name["grid_40x3"].problem_kwargs.hidden_sizes == (40, 40, 40)
    assert by_name["grid_40x3"].evaluation.num_seeds == 5


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.study.variants.relu.problem_kwargs.update(
        {"activation": "swish"}), r"relu.*activation"),
    (lambda c: setattr(c.study, "weights", "no_such_weights"),
     r"no_such_weights"),
    (lambda c: setattr(c.study.grid, "hidden_layers", ()),
     r"hidden_layers"),
])
def test_a_bad_study_fails_before_any_evaluation(edit, match, monkeypatch,
                                                 tmp_path):
    config = mnist_generalization.get_config()
    edit(config)
    monkeypatch.setattr(evaluation, "evaluate_config", _no_evaluation)
    with pytest.raises(ValueError, match=match):
        generalization.run_study(config, str(tmp_path))
    assert not os.listdir(tmp_path)


def _tiny_study():
    config = mnist_generalization.get_config()
    config.evaluation.horizons = (3,)
    config.evaluation.num_seeds = 2
    config.evaluation.num_tuning_seeds = 2
    config.evaluation.baselines = ("sgd", "adam")
    config.problem_kwargs.batch_size = 16
    config.study.variants = {"relu": {"problem_kwargs": {
        "activation": "relu"}}}
    config.study.grid.hidden_units = (5,)
    config.study.grid.hidden_layers = (1, 2)
    config.study.grid.horizon = 3
    config.study.grid.num_seeds = 2
    config.study.grid.num_tuning_seeds = 2
    return config


def test_a_tiny_study_writes_results_figures_and_resumes(tmp_path,
                                                         monkeypatch):
    config = _tiny_study()
    summary = generalization.run_study(config, str(tmp_path))
    assert set(summary["variants"]) == {"relu", "grid_5x1", "grid_5x2"}
    with open(tmp_path / "grid_5x2" / "evaluation.json") as f:
        results = json.load(f)
    # The cell's summary is its own evaluation's numbers.
    s = summary["variants"]["grid_5x2"]["per_horizon"]["3"]
    learned = results["optimizers"]["learned"]["per_horizon"]["3"]
    assert s["learned"] == learned["final_mean"]
    best = min(("sgd", "adam"), key=lambda n: results["optimizers"][n][
        "per_horizon"]["3"]["final_mean"])
    assert s["best_baseline"] == best
    assert summary["grid"]["ratio"][1][0] == pytest.approx(s["ratio"])
    image = matplotlib.image.imread(tmp_path / "grid.png")
    assert image.ndim == 3 and image.shape[0] > 50
    assert (tmp_path / "relu" / "curves_3.png").stat().st_size > 1000
    with open(tmp_path / "study.json") as f:
        assert json.load(f) == json.loads(json.dumps(summary))

    # A rerun reuses every finished variant: no evaluation runs again ...
    monkeypatch.setattr(evaluation, "evaluate_config", _no_evaluation)
    assert generalization.run_study(config, str(tmp_path)) == summary
    # ... but a changed variant is evaluated anew.
    config.study.variants.relu.problem_kwargs.activation = "tanh"
    with pytest.raises(_Evaluated):
        generalization.run_study(config, str(tmp_path))


def test_loss_curves_draws_a_png_and_checks_the_horizon(tmp_path):
    results = _results((0.5, 0.03), {"adam": (0.01, 0.8, 0.04)})
    path = figures.loss_curves(results, str(tmp_path / "c.png"), title="t")
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (288, 400)  # 5 x 3.6 inches at 80 dpi.
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    with pytest.raises(ValueError, match=r"horizon.*Received: horizon=7"):
        figures.loss_curves(results, str(tmp_path / "d.png"), horizon=7)
    assert not (tmp_path / "d.png").exists()


def test_heatmap_rejects_a_misshapen_matrix(tmp_path):
    with pytest.raises(ValueError, match=r"\[2, 3\].*\(3, 2\)"):
        figures.heatmap(np.ones((3, 2)), [1, 2], [1, 2, 3],
                        str(tmp_path / "h.png"))
    figures.heatmap([[0.5, 1.0, np.inf], [2.0, 1.0, 1.0]], [1, 2], [1, 2, 3],
                    str(tmp_path / "h.png"))
    assert matplotlib.image.imread(tmp_path / "h.png").ndim == 3

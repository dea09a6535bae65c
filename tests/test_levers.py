"""The meta-training levers of issue 6, each against hand-computed values:
the log meta-loss, the run-length curriculum, random scaling, validation on
several horizons, the divergence criterion and the tuning grid field."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from configs import mnist as mnist_config
from configs import mnist_improved as improved_config
from configs import mnist_long as long_config
from l2l_tf import evaluation, meta, networks, problems, saved_model, unroll
from tests.test_meta import tiny_quadratic_config



class _Bowl(problems.Problem):
    """f(theta) = sum_i a_i (theta_i - 1)^2 with a = (1, 2, 3), theta_0 = 0."""

    a = np.array([1.0, 2.0, 3.0])

    def param_shapes(self):
        return [(3,)]

    def init(self, seed):
        del seed
        return [tf.zeros([3], tf.float32)], ()

    def loss(self, params, task, batch):
        value = tf.reduce_sum(self.a * (params[0] - 1.0) ** 2)
        return value, value

    def eval_loss(self, params, task):
        return self.loss(params, task, ())[0]


# -- the log meta-loss --------------------------------------------------------


def test_log_meta_loss_sums_the_logs_of_each_steps_loss():
    """SGD on the bowl: theta_t = 1 - (1 - 2 a lr)^t, by hand."""
    problem, lr, steps = _Bowl(), 0.1, 4
    params, task = problem.init(0)
    phi = {"learning_rate": tf.constant(lr, tf.float32)}
    rule = networks.SGD()
    factor = 1.0 - 2.0 * _Bowl.a * lr
    f = [np.sum(_Bowl.a * factor ** (2 * t)) for t in range(1, steps + 1)]
    total, _, _ = unroll.unroll(rule, phi, problem, params, (), task, 0,
                                steps, unroll.META_LOSSES["log_mean"])
    np.testing.assert_allclose(float(total), np.sum(np.log(f)), rtol=1e-5)
    plain, _, _ = unroll.unroll(rule, phi, problem, params, (), task, 0,
                                steps, unroll.META_LOSSES["mean"])
    np.testing.assert_allclose(float(plain), np.sum(f), rtol=1e-5)


def test_meta_trainer_steps_on_the_configured_meta_loss(tmp_path):
    """The meta-step's loss is (1/T) sum_t log f(theta_t) of the same unroll,
    and its meta-gradient is that mean's gradient."""
    config = tiny_quadratic_config(meta_loss="log_mean")
    trainer = meta.MetaTrainer(config, str(tmp_path))
    params, state, task = trainer.draw(0)
    phi = {n: tf.constant(v) for n, v in trainer.phi_numpy().items()}
    with tf.GradientTape() as tape:
        tape.watch(phi)
        total, _, _ = unroll.unroll(
            trainer.rule, phi, trainer.problem, params[0], state[0], task[0],
            0, 5, unroll.META_LOSSES["log_mean"])
        want = total / 5
    want_grad = unroll.flatten(tape.gradient(want, [phi[n] for n in
                                                     trainer.names]))
    loss, _, _, norm, _ = trainer._meta_step(params, state, task,
                                             tf.constant(0),
                                             tf.constant(1e-3))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(norm), float(tf.norm(want_grad)),
                               rtol=1e-4)
    plain = unroll.unroll(trainer.rule, phi, trainer.problem, params[0],
                          state[0], task[0], 0, 5)[0] / 5
    assert float(plain) != pytest.approx(float(loss))


# -- the curriculum -----------------------------------------------------------


def test_run_position_follows_the_curriculum():
    # Runs of 10 steps in unrolls of 5 (2 a run), from iteration 4 runs of 20
    # (4 a run), from iteration 12 runs of 10 again.
    config = tiny_quadratic_config(curriculum=((4, 20), (12, 10)))
    config.meta.num_iterations = 16
    config.checkpoint_every = config.eval_every = 4
    meta.validate_config(config)
    stages = meta.run_stages(config)
    got = [meta.run_position(stages, i)[:2] for i in range(16)]
    want = [(0, 0), (0, 1), (1, 0), (1, 1),                  # 10 steps
            (2, 0), (2, 1), (2, 2), (2, 3),                  # 20 steps
            (3, 0), (3, 1), (3, 2), (3, 3),
            (4, 0), (4, 1), (5, 0), (5, 1)]                  # 10 again
    assert got == want
    assert [meta.run_position(stages, i)[2].run_length
            for i in (3, 4, 11, 12)] == [10, 20, 20, 10]
    # No curriculum: divmod by the unrolls per run, as before it existed.
    plain = meta.run_stages(tiny_quadratic_config())
    assert [meta.run_position(plain, i)[:2] for i in range(5)] == [
        divmod(i, 2) for i in range(5)]


def test_meta_training_switches_run_length_at_the_curriculum_start(tmp_path):
    config = tiny_quadratic_config(curriculum=((4, 20),))
    config.meta.num_iterations = 12
    config.checkpoint_every = config.eval_every = 4
    trainer = meta.MetaTrainer(config, str(tmp_path))
    draws, steps = [], []
    real_draw, real_step = trainer.draw, trainer._meta_step

    def draw(run):
        draws.append((int(trainer.iteration.numpy()), run))
        return real_draw(run)

    def step(params, state, task, step0, lr):
        steps.append(int(step0))
        return real_step(params, state, task, step0, lr)

    trainer.draw, trainer._meta_step = draw, step
    trainer.train()
    # A new optimizee at 0 and 2 (10 steps), then at 4 and 8 (20 steps).
    assert draws == [(0, 0), (2, 1), (4, 2), (8, 3)]
    assert steps == [0, 5, 0, 5, 0, 5, 10, 15, 0, 5, 10, 15]


def test_resume_inside_the_second_curriculum_stage_is_exact(tmp_path):
    tf.config.experimental.enable_op_determinism()
    try:
        def config():
            c = tiny_quadratic_config(curriculum=((4, 20),))
            c.meta.num_iterations = 12
            c.checkpoint_every = c.eval_every = 4
            return c

        straight = meta.MetaTrainer(config(), str(tmp_path / "a"))
        straight.train()
        meta.MetaTrainer(config(), str(tmp_path / "b")).train(until=8)
        resumed = meta.MetaTrainer(config(), str(tmp_path / "b"))
        assert resumed.train().iterations == 12
        for name, value in straight.phi_numpy().items():
            np.testing.assert_allclose(resumed.phi_numpy()[name], value,
                                       rtol=1e-6)
    finally:
        tf_config.disable_op_determinism()


@pytest.mark.parametrize("curriculum,message", [
    (((3, 20),), "fall where a run of the previous stage starts"),
    (((4, 12),), "multiples of `meta.unroll_length`"),
    (((0, 20),), "increasing starts"),
    (((4, 20, 1),), "entries must be pairs"),
    (((2, 20),), "meta.curriculum start` must be a multiple of 4"),
])
def test_invalid_curriculum_raises(curriculum, message):
    config = tiny_quadratic_config(curriculum=curriculum)
    config.meta.num_iterations = config.checkpoint_every = 8
    config.eval_every = 8
    with pytest.raises(ValueError, match=message):
        meta.validate_config(config)


def test_checkpoints_must_fall_where_every_stage_starts_a_run():
    config = tiny_quadratic_config(curriculum=((4, 20),))  # 2, then 4 a run.
    config.meta.num_iterations = 12
    config.eval_every = 4
    config.checkpoint_every = 6
    with pytest.raises(ValueError, match="checkpoint_every` must be a "
                       "multiple of 4.*Received: checkpoint_every=6"):
        meta.validate_config(config)


# -- random scaling -----------------------------------------------------------


def test_randomly_scaled_problem_at_hand_computed_points():
    inner = _Bowl()
    scaled = problems.RandomlyScaled(inner, param_range=4.0, loss_range=10.0)
    x0, task = scaled.init(7)
    _, c, s = task
    c, s = c[0].numpy().astype(np.float64), float(s)
    assert np.all((c >= 0.25) & (c <= 4.0)) and 0.1 <= s <= 10.0
    assert len(set(np.round(c, 6))) == 3  # One factor a coordinate.
    # The run starts where the inner one does: c * x_0 = theta_0 = 0.
    np.testing.assert_allclose(x0[0].numpy(), 0.0)
    x = tf.constant([0.5, -1.0, 2.0], tf.float32)
    theta = c * x.numpy()
    f = np.sum(_Bowl.a * (theta - 1.0) ** 2)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss, reported = scaled.loss([x], task, scaled.batch(task, 0))
    np.testing.assert_allclose(float(loss), s * f, rtol=1e-5)
    np.testing.assert_allclose(float(reported), f, rtol=1e-5)
    np.testing.assert_allclose(float(scaled.eval_loss([x], task)), f,
                               rtol=1e-5)
    # The optimizer sees s * c * f'(c x).
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(),
                               s * c * 2.0 * _Bowl.a * (theta - 1.0),
                               rtol=1e-5)


def test_random_scales_are_seeded_and_log_uniform():
    inner = problems.MLP(np.zeros((4, 50), np.float32),
                         np.zeros(4, np.int32), hidden_sizes=(20,),
                         num_classes=2)  # 1,062 coordinates.
    scaled = problems.RandomlyScaled(inner, param_range=math.e,
                                     loss_range=1.0)
    _, (_, c1, s1) = scaled.init(3)
    _, (_, c2, _) = scaled.init(3)
    _, (_, c3, _) = scaled.init(4)
    np.testing.assert_array_equal(c1[0].numpy(), c2[0].numpy())
    assert not np.allclose(c1[0].numpy(), c3[0].numpy())
    assert float(s1) == 1.0  # loss_range 1: no loss scaling.
    logs = np.log(np.concatenate([t.numpy().ravel() for t in c1]))
    assert logs.min() >= -1.0 and logs.max() <= 1.0
    # log c ~ U(-1, 1): mean 0, standard deviation 1 / sqrt(3).
    assert abs(logs.mean()) < 0.06
    assert logs.std() == pytest.approx(1 / math.sqrt(3), abs=0.03)
    assert scaled.param_names() == inner.param_names()
    assert scaled.num_params == inner.num_params


def test_meta_trainer_scales_training_optimizees_only(tmp_path):
    config = tiny_quadratic_config(param_scale_range=3.0,
                                   loss_scale_range=2.0)
    trainer = meta.MetaTrainer(config, str(tmp_path))
    assert isinstance(trainer.problem, problems.RandomlyScaled)
    assert trainer.problem.param_range == 3.0
    assert not isinstance(trainer.val_problem, problems.RandomlyScaled)
    plain = meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path / "p"))
    assert not isinstance(plain.problem, problems.RandomlyScaled)
    assert trainer.train().iterations == 10
    with pytest.raises(ValueError, match="param_scale_range` must be a "
                       "number >= 1.*0.5"):
        meta.validate_config(tiny_quadratic_config(param_scale_range=0.5))


# -- validation on several horizons -------------------------------------------


def test_validation_on_several_horizons_is_the_geometric_mean(tmp_path):
    config = tiny_quadratic_config()
    config.validation.horizons = (4, 10)
    trainer = meta.MetaTrainer(config, str(tmp_path))
    curves = evaluation.run_curves(
        unroll.make_run_fn(trainer.rule, trainer.val_problem, 10),
        trainer.phi, evaluation.seeds(evaluation.VALIDATION_SEED_BASE, 2))
    means = curves[:, [4, 10]].mean(axis=0)
    assert means[0] != pytest.approx(means[1])
    assert trainer.validate() == pytest.approx(math.sqrt(means[0] * means[1]),
                                               rel=1e-6)
    one = meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path / "one"))
    assert one.validate() == pytest.approx(float(means[1]), rel=1e-6)


@pytest.mark.parametrize("max_rise, want", [
    (0.0, 0.3), (2.0, 0.3 * 3.0 / 2.0), (3.0, 0.3), (4.0, 0.3)])
def test_validation_penalises_a_rise_over_max_rise(tmp_path, max_rise, want):
    """A seed rising 1.5 / 0.5 = 3x over its running minimum before the
    horizon (step 4, loss 0.3 on every seed) multiplies the score by the rise
    over max_rise when the rise exceeds it."""
    config = tiny_quadratic_config()
    config.validation.horizon = 4
    config.validation.max_rise = max_rise
    trainer = meta.MetaTrainer(config, str(tmp_path))
    curves = iter([[1.0, 0.5, 1.5, 0.4, 0.3], [1.0, 0.8, 0.6, 0.5, 0.3]])
    trainer._val_run = lambda phi, seed: tf.constant(next(curves))
    assert trainer.validate() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("value", [-1.0, 0.5, True, float("inf"), "2"])
def test_invalid_max_rise_raises(value):
    config = tiny_quadratic_config()
    config.validation.max_rise = value
    with pytest.raises(ValueError, match=r"validation.max_rise` must be 0.*"
                       f"Received: validation.max_rise={value!r}"[:-1]):
        meta.validate_config(config)


# -- divergence criterion -------------------------------------------------------


def test_stability_against_hand_computed_ratios():
    curves = np.array([[3.0, 2.0, 1.0, 1.9, 0.5],     # 1.9 / 1 = 1.9
                       [3.0, 1.0, 2.5, 0.8, 0.9]])    # 2.5 / 1 = 2.5
    st = evaluation.stability(curves)
    assert not st["stable"] and st["finite"]
    assert st["max_ratio_per_seed"] == pytest.approx([1.9, 2.5])
    assert st["worst_step"] == [3, 2]
    assert st["max_ratio"] == pytest.approx(2.5)
    # Mean curve: 3, 1.5, 1.75, 1.35, 0.7: 1.75 / 1.5.
    assert st["mean_curve_max_ratio"] == pytest.approx(1.75 / 1.5)
    assert evaluation.stability(curves[:1])["stable"]
    assert evaluation.stability(curves, factor=3.0)["stable"]
    bad = evaluation.stability(np.array([[1.0, 0.5, np.nan, 0.4]]))
    assert not bad["stable"] and not bad["finite"]
    assert bad["max_ratio"] == np.inf


def test_evaluation_reports_stability_and_uses_the_configured_grid(tmp_path):
    config = tiny_quadratic_config()
    config.evaluation.horizons = (5,)
    config.evaluation.num_seeds = 2
    config.evaluation.num_tuning_seeds = 2
    config.evaluation.baselines = ("adam",)
    config.evaluation.learning_rates = (0.01, 0.1)
    results = evaluation.evaluate_config(config, {"learned": "quadratic"},
                                         str(tmp_path))
    assert results["learning_rate_grid"] == [0.01, 0.1]
    adam = results["optimizers"]["adam"]
    assert adam["per_horizon"]["5"]["learning_rate"] in (0.01, 0.1)
    for entry in results["optimizers"].values():
        st = entry["stability"]
        want = evaluation.stability(np.array(
            entry["curves"] if "curves" in entry else
            entry["curves_by_lr"][repr(entry["per_horizon"]["5"][
                "learning_rate"])]))
        assert st == want
    assert "stable" in evaluation.format_table(results)
    with open(tmp_path / "evaluation.json") as f:
        assert json.load(f)["optimizers"]["learned"]["stability"] == (
            results["optimizers"]["learned"]["stability"])
    with open(tmp_path / "evaluation_summary.json") as f:
        small = json.load(f)
    assert small["curve_steps"] == [0, 1, 2, 3, 4, 5]  # Every step of 5.
    for name, entry in results["optimizers"].items():
        got = small["optimizers"][name]
        assert got["mean_at_steps"] == pytest.approx(entry["mean"])
        assert got["stability"] == entry["stability"]
        assert "curves" not in got and "curves_by_lr" not in got
        assert got["per_horizon"]["5"]["final_mean"] == (
            entry["per_horizon"]["5"]["final_mean"])


def test_summary_keeps_log_spaced_steps_of_the_mean_and_drops_curves():
    steps = np.arange(1001)
    results = {"horizons": [100, 1000], "num_seeds": 2, "optimizers": {
        "adam": {"kind": "baseline", "mean": list(1.0 / (1 + steps)),
                 "stderr": list(0.1 / (1 + steps)),
                 "curves_by_lr": {"0.01": [[1.0] * 1001] * 2},
                 "per_horizon": {"1000": {
                     "learning_rate": 0.01, "final_mean": 1 / 1001,
                     "final_stderr": 0.1 / 1001, "mean": [0.0] * 1001,
                     "stderr": [0.0] * 1001}},
                 "stability": {"stable": True}}}}
    small = evaluation.summary(results, num_points=4)
    # geomspace(1, 1000, 4) = 1, 10, 100, 1000, with step 0.
    assert small["curve_steps"] == [0, 1, 10, 100, 1000]
    adam = small["optimizers"]["adam"]
    assert adam["mean_at_steps"] == pytest.approx(
        [1.0, 1 / 2, 1 / 11, 1 / 101, 1 / 1001])
    assert adam["stderr_at_steps"][-1] == pytest.approx(0.1 / 1001)
    assert adam["per_horizon"] == {"1000": {
        "learning_rate": 0.01, "final_mean": 1 / 1001,
        "final_stderr": 0.1 / 1001}}
    assert "curves_by_lr" not in adam and small["num_seeds"] == 2
    with pytest.raises(ValueError, match="num_points.*Received: num_points=1"):
        evaluation.summary(results, num_points=1)


# -- configs -------------------------------------------------------------------


def test_new_fields_default_to_the_paper_recipe():
    config = mnist_config.get_config()
    assert meta.field(config, "meta.meta_loss") == "mean"
    assert meta.field(config, "meta.curriculum") == ()
    assert meta.field(config, "meta.param_scale_range") == 1.0
    assert meta.field(config, "validation.horizons") == ()
    stages = meta.run_stages(config)
    assert [(s.start, s.run_length) for s in stages] == [(0, 100)]


def test_improved_and_long_configs_are_valid():
    for module in (improved_config, long_config):
        meta.validate_config(module.get_config())
    improved = improved_config.get_config()
    assert improved.network.to_dict() == mnist_config.get_config(
    ).network.to_dict()
    stages = meta.run_stages(improved)
    assert stages[-1].run_length == 200
    long = long_config.get_config()
    assert max(long.evaluation.horizons) == 10_000
    assert "adam" in long.evaluation.baselines


def test_evaluate_binary_parses_several_weights():
    from train import evaluate
    assert evaluate.parse_weights(["mnist"]) == {"learned": "mnist"}
    assert evaluate.parse_weights(["paper=mnist", "new=/tmp/x/export"]) == {
        "paper": "mnist", "new": "/tmp/x/export"}
    for bad in (["a=x", "a=y"], ["a=x", "y"], ["=x"], [], [""]):
        with pytest.raises(ValueError, match="NAME=SPEC"):
            evaluate.parse_weights(bad)


def test_a_checkpoint_can_branch_into_a_new_curriculum(tmp_path):
    """Stages that start at or after the checkpoint may change on resume,
    and the branch equals a run that had that curriculum from the start;
    a stage that had already started may not change."""
    def config(curriculum):
        c = tiny_quadratic_config(curriculum=curriculum)
        c.meta.num_iterations = 12
        c.checkpoint_every = c.eval_every = 4
        return c

    tf.config.experimental.enable_op_determinism()
    try:
        straight = meta.MetaTrainer(config(((4, 20),)), str(tmp_path / "a"))
        straight.train()
        meta.MetaTrainer(config(((8, 20),)), str(tmp_path / "b")).train(
            until=4)
        branch = meta.MetaTrainer(config(((4, 20),)), str(tmp_path / "b"))
        assert branch.train().iterations == 12
        for name, value in straight.phi_numpy().items():
            np.testing.assert_allclose(branch.phi_numpy()[name], value,
                                       rtol=1e-6)
    finally:
        tf_config.disable_op_determinism()
    with pytest.raises(ValueError, match=r"another experiment.*"
                       r"meta.curriculum.*iteration \(12\)"):
        meta.MetaTrainer(config(((8, 20),)), str(tmp_path / "b")).train()


def test_tables_show_tiny_long_run_losses_in_significant_digits():
    results = {"horizons": [1000], "optimizers": {
        "learned": {"kind": "learned", "mean": [1.0, 2.97e-5],
                    "per_horizon": {"1000": {
                        "learning_rate": 1.0, "final_mean": 2.9731e-5,
                        "final_stderr": 1.2e-6}}},
        "adam": {"kind": "baseline", "mean": [1.0, 0.5],
                 "per_horizon": {"1000": {
                     "learning_rate": 0.01, "final_mean": 0.5,
                     "final_stderr": 0.02}}}}}
    assert "2.973e-05 +- 1.200e-06" in evaluation.format_table(results)
    lines = evaluation.format_markdown(results).splitlines()
    assert lines[2] == "| learned | 2.973e-05 ± 1.200e-06 | as trained |"
    assert lines[3] == "| adam | 0.5000 ± 0.0200 | 0.01 |"


@pytest.mark.parametrize("include_initial", [False, True])
def test_initial_weights_compete_for_the_export(tmp_path, include_initial):
    config = tiny_quadratic_config()
    config.validation.include_initial = include_initial
    trainer = meta.MetaTrainer(config, str(tmp_path))
    scores = iter([0.5, 0.6, 0.7, 0.8] if include_initial else [0.6, 0.7,
                                                                0.8])
    trainer.validate = lambda: next(scores)
    start = trainer.phi_numpy()
    result = trainer.train()
    _, exported, metadata = saved_model.load(result.export_dir)
    if include_initial:  # Validations at 0 (start), 4, 8, 10: 0 is best.
        assert result.best_validation == 0.5 and metadata["iteration"] == 0
        for n, v in start.items():
            np.testing.assert_array_equal(exported[n], v)
    else:
        assert result.best_validation == 0.6 and metadata["iteration"] == 4

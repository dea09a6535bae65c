"""Meta-training: gradients reach every weight, resume is exact, it learns."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from configs import mnist as mnist_config
from configs import quadratic as quadratic_config
from l2l_tf import (atomic, evaluation, meta, networks, problems, saved_model,
                    unroll)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_quadratic_config(**meta_overrides):
    config = quadratic_config.get_config()
    config.problem_kwargs.dim = 4
    config.problem_kwargs.num_functions = 8
    config.meta.num_iterations = 10
    config.meta.run_length = 10
    config.meta.unroll_length = 5
    config.checkpoint_every = 4
    config.eval_every = 4
    config.log_every = 2
    config.validation.num_seeds = 2
    config.validation.horizon = 10
    config.meta.update(meta_overrides)
    return config


def test_every_weight_changes_after_one_meta_step(tmp_path):
    trainer = meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path))
    before = trainer.phi_numpy()
    assert sum(v.size for v in before.values()) == 5141
    params, state, task = trainer.draw(0)
    loss, _, _, norm, applied = trainer._meta_step(
        params, state, task, tf.constant(0), tf.constant(1e-3))
    assert bool(applied) and np.isfinite(float(loss)) and float(norm) > 0
    after = trainer.phi_numpy()
    for name in before:
        changed = before[name] != after[name]
        assert np.all(changed), f"{name}: {np.sum(~changed)} weights unchanged"


class _Linear(problems.Problem):
    """f(theta) = c . theta: its gradient does not depend on theta, so
    treating gradients as inputs (no second derivatives) loses nothing and
    the meta-gradient must equal the finite-difference derivative."""

    def param_shapes(self):
        return [(6,)]

    def init(self, seed):
        c = tf.constant(np.linspace(-2.0, 3.0, 6), tf.float64)
        return [tf.zeros([6], tf.float64)], c

    def loss(self, params, task, batch):
        value = tf.reduce_sum(task * params[0])
        return value, value

    def eval_loss(self, params, task):
        return tf.reduce_sum(task * params[0])


def test_meta_gradient_matches_finite_differences():
    """The tape's meta-gradient is the derivative of the unrolled loss."""
    rule = networks.CoordinatewiseLSTM(hidden_sizes=(3,))
    problem = _Linear()
    phi0 = {k: tf.constant(v, tf.float64) for k, v in rule.init_phi(1).items()}
    params, task = problem.init(0)

    def meta_loss(phi):
        state = tuple(tf.cast(s, tf.float64) for s in rule.init_state(6))
        total, _, _ = unroll.unroll(rule, phi, problem, params, state, task,
                                    0, 5)
        return total

    with tf.GradientTape() as tape:
        tape.watch(phi0)
        value = meta_loss(phi0)
    grads = tape.gradient(value, phi0)
    eps = 1e-6
    for name, index in [("output/kernel", (1, 0)), ("lstm_0/kernel", (0, 2)),
                        ("lstm_0/bias", (5,))]:
        bump = np.zeros(phi0[name].shape)
        bump[index] = eps
        up = dict(phi0, **{name: phi0[name] + bump})
        down = dict(phi0, **{name: phi0[name] - bump})
        fd = (meta_loss(up) - meta_loss(down)).numpy() / (2 * eps)
        np.testing.assert_allclose(grads[name].numpy()[index], fd, rtol=1e-6)
        assert abs(fd) > 1e-4


@pytest.fixture
def op_determinism():
    """Op determinism for one test only (it breaks unseeded random ops)."""
    tf.config.experimental.enable_op_determinism()
    yield
    tf_config.disable_op_determinism()


def test_resume_is_exact(tmp_path, op_determinism):
    """Stopping after a checkpoint and rerunning gives the same weights."""
    del op_determinism
    straight = meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path / "a"))
    straight.train()

    first = meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path / "b"))
    assert first.train(until=4).iterations == 4
    resumed = meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path / "b"))
    result = resumed.train()
    assert result.iterations == 10
    for name, value in straight.phi_numpy().items():
        np.testing.assert_allclose(resumed.phi_numpy()[name], value,
                                   rtol=1e-6)
    for sub in ("export", "export_last"):
        assert os.path.isfile(tmp_path / "b" / sub / "saved_model.pb")
    assert not [p for p in os.listdir(tmp_path / "b") if ".tmp-" in p]


def test_export_records_config_and_best_validation(tmp_path):
    config = tiny_quadratic_config()
    result = meta.MetaTrainer(config, str(tmp_path)).train()
    _, _, metadata = saved_model.load(result.export_dir)
    assert metadata["config"] == json.loads(json.dumps(config.to_dict()))
    assert metadata["validation_loss"] == pytest.approx(result.best_validation)
    assert np.isfinite(result.best_validation)


@pytest.mark.parametrize("field,value,message", [
    ("meta.unroll_length", 0, "meta.unroll_length` must be a positive"),
    ("meta.unroll_length", 20, "must not exceed `meta.run_length"),
    ("meta.learning_rate", -1.0, "meta.learning_rate` must be a positive"),
    ("meta.run_length", 7, "multiple of `meta.unroll_length"),
    ("checkpoint_every", 3, "checkpoint_every` must be a multiple"),
    ("problem", "cifar", "`problem` must be one of"),
    ("evaluation.baselines", ("adam", "lbfgs"), "among .*'lbfgs'"),
    ("evaluation.num_seeds", 1, "evaluation.num_seeds` must be an integer"),
    ("meta.num_iterations", 7, "meta.num_iterations` must be a multiple"),
    ("meta.num_optimizees", 0, "meta.num_optimizees` must be a positive"),
])
def test_invalid_config_raises_before_work(tmp_path, field, value, message):
    config = tiny_quadratic_config()
    *path, key = field.split(".")
    node = config
    for part in path:
        node = node[part]
    node[key] = value
    with pytest.raises(ValueError, match=message) as info:
        meta.MetaTrainer(config, str(tmp_path / "w"))
    shown = value[-1] if isinstance(value, tuple) else value
    assert repr(shown) in str(info.value) or str(shown) in str(info.value)
    assert not os.path.exists(tmp_path / "w")


def test_a_minute_of_meta_training_beats_tuned_sgd(tmp_path):
    """Held-out 10-d quadratics at step 100: learned < best-tuned SGD."""
    config = quadratic_config.get_config()
    config.meta.num_iterations = 500
    config.checkpoint_every = 500
    config.eval_every = 100
    config.validation.num_seeds = 2
    result = meta.MetaTrainer(config, str(tmp_path)).train()
    rule, phi, _ = saved_model.load(result.export_dir)
    problem = problems.from_config(config, "test")
    results = evaluation.evaluate(
        problem, None, {"learned": (rule, phi)}, horizons=[100], num_seeds=5,
        num_tuning_seeds=3, baselines=["sgd"])
    learned = results["optimizers"]["learned"]["per_horizon"]["100"]
    sgd = results["optimizers"]["sgd"]["per_horizon"]["100"]
    assert learned["final_mean"] < sgd["final_mean"], (learned, sgd)


def test_meta_train_binary_end_to_end(tmp_path):
    """The README's main command, at a tiny size, in a fresh process."""
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.meta_train",
           "--config=configs/quadratic.py", f"--workdir={workdir}",
           "--config.meta.num_iterations=8", "--config.meta.run_length=10",
           "--config.meta.unroll_length=5", "--config.checkpoint_every=4",
           "--config.eval_every=4", "--config.problem_kwargs.dim=3",
           "--config.problem_kwargs.num_functions=4",
           "--config.validation.num_seeds=2",
           "--config.evaluation.num_seeds=2",
           "--config.evaluation.num_tuning_seeds=2",
           "--config.evaluation.horizons=(5, 10)",
           "--config.validation.horizon=10",
           "--config.evaluation.baselines=('sgd', 'adam')"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    bad = subprocess.run(cmd + ["--until=3"], capture_output=True, text=True,
                         cwd=REPO, timeout=600, env=env)
    assert bad.returncode == 2 and "`until` must be a positive multiple of " \
        "`checkpoint_every` (4). Received: until=3" in bad.stderr, bad.stderr
    assert not workdir.exists()
    # --until stops after that checkpoint, without evaluating.
    part = subprocess.run(cmd + ["--until=4"], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env=env)
    assert part.returncode == 0, part.stderr[-3000:]
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith(
        "ckpt-4")
    assert not (workdir / "evaluation.json").exists()
    assert "Stopped at iteration 4 (--until=4)" in part.stderr
    # Another experiment's checkpoints: the message alone, exit 2.
    other = subprocess.run(cmd + ["--config.meta.learning_rate=0.5"],
                           capture_output=True, text=True, cwd=REPO,
                           timeout=600, env=env)
    assert other.returncode == 2 and other.stderr.strip().splitlines()[
        -1].startswith("ValueError: --workdir"), other.stderr[-2000:]
    assert "Traceback" not in other.stderr
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Resumed from" in out.stderr
    assert "learned" in out.stdout and "adam" in out.stdout
    with open(workdir / "evaluation.json") as f:
        results = json.load(f)
    assert set(results["optimizers"]) == {"learned", "sgd", "adam"}
    for name, entry in results["optimizers"].items():
        assert len(entry["mean"]) == 11
        assert set(entry["per_horizon"]) == {"5", "10"}
    grid = evaluation.lr_grid()
    assert results["optimizers"]["adam"]["per_horizon"]["10"][
        "learning_rate"] in grid
    # Rerunning resumes: nothing left to train.
    again = subprocess.run(cmd + ["--noevaluate"], capture_output=True,
                           text=True, cwd=REPO, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resumed from" in again.stderr


def test_configs_are_valid():
    for module in (mnist_config, quadratic_config):
        meta.validate_config(module.get_config())
    from configs import mnist_log_mean
    for variant in mnist_log_mean.VARIANTS:
        meta.validate_config(mnist_log_mean.get_config(variant))
    with pytest.raises(ValueError, match="variants are .*Received: 'lng'"):
        mnist_log_mean.get_config("lng")


def test_repeated_divergence_restores_the_last_checkpoint(tmp_path):
    config = tiny_quadratic_config()
    config.meta.max_consecutive_skips = 3
    trainer = meta.MetaTrainer(config, str(tmp_path))
    real_step = trainer._meta_step
    calls = []

    def flaky_step(*args):
        calls.append(int(trainer.iteration.numpy()))
        loss, params, state, norm, applied = real_step(*args)
        if len(calls) in (6, 7, 8):  # Iterations 5, 6, 7 "diverge".
            return (tf.constant(np.nan), params, state, norm,
                    tf.constant(False))
        return loss, params, state, norm, applied

    trainer._meta_step = flaky_step
    result = trainer.train()
    assert result.iterations == 10
    # Three skips in a row (iterations 5-7) -> back to the checkpoint at 4.
    assert calls[:9] == [0, 1, 2, 3, 4, 5, 6, 7, 4]
    assert float(trainer.lr_scale.numpy()) == 0.5
    assert all(np.all(np.isfinite(v)) for v in trainer.phi_numpy().values())


def test_ema_of_phi_is_what_gets_validated_and_exported(tmp_path):
    config = tiny_quadratic_config()
    config.meta.ema_decay = 0.5
    trainer = meta.MetaTrainer(config, str(tmp_path))
    start = trainer.phi_numpy()
    history = []
    real_step = trainer._meta_step

    def recording_step(*args):
        out = real_step(*args)
        history.append(trainer.phi_numpy())
        return out

    trainer._meta_step = recording_step
    result = trainer.train()
    # ema_k = 0.5 ema_{k-1} + 0.5 phi_k, from ema_0 = phi_0.
    want = start
    for phi in history:
        want = {n: 0.5 * want[n] + 0.5 * phi[n] for n in want}
    _, exported, _ = saved_model.load(result.export_last_dir)
    for n in want:
        np.testing.assert_allclose(exported[n], want[n], rtol=1e-5)
        assert not np.allclose(exported[n], history[-1][n])


def test_resuming_another_experiment_is_refused(tmp_path):
    meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path)).train(until=4)
    other = tiny_quadratic_config(learning_rate=0.5)
    with pytest.raises(ValueError, match=r"another experiment.*meta.learning_rate"):
        meta.MetaTrainer(other, str(tmp_path)).train()
    longer = tiny_quadratic_config(num_iterations=12)
    assert meta.MetaTrainer(longer, str(tmp_path)).train().iterations == 12


def test_a_new_validation_on_resume_restarts_the_best(tmp_path):
    """validation.* and eval_every choose the export, not phi: they may
    change on resume, and the best validation starts over at the
    checkpoint's phi, on the new validation."""
    first = meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path))
    first.train(until=4)
    old_best = float(first.best_validation.numpy())
    config = tiny_quadratic_config()
    config.validation.horizon = 5
    config.validation.num_seeds = 3
    config.eval_every = 8
    trainer = meta.MetaTrainer(config, str(tmp_path))
    calls = []
    real_validate = trainer.validate

    def recording_validate():
        calls.append(int(trainer.iteration.numpy()))
        return real_validate()

    trainer.validate = recording_validate
    trainer.train(until=4 + 4)
    # At the resume (iteration 4), then at eval_every = 8.
    assert calls == [4, 8]
    best = float(trainer.best_validation.numpy())
    _, _, metadata = saved_model.load(str(tmp_path / "export"))
    assert metadata["config"]["validation"]["horizon"] == 5
    assert metadata["validation_loss"] == pytest.approx(best)
    assert metadata["iteration"] in (4, 8)
    # The old best (horizon 10) would not compare: it no longer counts.
    assert best != pytest.approx(old_best)


def _scalars(logdir):
    """{tag: {step: value}} of the scalar summaries under `logdir`."""
    out = {}
    for root, _, files in os.walk(logdir):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(
                    os.path.join(root, name)):
                for value in event.summary.value:
                    out.setdefault(value.tag, {})[event.step] = float(
                        tf.make_ndarray(value.tensor))
    return out


def test_tensorboard_scalars(tmp_path):
    config = tiny_quadratic_config()
    trainer = meta.MetaTrainer(config, str(tmp_path))
    logged = []
    real_step = trainer._meta_step

    def recording_step(*args):
        out = real_step(*args)
        logged.append((float(out[0]), float(out[3])))
        return out

    trainer._meta_step = recording_step
    result = trainer.train()
    scalars = _scalars(str(tmp_path / "tensorboard"))
    assert {"meta_loss", "meta_gradient_norm", "validation_loss",
            "iterations_per_second", "meta_learning_rate",
            "skipped_meta_steps"} <= set(scalars)
    # log_every = 2, eval_every = 4, 10 iterations: points at 2, 4, ..., 10.
    assert sorted(scalars["meta_loss"]) == [2, 4, 6, 8, 10]
    losses, norms = np.array(logged).T
    assert scalars["meta_loss"][4] == pytest.approx(np.mean(losses[2:4]),
                                                    rel=1e-6)
    assert scalars["meta_gradient_norm"][10] == pytest.approx(
        np.mean(norms[8:10]), rel=1e-6)
    assert sorted(scalars["validation_loss"]) == [4, 8, 10]
    assert min(scalars["validation_loss"].values()) == pytest.approx(
        result.best_validation, rel=1e-6)
    assert all(v > 0 for v in scalars["iterations_per_second"].values())


@pytest.mark.parametrize("args, message", [
    (["-m", "train.meta_train", "--config=configs/quadratic.py",
      "--workdir={file}"], "`workdir` must be a folder"),
    (["-m", "train.evaluate", "--config=configs/quadratic.py",
      "--weights=quadratic", "--workdir={file}/sub"],
     "`workdir` must be a folder"),
    (["-m", "train.meta_train", "--config=configs/quadratic.py",
      "--workdir="], "`workdir` must name a folder"),
    (["-m", "train.evaluate", "--config=configs/quadratic.py",
      "--weights={damaged}", "--workdir={dir}"], "is damaged or incomplete"),
    (["-m", "train.evaluate", "--config=configs/quadratic.py", "--weights=",
      "--workdir={dir}"], "--weights must be one SPEC"),
])
def test_binaries_refuse_bad_workdirs_and_weights(tmp_path, args, message):
    """Exit 2 with the message alone, before any work; the user's file is
    kept as it was."""
    (tmp_path / "a_file").write_text("mine")
    damaged = tmp_path / "damaged"
    shutil.copytree(saved_model.resolve_path("quadratic"), damaged)
    (data,) = (damaged / "variables").glob("*.data*")
    data.write_bytes(data.read_bytes()[:1000])
    args = [a.format(file=tmp_path / "a_file", dir=tmp_path / "out",
                     damaged=damaged) for a in args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env=env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "a_file").read_text() == "mine"
    assert not (tmp_path / "out").exists()


def test_a_second_run_on_a_held_workdir_is_refused_before_any_work(tmp_path):
    """Two runs on one workdir would write over each other's checkpoints:
    the second is refused while the first holds it; after it, training
    goes on, and sequential trainers in one process are fine."""
    from tests.test_atomic import held_by_another_process
    config = tiny_quadratic_config()
    config.meta.num_iterations = 2
    config.checkpoint_every = config.eval_every = 2
    workdir = tmp_path / "run"
    with held_by_another_process(workdir) as pid:
        with pytest.raises(atomic.InUse, match=f"process {pid}"):
            meta.MetaTrainer(config, str(workdir)).train()
        assert sorted(os.listdir(workdir)) == [".lock"]
    meta.MetaTrainer(config, str(workdir)).train()
    config.meta.num_iterations = 4
    result = meta.MetaTrainer(config, str(workdir)).train()
    assert result.iterations == 4


def test_a_damaged_checkpoint_is_named_kept_and_the_one_before_taken(
        tmp_path, caplog):
    config = tiny_quadratic_config()
    config.meta.num_iterations = 8
    workdir = tmp_path / "run"
    meta.MetaTrainer(config, str(workdir)).train()
    folder = workdir / "checkpoints"
    (data,) = [p for p in os.listdir(folder) if p.startswith("ckpt-8.data")]
    with open(folder / data, "r+b") as f:
        f.truncate(os.path.getsize(folder / data) // 2)
    damaged_bytes = (folder / data).read_bytes()
    trainer = meta.MetaTrainer(config, str(workdir))
    assert trainer.latest_checkpoint() == str(folder / "ckpt-4")
    assert trainer.train().iterations == 8  # From 4, again.
    assert trainer.latest_checkpoint() == str(folder / "ckpt-8")
    # Warned once; the damaged files kept aside, a good ckpt-8 in place.
    assert caplog.text.count(f"The checkpoint {folder / 'ckpt-8'} cannot be "
                             "read") == 1
    assert (folder / "damaged" / data).read_bytes() == damaged_bytes
    assert (folder / data).read_bytes() != damaged_bytes
    for name in os.listdir(folder):
        if name.startswith("ckpt-4.data"):
            (folder / name).write_bytes(b"")
    (data,) = [p for p in os.listdir(folder) if p.startswith("ckpt-8.data")]
    (folder / data).write_bytes(b"")
    with pytest.raises(ValueError, match=r"None of the checkpoints in .* can "
                       r"be read \(ckpt-4, ckpt-8;"):
        meta.MetaTrainer(config, str(workdir)).latest_checkpoint()

"""LearnedOptimizer: the Keras contract, and parity with the meta-trainer."""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import l2l_tf
from l2l_tf import networks, problems, saved_model, unroll
from l2l_tf.optimizer import LearnedOptimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A default-shaped export with random (non-trivial) phi."""
    rule = networks.CoordinatewiseLSTM()
    phi = rule.init_phi(seed=3)
    path = str(tmp_path_factory.mktemp("weights") / "export")
    saved_model.export(path, rule, phi, config={"note": "test"})
    return path


def _mlp_model():
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(20, activation="sigmoid"),
        keras.layers.Dense(10),
    ])


def test_parity_model_fit_and_meta_unroll(export_dir):
    """5 steps of model.fit == 5 steps of meta.py's unroll (same batches)."""
    problem = problems.make("mnist", "train")
    rule, phi, _ = saved_model.load(export_dir)
    params, task = problem.init(7)
    batches = [problem.batch(task, t) for t in range(5)]

    model = _mlp_model()
    model.set_weights([p.numpy() for p in params])
    model.compile(optimizer=LearnedOptimizer(weights=export_dir),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    images = tf.concat([b[0] for b in batches], 0)
    labels = tf.concat([b[1] for b in batches], 0)
    model.fit(images, labels, batch_size=problem.batch_size, shuffle=False,
              epochs=1, verbose=0)

    phi_t = {k: tf.constant(v) for k, v in phi.items()}
    state = rule.init_state(problem.num_params)
    for t in range(5):
        params, state, _ = unroll.opt_step(rule, phi_t, problem, params,
                                           state, task, t)
    for got, want in zip(model.get_weights(), params):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-7)
    # The updates were not trivially zero.
    assert not np.allclose(model.get_weights()[0], params[0].numpy() * 0)


def test_update_step_matches_rule_by_hand(export_dir):
    rule, phi, _ = saved_model.load(export_dir)
    var = keras.Variable(np.linspace(-1, 1, 12).reshape(3, 4), dtype="float32")
    opt = LearnedOptimizer(weights=export_dir, learning_rate=0.5)
    rng = np.random.default_rng(0)
    state = rule.init_state(12)
    expect = var.numpy().reshape(-1).copy()
    for _ in range(3):
        g = rng.normal(size=(3, 4)).astype(np.float32)
        opt.apply_gradients([(tf.constant(g), var)])
        u, state = rule.step({k: tf.constant(v) for k, v in phi.items()},
                             tf.constant(g.reshape(-1)), state)
        expect += 0.5 * u.numpy()
    np.testing.assert_allclose(var.numpy().reshape(-1), expect, rtol=1e-6)
    assert int(opt.iterations.numpy()) == 3


def test_phi_is_not_trained_and_state_is_per_variable(export_dir):
    model = _mlp_model()
    opt = LearnedOptimizer(weights=export_dir)
    model.compile(optimizer=opt, loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 784)).astype(np.float32)
    y = np.zeros((64, 10), np.float32)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    _, phi, _ = saved_model.load(export_dir)
    for name, var in zip(opt._phi_names, opt._phi):
        np.testing.assert_array_equal(var.numpy(), phi[name])
    assert all(not v.trainable for v in opt.variables)
    # 4 state tensors of [size, 20] per model variable.
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    shapes = [tuple(s.shape) for ss in opt._lstm_states for s in ss]
    assert shapes == [(n, 20) for n in sizes for _ in range(4)]
    assert any(np.any(s.numpy() != 0) for ss in opt._lstm_states for s in ss)


def test_learning_rate_multiplies_update(export_dir):
    vals = []
    for lr in (1.0, 0.25):
        var = keras.Variable(np.zeros(5, np.float32))
        opt = LearnedOptimizer(weights=export_dir, learning_rate=lr)
        opt.apply_gradients([(tf.constant([0.1, -2, 3e-6, 0, 5.]), var)])
        vals.append(var.numpy())
    np.testing.assert_allclose(vals[1], 0.25 * vals[0], rtol=1e-6)
    assert np.any(vals[0] != 0)


def test_get_config_round_trip(export_dir):
    opt = LearnedOptimizer(weights=export_dir, learning_rate=0.5,
                           clipnorm=1.0, name="lo")
    config = opt.get_config()
    assert config["weights"] == export_dir
    assert config["network"] == networks.CoordinatewiseLSTM().get_config()
    again = LearnedOptimizer.from_config(config)
    assert again.get_config() == config
    ser = keras.optimizers.serialize(opt)
    assert keras.optimizers.deserialize(ser).get_config() == config


def test_shipped_weights_load_by_name():
    names = ("mnist", "mnist_log_mean", "mnist_log_mean_10k", "quadratic")
    assert set(names) <= set(l2l_tf.pretrained_names())
    for name in names:
        opt = LearnedOptimizer(weights=name)
        _, phi, _ = saved_model.load(name)
        var = keras.Variable(np.ones(3, np.float32))
        opt.apply_gradients([(tf.constant([0.1, -0.2, 0.3]), var)])
        np.testing.assert_array_equal(opt._phi[0].numpy(),
                                      phi[opt._phi_names[0]])
        assert np.all(var.numpy() != 1.0)
    assert LearnedOptimizer().weights_spec == "mnist_log_mean_10k"


def test_bad_weights_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"weights.*mnist.*'nope'"):
        LearnedOptimizer(weights="nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a SavedModel"):
        LearnedOptimizer(weights=str(tmp_path / "empty"))


def test_network_mismatch_names_both_shapes(export_dir):
    with pytest.raises(ValueError, match=r"\[20, 20\].*\[8\]"):
        LearnedOptimizer(weights=export_dir, network={"hidden_sizes": [8]})


def test_keras_file_loads_without_the_savedmodel(export_dir, tmp_path):
    """A .keras model reloads (phi and state) after its weights are gone."""
    copy = str(tmp_path / "weights")
    rule, phi, _ = saved_model.load(export_dir)
    saved_model.export(copy, rule, phi)
    model = _mlp_model()
    model.compile(optimizer=LearnedOptimizer(weights=copy),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(256, 784)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    model.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / "model.keras")
    model.save(path)
    shutil.rmtree(copy)

    code = (
        "import sys, numpy as np, keras, l2l_tf\n"
        f"m = keras.models.load_model({path!r})\n"
        "assert type(m.optimizer).__name__ == 'LearnedOptimizer'\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r}); "
        f"y = np.load({str(tmp_path / 'y.npy')!r})\n"
        "h = m.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=False)\n"
        "print('LOSS', repr(h.history['loss'][-1]))\n")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, cwd=str(tmp_path), timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    fresh_loss = float(out.stdout.split("LOSS")[-1])
    hist = model.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(fresh_loss, hist.history["loss"][-1],
                               rtol=1e-5)


def test_tf_train_checkpoint_round_trip(export_dir, tmp_path):
    var = keras.Variable(np.arange(6, dtype=np.float32))
    opt = LearnedOptimizer(weights=export_dir)
    g = tf.constant([0.5, -0.1, 0.0, 2.0, -3.0, 1e-3])
    opt.apply_gradients([(g, var)])
    ckpt = tf.train.Checkpoint(optimizer=opt, var=var.value)
    path = ckpt.save(str(tmp_path / "ckpt"))
    opt.apply_gradients([(g, var)])
    after_two = var.numpy().copy()

    var2 = keras.Variable(np.zeros(6, np.float32))
    opt2 = LearnedOptimizer(weights=export_dir)
    opt2.build([var2])
    tf.train.Checkpoint(optimizer=opt2, var=var2.value).restore(
        path).assert_existing_objects_matched()
    opt2.apply_gradients([(g, var2)])
    np.testing.assert_allclose(var2.numpy(), after_two, rtol=1e-6)


def test_import_fails_clearly_under_another_backend():
    out = subprocess.run(
        [sys.executable, "-c", "import l2l_tf"], capture_output=True,
        text=True, cwd=REPO, timeout=120,
        env={**os.environ, "KERAS_BACKEND": "jax"})
    assert out.returncode != 0
    assert "KERAS_BACKEND='jax'" in out.stderr
    assert "TensorFlow backend" in out.stderr


def test_import_fails_clearly_when_keras_json_names_another_backend(tmp_path):
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    out = subprocess.run(
        [sys.executable, "-c", "import l2l_tf"], capture_output=True,
        text=True, cwd=REPO, timeout=120,
        env={**env, "KERAS_HOME": str(tmp_path)})
    assert out.returncode != 0
    assert "backend 'jax'" in out.stderr and "keras.json" in out.stderr

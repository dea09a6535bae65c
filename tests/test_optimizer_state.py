"""LearnedOptimizer's state: bfloat16 state, bytes a parameter, no retracing."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import benchmark, networks, saved_model
from l2l_tf.optimizer import LearnedOptimizer


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    rule = networks.CoordinatewiseLSTM()
    path = str(tmp_path_factory.mktemp("w") / "export")
    saved_model.export(path, rule, rule.init_phi(seed=5))
    return path


def _grads(steps, n, seed=0):
    rng = np.random.default_rng(seed)
    # Gradients over many scales, as the log/sign preprocessing sees them.
    return [tf.constant(rng.normal(0, 1, n) * 10.0 ** rng.uniform(-6, 1, n),
                        tf.float32) for _ in range(steps)]


def _run(weights, grads, **kwargs):
    var = keras.Variable(np.zeros(grads[0].shape, np.float32))
    opt = LearnedOptimizer(weights=weights, **kwargs)
    deltas = []
    for g in grads:
        before = var.numpy().copy()
        opt.apply_gradients([(g, var)])
        deltas.append(var.numpy() - before)
    return opt, np.array(deltas)


def test_bfloat16_state_is_the_rounded_float32_state(weights):
    (g,) = _grads(1, 500)
    opt32, d32 = _run(weights, [g])
    opt16, d16 = _run(weights, [g], state_dtype="bfloat16")
    assert all(s.dtype == "bfloat16" for s in opt16._lstm_states[0])
    # From the same (zero) state the first update is computed in float32
    # alike; the new state is float32's, rounded to bfloat16.
    np.testing.assert_array_equal(d16, d32)
    for s16, s32 in zip(opt16._lstm_states[0], opt32._lstm_states[0]):
        np.testing.assert_array_equal(
            s16.numpy(), tf.cast(s32.value, tf.bfloat16).numpy())


def test_bfloat16_updates_stay_close_to_float32(weights):
    """Five steps: bfloat16 keeps 8 bits of mantissa, so each state value
    reads back with a relative error up to 2^-9 (0.2%), and the gates
    average such errors over 20 units (measured: 0.1% after 5 steps). The
    updates stay within 1% of float32's in norm, and they do differ (the
    state really is rounded)."""
    grads = _grads(5, 2000, seed=1)
    _, d32 = _run(weights, grads)
    _, d16 = _run(weights, grads, state_dtype="bfloat16")
    for t in range(1, 5):
        err = np.linalg.norm(d16[t] - d32[t]) / np.linalg.norm(d32[t])
        assert 1e-5 < err < 1e-2, (t, err)


def test_state_bytes_per_parameter(weights):
    var = keras.Variable(np.zeros((10, 100), np.float32))
    for dtype, want in (("float32", 320), ("bfloat16", 160)):
        opt = LearnedOptimizer(weights=weights, state_dtype=dtype)
        opt.build([var])
        assert benchmark.state_bytes_per_param(opt, 1000) == want
    adam = keras.optimizers.Adam()
    adam.build([var])
    assert benchmark.state_bytes_per_param(adam, 1000) == 8


def test_state_dtype_is_saved_with_the_model(weights, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt = LearnedOptimizer(weights=weights, state_dtype="bfloat16")
    model.compile(optimizer=opt, loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    model.fit(x, x[:, :2], batch_size=16, epochs=1, verbose=0)
    assert opt.get_config()["state_dtype"] == "bfloat16"
    assert LearnedOptimizer.from_config(opt.get_config()).get_config() == (
        opt.get_config())
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    assert again.optimizer.state_dtype == "bfloat16"
    saved = [s.numpy() for s in opt._lstm_states[0]]
    loaded = again.optimizer._lstm_states[0]
    assert all(s.dtype == "bfloat16" for s in loaded)
    assert np.any(saved[1] != 0)
    for a, b in zip(saved, loaded):
        np.testing.assert_array_equal(a, b.numpy())


def test_bad_state_dtype_names_itself(weights):
    with pytest.raises(ValueError, match="`state_dtype` must be one of .*"
                                         "Received: state_dtype='float16'"):
        LearnedOptimizer(weights=weights, state_dtype="float16")


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_no_retracing_after_the_first_step(weights, state_dtype):
    variables = [keras.Variable(np.zeros(s, np.float32))
                 for s in ((4, 3), (3,), ())]
    opt = LearnedOptimizer(weights=weights, state_dtype=state_dtype,
                           learning_rate=0.5)
    opt.build(variables)
    step = tf.function(lambda grads: opt.apply(grads, variables))
    rng = np.random.default_rng(2)
    for t in range(4):
        grads = [tf.constant(rng.normal(size=v.shape), tf.float32)
                 for v in variables]
        if t == 2:  # A skipped step takes the same graph.
            grads[1] = tf.constant([1.0, np.nan, 0.0], tf.float32)
        step(grads)
    opt.learning_rate = 0.25  # A new learning rate is a variable's value.
    step(grads)
    assert step.experimental_get_tracing_count() == 1
    assert int(opt.iterations.numpy()) == 5
    assert int(opt.skipped_steps.numpy()) == 1


def test_evaluation_runs_with_a_bfloat16_state():
    from l2l_tf import evaluation, problems, unroll
    rule = networks.CoordinatewiseLSTM()
    phi = {k: tf.constant(v) for k, v in rule.init_phi(seed=5).items()}
    problem = problems.make("quadratic", "test")
    curves = {}
    for dtype in (tf.float32, tf.bfloat16):
        run = unroll.make_run_fn(rule, problem, 5, state_dtype=dtype)
        curves[dtype] = run(phi, 3).numpy()
    # theta_0 and theta_1 see the same (zero) state, after that the
    # rounded one: close to float32, not equal.
    np.testing.assert_array_equal(curves[tf.bfloat16][:2],
                                  curves[tf.float32][:2])
    np.testing.assert_allclose(curves[tf.bfloat16], curves[tf.float32],
                               rtol=1e-2)
    assert not np.array_equal(curves[tf.bfloat16], curves[tf.float32])
    with pytest.raises(ValueError, match="Received: state_dtype='int8'"):
        evaluation.evaluate(problem, None, {}, horizons=[2], baselines=(),
                            state_dtype="int8")

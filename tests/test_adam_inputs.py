"""preprocess="log_sign_adam": RNNprop-style Adam-normalised inputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import meta, networks, preprocess, problems, saved_model, unroll
from l2l_tf.optimizer import LearnedOptimizer
from tests.test_meta import tiny_quadratic_config
from tests.test_networks import _np_log_sign

P = 10.0


def _np_adam_features(grad_steps, p=P, b1=0.9, b2=0.99, eps=1e-8):
    """Adam's moments in float64 by the textbook formulas, step by step."""
    m = np.zeros_like(grad_steps[0], np.float64)
    v = np.zeros_like(m)
    out = []
    for t, g in enumerate(grad_steps, start=1):
        g = g.astype(np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        denom = np.sqrt(v_hat) + eps
        out.append(np.concatenate(
            [_np_log_sign(g, p), np.stack([m_hat / denom, g / denom], -1)],
            axis=-1))
    return out, np.stack([m, v, np.full_like(m, len(grad_steps))], -1)


def test_features_match_adam_by_hand():
    rng = np.random.default_rng(0)
    steps = [rng.normal(0, s, 7).astype(np.float32)
             for s in (1.0, 1e-3, 10.0, 1e-6, 0.1)]
    steps[1][2] = 0.0
    for g in steps:  # Constant small gradients, near and below eps.
        g[5], g[6] = 1e-5, -1e-9
    want, want_moments = _np_adam_features(steps)
    # Where eps goes matters there: sqrt(v_hat) + eps, not sqrt(v_hat + eps).
    np.testing.assert_allclose(want[-1][5:, 2],
                               [1e-5 / (1e-5 + 1e-8), -1e-9 / (1e-9 + 1e-8)],
                               rtol=1e-4)
    moments = tf.zeros([7, 3])
    for g, w in zip(steps, want):
        x, moments = preprocess.log_sign_adam(tf.constant(g), P, moments)
        np.testing.assert_allclose(x.numpy(), w, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(moments.numpy(), want_moments, rtol=1e-5)
    # The first step by hand: m_hat = g, v_hat = g^2, so m_hat / sqrt(v_hat)
    # and g / sqrt(v_hat) are sign(g).
    x, _ = preprocess.log_sign_adam(tf.constant([0.5, -3.0]), P,
                                    tf.zeros([2, 3]))
    np.testing.assert_allclose(x.numpy()[:, 2:], [[1, 1], [-1, -1]],
                               rtol=1e-6)


def test_features_stay_finite_at_the_float32_extremes():
    g = tf.constant([0.0, -0.0, 1e-45, 1.2e-38, 3e38, -3.4e38, 1.0],
                    tf.float32)
    moments = tf.zeros([7, 3])
    for _ in range(3):
        x, moments = preprocess.log_sign_adam(g, P, moments)
        assert np.all(np.isfinite(x.numpy())), x.numpy()
        assert np.all(np.isfinite(moments.numpy())), moments.numpy()
        assert np.all(np.abs(x.numpy()[:, 2:]) <= 10.0 + 1e-5), x.numpy()
    np.testing.assert_array_equal(x.numpy()[:2, 2:], 0.0)  # Never a gradient.
    # A constant gradient: m_hat / sqrt(v_hat) = sign(g), however large.
    np.testing.assert_allclose(x.numpy()[4:6, 2], [1.0, -1.0], rtol=1e-5)
    np.testing.assert_allclose(x.numpy()[4:6, 0], np.log([3e38, 3.4e38]) / P,
                               rtol=1e-5)


def test_network_state_shapes_dtypes_and_bytes():
    rule = networks.CoordinatewiseLSTM(preprocess="log_sign_adam")
    assert rule.state_shapes(7) == ((7, 20),) * 4 + ((7, 3),)
    assert rule.phi_shapes()["lstm_0/kernel"] == (4 + 20, 80)
    assert sum(np.prod(s) for s in rule.phi_shapes().values()) == 5141 + 160
    # Adam's moments stay float32 when the LSTM's state is bfloat16.
    assert rule.state_dtypes(tf.bfloat16) == (tf.bfloat16,) * 4 + (
        tf.float32,)
    state = rule.init_state(7, tf.bfloat16)
    assert [s.dtype for s in state] == list(rule.state_dtypes(tf.bfloat16))
    assert rule.state_bytes_per_coordinate() == 320 + 12
    assert rule.state_bytes_per_coordinate(tf.bfloat16) == 160 + 12
    phi = {k: tf.constant(v) for k, v in rule.init_phi(1).items()}
    _, new_state = rule.step(phi, tf.constant(np.linspace(-1, 1, 7),
                                              tf.float32), state)
    assert [s.dtype for s in new_state] == [s.dtype for s in state]
    np.testing.assert_array_equal(new_state[-1].numpy()[:, 2], 1.0)  # t


def test_the_lstm_sees_the_adam_features():
    # Two histories with the same last gradient but different moments give
    # different updates: the extra inputs reach the network.
    rule = networks.CoordinatewiseLSTM(preprocess="log_sign_adam")
    phi = {k: tf.constant(v) for k, v in rule.init_phi(2).items()}
    state = rule.init_state(2)
    lstm_state = state[:-1]
    moments = tf.constant([[0.5, 0.25, 10.0], [-0.5, 0.25, 10.0]])
    u, _ = rule.step(phi, tf.constant([0.1, 0.1]), lstm_state + (moments,))
    assert abs(float(u[0] - u[1])) > 1e-4


@pytest.fixture(scope="module")
def adam_export(tmp_path_factory):
    rule = networks.CoordinatewiseLSTM(preprocess="log_sign_adam")
    path = str(tmp_path_factory.mktemp("adam") / "export")
    saved_model.export(path, rule, rule.init_phi(seed=4))
    return path


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_keras_optimizer_matches_the_unroll(adam_export, state_dtype):
    """5 steps of model.fit == 5 steps of meta.py's unroll (same batches);
    with bfloat16 state, the moments' variables are float32."""
    problem = problems.make("mnist", "train")
    rule, phi, _ = saved_model.load(adam_export)
    assert rule.preprocess == "log_sign_adam"
    params, task = problem.init(3)
    batches = [problem.batch(task, t) for t in range(5)]
    model = keras.Sequential([keras.Input((784,)),
                              keras.layers.Dense(20, activation="sigmoid"),
                              keras.layers.Dense(10)])
    model.set_weights([p.numpy() for p in params])
    opt = LearnedOptimizer(weights=adam_export, state_dtype=state_dtype)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(tf.concat([b[0] for b in batches], 0),
              tf.concat([b[1] for b in batches], 0),
              batch_size=problem.batch_size, shuffle=False, epochs=1,
              verbose=0)
    moment_vars = [v for v in opt.variables if v.shape[-1:] == (3,)]
    assert len(moment_vars) == 4 and all(
        v.dtype == "float32" for v in moment_vars)
    phi_t = {k: tf.constant(v) for k, v in phi.items()}
    state = rule.init_state(problem.num_params, tf.as_dtype(state_dtype))
    for t in range(5):
        params, state, _ = unroll.opt_step(rule, phi_t, problem, params,
                                           state, task, t)
    tol = 1e-5 if state_dtype == "float32" else 2e-3
    for got, want in zip(model.get_weights(), params):
        np.testing.assert_allclose(got, want.numpy(), rtol=tol, atol=tol / 10)
    np.testing.assert_array_equal(
        np.asarray(moment_vars[0])[..., 2], 5.0)  # t counts the steps.


def test_meta_training_and_export_round_trip(tmp_path):
    config = tiny_quadratic_config()
    config.network.preprocess = "log_sign_adam"
    result = meta.MetaTrainer(config, str(tmp_path)).train()
    rule, phi, _ = saved_model.load(result.export_dir)
    assert rule.preprocess == "log_sign_adam"
    assert np.isfinite(result.best_validation)
    # The SavedModel's signatures carry the moments with the LSTM state.
    loaded = tf.saved_model.load(result.export_dir)
    state = loaded.initial_state(n=tf.constant(3))["state"]
    assert state.shape == (3, 83)
    grads = tf.constant([0.1, -2.0, 0.0])
    out = loaded.step(grads=grads, state=state)
    want, want_state = rule.step({k: tf.constant(v) for k, v in phi.items()},
                                 grads, rule.init_state(3))
    np.testing.assert_allclose(out["updates"].numpy(), want.numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(out["state"].numpy()[:, -3:],
                               want_state[-1].numpy(), rtol=1e-6)

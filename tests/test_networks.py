"""Tests of l2l_tf.networks: shapes, weight counts, exact math, Keras parity."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import networks


def _as_tensors(phi):
    return {k: tf.constant(v) for k, v in phi.items()}


def _random_state(rule, n, rng):
    return tuple(tf.constant(rng.normal(0.0, 0.5, s), tf.float32)
                 for s in rule.state_shapes(n))


# ---------------------------------------------------------------------------
# The coordinatewise LSTM.


def test_default_lstm_has_5141_weights_and_documented_shapes():
    rule = networks.CoordinatewiseLSTM()
    assert rule.phi_shapes() == {
        "lstm_0/kernel": (2 + 20, 80),
        "lstm_0/bias": (80,),
        "lstm_1/kernel": (20 + 20, 80),
        "lstm_1/bias": (80,),
        "output/kernel": (20, 1),
        "output/bias": (1,),
    }
    phi = rule.init_phi()
    assert {k: v.shape for k, v in phi.items()} == rule.phi_shapes()
    assert all(v.dtype == np.float32 for v in phi.values())
    assert sum(v.size for v in phi.values()) == 5141


def test_no_preprocessing_narrows_first_kernel():
    rule = networks.CoordinatewiseLSTM(preprocess="none")
    assert rule.phi_shapes()["lstm_0/kernel"] == (1 + 20, 80)
    assert sum(v.size for v in rule.init_phi().values()) == 5141 - 80


def test_init_phi_is_seeded_and_sets_forget_bias():
    rule = networks.CoordinatewiseLSTM(hidden_sizes=(3, 5))
    a, b, c = rule.init_phi(0), rule.init_phi(0), rule.init_phi(1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["lstm_0/kernel"], c["lstm_0/kernel"])
    np.testing.assert_array_equal(a["lstm_0/bias"],
                                  [0] * 3 + [1] * 3 + [0] * 6)
    np.testing.assert_array_equal(a["lstm_1/bias"],
                                  [0] * 5 + [1] * 5 + [0] * 10)
    np.testing.assert_array_equal(a["output/bias"], [0.0])


def test_output_and_state_shapes():
    rule = networks.CoordinatewiseLSTM()
    n = 7
    assert rule.state_shapes(n) == ((n, 20),) * 4
    assert rule.state_bytes_per_coordinate() == 320
    state = rule.init_state(n)
    assert [tuple(s.shape) for s in state] == [(n, 20)] * 4
    assert all(not np.any(s.numpy()) for s in state)
    grads = tf.constant(np.random.default_rng(0).normal(size=n), tf.float32)
    updates, new_state = rule.step(_as_tensors(rule.init_phi()), grads, state)
    assert updates.shape == grads.shape
    assert updates.dtype == tf.float32
    assert [tuple(s.shape) for s in new_state] == [(n, 20)] * 4
    assert np.all(np.isfinite(updates.numpy()))
    assert np.any(updates.numpy() != 0.0)


def test_zero_output_layer_gives_zero_updates():
    rule = networks.CoordinatewiseLSTM()
    phi = rule.init_phi(seed=3)
    phi["output/kernel"] = np.zeros_like(phi["output/kernel"])
    phi["output/bias"] = np.zeros_like(phi["output/bias"])
    rng = np.random.default_rng(1)
    grads = tf.constant(rng.normal(0.0, 10.0, 50), tf.float32)
    state = _random_state(rule, 50, rng)
    updates, new_state = rule.step(_as_tensors(phi), grads, state)
    np.testing.assert_array_equal(updates.numpy(), np.zeros(50, np.float32))
    # The LSTM itself still ran: the state moved.
    assert not np.allclose(new_state[1].numpy(), state[1].numpy())


def _np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _np_log_sign(g, p):
    out = np.empty(g.shape + (2,), np.float64)
    big = np.abs(g) >= math.exp(-p)
    out[:, 0] = np.where(big, np.log(np.maximum(np.abs(g), 1e-300)) / p, -1.0)
    out[:, 1] = np.where(big, np.sign(g), g * math.exp(p))
    return out


def _np_lstm_step(rule, phi, grads, state):
    """The documented equations in float64 numpy (gate order i, f, g, o)."""
    x = _np_log_sign(grads.astype(np.float64), rule.preprocess_p)
    new_state = []
    for l, h in enumerate(rule.hidden_sizes):
        h_prev, c_prev = state[2 * l], state[2 * l + 1]
        z = (np.concatenate([x, h_prev], axis=1) @ phi[f"lstm_{l}/kernel"]
             + phi[f"lstm_{l}/bias"])
        i, f, g, o = (z[:, k * h:(k + 1) * h] for k in range(4))
        c = _np_sigmoid(f) * c_prev + _np_sigmoid(i) * np.tanh(g)
        x = _np_sigmoid(o) * np.tanh(c)
        new_state += [x, c]
    out = x @ phi["output/kernel"] + phi["output/bias"]
    return rule.output_scale * out[:, 0], new_state


def test_lstm_step_matches_numpy_equations():
    rule = networks.CoordinatewiseLSTM(output_scale=0.3)
    rng = np.random.default_rng(7)
    phi = rule.init_phi(seed=5)
    # Non-default biases and output so every term matters.
    phi = {k: (v + rng.normal(0.0, 0.3, v.shape)).astype(np.float32)
           for k, v in phi.items()}
    grads = np.array([1.0, -2e-3, 3e-7, 0.0, -40.0, 1e-5, 0.5],
                     np.float32)
    state = [rng.normal(0.0, 0.5, s).astype(np.float32)
             for s in rule.state_shapes(len(grads))]
    updates, new_state = rule.step(
        _as_tensors(phi), tf.constant(grads),
        tuple(tf.constant(s) for s in state))
    phi64 = {k: v.astype(np.float64) for k, v in phi.items()}
    want_updates, want_state = _np_lstm_step(
        rule, phi64, grads, [s.astype(np.float64) for s in state])
    np.testing.assert_allclose(updates.numpy(), want_updates, rtol=1e-5,
                               atol=1e-6)
    for got, want in zip(new_state, want_state):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_lstm_is_coordinatewise():
    rule = networks.CoordinatewiseLSTM()
    phi = _as_tensors(rule.init_phi(seed=2))
    rng = np.random.default_rng(3)
    g_a = tf.constant(rng.normal(0.0, 1.0, 6), tf.float32)
    g_b = tf.constant(rng.normal(0.0, 1e-3, 9), tf.float32)
    s_a, s_b = _random_state(rule, 6, rng), _random_state(rule, 9, rng)
    u_a, ns_a = rule.step(phi, g_a, s_a)
    u_b, ns_b = rule.step(phi, g_b, s_b)
    u_ab, ns_ab = rule.step(
        phi, tf.concat([g_a, g_b], 0),
        tuple(tf.concat([a, b], 0) for a, b in zip(s_a, s_b)))
    np.testing.assert_allclose(
        u_ab.numpy(), np.concatenate([u_a.numpy(), u_b.numpy()]),
        rtol=1e-6, atol=1e-7)
    for ab, a, b in zip(ns_ab, ns_a, ns_b):
        np.testing.assert_allclose(
            ab.numpy(), np.concatenate([a.numpy(), b.numpy()]),
            rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# Hand-designed rules against their Keras twins.

LR = 0.05
_TWINS = {
    "sgd": (lambda: networks.SGD(LR),
            lambda: keras.optimizers.SGD(LR)),
    "nag": (lambda: networks.NAG(LR, momentum=0.9),
            lambda: keras.optimizers.SGD(LR, momentum=0.9, nesterov=True)),
    "rmsprop": (lambda: networks.RMSprop(LR),
                lambda: keras.optimizers.RMSprop(LR)),
    "adam": (lambda: networks.Adam(LR),
             lambda: keras.optimizers.Adam(LR)),
}


@pytest.mark.parametrize("name", sorted(_TWINS))
def test_hand_designed_rule_equals_keras_twin(name):
    make_rule, make_keras = _TWINS[name]
    rule, opt = make_rule(), make_keras()
    rng = np.random.default_rng(11)
    theta0 = rng.normal(0.0, 1.0, 6).astype(np.float32)
    # Mixed scales, a sign flip and a zero coordinate.
    grads = [(rng.normal(0.0, 1.0, 6) * [1, 1e-2, 10, 1, 0, 3])
             .astype(np.float32) for _ in range(5)]

    var = keras.Variable(theta0.copy(), dtype="float32")
    phi = _as_tensors(rule.init_phi())
    state = rule.init_state(6)
    theta = tf.constant(theta0)
    for t, g in enumerate(grads):
        opt.apply_gradients([(tf.constant(g), var)])
        updates, state = rule.step(phi, tf.constant(g), state)
        theta = theta + updates
        np.testing.assert_allclose(theta.numpy(), var.numpy(), rtol=1e-5,
                                   atol=1e-7, err_msg=f"{name}, step {t + 1}")
    # The trajectory actually moved (on every coordinate with a gradient).
    moved = np.abs(theta.numpy() - theta0) > 1e-4
    assert moved.sum() == 5


def test_sgd_and_nag_one_step_hand_computed():
    g = tf.constant([2.0, -1.0], tf.float32)
    sgd = networks.SGD(0.1)
    u, _ = sgd.step(_as_tensors(sgd.init_phi()), g, sgd.init_state(2))
    np.testing.assert_allclose(u.numpy(), [-0.2, 0.1], rtol=1e-6)
    nag = networks.NAG(0.1, momentum=0.5)
    phi = _as_tensors(nag.init_phi())
    u1, s = nag.step(phi, g, nag.init_state(2))
    # m1 = -0.1 g; u1 = 0.5 m1 - 0.1 g = -0.15 g.
    np.testing.assert_allclose(u1.numpy(), [-0.3, 0.15], rtol=1e-6)
    u2, _ = nag.step(phi, g, s)
    # m2 = 0.5 m1 - 0.1 g = -0.15 g; u2 = 0.5 m2 - 0.1 g = -0.175 g.
    np.testing.assert_allclose(u2.numpy(), [-0.35, 0.175], rtol=1e-6)


# ---------------------------------------------------------------------------
# Registry, validation, configs, tracing.


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        networks.get("bogus")
    message = str(info.value)
    assert "'bogus'" in message
    for name in networks.RULES:
        assert repr(name) in message


@pytest.mark.parametrize("name", sorted(networks.RULES))
def test_config_round_trip(name):
    kwargs = {"hidden_sizes": (4, 3)} if name == "lstm" else {
        "learning_rate": 0.25}
    rule = networks.get(name, **kwargs)
    assert rule.name == name
    clone = networks.get(name, **rule.get_config())
    assert clone.get_config() == rule.get_config()
    assert repr(clone) == repr(rule)


@pytest.mark.parametrize("make, arg, received", [
    (lambda: networks.CoordinatewiseLSTM(hidden_sizes=()),
     "hidden_sizes", "hidden_sizes=()"),
    (lambda: networks.CoordinatewiseLSTM(hidden_sizes=(20, 0)),
     "hidden_sizes", "hidden_sizes=(20, 0)"),
    (lambda: networks.CoordinatewiseLSTM(output_scale=-1),
     "output_scale", "output_scale=-1"),
    (lambda: networks.CoordinatewiseLSTM(output_scale=float("inf")),
     "output_scale", "output_scale=inf"),
    (lambda: networks.CoordinatewiseLSTM(preprocess_p=0.0),
     "preprocess_p", "preprocess_p=0.0"),
    (lambda: networks.SGD(learning_rate=0),
     "learning_rate", "learning_rate=0"),
    (lambda: networks.Adam(learning_rate=-0.1),
     "learning_rate", "learning_rate=-0.1"),
    (lambda: networks.NAG(learning_rate=0.1, momentum=1.0),
     "momentum", "momentum=1.0"),
])
def test_invalid_arguments_name_argument_and_value(make, arg, received):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert f"`{arg}`" in message
    assert f"Received: {received}" in message


def test_invalid_preprocess_lists_valid_names():
    with pytest.raises(ValueError, match="log_sign"):
        networks.CoordinatewiseLSTM(preprocess="bogus")


@pytest.mark.parametrize("name", ["sgd", "nag", "rmsprop", "adam"])
def test_new_learning_rate_tensor_does_not_retrace(name):
    rule = networks.get(name)

    @tf.function
    def two_steps(phi, grads, state):
        u1, state = rule.step(phi, grads, state)
        u2, state = rule.step(phi, grads, state)
        return u1 + u2

    grads = tf.constant([1.0, -2.0, 0.5], tf.float32)
    small = two_steps({"learning_rate": tf.constant(0.01)}, grads,
                      rule.init_state(3))
    big = two_steps({"learning_rate": tf.constant(0.1)}, grads,
                    rule.init_state(3))
    assert two_steps.experimental_get_tracing_count() == 1
    # Every baseline's update is linear in the learning rate.
    np.testing.assert_allclose(big.numpy(), 10.0 * small.numpy(), rtol=1e-5)


def test_new_lstm_weights_do_not_retrace():
    rule = networks.CoordinatewiseLSTM(hidden_sizes=(3,))
    step = tf.function(rule.step)
    grads = tf.constant([1.0, -2.0], tf.float32)
    u0, _ = step(_as_tensors(rule.init_phi(0)), grads, rule.init_state(2))
    u1, _ = step(_as_tensors(rule.init_phi(1)), grads, rule.init_state(2))
    assert step.experimental_get_tracing_count() == 1
    assert not np.allclose(u0.numpy(), u1.numpy())

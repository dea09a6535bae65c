"""The gradient of the fused LSTM step (L2lLstmStepGrad): the same as the
TensorFlow ops' gradient, and meta-training on it the same as on them."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import fused, meta, networks
from tests.test_fused import NETWORKS, _grads, _phi, _random_state
from tests.test_meta import tiny_quadratic_config

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX") or "c++") is None,
    reason="no C++ compiler: the fused kernel cannot be built here")


def _gradients(step, rule, phi, grads, state, weights):
    """d/d(grads, state, phi) of sum(weights . outputs) through `step`."""
    phi = {k: tf.Variable(v) for k, v in phi.items()}
    with tf.GradientTape() as tape:
        tape.watch(grads)
        tape.watch(state)
        updates, new_state = step(phi, grads, state)
        outputs = (updates, *new_state)
        loss = sum(tf.reduce_sum(tf.cast(o, tf.float32) * w)
                   for o, w in zip(outputs, weights))
    return tape.gradient(loss, [grads, *state, *phi.values()])


def _weights(rule, n, seed=3):
    rng = np.random.default_rng(seed)
    shapes = [(n,), *rule.state_shapes(n)]
    return [tf.constant(rng.normal(size=s).astype(np.float32))
            for s in shapes]


def _assert_close(got, want):
    """Float32 gradients summed over many coordinates: within 1e-4, or
    1e-5 of the largest entry."""
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4,
                                   atol=1e-5 * float(np.max(np.abs(w))))


def _fused_step(rule):
    return lambda phi, g, s: fused.lstm_step(rule, phi, g, s,
                                             differentiable=True)


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("n", [0, 1, 5, 1003])
def test_same_gradient_as_tensorflow_ops(network, n):
    """With respect to the gradients (through log/sign, on both sides of
    its threshold and at exact zeros), the state and every weight."""
    rule = networks.CoordinatewiseLSTM(**network)
    phi = _phi(rule, seed=n + 2)
    grads = _grads(n)
    state = _random_state(rule, n, tf.float32)
    weights = _weights(rule, n)
    want = _gradients(rule.step, rule, phi, grads, state, weights)
    got = _gradients(_fused_step(rule), rule, phi, grads, state, weights)
    names = ["grads"] + [f"state[{s}]" for s in range(len(state))] + list(phi)
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, name
        scale = float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6 * scale,
                                   err_msg=name)


def test_gradient_through_an_unroll():
    """Three steps chained through the state and the parameters (as
    meta-training does): the state's gradients flow back step to step."""
    rule = networks.CoordinatewiseLSTM()
    n = 301
    phi = _phi(rule, seed=4)
    target = tf.constant(np.random.default_rng(5).normal(size=n)
                         .astype(np.float32))

    def meta_loss(step, phi):
        theta = tf.zeros([n])
        state = rule.init_state(n)
        total = 0.0
        for _ in range(3):
            grads = tf.stop_gradient(2.0 * (theta - target))
            updates, state = step(phi, grads, state)
            theta = theta + updates
            total += tf.reduce_sum(tf.square(theta - target))
        return total

    results = []
    for step in (rule.step, _fused_step(rule)):
        variables = {k: tf.Variable(v) for k, v in phi.items()}
        with tf.GradientTape() as tape:
            loss = meta_loss(step, variables)
        results.append((loss, tape.gradient(loss, list(variables.values()))))
    (want_loss, want), (got_loss, got) = results
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    _assert_close(got, want)


def test_bfloat16_state_gradient():
    """bfloat16 state: the state's gradients come back in bfloat16, within
    its rounding of the TF path's; phi's stay float32."""
    rule = networks.CoordinatewiseLSTM()
    n = 517
    phi = _phi(rule, seed=6)
    grads = _grads(n)
    state = _random_state(rule, n, tf.bfloat16)
    weights = _weights(rule, n)
    want = _gradients(rule.step, rule, phi, grads, state, weights)
    got = _gradients(_fused_step(rule), rule, phi, grads, state, weights)
    for g, w in zip(got[1:5], want[1:5]):
        assert g.dtype == tf.bfloat16
        g, w = (tf.cast(x, tf.float32).numpy() for x in (g, w))
        np.testing.assert_allclose(g, w, rtol=2 ** -7, atol=1e-6)
    _assert_close(got[5:], want[5:])


def test_gradient_does_not_depend_on_the_threads():
    """Many chunks of coordinates (their weight gradients added in order):
    two runs are bitwise equal, and the sum matches the TF path's."""
    rule = networks.CoordinatewiseLSTM()
    n = 40_000
    phi = _phi(rule, seed=7)
    grads = _grads(n)
    state = _random_state(rule, n, tf.float32)
    weights = _weights(rule, n)
    first = _gradients(_fused_step(rule), rule, phi, grads, state, weights)
    second = _gradients(_fused_step(rule), rule, phi, grads, state, weights)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    want = _gradients(rule.step, rule, phi, grads, state, weights)
    _assert_close(first[5:], want[5:])


def test_a_step_without_saved_activations_says_how_to_differentiate():
    rule = networks.CoordinatewiseLSTM()
    phi = {k: tf.Variable(v) for k, v in rule.init_phi(0).items()}
    with tf.GradientTape() as tape:
        updates, _ = fused.lstm_step(rule, phi, _grads(8),
                                     rule.init_state(8))
        loss = tf.reduce_sum(updates)
    with pytest.raises(ValueError, match="differentiable=True"):
        tape.gradient(loss, list(phi.values()))


def test_gradient_op_checks_the_saved_activations():
    rule = networks.CoordinatewiseLSTM()
    phi = {k: tf.constant(v) for k, v in rule.init_phi(0).items()}
    n = 6
    state = list(rule.init_state(n))
    kernels = [phi["lstm_0/kernel"], phi["lstm_1/kernel"]]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"saved must be \[8, 200\]"):
        fused.load().l2l_lstm_step_grad(
            tf.zeros([n]), state, tf.zeros([n, 200]), kernels,
            phi["output/kernel"], tf.zeros([n]), state)


# ---------------------------------------------------------------------------
# Meta-training.


def _meta_steps(tmp_path, fused_arg, steps=3):
    trainer = meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path),
                               fused=fused_arg)
    params, state, task = trainer.draw(0)
    losses, norms = [], []
    for k in range(steps):
        loss, params, state, norm, applied = trainer._meta_step(
            params, state, task, tf.constant(5 * k), tf.constant(1e-3))
        assert bool(applied)
        losses.append(float(loss))
        norms.append(float(norm))
    return trainer, losses, norms


def test_meta_training_on_the_kernel_equals_tensorflow_ops(tmp_path):
    fused_trainer, fused_losses, fused_norms = _meta_steps(
        tmp_path / "fused", None)
    tf_trainer, tf_losses, tf_norms = _meta_steps(tmp_path / "tf", False)
    assert fused_trainer.fused and not tf_trainer.fused
    assert isinstance(fused_trainer.step_rule, fused.Differentiable)
    # Validation steps on the kernel where the unrolls do.
    assert fused_trainer._val_run.fused and not tf_trainer._val_run.fused
    np.testing.assert_allclose(fused_losses, tf_losses, rtol=1e-5)
    np.testing.assert_allclose(fused_norms, tf_norms, rtol=1e-4)
    for name, value in fused_trainer.phi_numpy().items():
        np.testing.assert_allclose(value, tf_trainer.phi_numpy()[name],
                                   rtol=1e-4, atol=1e-6, err_msg=name)


def test_meta_training_fused_argument(tmp_path):
    with pytest.raises(ValueError, match="fused"):
        meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path), fused="yes")
    config = tiny_quadratic_config()
    config.network.preprocess = "log_sign_adam"
    with pytest.raises(ValueError, match="log_sign_adam"):
        meta.MetaTrainer(config, str(tmp_path / "a"), fused=True)
    trainer = meta.MetaTrainer(config, str(tmp_path / "b"))
    assert not trainer.fused and trainer.step_rule is trainer.rule
    assert not trainer._val_run.fused


def test_meta_training_logs_where_its_steps_run(tmp_path, caplog):
    caplog.set_level("INFO", logger="absl")  # Earlier tests may raise it.
    meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path / "a"))
    assert "step on the fused CPU kernel" in caplog.text
    config = tiny_quadratic_config()
    config.network.preprocess = "log_sign_adam"
    meta.MetaTrainer(config, str(tmp_path / "b"))
    assert "step on TensorFlow ops (preprocess='log_sign_adam'" in caplog.text
    meta.MetaTrainer(tiny_quadratic_config(), str(tmp_path / "c"), fused=False)
    assert "step on TensorFlow ops (fused=False)" in caplog.text

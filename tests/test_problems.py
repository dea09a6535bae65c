"""Tests of l2l_tf.problems against numpy and Keras re-implementations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import problems
from l2l_tf.problems import base

# ---------------------------------------------------------------------------
# Quadratic.


def _np_quadratic(theta, w, y):
    """f_i = ||W_i theta_i - y_i||^2 and its gradient 2 W_i^T (W_i theta_i - y_i)."""
    residual = np.einsum("kij,kj->ki", w, theta) - y
    f = np.sum(residual**2, axis=1)
    grad = 2.0 * np.einsum("kji,kj->ki", w, residual)
    return f, grad


def test_quadratic_loss_and_eval_loss_match_numpy():
    problem = problems.Quadratic(dim=3, num_functions=2)
    assert problem.param_shapes() == [(2, 3)]
    assert problem.num_params == 6
    params, (w, y) = problem.init(4)
    assert params[0].shape == (2, 3) and w.shape == (2, 3, 3)
    assert y.shape == (2, 3)
    # A point far from theta_0, so that W theta matters.
    theta = tf.constant([[1.0, -2.0, 0.5], [0.3, 0.0, -1.5]], tf.float32)
    f, _ = _np_quadratic(theta.numpy().astype(np.float64),
                         w.numpy().astype(np.float64),
                         y.numpy().astype(np.float64))
    loss, reported = problem.loss([theta], (w, y), ())
    np.testing.assert_allclose(loss.numpy(), f.sum(), rtol=1e-5)
    np.testing.assert_allclose(reported.numpy(), f.mean(), rtol=1e-5)
    np.testing.assert_allclose(problem.eval_loss([theta], (w, y)).numpy(),
                               f.mean(), rtol=1e-5)
    assert f[0] != pytest.approx(f[1])  # The two functions differ.


def test_quadratic_each_function_gets_its_own_gradient():
    problem = problems.Quadratic(dim=3, num_functions=2)
    _, (w, y) = problem.init(9)
    theta = tf.constant([[0.2, 1.0, -0.7], [-1.1, 0.4, 0.9]], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        loss, _ = problem.loss([theta], (w, y), problem.batch((w, y), 0))
    grad = tape.gradient(loss, theta).numpy()
    _, want = _np_quadratic(theta.numpy().astype(np.float64),
                            w.numpy().astype(np.float64),
                            y.numpy().astype(np.float64))
    # The sum (not the mean) over functions: no 1/num_functions factor.
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


def test_quadratic_init_is_seeded():
    problem = problems.Quadratic(dim=3, num_functions=2)
    (a,), (wa, ya) = problem.init(1)
    (b,), (wb, yb) = problem.init(1)
    (c,), (wc, yc) = problem.init(2)
    (d,), (wd, _) = problem.init(tf.constant([1, 0], tf.int32))
    for x, z in ((a, b), (wa, wb), (ya, yb), (a, d), (wa, wd)):
        np.testing.assert_array_equal(x.numpy(), z.numpy())
    for x, z in ((a, c), (wa, wc), (ya, yc)):
        assert not np.any(x.numpy() == z.numpy())


def test_quadratic_init_statistics():
    problem = problems.Quadratic(dim=10, num_functions=512)
    (theta,), (w, y) = problem.init(0)
    # 5,120 draws: the sample stddev is within a few percent of 0.01.
    assert np.std(theta.numpy()) == pytest.approx(0.01, rel=0.05)
    assert abs(np.mean(theta.numpy())) < 0.01 * 4 / np.sqrt(5120)
    assert np.std(w.numpy()) == pytest.approx(1.0, rel=0.03)
    assert np.std(y.numpy()) == pytest.approx(1.0, rel=0.05)
    # At theta ~ 0 the expected f_i is dim = 10.
    assert problem.eval_loss([theta], (w, y)).numpy() == pytest.approx(
        10.0, rel=0.1)


@pytest.mark.parametrize("kwargs, arg", [
    ({"dim": 0}, "dim"),
    ({"num_functions": 2.5}, "num_functions"),
    ({"init_stddev": -1.0}, "init_stddev"),
])
def test_quadratic_invalid_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`.*Received: {arg}="):
        problems.Quadratic(**kwargs)


# ---------------------------------------------------------------------------
# MLP.

N, FEATURES, CLASSES = 20, 5, 3


def _data():
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 1.0, (N, FEATURES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, N).astype(np.int32)
    return images, labels


def _mlp(**kwargs):
    images, labels = _data()
    kwargs = {"hidden_sizes": (4,), "batch_size": 8, "num_classes": CLASSES,
              **kwargs}
    return problems.MLP(images, labels, **kwargs)


_NP_ACTS = {
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
}


def _np_logits(params, images, activation="sigmoid"):
    x = images.astype(np.float64)
    p = [v.numpy().astype(np.float64) for v in params]
    for l in range(len(p) // 2):
        x = x @ p[2 * l] + p[2 * l + 1]
        if l < len(p) // 2 - 1:
            x = _NP_ACTS[activation](x)
    return x


def _np_xent(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.mean(log_probs[np.arange(len(labels)), labels])


def _big_params(problem, seed=0):
    """Weights far larger than the init, so the losses differ visibly."""
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(0.0, 1.0, s), tf.float32)
            for s in problem.param_shapes()]


def test_mlp_param_shapes_follow_keras_dense_layout():
    problem = _mlp()
    assert problem.param_shapes() == [(5, 4), (4,), (4, 3), (3,)]
    assert problem.num_params == 5 * 4 + 4 + 4 * 3 + 3
    params, _ = problem.init(0)
    assert [tuple(p.shape) for p in params] == problem.param_shapes()
    # The paper's MNIST net: 784-20-10, 15,910 parameters.
    paper = problems.MLP(np.zeros((2, 784), np.float32), np.zeros(2, np.int32))
    assert paper.num_params == 15910


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
def test_mlp_loss_matches_numpy_on_the_batch(activation):
    problem = _mlp(activation=activation)
    params = _big_params(problem)
    _, task = problem.init(3)
    images, labels = problem.batch(task, 5)
    assert images.shape == (8, FEATURES) and labels.shape == (8,)
    assert labels.dtype == tf.int32
    loss, reported = problem.loss(params, task, (images, labels))
    want = _np_xent(_np_logits(params, images.numpy(), activation),
                    labels.numpy())
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(reported.numpy(), want, rtol=1e-5)


def test_mlp_batch_rows_come_from_the_data():
    problem = _mlp()
    _, task = problem.init(3)
    all_images, all_labels = _data()
    images, labels = problem.batch(task, 0)
    for row, label in zip(images.numpy(), labels.numpy()):
        match = np.flatnonzero(np.all(all_images == row, axis=1))
        assert len(match) == 1 and all_labels[match[0]] == label


def test_mlp_eval_loss_uses_all_data():
    problem = _mlp()
    params = _big_params(problem, seed=1)
    _, task = problem.init(0)
    images, labels = _data()
    want = _np_xent(_np_logits(params, images), labels)
    np.testing.assert_allclose(problem.eval_loss(params, task).numpy(), want,
                               rtol=1e-5)


def test_mlp_initial_loss_is_about_log_num_classes():
    problem = _mlp()
    params, task = problem.init(0)
    assert problem.eval_loss(params, task).numpy() == pytest.approx(
        np.log(CLASSES), abs=0.02)


def test_mlp_batches_are_deterministic_per_task_and_step():
    problem = _mlp()
    _, task = problem.init(3)
    _, other_task = problem.init(4)
    first = [problem.batch(task, t)[1].numpy() for t in range(3)]
    again = [problem.batch(task, tf.constant(t))[1].numpy() for t in range(3)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    # Different steps (and tasks) draw different examples.
    images = [problem.batch(task, t)[0].numpy() for t in range(3)]
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[1], images[2])
    assert not np.array_equal(images[0], problem.batch(other_task, 0)[0])


def test_mlp_logits_equal_keras_sequential():
    problem = _mlp(hidden_sizes=(4, 6), activation="tanh")
    params = _big_params(problem, seed=2)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(4, activation="tanh"),
        keras.layers.Dense(6, activation="tanh"),
        keras.layers.Dense(CLASSES),
    ])
    model.set_weights([p.numpy() for p in params])
    images, labels = _data()
    np.testing.assert_allclose(
        problem.logits(params, tf.constant(images)).numpy(),
        model(images).numpy(), rtol=1e-5, atol=1e-6)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, model(images))
    np.testing.assert_allclose(
        problem.eval_loss(params, None).numpy(), keras_loss.numpy(),
        rtol=1e-5)


def test_mlp_invalid_activation_lists_valid_names():
    with pytest.raises(ValueError) as info:
        _mlp(activation="gelu")
    message = str(info.value)
    assert "`activation`" in message and "'gelu'" in message
    for name in problems.ACTIVATIONS:
        assert repr(name) in message


@pytest.mark.parametrize("kwargs, arg", [
    ({"hidden_sizes": (4, 0)}, "hidden_sizes"),
    ({"batch_size": 0}, "batch_size"),
])
def test_mlp_invalid_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`.*Received: {arg}="):
        _mlp(**kwargs)


def test_mlp_mismatched_data_is_rejected():
    images, labels = _data()
    with pytest.raises(ValueError, match="images"):
        problems.MLP(images, labels[:-1])


# ---------------------------------------------------------------------------
# Registry and seeds.


def test_make_unknown_problem_names_argument():
    with pytest.raises(ValueError) as info:
        problems.make("bogus")
    message = str(info.value)
    assert "`problem`" in message and "'bogus'" in message
    for name in problems.PROBLEMS:
        assert repr(name) in message


def test_make_quadratic_passes_arguments():
    problem = problems.make("quadratic", dim=4, num_functions=3)
    assert isinstance(problem, problems.Quadratic)
    assert problem.param_shapes() == [(3, 4)]


def test_seed_pair_forms():
    np.testing.assert_array_equal(base.seed_pair(5).numpy(), [5, 0])
    np.testing.assert_array_equal(base.seed_pair(tf.constant(5)).numpy(),
                                  [5, 0])
    np.testing.assert_array_equal(
        base.seed_pair(tf.constant([5, 7], tf.int64)).numpy(), [5, 7])
    assert base.seed_pair(tf.constant([5, 7], tf.int64)).dtype == tf.int32

"""LearnedOptimizer inside Keras: faults, dtypes, shapes, strategies, XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import networks, saved_model
from l2l_tf.optimizer import LearnedOptimizer


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    rule = networks.CoordinatewiseLSTM()
    path = str(tmp_path_factory.mktemp("w") / "export")
    saved_model.export(path, rule, rule.init_phi(seed=11))
    return path


def _states(opt):
    return [s.numpy().copy() for ss in opt._lstm_states for s in ss]


def test_non_finite_gradient_skips_the_whole_step(weights):
    a = keras.Variable(np.ones((2, 3), np.float32))
    b = keras.Variable(np.zeros(4, np.float32))
    opt = LearnedOptimizer(weights=weights, weight_decay=0.1)
    good = [tf.fill((2, 3), 0.5), tf.fill((4,), -0.5)]
    opt.apply_gradients(zip(good, [a, b]))
    before = (a.numpy().copy(), b.numpy().copy(), _states(opt))
    for bad in (np.nan, np.inf):
        grads = [tf.fill((2, 3), 0.5),
                 tf.constant([0.1, bad, 0.2, 0.3], tf.float32)]
        opt.apply_gradients(zip(grads, [a, b]))
        np.testing.assert_array_equal(a.numpy(), before[0])
        np.testing.assert_array_equal(b.numpy(), before[1])
        for got, want in zip(_states(opt), before[2]):
            np.testing.assert_array_equal(got, want)
    assert int(opt.skipped_steps.numpy()) == 2
    opt.apply_gradients(zip(good, [a, b]))
    assert not np.array_equal(a.numpy(), before[0])
    assert int(opt.skipped_steps.numpy()) == 2


def test_weight_decay_subtracts_lr_wd_theta(weights):
    g = tf.constant([0.3, -0.2, 0.1])
    moved = []
    for wd in (None, 0.5):
        var = keras.Variable(np.array([1.0, -2.0, 4.0], np.float32))
        opt = LearnedOptimizer(weights=weights, learning_rate=0.1,
                               weight_decay=wd)
        opt.apply_gradients([(g, var)])
        moved.append(var.numpy())
    np.testing.assert_allclose(
        moved[1] - moved[0], -0.1 * 0.5 * np.array([1.0, -2.0, 4.0]),
        rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_variables_of_every_float_dtype(weights, dtype):
    start = np.linspace(-1, 1, 6).astype(np.float32)
    grads = np.array([0.5, -0.25, 1e-3, 2.0, -4.0, 0.0], np.float32)
    ref = keras.Variable(start)
    LearnedOptimizer(weights=weights).apply_gradients(
        [(tf.constant(grads), ref)])
    var = keras.Variable(start.astype(dtype) if dtype != "bfloat16" else
                         start, dtype=dtype)
    opt = LearnedOptimizer(weights=weights)
    opt.apply_gradients([(tf.cast(grads, dtype), var)])
    assert var.dtype == dtype
    assert all(s.dtype == "float32" for ss in opt._lstm_states for s in ss)
    tol = {"float16": 2e-3, "bfloat16": 2e-2, "float64": 1e-6}[dtype]
    np.testing.assert_allclose(
        np.asarray(var.numpy(), np.float64), ref.numpy(), atol=tol)


def test_scalar_and_empty_variables(weights):
    scalar = keras.Variable(np.float32(2.0))
    empty = keras.Variable(np.zeros((0, 5), np.float32))
    opt = LearnedOptimizer(weights=weights)
    opt.apply_gradients([(tf.constant(1.5), scalar),
                         (tf.zeros((0, 5)), empty)])
    assert scalar.shape == () and empty.shape == (0, 5)
    rule, phi, _ = saved_model.load(weights)
    u, _ = rule.step({k: tf.constant(v) for k, v in phi.items()},
                     tf.constant([1.5]), rule.init_state(1))
    np.testing.assert_allclose(scalar.numpy(), 2.0 + u.numpy()[0], rtol=1e-6)


def test_sparse_gradients_equal_their_dense_equivalent(weights):
    ids = tf.constant([[1, 3], [3, 0]])

    def run(sparse):
        emb = keras.layers.Embedding(6, 4, embeddings_initializer="ones")
        emb.build((None, 2))
        opt = LearnedOptimizer(weights=weights)
        for _ in range(2):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(emb(ids)) * [[1.0], [2.0]])
            grad = tape.gradient(loss, emb.embeddings.value)
            assert isinstance(grad, tf.IndexedSlices)
            if not sparse:
                grad = tf.convert_to_tensor(grad)
            opt.apply_gradients([(grad, emb.embeddings)])
        return emb.embeddings.numpy(), _states(opt)

    (sparse_w, sparse_s), (dense_w, dense_s) = run(True), run(False)
    np.testing.assert_allclose(sparse_w, dense_w, rtol=1e-6)
    # Rows 2, 4, 5 got no gradient, yet their state advanced (documented).
    assert np.any(sparse_s[0].reshape(6, 4, 20)[[2, 4, 5]] != 0)
    for got, want in zip(sparse_s, dense_s):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def _fit_losses(weights, strategy=None, jit_compile=False, steps=4):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64 * steps, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=64 * steps)
    scope = strategy.scope() if strategy else tf.name_scope("single")
    with scope:
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8,)),
                                  keras.layers.Dense(5, activation="sigmoid"),
                                  keras.layers.Dense(3)])
        model.compile(optimizer=LearnedOptimizer(weights=weights),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True),
                      jit_compile=jit_compile)
    hist = model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    return np.array(hist.history["loss"]), model.get_weights()


def test_jit_compile_gives_the_same_losses(weights):
    plain, w_plain = _fit_losses(weights)
    xla, w_xla = _fit_losses(weights, jit_compile=True)
    np.testing.assert_allclose(xla, plain, rtol=1e-5)
    for a, b in zip(w_xla, w_plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_mirrored_strategy_matches_single_device(weights):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    strategy = tf.distribute.MirroredStrategy(devices)
    assert strategy.num_replicas_in_sync == 2
    single, w_single = _fit_losses(weights)
    mirrored, w_mirrored = _fit_losses(weights, strategy=strategy)
    np.testing.assert_allclose(mirrored, single, rtol=1e-5)
    for a, b in zip(w_mirrored, w_single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

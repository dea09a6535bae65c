"""LearnedOptimizer inside Keras: faults, dtypes, shapes, strategies, XLA."""

import collections

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


@pytest.mark.parametrize("clip", [dict(clipvalue=1.0), dict(clipnorm=1.0),
                                  dict(global_clipnorm=1.0)])
def test_clipping_cannot_turn_a_non_finite_step_into_a_finite_one(weights,
                                                                  clip):
    # clip_by_value(inf) is finite: without care the step would be applied.
    a = keras.Variable(np.ones(2, np.float32))
    e = keras.Variable(np.ones((3, 2), np.float32))
    opt = LearnedOptimizer(weights=weights, **clip)
    assert int(opt.skipped_steps) == 0  # Readable before the first step.
    sparse = tf.IndexedSlices(tf.constant([[0.5, 0.5]]), tf.constant([1]),
                              tf.constant([3, 2]))
    opt.apply_gradients([(tf.constant([np.inf, 1.0]), a), (sparse, e)])
    np.testing.assert_array_equal(a.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(e.numpy(), np.ones((3, 2)))
    assert int(opt.skipped_steps) == 1
    opt.apply_gradients([(tf.constant([3.0, 1.0]), a), (sparse, e)])
    assert not np.array_equal(a.numpy(), [1.0, 1.0])
    assert int(opt.skipped_steps) == 1


def test_repr_names_the_weights_and_rate(weights):
    opt = LearnedOptimizer(weights=weights, learning_rate=0.5,
                           routes={"emb": "adam"})
    assert repr(opt) == (
        f"LearnedOptimizer(weights={weights!r}, learning_rate=0.5, network="
        f"{networks.CoordinatewiseLSTM().get_config()!r}, routes=['emb'])")


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


def test_mirrored_strategy_matches_single_device(weights, two_cpu_strategy):
    strategy = two_cpu_strategy
    assert strategy.num_replicas_in_sync == 2
    single, w_single = _fit_losses(weights)
    mirrored, w_mirrored = _fit_losses(weights, strategy=strategy)
    np.testing.assert_allclose(mirrored, single, rtol=1e-5)
    for a, b in zip(w_mirrored, w_single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_routes_send_matching_variables_to_a_hand_designed_rule(weights):
    emb = keras.Variable(np.ones((5, 2), np.float32), name="embeddings")
    dense = keras.Variable(np.ones(3, np.float32), name="kernel")
    routes = {"embed": {"rule": "adam", "learning_rate": 0.01}}
    opt = LearnedOptimizer(weights=weights, routes=routes)
    twin = keras.optimizers.Adam(learning_rate=0.01)
    emb_twin = keras.Variable(np.ones((5, 2), np.float32))
    rng = np.random.default_rng(2)
    for _ in range(3):
        g_emb = tf.constant(rng.normal(size=(5, 2)), tf.float32)
        g_dense = tf.constant(rng.normal(size=3), tf.float32)
        opt.apply_gradients([(g_emb, emb), (g_dense, dense)])
        twin.apply_gradients([(g_emb, emb_twin)])
    np.testing.assert_allclose(emb.numpy(), emb_twin.numpy(), rtol=1e-5)
    # Adam's state (m, v, t) for the embedding, the LSTM's for the kernel.
    assert [tuple(s.shape) for s in opt._lstm_states[0]] == [(10,), (10,), ()]
    assert [tuple(s.shape) for s in opt._lstm_states[1]] == [(3, 20)] * 4
    config = opt.get_config()
    assert config["routes"]["embed"]["rule"] == "adam"
    assert LearnedOptimizer.from_config(config).get_config() == config


@pytest.mark.parametrize("routes,message", [
    ({"x": {"rule": "lstm"}}, r"routes\['x'\]\['rule'\]` must be one of"),
    ({"(": {"rule": "adam"}}, "not a regular expression"),
    (["adam"], "`routes` must be a dict"),
])
def test_bad_routes_raise_clear_errors(weights, routes, message):
    with pytest.raises(ValueError, match=message):
        LearnedOptimizer(weights=weights, routes=routes)


def test_gradient_accumulation_advances_state_once_per_real_step(weights):
    var = keras.Variable(np.zeros(3, np.float32))
    opt = LearnedOptimizer(weights=weights, gradient_accumulation_steps=2)
    g1, g2 = tf.constant([0.2, -0.4, 1.0]), tf.constant([0.6, 0.0, -1.0])
    opt.apply_gradients([(g1, var)])
    assert np.all(var.numpy() == 0) and not np.any(_states(opt)[0])
    opt.apply_gradients([(g2, var)])
    # One LSTM step on the mean of the two gradients.
    ref = keras.Variable(np.zeros(3, np.float32))
    ref_opt = LearnedOptimizer(weights=weights)
    ref_opt.apply_gradients([((g1 + g2) / 2, ref)])
    np.testing.assert_allclose(var.numpy(), ref.numpy(), rtol=1e-6)
    for got, want in zip(_states(opt), _states(ref_opt)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_loss_scale_optimizer_skips_leave_state_untouched(weights):
    var = keras.Variable(np.ones(4, np.float32))
    opt = keras.optimizers.LossScaleOptimizer(
        LearnedOptimizer(weights=weights))
    opt.apply_gradients([(tf.constant([0.1, 0.2, 0.3, 0.4]), var)])
    inner = opt.inner_optimizer
    before = (var.numpy().copy(), _states(inner))
    opt.apply_gradients([(tf.constant([0.1, np.inf, 0.3, 0.4]), var)])
    np.testing.assert_array_equal(var.numpy(), before[0])
    for got, want in zip(_states(inner), before[1]):
        np.testing.assert_array_equal(got, want)


def test_mixed_float16_policy_trains(weights):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4),
                                  keras.layers.Dense(1, dtype="float32")])
        model.compile(optimizer=LearnedOptimizer(weights=weights), loss="mse")
        assert isinstance(model.optimizer,
                          keras.optimizers.LossScaleOptimizer)
        x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
        before = [w.copy() for w in model.get_weights()]
        model.fit(x, x[:, :1], batch_size=16, epochs=1, verbose=0)
        after = model.get_weights()
        assert all(np.all(np.isfinite(w)) for w in after)
        assert any(not np.array_equal(a, b) for a, b in zip(after, before))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_learning_rate_schedule_scales_the_update(weights):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [1.0, 0.5])
    var = keras.Variable(np.zeros(2, np.float32))
    ref = keras.Variable(np.zeros(2, np.float32))
    opt = LearnedOptimizer(weights=weights, learning_rate=schedule)
    ref_opt = LearnedOptimizer(weights=weights)
    g = tf.constant([0.3, -0.7])
    deltas = []
    for _ in range(3):
        a, b = var.numpy().copy(), ref.numpy().copy()
        opt.apply_gradients([(g, var)])
        ref_opt.apply_gradients([(g, ref)])
        deltas.append(((var.numpy() - a), (ref.numpy() - b)))
    np.testing.assert_allclose(deltas[0][0], deltas[0][1], rtol=1e-6)
    np.testing.assert_allclose(deltas[2][0], 0.5 * deltas[2][1], rtol=1e-5)


def test_use_ema_leaves_the_average_in_the_model(weights):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    trained = {}
    for use_ema in (False, True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        opt = LearnedOptimizer(weights=weights, use_ema=use_ema,
                               ema_momentum=0.5, learning_rate=100.0)
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, x[:, :1], batch_size=16, epochs=1, verbose=0)
        trained[use_ema] = model.get_weights()
    # Keras finalizes an EMA run by writing the averages into the model.
    np.testing.assert_allclose(
        trained[True][0], opt._model_variables_moving_average[0].numpy())
    assert not np.allclose(trained[True][0], trained[False][0])


def test_backup_and_restore_resumes_after_a_crash(weights, tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = x[:, :1] * 2

    def make():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=LearnedOptimizer(weights=weights), loss="mse")
        return model

    clean = make().fit(x, y, batch_size=16, epochs=4, shuffle=False,
                       verbose=0).history["loss"]

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        make().fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                   callbacks=[backup, Crash()])
    resumed = make().fit(x, y, batch_size=16, epochs=4, shuffle=False,
                         verbose=0, callbacks=[backup]).history["loss"]
    np.testing.assert_allclose(resumed, clean[-len(resumed):], rtol=1e-5)
    assert len(resumed) == 2


@pytest.mark.parametrize("kwargs,message", [
    (dict(learning_rate=-1), "learning_rate` must be a positive finite"),
    (dict(learning_rate=float("nan")), "learning_rate` must be a positive"),
    (dict(routes={"x": {"rule": "adam", "lr": 1}}), r"routes\['x'\]` holds"),
    (dict(routes={1: "adam"}), "keys must be regular expressions"),
    (dict(network="x"), "`network` must be a dict"),
])
def test_bad_arguments_name_themselves(weights, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LearnedOptimizer(weights=weights, **kwargs)


def test_integer_learning_rate_is_accepted(weights):
    assert LearnedOptimizer(weights=weights, learning_rate=1).get_config()[
        "learning_rate"] == 1.0


def _one_update(weights, grads, **kwargs):
    """The variables after one apply of `grads` to ones-initialized variables."""
    variables = [keras.Variable(np.ones(g.shape, np.float32)) for g in grads]
    opt = LearnedOptimizer(weights=weights, **kwargs)
    opt.apply_gradients(zip(grads, variables))
    return [v.numpy() for v in variables]


def test_clipping_arguments_clip_as_for_adam(weights):
    """clipnorm, clipvalue and global_clipnorm clip the gradient the LSTM
    sees exactly as Keras clips Adam's: compared with an unclipped optimizer
    fed the gradient clipped by hand."""
    g1 = tf.constant([3.0, -4.0])              # norm 5
    g2 = tf.constant([[0.5, 12.0], [0.0, 0.0]])  # norm ~12.01
    # clipnorm: each gradient to norm <= 1, separately.
    want = _one_update(weights, [g1 / 5.0, g2 / tf.norm(g2)])
    got = _one_update(weights, [g1, g2], clipnorm=1.0)
    # clipvalue: each entry into [-0.6, 0.6].
    want_v = _one_update(weights, [tf.clip_by_value(g, -0.6, 0.6)
                                   for g in (g1, g2)])
    got_v = _one_update(weights, [g1, g2], clipvalue=0.6)
    # global_clipnorm: both together to a joint norm of 2.
    joint = float(np.sqrt(25.0 + 0.25 + 144.0))
    want_g = _one_update(weights, [g1 * 2.0 / joint, g2 * 2.0 / joint])
    got_g = _one_update(weights, [g1, g2], global_clipnorm=2.0)
    for a, b in zip(got + got_v + got_g, want + want_v + want_g):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # And the clipping mattered: unclipped updates differ.
    plain = _one_update(weights, [g1, g2])
    assert not np.allclose(plain[0], got[0])
    # Keras's own rule for Adam: the same clipped gradients.
    adam = keras.optimizers.Adam(clipnorm=1.0)
    np.testing.assert_allclose(adam._clip_gradients([g1])[0].numpy(),
                               (g1 / 5.0).numpy(), rtol=1e-6)


def test_loss_scale_factor_divides_the_gradients_back(weights):
    """With loss_scale_factor s, Keras scales the loss by s and the optimizer
    divides the gradients by s before the update: gradients of s * loss give
    the update of the unscaled gradients."""
    g = tf.constant([0.3, -2.0, 1e-4])
    want = _one_update(weights, [g])
    got = _one_update(weights, [g * 1024.0], loss_scale_factor=1024.0)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert not np.allclose(_one_update(weights, [g * 1024.0])[0], want[0])
    # In model.fit the scaled loss is never what is reported.
    opt = LearnedOptimizer(weights=weights, loss_scale_factor=64.0)
    assert opt.scale_loss(tf.constant(2.0)).numpy() == 128.0


def _custom_loop(weights, strategy, steps=3):
    """A custom training loop: strategy.run over a distributed dataset."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32 * steps, 6)).astype(np.float32)
    y = rng.normal(size=(32 * steps, 1)).astype(np.float32)
    with strategy.scope():
        keras.utils.set_random_seed(4)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4),
                                  keras.layers.Dense(1)])
        opt = LearnedOptimizer(weights=weights)
        opt.build(model.trainable_variables)
    data = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(32))

    @tf.function
    def train_step(xb, yb):
        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                per_example = tf.reduce_mean(tf.square(model(xb) - yb), axis=1)
                loss = tf.nn.compute_average_loss(per_example,
                                                  global_batch_size=32)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        losses = strategy.run(replica_step, args=(xb, yb))
        return strategy.reduce("SUM", losses, axis=None)

    start = [v.numpy().copy() for v in model.trainable_variables]
    losses = [float(train_step(xb, yb)) for xb, yb in data]
    end = [v.numpy() for v in model.trainable_variables]
    assert all(not np.allclose(a, b) for a, b in zip(start, end))
    return np.array(losses), end


def test_custom_training_loop_under_mirrored_strategy(weights,
                                                     two_cpu_strategy):
    single, w_single = _custom_loop(weights, tf.distribute.get_strategy())
    mirrored, w_mirrored = _custom_loop(weights, two_cpu_strategy)
    np.testing.assert_allclose(mirrored, single, rtol=1e-5)
    for a, b in zip(w_mirrored, w_single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _apply_graph_ops(weights, size):
    var = keras.Variable(tf.zeros([size]))
    opt = LearnedOptimizer(weights=weights)
    opt.build([var])
    fn = tf.function(lambda g: opt.apply([g], [var]))
    graph = fn.get_concrete_function(tf.TensorSpec([size])).graph
    # TensorFlow writes small zero tensors as Const and large ones as Fill:
    # count the other ops.
    kinds = collections.Counter(op.type for op in graph.get_operations()
                                if op.type not in ("Const", "Fill"))
    return kinds, opt, var, fn


def test_large_variables_need_no_per_coordinate_work(weights):
    """The update's graph is the same size for 10 and for 2 million
    coordinates (no Python loop over coordinates), and the state is built
    on the variable's device from zeros (no host-side array of N x 80)."""
    small, _, _, _ = _apply_graph_ops(weights, 10)
    big, opt, var, fn = _apply_graph_ops(weights, 2_000_000)
    assert small == big
    fn(tf.fill([2_000_000], 0.01))
    # Every coordinate moved by the same learned update (same gradient).
    moved = var.numpy()
    assert moved[0] != 0.0
    np.testing.assert_array_equal(moved, np.full_like(moved, moved[0]))
    states = [s for ss in opt._lstm_states for s in ss]
    assert sum(int(np.prod(s.shape)) for s in states) == 2_000_000 * 80

"""KerasModel: any keras.Model as an optimizee, and meta-training on it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import mnist_convnet
from l2l_tf import meta, problems, unroll
from l2l_tf.problems.keras_model import KerasModel


def tiny_model():
    return keras.Sequential([keras.Input((6,)),
                             keras.layers.Dense(4, activation="tanh"),
                             keras.layers.Dense(3)])


def _data(n=40):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 6)).astype(np.float32),
            rng.integers(0, 3, size=n).astype(np.int32))


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_loss_equals_the_model_called_with_those_weights():
    x, y = _data()
    problem = KerasModel(tiny_model, x, y, LOSS, batch_size=8)
    params, task = problem.init(3)
    model = tiny_model()
    model.set_weights([p.numpy() for p in params])
    xb, yb = problem.batch(task, 2)
    loss, reported = problem.loss(params, task, (xb, yb))
    np.testing.assert_allclose(loss.numpy(), LOSS(yb, model(xb)).numpy(),
                               rtol=1e-6)
    assert reported is loss
    np.testing.assert_allclose(problem.eval_loss(params, task).numpy(),
                               LOSS(y, model(x)).numpy(), rtol=1e-6)


def test_init_is_seeded():
    x, y = _data()
    problem = KerasModel(tiny_model, x, y, LOSS)
    a, _ = problem.init(1)
    b, _ = problem.init(1)
    c, _ = problem.init(2)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u.numpy(), v.numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())
    assert problem.param_shapes() == [(6, 4), (4,), (4, 3), (3,)]


def test_parity_with_model_fit():
    """3 steps of model.fit with LearnedOptimizer == 3 steps of the unroll."""
    from l2l_tf.optimizer import LearnedOptimizer  # pylint: disable=import-outside-toplevel
    x, y = _data(64)
    problem = KerasModel(tiny_model, x, y, LOSS, batch_size=16)
    params, task = problem.init(5)
    batches = [problem.batch(task, t) for t in range(3)]
    model = tiny_model()
    model.set_weights([p.numpy() for p in params])
    opt = LearnedOptimizer(weights="quadratic")
    model.compile(optimizer=opt, loss=LOSS)
    model.fit(tf.concat([b[0] for b in batches], 0),
              tf.concat([b[1] for b in batches], 0), batch_size=16,
              shuffle=False, verbose=0)
    phi = {n: tf.constant(v.numpy()) for n, v in zip(opt._phi_names, opt._phi)}
    state = opt.rule.init_state(problem.num_params)
    for t in range(3):
        params, state, _ = unroll.opt_step(opt.rule, phi, problem, params,
                                           state, task, t)
    for got, want in zip(model.get_weights(), params):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-7)


def test_meta_training_on_a_keras_model_reaches_every_weight(tmp_path):
    config = mnist_convnet.get_config()
    config.meta.run_length = 4
    config.meta.unroll_length = 2
    config.meta.num_iterations = 2
    config.checkpoint_every = 2
    config.eval_every = 2
    config.validation.num_seeds = 2
    config.validation.horizon = 3
    trainer = meta.MetaTrainer(config, str(tmp_path))
    before = trainer.phi_numpy()
    result = trainer.train()
    after = trainer.phi_numpy()
    assert result.iterations == 2 and np.isfinite(result.best_validation)
    for name in before:
        assert np.all(before[name] != after[name]), name


@pytest.mark.parametrize("build_fn,message", [
    ("nomodule", "'package.module:function'"),
    ("no_such_module_xyz:f", "cannot be imported"),
    ("l2l_tf.problems.zoo:missing", "has no function 'missing'"),
])
def test_bad_build_fn_raises_clearly(build_fn, message):
    x, y = _data()
    with pytest.raises(ValueError, match=message):
        KerasModel(build_fn, x, y, LOSS)


def test_make_builds_a_keras_model_problem_on_embedded_mnist():
    problem = problems.make("keras_model", "validation",
                            build_fn="l2l_tf.problems.zoo:mnist_convnet",
                            loss="sparse_categorical_crossentropy")
    assert problem.x.shape == (1000, 784)
    params, task = problem.init(0)
    loss, _ = problem.loss(params, task, problem.batch(task, 0))
    assert loss.shape == () and abs(float(loss) - np.log(10)) < 0.3
    assert problem.num_params == 5 * 5 * 8 + 8 + 12 * 12 * 8 * 10 + 10

"""The paper's CIFAR-10 experiment: the conv net, its two networks, and the
configs' code path (tfds under mock_data, held-out classes)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import cifar10, cifar10_standin, cifar10_two_networks
from configs import cifar_heldout, cifar_heldout_cifar2
from l2l_tf import evaluation, grouped, meta, networks, problems
from l2l_tf.problems import zoo
from l2l_tf.problems.keras_model import KerasModel

# By hand: conv kernels 5*5*3*16 + 2 * 5*5*16*16 (no bias), batch norm
# gamma and beta 3 * 2 * 16, fc 4*4*16*32 + 32, output 32*10 + 10.
CONV, BN, FC, OUT = 5 * 5 * 3 * 16 + 2 * 5 * 5 * 16 * 16, 3 * 2 * 16, \
    4 * 4 * 16 * 32 + 32, 32 * 10 + 10


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(n, 32, 32, 3)).astype(np.float32),
            rng.integers(0, 10, size=n).astype(np.int32))


def test_conv_net_parameter_count_and_shapes():
    model = zoo.cifar_convnet()
    assert CONV + BN + FC + OUT == 22_650
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) \
        == 22_650
    # Batch norm's moving mean and variance: 3 * 2 * 16, not trainable.
    assert sum(int(np.prod(v.shape))
               for v in model.non_trainable_variables) == 96
    x, _ = _images(2)
    probs = model(x)
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(tf.reduce_sum(probs, -1), [1, 1], rtol=1e-5)
    assert zoo.cifar_convnet(num_classes=5)(x).shape == (2, 5)


def test_conv_net_loss_with_batch_norm_on_split_statistics():
    x, y = _images(6)
    problem = KerasModel(zoo.cifar_convnet, x, y,
                         "sparse_categorical_crossentropy", batch_size=4,
                         eval_training=True)
    params, task = problem.init(0)
    loss, _ = problem.loss(params, task, problem.batch(task, 0))
    assert loss.shape == () and np.isfinite(float(loss))
    model = zoo.cifar_convnet()
    for v, p in zip(model.trainable_variables, params):
        v.assign(p)
    want = keras.losses.sparse_categorical_crossentropy(
        y, model(x, training=True))
    np.testing.assert_allclose(problem.eval_loss(params, task),
                               np.mean(want), rtol=1e-5)
    inference = KerasModel(zoo.cifar_convnet, x, y,
                           "sparse_categorical_crossentropy")
    assert float(inference.eval_loss(params, task)) != pytest.approx(
        float(problem.eval_loss(params, task)), rel=1e-3)


def test_two_networks_update_the_parameters_their_rule_names():
    x, y = _images(4)
    problem = KerasModel(zoo.cifar_convnet, x, y,
                         "sparse_categorical_crossentropy")
    groups = cifar10_two_networks.get_config().network_groups
    owners = dict(zip(problem.param_names(),
                      grouped.assign(groups, problem.param_names())))
    assert owners == {
        "conv_0/kernel": "conv", "bn_0/gamma": "conv", "bn_0/beta": "conv",
        "conv_1/kernel": "conv", "bn_1/gamma": "conv", "bn_1/beta": "conv",
        "conv_2/kernel": "conv", "bn_2/gamma": "conv", "bn_2/beta": "conv",
        "fc_0/kernel": "fc", "fc_0/bias": "fc",
        "logits/kernel": "fc", "logits/bias": "fc"}
    rule = grouped.Grouped(groups).bind(problem)
    assert rule.group_sizes() == {"conv": CONV + BN, "fc": FC + OUT}
    phi = rule.init_phi(seed=1)
    n = problem.num_params
    grads = tf.random.stateless_normal([n], [3, 4])
    updates, _ = rule.step(phi, grads, rule.init_state(n))
    # The conv block's coordinates come first in the flat order, the dense
    # layers' after (the model's variable order).
    lstm = networks.CoordinatewiseLSTM()
    for group, idx in (("conv", np.arange(CONV + BN)),
                       ("fc", np.arange(CONV + BN, n))):
        want, _ = lstm.step(rule.split_phi(phi)[group],
                            tf.gather(grads, idx), lstm.init_state(len(idx)))
        np.testing.assert_allclose(tf.gather(updates, idx), want, rtol=1e-6)


def _tiny(config):
    config.problem_kwargs.batch_size = 4
    config.meta.run_length = 4
    config.meta.unroll_length = 2
    config.meta.num_iterations = 2
    config.checkpoint_every = config.eval_every = 2
    config.validation.num_seeds = 2
    config.validation.horizon = 2
    config.evaluation.horizons = (2,)
    config.evaluation.num_seeds = 2
    config.evaluation.num_tuning_seeds = 2
    config.evaluation.baselines = ()  # Tuning is tested in test_evaluation.
    return config


def test_tiny_cifar_meta_training_and_heldout_evaluation_on_mock_tfds(
        tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        config = _tiny(cifar_heldout.get_config())
        trainer = meta.MetaTrainer(config, str(tmp_path))
        # Meta-training sees classes 0-4 only, relabelled, and 5 outputs.
        assert set(np.unique(trainer.problem.y.numpy())) <= set(range(5))
        assert trainer.problem.param_shapes()[-1] == (5,)
        before = trainer.phi_numpy()
        result = trainer.train()
        after = trainer.phi_numpy()
        assert np.isfinite(result.best_validation)
        for name in before:
            assert np.any(before[name] != after[name]), name
        results = evaluation.evaluate_config(
            config, {"learned": result.export_last_dir}, str(tmp_path))
    assert results["problem_kwargs"]["classes"] == [5, 6, 7, 8, 9]
    curves = np.array(results["optimizers"]["learned"]["curves"])
    assert curves.shape == (2, 3) and np.all(np.isfinite(curves))
    with open(tmp_path / "evaluation.json") as f:
        assert json.load(f)["problem_kwargs"]["dataset"] == "cifar10"


def test_cifar2_evaluates_two_held_out_classes():
    config = cifar_heldout_cifar2.get_config()
    config.problem_kwargs.dataset = "mnist_embedded_32x32x3"
    problem = problems.make(config.problem, "test",
                            **evaluation.problem_kwargs(config))
    # 100 test images of each of digits 5 and 6, relabelled 0 and 1.
    np.testing.assert_array_equal(np.bincount(problem.y.numpy()), [100, 100])
    assert problem.param_shapes()[-1] == (2,)
    # Meta-training is cifar_heldout's: only the evaluation differs.
    a, b = (json.loads(json.dumps(m.get_config().to_dict()))
            for m in (cifar_heldout_cifar2, cifar_heldout))
    a.pop("evaluation")
    b.pop("evaluation")
    assert a == b


def test_configs_validate_and_older_configs_evaluate_their_own_problem():
    for variant, full in [("", cifar10), ("two_networks", cifar10_two_networks),
                          ("heldout", cifar_heldout),
                          ("heldout_cifar2", cifar_heldout_cifar2)]:
        standin = cifar10_standin.get_config(variant)
        meta.validate_config(standin)
        # The stand-in changes the data and the sizes, not the experiment.
        assert standin.problem_kwargs.dataset == "mnist_embedded_32x32x3"
        want = full.get_config()
        for name in ("network_groups", "problem_kwargs.classes"):
            assert meta.field(standin, name) == meta.field(want, name)
        assert (standin.evaluation.problem_kwargs.get("classes") ==
                want.evaluation.problem_kwargs.get("classes"))
    with pytest.raises(ValueError, match="two_network.*Received: 'cifar5'"):
        cifar10_standin.get_config("cifar5")
    config = cifar10.get_config()
    assert evaluation.problem_kwargs(config) == dict(config.problem_kwargs)
    # Unset overrides (None placeholders) compare equal to no overrides, as
    # in a config written before the field existed.
    saved = json.loads(json.dumps(config.to_dict()))
    assert set(saved["evaluation"]["problem_kwargs"]) == {"classes",
                                                          "max_examples"}
    del saved["evaluation"]["problem_kwargs"]
    assert meta.with_defaults(saved) == meta.with_defaults(
        json.loads(json.dumps(config.to_dict())))
    config.evaluation.problem_kwargs.max_examples = 7
    assert evaluation.problem_kwargs(config) == dict(config.problem_kwargs,
                                                     max_examples=7)

"""Two networks in one optimizer (the paper's CIFAR-10 variant): each
parameter is updated by the network its group's pattern names."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from configs import mnist_convnet
from l2l_tf import evaluation, grouped, meta, networks, problems, saved_model
from l2l_tf import unroll

GROUPS = (("conv", "conv2d"), ("fc", "dense"))
NAMES = ["net/conv2d/kernel", "net/conv2d/bias", "net/dense/kernel",
         "net/dense/bias"]
SHAPES = [(2, 2, 1, 3), (3,), (4, 2), (2,)]


def test_each_coordinate_is_updated_by_its_groups_network():
    rule = grouped.Grouped(GROUPS).bind(names=NAMES, shapes=SHAPES)
    assert rule.group_sizes() == {"conv": 15, "fc": 10}
    phi = rule.init_phi(seed=3)
    sub = rule.split_phi(phi)
    # Distinct weights per network (different seeds), so a mix-up shows.
    assert not np.allclose(sub["conv"]["output/kernel"],
                           sub["fc"]["output/kernel"])
    grads = tf.random.stateless_normal([25], [1, 2])
    state = rule.init_state(25)
    for _ in range(2):  # The second step also checks the state routing.
        updates, state = rule.step(phi, grads, state)
    lstm = networks.CoordinatewiseLSTM()
    for group, idx in (("conv", np.arange(15)), ("fc", np.arange(15, 25))):
        s = lstm.init_state(len(idx))
        for _ in range(2):
            want, s = lstm.step(sub[group], tf.gather(grads, idx), s)
        np.testing.assert_allclose(tf.gather(updates, idx), want, rtol=1e-6)


def test_interleaved_groups_are_stitched_back_in_place():
    names = ["a/dense/kernel", "b/conv2d/kernel", "c/dense/bias"]
    rule = grouped.Grouped(GROUPS).bind(names=names,
                                        shapes=[(2,), (3,), (1,)])
    phi = rule.init_phi()
    phi["fc/output/bias"] = np.full([1], 5.0, np.float32)  # fc: +0.5 offset
    updates, _ = rule.step(phi, tf.zeros([6]), rule.init_state(6))
    lstm = networks.CoordinatewiseLSTM()
    conv_u, _ = lstm.step(rule.split_phi(phi)["conv"], tf.zeros([3]),
                          lstm.init_state(3))
    fc_u, _ = lstm.step(rule.split_phi(phi)["fc"], tf.zeros([3]),
                        lstm.init_state(3))
    np.testing.assert_allclose(updates.numpy()[[0, 1, 5]], fc_u, rtol=1e-6)
    np.testing.assert_allclose(updates.numpy()[2:5], conv_u, rtol=1e-6)


@pytest.mark.parametrize("groups,names,message", [
    (GROUPS, ["net/conv2d/kernel", "net/lstm/kernel"],
     "'net/lstm/kernel' matches none"),
    ((("conv", "conv"), ("fc", "dense"), ("rest", ".*")),
     ["net/conv2d/kernel", "net/dense/bias"], "group 'rest' matches no"),
    ((("conv", "[unclosed"),), NAMES, "not a valid regex"),
    ((("conv", "conv"), ("conv", "dense")), NAMES, "must be unique"),
    ((("bad name", "x"),), NAMES, "must be identifiers"),
])
def test_bad_groups_raise_clearly(groups, names, message):
    with pytest.raises(ValueError, match=message):
        grouped.Grouped(groups).bind(names=names,
                                     shapes=[(1,)] * len(names))


def _config():
    config = mnist_convnet.get_config()
    config.network_groups = GROUPS
    config.meta.init_weights = ""
    config.meta.run_length = 4
    config.meta.unroll_length = 2
    config.meta.num_iterations = 2
    config.checkpoint_every = config.eval_every = 2
    config.validation.num_seeds = 2
    config.validation.horizon = 3
    return config


def test_two_network_meta_training_export_and_evaluation(tmp_path):
    trainer = meta.MetaTrainer(_config(), str(tmp_path))
    assert trainer.rule.group_sizes() == {"conv": 208, "fc": 11530}
    before = trainer.phi_numpy()
    assert len(before) == 2 * 6  # lstm_0, lstm_1, output: kernel, bias
    result = trainer.train()
    after = trainer.phi_numpy()
    for name in before:  # Both networks learn.
        assert np.all(before[name] != after[name]), name

    rule, phi, metadata = saved_model.load(result.export_last_dir)
    assert isinstance(rule, grouped.Grouped)
    assert metadata["network"]["groups"] == [list(g) for g in GROUPS]
    for name, value in after.items():
        np.testing.assert_array_equal(phi[name], value)
    # Each group's folder is a complete export of its own network.
    _, conv_phi, conv_meta = saved_model.load(
        os.path.join(result.export_last_dir, "conv"))
    assert conv_meta["group"] == "conv"
    np.testing.assert_array_equal(conv_phi["lstm_0/kernel"],
                                  after["conv/lstm_0/kernel"])

    # Evaluation binds the loaded rule to the problem it runs on.
    problem = problems.from_config(_config(), "test")
    run = unroll.make_run_fn(rule, problem, 3)
    curves = evaluation.run_curves(
        run, {k: tf.constant(v) for k, v in phi.items()},
        evaluation.seeds(evaluation.TEST_SEED_BASE, 2))
    assert curves.shape == (2, 4) and np.all(np.isfinite(curves))


def test_single_network_weights_start_every_group(tmp_path):
    config = _config()
    config.meta.init_weights = "mnist"
    trainer = meta.MetaTrainer(config, str(tmp_path))
    _, shipped, _ = saved_model.load("mnist")
    for group in ("conv", "fc"):
        for k, v in shipped.items():
            np.testing.assert_array_equal(
                trainer.phi[f"{group}/{k}"].numpy(), v)


def test_config_with_bad_groups_raises_before_work(tmp_path):
    config = _config()
    config.network_groups = (("conv", "conv2d"),)  # Dense unassigned.
    with pytest.raises(ValueError, match=r"dense(_\d+)?/kernel' matches none"):
        meta.MetaTrainer(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
    json.dumps(config.to_dict())

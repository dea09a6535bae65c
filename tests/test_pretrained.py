"""The shipped weights: present, finite, and produced by the committed configs."""

import json

import numpy as np
import pytest

import l2l_tf
from configs import mnist as mnist_config
from configs import neural_art as neural_art_config
from configs import quadratic as quadratic_config
from l2l_tf import meta, saved_model


@pytest.mark.parametrize("name,config_module", [
    ("mnist", mnist_config), ("quadratic", quadratic_config),
    ("neural_art", neural_art_config)])
def test_shipped_weights_were_made_by_their_config(name, config_module):
    assert name in l2l_tf.pretrained_names()
    rule, phi, metadata = saved_model.load(name)
    expected = meta.with_defaults(
        json.loads(json.dumps(config_module.get_config().to_dict())))
    # Fields added since the export count at the defaults that reproduce it.
    assert meta.with_defaults(metadata["config"]) == expected
    assert rule.get_config() == l2l_tf.CoordinatewiseLSTM(
        **dict(config_module.get_config().network)).get_config()
    assert sum(v.size for v in phi.values()) == 5141
    assert all(np.all(np.isfinite(v)) for v in phi.values())
    assert np.isfinite(metadata["validation_loss"])
    assert len(metadata["git_commit"]) == 40

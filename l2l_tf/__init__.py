"""l2l_tf: learned optimizers for TensorFlow/Keras.

Andrychowicz et al. 2016, "Learning to learn by gradient descent by gradient
descent" (arXiv:1606.04474): a coordinatewise LSTM, meta-trained on a family
of optimizees, used as a drop-in Keras optimizer::

    from l2l_tf import LearnedOptimizer
    model.compile(optimizer=LearnedOptimizer(), loss=...)
"""

import json as _json
import os as _os

__version__ = "0.1.0"

_REQUIRED_BACKEND = "tensorflow"


def _configured_backend():
    """The backend Keras will pick: KERAS_BACKEND, else keras.json."""
    if _os.environ.get("KERAS_BACKEND"):
        return _os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    home = _os.environ.get("KERAS_HOME",
                           _os.path.join(_os.path.expanduser("~"), ".keras"))
    path = _os.path.join(home, "keras.json")
    try:
        with open(path) as f:
            return _json.load(f).get("backend", _REQUIRED_BACKEND), path
    except (OSError, ValueError):
        return _REQUIRED_BACKEND, None


_backend, _source = _configured_backend()
if _backend != _REQUIRED_BACKEND:
    raise ImportError(
        "l2l_tf runs on Keras's TensorFlow backend only. Received: "
        f"backend {_backend!r} (from {_source}"
        f"{'=' + repr(_backend) if _source == 'KERAS_BACKEND' else ''}). Set "
        "KERAS_BACKEND=tensorflow before importing keras or l2l_tf.")

import keras as _keras  # pylint: disable=wrong-import-position

if _keras.backend.backend() != _REQUIRED_BACKEND:
    raise ImportError(
        "l2l_tf runs on Keras's TensorFlow backend only. Received: Keras "
        f"backend {_keras.backend.backend()!r} (from ~/.keras/keras.json or "
        "KERAS_BACKEND). Set KERAS_BACKEND=tensorflow.")

# pylint: disable=wrong-import-position
from l2l_tf import networks, preprocess, problems
from l2l_tf.networks import CoordinatewiseLSTM
from l2l_tf.optimizer import LearnedOptimizer
from l2l_tf.saved_model import export, load, pretrained_names

__all__ = [
    "CoordinatewiseLSTM",
    "LearnedOptimizer",
    "export",
    "load",
    "networks",
    "preprocess",
    "pretrained_names",
    "problems",
    "__version__",
]

"""Any Keras model as an optimizee, run functionally through stateless_call."""

import functools
import importlib
from typing import Callable, Optional, Union

import keras
import numpy as np
import tensorflow as tf

from l2l_tf.problems import base


def resolve_build_fn(build_fn: Union[str, Callable]) -> Callable:
    """A callable, or "package.module:function" -> the callable."""
    if callable(build_fn):
        return build_fn
    if not isinstance(build_fn, str) or build_fn.count(":") != 1:
        raise ValueError(
            "`build_fn` must be a callable returning a built keras.Model, or "
            "its import path as 'package.module:function'. Received: "
            f"build_fn={build_fn!r}")
    module_name, attr = build_fn.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"`build_fn` module {module_name!r} cannot be "
                         f"imported: {e}") from e
    fn = vars(module).get(attr)
    if not callable(fn):
        raise ValueError(f"`build_fn` {build_fn!r}: module {module_name!r} "
                         f"has no function {attr!r}.")
    return fn


class KerasModel(base.Problem):
    """Trains a Keras model on minibatches of a fixed dataset split.

    The model's layers run functionally (`model.stateless_call`) on parameter
    tensors, so a GradientTape sees through a whole unrolled optimization.
    Each seed draws fresh weights by building the model again after
    `keras.utils.set_random_seed(seed)`: drawing an optimizee re-seeds the
    global Python, NumPy, TensorFlow and Keras random generators.

    Loss and scale: `loss` (a Keras loss name or object) averaged over the
    minibatch, as model.fit computes it; the reported loss is the same over
    the whole split, in inference mode.

    Non-trainable state (BatchNorm's moving statistics) is not carried from
    step to step: training-mode layers use batch statistics. The reported
    loss runs in inference mode, with the initial moving statistics, unless
    `eval_training` is set: then it runs in training mode too, so batch
    norm normalizes with the statistics of the whole split (the training
    loss the paper reports; use it only for models whose training mode is
    deterministic, batch norm but no dropout).

    Args:
      build_fn: returns a built keras.Model (or its 'module:function' path).
      x, y: the split's inputs and targets (arrays with the same length).
      loss: a Keras loss, e.g. "sparse_categorical_crossentropy" or
        `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
      batch_size: minibatch size.
      build_kwargs: keyword arguments for `build_fn` (e.g. num_classes).
      eval_training: whether the reported loss runs in training mode.
    """

    name = "keras_model"

    def __init__(self, build_fn, x, y, loss, batch_size: int = 128,
                 build_kwargs: Optional[dict] = None,
                 eval_training: bool = False):
        self.build_fn = functools.partial(resolve_build_fn(build_fn),
                                          **dict(build_kwargs or {}))
        if not isinstance(eval_training, bool):
            raise ValueError("`eval_training` must be a bool. Received: "
                             f"eval_training={eval_training!r}")
        self.eval_training = eval_training
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError("`batch_size` must be a positive integer. "
                             f"Received: batch_size={batch_size!r}")
        self.x = tf.convert_to_tensor(x)
        self.y = tf.convert_to_tensor(y)
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError("`x` and `y` must have the same length. "
                             f"Received: x.shape={self.x.shape}, "
                             f"y.shape={self.y.shape}")
        self.loss_fn = keras.losses.get(loss)
        if self.loss_fn is None:
            raise ValueError(f"`loss` must name a Keras loss. Received: "
                             f"loss={loss!r}")
        self.batch_size = batch_size
        self.model = self.build_fn()
        if not isinstance(self.model, keras.Model) or not self.model.built:
            raise ValueError("`build_fn` must return a built keras.Model "
                             "(give it an Input). Received: "
                             f"{type(self.model).__name__}")
        self._non_trainable = [v.value
                               for v in self.model.non_trainable_variables]

    def param_shapes(self):
        return [tuple(v.shape) for v in self.model.trainable_variables]

    def param_names(self):
        """The trainable variables' Keras paths (e.g. "conv2d/kernel")."""
        return [v.path for v in self.model.trainable_variables]

    def init(self, seed):
        pair = base.seed_pair(seed)
        keras.utils.set_random_seed(int(np.asarray(pair)[0]) % (2**31 - 1))
        model = self.build_fn()
        params = [tf.convert_to_tensor(v.value, tf.float32)
                  for v in model.trainable_variables]
        return params, base.fold_in(pair, 10_000)

    def batch(self, task, step):
        idx = tf.random.stateless_uniform(
            [self.batch_size], base.fold_in(task, step), minval=0,
            maxval=tf.shape(self.y)[0], dtype=tf.int32)
        return tf.gather(self.x, idx), tf.gather(self.y, idx)

    def _loss(self, params, x, y, training):
        y_pred, _ = self.model.stateless_call(params, self._non_trainable, x,
                                              training=training)
        # A loss function (from a name) gives per-example values, a Loss
        # object their mean: the mean either way.
        return tf.reduce_mean(tf.cast(self.loss_fn(y, y_pred), tf.float32))

    def loss(self, params, task, batch):
        del task
        value = self._loss(params, *batch, training=True)
        return value, value

    def eval_loss(self, params, task):
        del task
        return self._loss(params, self.x, self.y,
                          training=self.eval_training)

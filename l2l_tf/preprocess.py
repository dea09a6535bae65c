"""Gradient preprocessing for the coordinatewise LSTM (paper, Appendix A).

Gradients of different coordinates span many orders of magnitude, which a
small LSTM handles badly. The log/sign preprocessing maps a gradient g to two
features::

        (log|g| / p, sign(g))   if |g| >= exp(-p)
        (-1,         exp(p) g)  otherwise

with p = 10 in the paper. Both features lie in a bounded range for every
finite input: the first in [-1, log(3.4e38) / p], the second in [-1, 1].
"""

import math
from typing import Callable, NamedTuple

import tensorflow as tf


def log_sign(grads: tf.Tensor, p: float = 10.0) -> tf.Tensor:
    """Maps `grads` of shape [n] to features of shape [n, 2] (see module doc)."""
    grads = tf.convert_to_tensor(grads)
    abs_g = tf.abs(grads)
    big = abs_g >= math.exp(-p)
    # log of a clamped value: the branch not taken must stay finite, since
    # tf.where back-propagates through both branches.
    log_part = tf.math.log(tf.maximum(abs_g, math.exp(-p))) / p
    first = tf.where(big, log_part, -tf.ones_like(grads))
    second = tf.where(big, tf.sign(grads), grads * math.exp(p))
    return tf.stack([first, second], axis=-1)


def identity(grads: tf.Tensor, p: float = 10.0) -> tf.Tensor:
    """Maps `grads` of shape [n] to the raw gradient as one feature, [n, 1]."""
    del p  # Unused; kept so every preprocessor has the same signature.
    return tf.expand_dims(tf.convert_to_tensor(grads), -1)


class Preprocessor(NamedTuple):
    fn: Callable[..., tf.Tensor]
    width: int  # Number of features per coordinate.


PREPROCESSORS = {
        "log_sign": Preprocessor(log_sign, 2),
        "none": Preprocessor(identity, 1),
}


def get(name: str) -> Preprocessor:
    """Returns the preprocessor called `name`; the error lists valid names."""
    if name not in PREPROCESSORS:
        raise ValueError(
                f"`preprocess` must be one of {sorted(PREPROCESSORS)}. "
                f"Received: preprocess={name!r}")
    return PREPROCESSORS[name]

"""Gradient preprocessing for the coordinatewise LSTM (paper, Appendix A).

Gradients of different coordinates span many orders of magnitude, which a
small LSTM handles badly. The log/sign preprocessing maps a gradient g to two
features::

        (log|g| / p, sign(g))   if |g| >= exp(-p)
        (-1,         exp(p) g)  otherwise

with p = 10 in the paper. Both features lie in a bounded range for every
finite input: the first in [-1, log(3.4e38) / p], the second in [-1, 1].

"log_sign_adam" adds two scale-free features in the manner of RNNprop (Lv et
al. 2017): Adam's bias-corrected first moment and the gradient itself, each
divided by the root of Adam's bias-corrected second moment,

        (log|g| / p or -1, sign(g) or e^p g, m_hat / (sqrt(v_hat) + eps),
         g / (sqrt(v_hat) + eps))

with beta_1 = 0.9, beta_2 = 0.99 (a memory of about 100 steps, the length
of a meta-training run), eps = 1e-8: the two Adam features do not depend
on the gradient's scale while |g| is well above eps (a constant gradient
gives sign(g)), and fade to 0 below it. It keeps (m, v, t) for every
coordinate: a preprocessor with `state_width` 3, whose state stays float32
whatever the network's state dtype (bfloat16 would round 0.99 v + 0.01 g^2
back to v, and t + 1 back to t past 256).
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


ADAM_BETA_1 = 0.9
ADAM_BETA_2 = 0.99
ADAM_EPSILON = 1e-8
_ADAM_CLIP = 1e18  # v_hat <= (1e18)^2 = 1e36, 340x below float32's max.


def log_sign_adam(grads: tf.Tensor, p: float, moments: tf.Tensor):
    """(features [n, 4], new moments [n, 3]) for `grads` [n] and `moments`
    [n, 3] = (m, v, t) of every coordinate, zeros at the start (module doc).

    The moments see the gradient clipped to +-1e18 (so g^2 never overflows;
    log/sign carries the true size): both Adam features are then finite and
    bounded by 1 / sqrt(1 - beta_2) = 10 for every finite gradient, and 0
    where the gradient has always been 0.
    """
    grads = tf.convert_to_tensor(grads)
    m, v, t = tf.unstack(moments, axis=1)
    g = tf.clip_by_value(grads, -_ADAM_CLIP, _ADAM_CLIP)
    t = t + 1.0
    m = ADAM_BETA_1 * m + (1.0 - ADAM_BETA_1) * g
    v = ADAM_BETA_2 * v + (1.0 - ADAM_BETA_2) * tf.square(g)
    m_hat = m / (1.0 - tf.pow(ADAM_BETA_1, t))
    denom = tf.sqrt(v / (1.0 - tf.pow(ADAM_BETA_2, t))) + ADAM_EPSILON
    features = tf.concat(
        [log_sign(grads, p), tf.stack([m_hat / denom, g / denom], -1)],
        axis=1)
    return features, tf.stack([m, v, t], axis=1)


class Preprocessor(NamedTuple):
    # fn(grads, p) -> features [n, width]; with state_width > 0,
    # fn(grads, p, state [n, state_width]) -> (features, new state).
    fn: Callable[..., tf.Tensor]
    width: int  # Number of features per coordinate.
    state_width: int = 0  # float32 state kept per coordinate.


PREPROCESSORS = {
        "log_sign": Preprocessor(log_sign, 2),
        "log_sign_adam": Preprocessor(log_sign_adam, 4, 3),
        "none": Preprocessor(identity, 1),
}


def get(name: str) -> Preprocessor:
    """Returns the preprocessor called `name`; the error lists valid names."""
    if name not in PREPROCESSORS:
        raise ValueError(
                f"`preprocess` must be one of {sorted(PREPROCESSORS)}. "
                f"Received: preprocess={name!r}")
    return PREPROCESSORS[name]

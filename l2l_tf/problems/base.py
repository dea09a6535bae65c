"""The optimizee interface: pure functions of parameter tensors.

A problem never owns variables. Its parameters are a list of tensors, so a
GradientTape can follow them through a whole unrolled optimization:

    params, task = problem.init(seed)         # a fresh optimizee
    for t in range(T):
        batch = problem.batch(task, t)        # data seen at step t
        loss, reported = problem.loss(params, task, batch)
        ...                                   # grads of `loss` drive the update
    problem.eval_loss(params, task)           # the figure that gets reported

`loss` is the objective whose gradient the optimizer sees, `reported` the
same quantity on the scale reported to people (they differ only where a
problem sums independent functions, as the quadratic family does). Each
problem's docstring states its loss and scale: a learned optimizer is not
scale-invariant, so the scale is part of the problem.
"""

import abc
from typing import Any, List, Sequence, Tuple

import tensorflow as tf

Params = List[tf.Tensor]


class Problem(abc.ABC):
    """A family of optimizees; each seed draws one member."""

    name = "problem"

    @abc.abstractmethod
    def param_shapes(self) -> Sequence[Tuple[int, ...]]:
        """Shapes of the parameter tensors, in order."""

    @abc.abstractmethod
    def init(self, seed) -> Tuple[Params, Any]:
        """Draws initial parameters and the task (fixed data of the run).

        `seed` is a Python int or an int32 tensor of shape [2]; the same seed
        always gives the same optimizee.
        """

    def param_names(self) -> Sequence[str]:
        """A name for each parameter tensor, in order (unique); rules that
        treat parameters differently (grouped networks, routes) match them."""
        return [f"param_{i}" for i in range(len(self.param_shapes()))]

    def batch(self, task, step) -> Any:
        """The data used at step `step` (an int or scalar int tensor)."""
        del task, step
        return ()

    @abc.abstractmethod
    def loss(self, params: Params, task, batch) -> Tuple[tf.Tensor, tf.Tensor]:
        """Returns (loss to differentiate, the same on the reported scale)."""

    @abc.abstractmethod
    def eval_loss(self, params: Params, task) -> tf.Tensor:
        """The reported loss of `params` (deterministic given the task)."""

    @property
    def num_params(self) -> int:
        total = 0
        for shape in self.param_shapes():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


def seed_pair(seed) -> tf.Tensor:
    """Turns an int or a [2] int tensor into a stateless-RNG seed [2] int32."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int32)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.zeros_like(seed)])
    return seed


def fold_in(seed: tf.Tensor, value) -> tf.Tensor:
    """A new stateless seed derived from `seed` and an integer `value`."""
    value = tf.cast(value, tf.int32)
    return tf.random.experimental.stateless_fold_in(seed, value)

"""Random scaling of an optimizee (after Lv, Jiang and Li 2017, Sec. 3.2).

A learned optimizer is not scale-invariant: meta-trained on one problem it
learns that problem's gradient and parameter scales, and it meets other
scales later in a run (gradients shrink as the loss falls) or on other
problems. Random scaling meta-trains it on rescaled copies of the problem:
each optimizee draws a positive vector c (one factor a coordinate) and a
loss factor s, and the optimizer minimizes

    f_{c,s}(x) = s * f(c * x),   starting from x_0 = theta_0 / c,

which is the same function of theta = c * x as f, so the run starts from
the same point and its reported loss (f(theta), unscaled) is on the same
scale; only what the optimizer sees changes: gradients s * c * grad f(c x),
and an update dx moves theta by c * dx.

c and s are log-uniform: log c_i ~ U(-log r_p, log r_p) and
log s ~ U(-log r_l, log r_l), with r_p = `param_range` and
r_l = `loss_range` (1.0: no scaling of that kind).
"""

import math

import tensorflow as tf

from l2l_tf.problems import base

_SCALE_SEED = 30_000  # Folded into an optimizee's seed to draw c and s.


class RandomlyScaled(base.Problem):
    """`problem` with per-optimizee random parameter and loss scales.

    The task of an optimizee is (the inner task, [c for each tensor], s);
    `loss` returns (s * f(c * x), f(c * x)) and `eval_loss` f(c * x).

    Args:
      problem: the problem to scale.
      param_range: r_p >= 1; the coordinate factors c lie in [1/r_p, r_p].
      loss_range: r_l >= 1; the loss factor s lies in [1/r_l, r_l].
    """

    def __init__(self, problem: base.Problem, param_range: float = 1.0,
                 loss_range: float = 1.0):
        for name, value in (("param_range", param_range),
                            ("loss_range", loss_range)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and value >= 1.0):
                raise ValueError(f"`{name}` must be a number >= 1. "
                                 f"Received: {name}={value!r}")
        self.problem = problem
        self.param_range = float(param_range)
        self.loss_range = float(loss_range)
        self.name = f"scaled_{problem.name}"

    def param_shapes(self):
        return self.problem.param_shapes()

    def param_names(self):
        return self.problem.param_names()

    def _log_uniform(self, shape, seed, log_range):
        u = tf.random.stateless_uniform(shape, seed, minval=-1.0, maxval=1.0)
        return tf.exp(log_range * u)

    def init(self, seed):
        seed = base.seed_pair(seed)
        params, task = self.problem.init(seed)
        key = base.fold_in(seed, _SCALE_SEED)
        log_p, log_l = math.log(self.param_range), math.log(self.loss_range)
        scales = [self._log_uniform(p.shape, base.fold_in(key, i), log_p)
                  for i, p in enumerate(params)]
        loss_scale = self._log_uniform([], base.fold_in(key, -1), log_l)
        params = [p / tf.cast(c, p.dtype) for p, c in zip(params, scales)]
        return params, (task, scales, loss_scale)

    def theta(self, params, task):
        """The inner problem's parameters c * x of scaled parameters x."""
        return [p * tf.cast(c, p.dtype) for p, c in zip(params, task[1])]

    def batch(self, task, step):
        return self.problem.batch(task[0], step)

    def loss(self, params, task, batch):
        loss, reported = self.problem.loss(self.theta(params, task), task[0],
                                           batch)
        return tf.cast(task[2], loss.dtype) * loss, reported

    def eval_loss(self, params, task):
        return self.problem.eval_loss(self.theta(params, task), task[0])

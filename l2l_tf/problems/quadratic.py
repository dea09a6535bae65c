"""The paper's 10-dimensional quadratic functions (Sec. 3.1)."""

import tensorflow as tf

from l2l_tf.problems import base


class Quadratic(base.Problem):
    """A batch of independent quadratics f_i(theta_i) = ||W_i theta_i - y_i||^2.

    W_i [dim, dim] and y_i [dim] are drawn from N(0, 1), theta_i from
    N(0, 0.01^2) (the paper's 10-d family, 128 functions a batch). The
    parameters are one tensor theta [num_functions, dim].

    Loss and scale: the differentiated loss is the *sum* over functions, so
    each theta_i gets exactly the gradient of its own f_i (a mean would shrink
    every gradient num_functions-fold). The reported loss is the *mean* of
    f_i over the batch. At theta = 0 the expected f_i is `dim` (10).
    """

    name = "quadratic"

    def __init__(self, dim: int = 10, num_functions: int = 128,
                 init_stddev: float = 0.01):
        for arg, value in (("dim", dim), ("num_functions", num_functions)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{arg}` must be a positive integer. "
                                 f"Received: {arg}={value!r}")
        if not init_stddev >= 0:
            raise ValueError("`init_stddev` must be >= 0. "
                             f"Received: init_stddev={init_stddev!r}")
        self.dim = dim
        self.num_functions = num_functions
        self.init_stddev = float(init_stddev)

    def param_shapes(self):
        return [(self.num_functions, self.dim)]

    def init(self, seed):
        seed = base.seed_pair(seed)
        k, d = self.num_functions, self.dim
        w = tf.random.stateless_normal([k, d, d], base.fold_in(seed, 0))
        y = tf.random.stateless_normal([k, d], base.fold_in(seed, 1))
        theta = self.init_stddev * tf.random.stateless_normal(
            [k, d], base.fold_in(seed, 2))
        return [theta], (w, y)

    def _per_function(self, params, task):
        (theta,) = params
        w, y = task
        residual = tf.linalg.matvec(w, theta) - y
        return tf.reduce_sum(tf.square(residual), axis=-1)

    def loss(self, params, task, batch):
        del batch
        f = self._per_function(params, task)
        return tf.reduce_sum(f), tf.reduce_mean(f)

    def eval_loss(self, params, task):
        return tf.reduce_mean(self._per_function(params, task))

"""Running an update rule on a problem: the loop shared by meta-training and
evaluation.

All parameters of an optimizee are flattened into one batch of coordinates,
so the rule runs once a step however many tensors the optimizee has (the
rule is coordinatewise, so this equals one call per tensor).
"""

from typing import Callable, List, Optional, Tuple

import tensorflow as tf

from l2l_tf import fused as fused_lib
from l2l_tf import networks
from l2l_tf.problems import base


def flatten(tensors: List[tf.Tensor]) -> tf.Tensor:
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def unflatten(flat: tf.Tensor, like: List[tf.Tensor]) -> List[tf.Tensor]:
    sizes = [t.shape.num_elements() for t in like]
    parts = tf.split(flat, sizes)
    return [tf.reshape(p, t.shape) for p, t in zip(parts, like)]


def gradients(problem: base.Problem, params, task, batch):
    """Returns (grads, reported loss) of `problem` at `params` on `batch`.

    The gradients are treated as inputs of the optimizer (no second
    derivatives, as in the paper): an enclosing tape does not differentiate
    through them, while the reported loss stays differentiable with respect
    to `params`.
    """
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss, reported = problem.loss(params, task, batch)
    grads = tape.gradient(loss, params)
    return [tf.stop_gradient(g) for g in grads], reported


def opt_step(rule: networks.UpdateRule, phi, problem: base.Problem, params,
             state, task, step) -> Tuple[list, tuple, tf.Tensor]:
    """One optimizer step at `params`; returns (params, state, loss there)."""
    grads, reported = gradients(problem, params, task,
                                problem.batch(task, step))
    updates, state = rule.step(phi, flatten(grads), state)
    params = [p + u for p, u in zip(params, unflatten(updates, params))]
    return params, state, reported


def unroll(rule, phi, problem, params, state, task, step0, length: int,
           transform: Optional[Callable[[tf.Tensor], tf.Tensor]] = None):
    """`length` steps from step `step0` (a Python loop: traced once).

    Returns (sum over t = 1..length of transform(the reported loss at theta_t
    on step t's batch), params, state); `transform` defaults to the identity
    (see META_LOSSES). theta_0's loss is left out: it does not depend on phi.
    """
    transform = transform or (lambda x: x)
    total = 0.0
    for t in range(length):
        params, state, reported = opt_step(rule, phi, problem, params, state,
                                           task, step0 + t)
        if t > 0:
            total += transform(reported)
    _, final = problem.loss(params, task, problem.batch(task, step0 + length))
    return total + transform(final), params, state


def _log_loss(loss: tf.Tensor) -> tf.Tensor:
    # Clamped so that an exact zero (a solved quadratic) stays finite.
    return tf.math.log(tf.maximum(loss, 1e-30))


# How each step's reported loss f(theta_t) enters the meta-loss
# (config field meta.meta_loss):
#   "mean": f itself, the paper's sum_t w_t f(theta_t) with w_t = 1. The
#     early steps, where f is large, dominate it and its meta-gradient.
#   "log_mean": log f. Its gradient is grad f / f, so every step counts by
#     its relative progress, and the late steps (where f is small and the
#     reported figures are taken) weigh as much as the first ones.
META_LOSSES = {
    "mean": None,
    "log_mean": _log_loss,
}


def make_run_fn(rule: networks.UpdateRule, problem: base.Problem,
                num_steps: int, state_dtype=tf.float32,
                fused: Optional[bool] = None):
    """A compiled `run(phi, seed) -> losses [num_steps + 1]`.

    Trains a fresh optimizee drawn with `seed` for `num_steps` steps and
    returns `problem.eval_loss` at theta_0 .. theta_num_steps. The loop is a
    tf.while_loop, so long runs trace quickly; phi and seed are tensors, so
    new learning rates or seeds never retrace. `state_dtype`: the dtype the
    rule's state is kept in between steps (bfloat16 for a learned rule, as
    `LearnedOptimizer(state_dtype="bfloat16")` keeps it). `fused`: whether
    a CoordinatewiseLSTM steps on the fused CPU kernel, as
    `fused.choose` decides (None: where it runs, as LearnedOptimizer does);
    `run.fused` says whether it does.
    """

    if hasattr(rule, "bind"):  # Grouped networks: assign coordinates.
        rule = rule.bind(problem)
    on_kernel = fused_lib.choose(rule, fused, state_dtype,
                                 what=f"runs of {rule!r}")
    if on_kernel:
        rule = fused_lib.Forward(rule, state_dtype)

    @tf.function(reduce_retracing=True)
    def _run(phi, params, task):
        state = rule.init_state(sum(p.shape.num_elements() for p in params),
                                state_dtype)
        losses = tf.TensorArray(tf.float32, size=num_steps + 1)
        losses = losses.write(0, problem.eval_loss(params, task))

        def body(t, params, state, losses):
            params, state, _ = opt_step(rule, phi, problem, params, state,
                                        task, t)
            losses = losses.write(t + 1, problem.eval_loss(params, task))
            return t + 1, params, state, losses

        _, params, state, losses = tf.while_loop(
            lambda t, *_: t < num_steps, body,
            (tf.constant(0), params, state, losses))
        return losses.stack()

    def run(phi, seed):
        # The optimizee is drawn eagerly: a problem may build it in Python
        # (a Keras model, for instance).
        params, task = problem.init(seed)
        return _run(phi, params, task)

    run.experimental_get_tracing_count = _run.experimental_get_tracing_count
    run.fused = on_kernel
    return run

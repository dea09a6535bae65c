"""LearnedOptimizer: the meta-trained coordinatewise LSTM as a Keras optimizer."""

import math
import numbers
import re
import warnings
from typing import Optional

import numpy as np
import keras
import tensorflow as tf

from l2l_tf import fused as fused_lib
from l2l_tf import networks, saved_model


@keras.saving.register_keras_serializable(package="l2l_tf")
class LearnedOptimizer(keras.optimizers.Optimizer):
    """A learned optimizer: the coordinatewise LSTM of Andrychowicz et al. 2016.

    For every coordinate i of every trained variable, with gradient g_i,

        x_i = (log|g_i| / p, sign g_i)  if |g_i| >= e^-p  else  (-1, e^p g_i)
        (h_i, c_i) = LSTM(x_i, (h_i, c_i); phi)        (2 layers x 20 units)
        theta_i += learning_rate * output_scale * (w_out . h_i + b_out)

    phi (5,141 weights by default) is shared by all coordinates and was
    meta-trained by `train.meta_train`; each coordinate keeps its own LSTM
    state (80 floats, 320 bytes, a coordinate by default; 160 bytes with
    `state_dtype="bfloat16"`; a network with preprocess="log_sign_adam"
    keeps 3 more float32 values, Adam's m, v and t: 332 and 172 bytes).

    Args:
      weights: the name of weights shipped with the package
        (`l2l_tf.pretrained_names()`: "mnist_log_mean_10k",
        "mnist_log_mean", "mnist", "quadratic", "neural_art") or the path
        of a SavedModel exported by `train.meta_train`. Defaults to
        "mnist_log_mean_10k", meta-trained on the MNIST MLP by
        configs/mnist_log_mean.py:long and then :long_10k (it beats tuned
        SGD, NAG, RMSprop and Adam there at steps 100, 200 and 1,000, and
        stays steady over 10,000 steps); "mnist_log_mean" is the weights
        before :long_10k, "mnist" the paper's recipe (configs/mnist.py).
      learning_rate: multiplies the learned update; 1.0 (the default) runs
        exactly what was meta-trained. A float, a schedule or a callable, as
        for any Keras optimizer.
      network: the network's hyperparameters (`CoordinatewiseLSTM`'s
        arguments). Optional: read from `weights`. Given, it must match them.
        It lets `from_config` rebuild the optimizer when `weights` is gone (a
        `.keras` file then supplies phi's values).
      routes: optional {regex: rule config}: variables whose path (e.g.
        "sequential/embedding/embeddings") matches a regex (re.search; the
        first match wins) are updated by a hand-designed rule instead of the
        LSTM, e.g. `{"embedding": {"rule": "adam", "learning_rate": 1e-3}}`
        for a huge embedding whose 320 bytes a parameter of LSTM state would
        be too much (Adam keeps 8). Rules: "sgd", "nag", "rmsprop", "adam";
        their update is also multiplied by `learning_rate`.
      state_dtype: "float32" (the default) or "bfloat16": the dtype in
        which the per-coordinate LSTM state is kept. bfloat16 halves it (160
        bytes a coordinate instead of 320) and the memory traffic of every
        step; the network still computes in float32 with its float32 weights,
        and the state is rounded to bfloat16 after each step (8 bits of
        mantissa: updates differ from float32's by about 0.1%; BUILD.md
        gives the effect on a whole training run). State of routed variables stays
        float32.
      weight_decay: if set, decoupled weight decay: each step subtracts
        `learning_rate * weight_decay * theta` (learning_rate being the
        multiplier of the learned update, 1.0 by default).
      clipnorm, clipvalue, global_clipnorm: clip the gradients before the
        LSTM sees them, as for any Keras optimizer (per variable norm, per
        value, global norm). A non-finite gradient still skips the step.
      use_ema, ema_momentum, ema_overwrite_frequency: an exponential moving
        average of the weights, as for any Keras optimizer (use it with
        `keras.callbacks.SwapEMAWeights`).
      loss_scale_factor: gradients are divided by it before the update.
      gradient_accumulation_steps: the variables are updated every that many
        calls, on the mean gradient: the LSTM sees one accumulated gradient
        per update and its state advances once; `iterations` counts the
        updates.
      fused: how the LSTM step runs. None (the default): through l2l_tf's
        fused CPU kernel (l2l_tf/fused.py; compiled on first use and cached,
        10-15 s) wherever it can: on machines without GPUs, outside
        `jit_compile=True`, for networks it supports (log/sign or no
        preprocessing, up to 48 units); elsewhere, or if it cannot be
        built, through TensorFlow ops, which compute the same to float32
        rounding. True: the fused kernel, or a ValueError here saying why
        not. False: TensorFlow ops always.
      name: the optimizer's name (its variables' prefix).

    A step in which any gradient is not finite is skipped for every variable
    (values and LSTM state untouched, as LossScaleOptimizer does) and counted
    in `skipped_steps`. Sparse gradients (`tf.IndexedSlices`, from
    Embedding layers) are applied as their dense equivalent: rows that got
    no gradient see a zero gradient and their LSTM state advances. The LSTM
    runs in float32 whatever the variables' dtype. `weight_decay` subtracts
    `learning_rate * weight_decay * theta` each step.

    phi is held in variables of the optimizer itself: model.fit never trains
    them, they are saved with the model (`.keras`, tf.train.Checkpoint), so a
    saved model reloads without the SavedModel being present.

    References:
      Andrychowicz et al., "Learning to learn by gradient descent by gradient
      descent", NeurIPS 2016, arXiv:1606.04474.

    Example:
      >>> model.compile(optimizer=LearnedOptimizer(), loss="mse")
    """

    def __init__(
        self,
        weights: str = "mnist_log_mean_10k",
        learning_rate=1.0,
        network: Optional[dict] = None,
        routes: Optional[dict] = None,
        state_dtype: str = "float32",
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        fused: Optional[bool] = None,
        name="learned_optimizer",
        **kwargs,
    ):
        if isinstance(learning_rate, numbers.Real) and not isinstance(
                learning_rate, bool):
            if not (math.isfinite(learning_rate) and learning_rate > 0):
                raise ValueError(
                    "`learning_rate` must be a positive finite number (it "
                    "multiplies the learned update; 1.0 runs it as "
                    f"meta-trained). Received: learning_rate={learning_rate!r}")
            learning_rate = float(learning_rate)  # Keras rejects ints.
        if state_dtype not in networks.STATE_DTYPES:
            raise ValueError("`state_dtype` must be one of "
                             f"{networks.STATE_DTYPES}. "
                             f"Received: state_dtype={state_dtype!r}")
        fused_lib.check_argument(fused)
        rule, phi = self._resolve(weights, network)
        if fused:  # Raises where the kernel cannot run it.
            fused_lib.choose(rule, True, state_dtype, what="this optimizer")
        parsed_routes = _parse_routes(routes)
        super().__init__(
            learning_rate=learning_rate,
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        self.weights_spec = str(weights)
        self.rule = rule
        self._initial_phi = phi
        self.routes = parsed_routes
        self.state_dtype = state_dtype
        self.fused = fused

    @staticmethod
    def _resolve(weights, network):
        if network is not None:
            if not isinstance(network, dict):
                raise ValueError("`network` must be a dict of "
                                 "CoordinatewiseLSTM's arguments. Received: "
                                 f"network={network!r}")
            try:
                wanted = networks.CoordinatewiseLSTM(**dict(network))
            except TypeError as e:
                raise ValueError(f"`network` must hold CoordinatewiseLSTM's "
                                 f"arguments. Received: network={network!r}"
                                 ) from e
        try:
            rule, phi, _ = saved_model.load(weights)
        except ValueError:
            if network is None:
                raise
            # Rebuilt from a config whose weights are gone: phi's values must
            # come from the saved model or checkpoint being restored.
            warnings.warn(
                f"LearnedOptimizer: weights {weights!r} not found; phi's "
                "values must come from the .keras file or checkpoint being "
                "restored (keras.models.load_model does this); until then "
                "phi is zero and the update is zero.", stacklevel=3)
            return wanted, {n: np.zeros(s, np.float32)
                            for n, s in wanted.phi_shapes().items()}
        if network is not None and rule.get_config() != wanted.get_config():
            raise ValueError(
                f"`weights` {weights!r} hold a network of shape "
                f"{rule.get_config()}, but `network` asks for "
                f"{wanted.get_config()}.")
        return rule, phi

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._phi_names = list(self.rule.phi_shapes())
        self._phi = [
            self.add_variable(
                shape=self._initial_phi[n].shape,
                initializer=lambda shape, dtype, v=self._initial_phi[n]: (
                    tf.constant(v, dtype)),
                dtype="float32",
                name="phi_" + n.replace("/", "_"))
            for n in self._phi_names
        ]
        # Whether the LSTM may take the fused kernel (where an update is
        # traced, _take_fused() says whether it does).
        self._fused = self.fused is not False and not (
            fused_lib.unsupported_reason(self.rule, self.state_dtype)
            or fused_lib.unavailable_reason())
        self._skipped_steps = self.add_variable(
            shape=(), initializer="zeros", dtype="int64",
            name="skipped_steps")
        # Per-variable state, zeros: for the LSTM (h, c) of each layer,
        # [size, units], in state_dtype whatever the variable's dtype; for a
        # variable routed to a hand-designed rule, that rule's state
        # (float32).
        self._lstm_states = []
        self._var_rules = []
        for var in var_list:
            size = int(np.prod(var.shape))
            path = getattr(var, "path", var.name)
            rule = self._rule_for(path)
            self._var_rules.append(rule)
            dtypes = rule.state_dtypes(
                self.state_dtype if rule is self.rule else "float32")
            self._lstm_states.append([
                self.add_variable(shape=shape, initializer="zeros",
                                  dtype=dtype.name,
                                  name=f"{path.replace('/', '_')}_"
                                       f"{rule.name}_{k}")
                for k, (shape, dtype) in enumerate(
                    zip(rule.state_shapes(size), dtypes))
            ])

    def _rule_for(self, path: str) -> networks.UpdateRule:
        for pattern, rule in self.routes:
            if re.search(pattern, path):
                return rule
        return self.rule

    def _phi_dict(self):
        return {n: v.value for n, v in zip(self._phi_names, self._phi)}

    @property
    def skipped_steps(self):
        """How many steps were skipped for a non-finite gradient (a variable,
        saved with the optimizer; 0 before the optimizer is built). Under
        mixed precision the model's optimizer is a LossScaleOptimizer: this
        counter is `model.optimizer.inner_optimizer.skipped_steps`, and the
        steps the loss scaling skips are not in it."""
        if not self.built:
            return tf.constant(0, tf.int64)
        return self._skipped_steps

    def __repr__(self):
        lr = self._learning_rate
        if isinstance(lr, (keras.Variable, tf.Variable)):
            lr = float(np.asarray(lr))
        return (f"LearnedOptimizer(weights={self.weights_spec!r}, "
                f"learning_rate={lr!r}, "
                f"network={self.rule.get_config()!r}"
                + (f", routes={[p for p, _ in self.routes]!r}"
                   if self.routes else "") + ")")

    def update_step(self, gradient, variable, learning_rate):
        """theta += learning_rate * LSTM(gradient) (see the class doc)."""
        self._guarded_update_step(gradient, variable, learning_rate,
                                  _all_finite([gradient]))

    def _guarded_update_step(self, gradient, variable, learning_rate, finite):
        """The update, or nothing at all where `finite` is False."""
        index = self._get_variable_index(variable)
        states, rule = self._lstm_states[index], self._var_rules[index]
        if isinstance(gradient, tf.IndexedSlices):
            # Rows that got no gradient see a zero gradient and advance
            # their state, exactly as with the equivalent dense gradient.
            gradient = tf.convert_to_tensor(gradient)

        def update():
            grads = tf.reshape(tf.cast(gradient, tf.float32), [-1])
            phi = self._phi_dict() if rule is self.rule else rule.init_phi()
            if rule is self.rule and self._take_fused():
                # The kernel writes the new state into the variables.
                updates = fused_lib.lstm_apply(rule, phi, grads, states)
            else:
                updates, new_states = rule.step(
                    phi, grads, tuple(s.value for s in states))
                for s, new in zip(states, new_states):
                    self.assign(s, new)
            lr = tf.cast(learning_rate, tf.float32)
            delta = lr * updates
            if self.weight_decay and self._use_weight_decay(variable):
                # Decoupled weight decay, as Keras applies it: -lr * wd *
                # theta (lr being the multiplier of the learned update).
                delta -= lr * tf.cast(self.weight_decay, tf.float32) * (
                    tf.reshape(tf.cast(variable, tf.float32), [-1]))
            self.assign_add(variable, tf.reshape(delta, tf.shape(variable)))
            return tf.constant(True)

        # A cond, so that a skipped step costs nothing and a taken one no
        # select over the state (four passes over 80 floats a coordinate);
        # XLA and tf.distribute take it as they take a select.
        tf.cond(finite, update, lambda: tf.constant(False))

    def _take_fused(self):
        """Whether the update being traced runs the fused kernel."""
        if not self._fused:
            return False
        if fused_lib.in_xla_context():
            if self.fused:
                raise ValueError(
                    "`fused=True`, but this update is compiled by XLA "
                    "(jit_compile=True), which cannot run the fused kernel: "
                    "use fused=None or False, or jit_compile=False.")
            return False
        return bool(self.fused) or not fused_lib.has_gpus()

    def _clip_gradients(self, grads):
        clipped = super()._clip_gradients(grads)
        if not (self.clipnorm or self.clipvalue or self.global_clipnorm):
            return clipped
        # clipvalue maps an infinite gradient to a finite one, so the step
        # would not be skipped: a non-finite step stays non-finite.
        poison = tf.where(_all_finite(grads), 0.0, float("nan"))
        return [c if c is None else _add_to_values(c, poison)
                for c in clipped]

    def _apply_weight_decay(self, variables):
        # Folded into _guarded_update_step, so that a skipped step leaves the
        # variables untouched.
        del variables

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # As the TensorFlow backend's, plus one all-finite check over every
        # (all-reduced) gradient: a step with any non-finite gradient is
        # skipped for every variable, as LossScaleOptimizer does.
        trainable_variables = [
            v.value if isinstance(v, keras.Variable) else v
            for v in trainable_variables
        ]
        grads_and_vars = self._all_reduce_sum_gradients(
            list(zip(grads, trainable_variables)))
        finite = _all_finite([g for g, _ in grads_and_vars])
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_guarded_update, self._distribution_strategy,
            grads_and_vars, learning_rate, finite)

    def _distributed_guarded_update(self, distribution, grads_and_vars,
                                    learning_rate, finite):
        for grad, var in grads_and_vars:
            distribution.extended.update(
                var, lambda v, g, lr, f: self._guarded_update_step(
                    g, v, lr, f),
                args=(grad, learning_rate, finite), group=False)
        distribution.extended.update(
            self._skipped_steps.value,
            lambda v, f: v.assign_add(tf.cast(tf.logical_not(f), v.dtype)),
            args=(finite,), group=False)

    def get_config(self):
        config = super().get_config()
        config.update({
            "weights": self.weights_spec,
            "network": self.rule.get_config(),
            "routes": {pattern: {"rule": rule.name, **rule.get_config()}
                       for pattern, rule in self.routes} or None,
            "state_dtype": self.state_dtype,
            "fused": self.fused,
        })
        return config


def _parse_routes(routes):
    """{regex: {"rule": name, **kwargs}} -> [(regex, UpdateRule)]."""
    if routes is None:
        return []
    if not isinstance(routes, dict):
        raise ValueError("`routes` must be a dict mapping a regular "
                         "expression on variable paths to a hand-designed "
                         "rule's config, e.g. {'embedding': {'rule': 'adam', "
                         f"'learning_rate': 1e-3}}}}. Received: routes={routes!r}")
    parsed = []
    for pattern, spec in routes.items():
        if not isinstance(pattern, str):
            raise ValueError("`routes` keys must be regular expressions "
                             f"(strings). Received: {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"`routes` key {pattern!r} is not a regular "
                             f"expression: {e}") from e
        spec = dict(spec) if isinstance(spec, dict) else {"rule": spec}
        name = spec.pop("rule", None)
        if name not in networks.BASELINES:
            raise ValueError(
                f"`routes[{pattern!r}]['rule']` must be one of "
                f"{list(networks.BASELINES)}. Received: {name!r}")
        try:
            parsed.append((pattern, networks.get(name, **spec)))
        except TypeError as e:
            raise ValueError(f"`routes[{pattern!r}]` holds an argument that "
                             f"{name!r} does not take: {e}. Received: "
                             f"{routes[pattern]!r}") from e
    return parsed


def _add_to_values(grad, x):
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values + tf.cast(x, grad.values.dtype),
                                grad.indices, grad.dense_shape)
    return grad + tf.cast(x, grad.dtype)


def _all_finite(grads):
    flags = [tf.reduce_all(tf.math.is_finite(
        g.values if isinstance(g, tf.IndexedSlices) else g))
        for g in grads if g is not None]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


"""Update rules with one interface: ``step(phi, grads, state) -> (updates, state)``.

Every rule works on a flat batch of coordinates: ``grads`` has shape [n]
(float32), ``updates`` has shape [n] and is *added* to the parameters
(theta_{t+1} = theta_t + updates). ``phi`` is a dict of the rule's own
weights: the LSTM's meta-trained weights, or a hand-designed rule's learning
rate (a tensor, so that sweeping it never retraces a tf.function). ``state``
is a tuple of tensors whose shapes are fixed by ``n`` (``state_shapes``), all
zeros at the start of a run.

The learned rule is the coordinatewise LSTM of Andrychowicz et al. 2016:
for every coordinate i,

    x_i = preprocess(grad_i)                      (log/sign, or the raw grad)
    (h_i, c_i) = LSTM_2(LSTM_1(x_i, state_i))     (weights shared by all i)
    update_i = output_scale * (w_out . h_i + b_out)

The hand-designed rules (SGD, NAG, RMSprop, Adam) follow Keras's formulas
exactly, so that a test can hold each against its Keras twin.
"""

import abc
import math
import numbers
from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from l2l_tf import preprocess as preprocess_lib

Phi = Dict[str, tf.Tensor]
State = Tuple[tf.Tensor, ...]


class UpdateRule(abc.ABC):
    """A pure update rule: ``step(phi, grads, state) -> (updates, state)``."""

    name: str = "rule"

    @abc.abstractmethod
    def init_phi(self, seed: int = 0) -> Dict[str, np.ndarray]:
        """The rule's initial weights, as float32 numpy arrays by name."""

    @abc.abstractmethod
    def state_shapes(self, n: int) -> Tuple[Tuple[int, ...], ...]:
        """Shapes of the state tensors for ``n`` coordinates."""

    @abc.abstractmethod
    def step(self, phi: Phi, grads: tf.Tensor, state: State):
        """Returns ``(updates [n] float32, new_state)``."""

    @abc.abstractmethod
    def get_config(self) -> dict:
        """Constructor arguments, JSON-serializable."""

    def state_dtypes(self, dtype=tf.float32) -> Tuple[tf.DType, ...]:
        """The dtype of each state tensor when the state is kept in `dtype`:
        `dtype` for all of them, unless the rule keeps some in float32."""
        return (tf.as_dtype(dtype),) * len(self.state_shapes(1))

    def init_state(self, n: int, dtype=tf.float32) -> State:
        """Zeros of `state_shapes(n)` in `state_dtypes(dtype)`. The learned
        rule also takes bfloat16 (half the memory; its `step` computes in
        float32 and returns the state in the dtype it got); hand-designed
        rules float32 only."""
        return tuple(tf.zeros(s, d) for s, d in
                     zip(self.state_shapes(n), self.state_dtypes(dtype)))

    def state_bytes_per_coordinate(self, dtype=tf.float32) -> int:
        """Bytes of state kept for each coordinate in `dtype`."""
        return sum(d.size * int(np.prod(s[1:])) for s, d in
                   zip(self.state_shapes(1), self.state_dtypes(dtype)) if s)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------
# The learned rule.


class CoordinatewiseLSTM(UpdateRule):
    """The coordinatewise LSTM optimizer (Andrychowicz et al. 2016, Sec. 2.1).

    Args:
      hidden_sizes: units of each LSTM layer; the paper uses (20, 20).
      preprocess: "log_sign" (the paper's Appendix A preprocessing),
        "log_sign_adam" (log/sign plus Adam-normalised momentum and
        gradient, as RNNprop; it keeps Adam's m, v and t per coordinate)
        or "none" (see l2l_tf.preprocess).
      preprocess_p: the p of the log/sign preprocessing.
      output_scale: multiplies the network's output (0.1 in the paper).

    phi holds, for layer l, ``lstm_l/kernel`` [in_l + h_l, 4 h_l] (the four
    gates i, f, g, o in column blocks) and ``lstm_l/bias`` [4 h_l]; then
    ``output/kernel`` [h_last, 1] and ``output/bias`` [1]. With the defaults
    that is exactly 5,141 weights. The state is (h_0, c_0, h_1, c_1, ...),
    each [n, hidden_sizes[l]]: 80 floats (320 bytes) a coordinate by
    default, float32 or bfloat16 (`init_state(n, dtype)`; the network
    computes in float32 either way); "log_sign_adam" adds a last float32
    state tensor [n, 3] of (m, v, t).
    """

    name = "lstm"

    def __init__(self, hidden_sizes: Sequence[int] = (20, 20),
                 preprocess: str = "log_sign", preprocess_p: float = 10.0,
                 output_scale: float = 0.1):
        hidden_sizes = tuple(hidden_sizes)
        if not hidden_sizes or any(
                not isinstance(h, (int, np.integer)) or h <= 0
                for h in hidden_sizes):
            raise ValueError(
                "`hidden_sizes` must be a non-empty sequence of positive "
                f"integers. Received: hidden_sizes={hidden_sizes!r}")
        self._pre = preprocess_lib.get(preprocess)
        if not preprocess_p > 0:
            raise ValueError("`preprocess_p` must be positive. "
                             f"Received: preprocess_p={preprocess_p!r}")
        if not (isinstance(output_scale, numbers.Real) and output_scale > 0
                and math.isfinite(output_scale)):
            raise ValueError("`output_scale` must be a positive number. "
                             f"Received: output_scale={output_scale!r}")
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.preprocess = preprocess
        self.preprocess_p = float(preprocess_p)
        self.output_scale = float(output_scale)

    def get_config(self) -> dict:
        return {
            "hidden_sizes": list(self.hidden_sizes),
            "preprocess": self.preprocess,
            "preprocess_p": self.preprocess_p,
            "output_scale": self.output_scale,
        }

    def phi_shapes(self) -> Dict[str, Tuple[int, ...]]:
        shapes = {}
        width = self._pre.width
        for l, h in enumerate(self.hidden_sizes):
            shapes[f"lstm_{l}/kernel"] = (width + h, 4 * h)
            shapes[f"lstm_{l}/bias"] = (4 * h,)
            width = h
        shapes["output/kernel"] = (width, 1)
        shapes["output/bias"] = (1,)
        return shapes

    def init_phi(self, seed: int = 0) -> Dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        phi = {}
        for name, shape in self.phi_shapes().items():
            if name.endswith("bias"):
                value = np.zeros(shape)
                if name.startswith("lstm"):
                    h = shape[0] // 4
                    value[h:2 * h] = 1.0  # Forget-gate bias: remember by default.
            elif name == "output/kernel":
                value = rng.normal(0.0, 0.1, shape)
            else:  # Glorot-uniform, as Keras's LSTM.
                limit = math.sqrt(6.0 / (shape[0] + shape[1]))
                value = rng.uniform(-limit, limit, shape)
            phi[name] = value.astype(np.float32)
        return phi

    def state_shapes(self, n: int):
        shapes = []
        for h in self.hidden_sizes:
            shapes += [(n, h), (n, h)]  # (hidden, cell) of each layer.
        if self._pre.state_width:  # The preprocessor's own, last.
            shapes.append((n, self._pre.state_width))
        return tuple(shapes)

    def state_dtypes(self, dtype=tf.float32):
        dtypes = [tf.as_dtype(dtype)] * (2 * len(self.hidden_sizes))
        if self._pre.state_width:  # Adam's moments need float32.
            dtypes.append(tf.float32)
        return tuple(dtypes)

    def step(self, phi: Phi, grads: tf.Tensor, state: State):
        # The network runs in phi's dtype (float32), whatever the gradient's
        # or the state's; the new state keeps the dtype it came in.
        dtype = phi["output/kernel"].dtype
        if self._pre.state_width:
            x, pre_state = self._pre.fn(tf.cast(grads, dtype),
                                        self.preprocess_p,
                                        tf.cast(state[-1], dtype))
        else:
            x = self._pre.fn(tf.cast(grads, dtype), self.preprocess_p)
        # A column of ones carries the biases through the matmuls (as a
        # last kernel row): a matmul fused with its bias add ran at half the
        # speed of the bare matmul here, and a separate add is another pass.
        ones = tf.ones_like(x[:, :1])
        new_state = []
        for l, h in enumerate(self.hidden_sizes):
            h_prev, c_prev = state[2 * l], state[2 * l + 1]
            xh1 = tf.concat([x, tf.cast(h_prev, dtype), ones], axis=1)
            kernel = tf.concat([phi[f"lstm_{l}/kernel"],
                                phi[f"lstm_{l}/bias"][None, :]], axis=0)
            # One matmul per gate (i, f, g, o: column blocks of the kernel),
            # not one for all four and a split: splitting the [n, 4h]
            # pre-activations copies them, which at 1M coordinates cost more
            # than the matmuls.
            i, f, g, o = (tf.matmul(xh1, kernel[:, k * h:(k + 1) * h])
                          for k in range(4))
            c = (tf.sigmoid(f) * tf.cast(c_prev, dtype)
                 + tf.sigmoid(i) * tf.tanh(g))
            x = tf.sigmoid(o) * tf.tanh(c)
            new_state += [tf.cast(x, h_prev.dtype), tf.cast(c, c_prev.dtype)]
        # output_scale folded into the output layer's 21 weights: one pass
        # over the coordinates fewer. The reshape comes before the bias so
        # that no fused matmul-and-add is made of them.
        scale = tf.cast(self.output_scale, dtype)
        out = (tf.reshape(tf.matmul(x, scale * phi["output/kernel"]), [-1])
               + scale * phi["output/bias"])
        if self._pre.state_width:
            new_state.append(tf.cast(pre_state, state[-1].dtype))
        return out, tuple(new_state)


# ---------------------------------------------------------------------------
# Hand-designed rules. phi = {"learning_rate": scalar}; formulas as Keras's.


class _HandDesigned(UpdateRule):

    def __init__(self, learning_rate: float = 0.01):
        if not (isinstance(learning_rate, numbers.Real)
                and learning_rate > 0 and math.isfinite(learning_rate)):
            raise ValueError("`learning_rate` must be a positive number. "
                             f"Received: learning_rate={learning_rate!r}")
        self.learning_rate = float(learning_rate)

    def init_phi(self, seed: int = 0):
        del seed
        return {"learning_rate": np.float32(self.learning_rate)}

    def get_config(self):
        return {"learning_rate": self.learning_rate}


class SGD(_HandDesigned):
    """theta += -lr * g."""

    name = "sgd"

    def state_shapes(self, n):
        return ()

    def step(self, phi, grads, state):
        return -phi["learning_rate"] * tf.cast(grads, tf.float32), ()


class NAG(_HandDesigned):
    """Nesterov momentum as Keras's SGD(momentum, nesterov=True):
    m = mu m - lr g;  theta += mu m - lr g."""

    name = "nag"

    def __init__(self, learning_rate=0.01, momentum=0.9):
        super().__init__(learning_rate)
        if not 0.0 <= momentum < 1.0:
            raise ValueError("`momentum` must be in [0, 1). "
                             f"Received: momentum={momentum!r}")
        self.momentum = float(momentum)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}

    def state_shapes(self, n):
        return ((n,),)

    def step(self, phi, grads, state):
        g = tf.cast(grads, tf.float32)
        lr = phi["learning_rate"]
        m = self.momentum * state[0] - lr * g
        return self.momentum * m - lr * g, (m,)


class RMSprop(_HandDesigned):
    """As Keras's RMSprop: v = rho v + (1 - rho) g^2;
    theta += -lr g / sqrt(v + eps)."""

    name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7):
        super().__init__(learning_rate)
        self.rho = float(rho)
        self.epsilon = float(epsilon)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho,
                "epsilon": self.epsilon}

    def state_shapes(self, n):
        return ((n,),)

    def step(self, phi, grads, state):
        g = tf.cast(grads, tf.float32)
        v = self.rho * state[0] + (1.0 - self.rho) * tf.square(g)
        return -phi["learning_rate"] * g / tf.sqrt(v + self.epsilon), (v,)


class Adam(_HandDesigned):
    """As Keras's Adam: m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    theta += -lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)."""

    name = "adam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7):
        super().__init__(learning_rate)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1,
                "beta_2": self.beta_2, "epsilon": self.epsilon}

    def state_shapes(self, n):
        return ((n,), (n,), ())  # m, v, and the step count t.

    def step(self, phi, grads, state):
        g = tf.cast(grads, tf.float32)
        m, v, t = state
        t = t + 1.0
        m = m + (g - m) * (1.0 - self.beta_1)
        v = v + (tf.square(g) - v) * (1.0 - self.beta_2)
        alpha = (phi["learning_rate"] * tf.sqrt(1.0 - self.beta_2**t)
                 / (1.0 - self.beta_1**t))
        return -alpha * m / (tf.sqrt(v) + self.epsilon), (m, v, t)


# The dtypes a learned rule's state can be kept in between steps.
STATE_DTYPES = ("float32", "bfloat16")

RULES = {
    "lstm": CoordinatewiseLSTM,
    "sgd": SGD,
    "nag": NAG,
    "rmsprop": RMSprop,
    "adam": Adam,
}
BASELINES = ("sgd", "nag", "rmsprop", "adam")


def get(name: str, **kwargs) -> UpdateRule:
    """Builds the rule called `name`; the error lists the valid names."""
    if name not in RULES:
        raise ValueError(f"Unknown update rule. Expected one of "
                         f"{sorted(RULES)}. Received: name={name!r}")
    return RULES[name](**kwargs)

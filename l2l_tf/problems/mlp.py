"""The paper's MNIST multi-layer perceptron (Sec. 3.2), and its variants."""

from typing import Sequence

import tensorflow as tf

from l2l_tf.problems import base

ACTIVATIONS = {
    "sigmoid": tf.sigmoid,
    "relu": tf.nn.relu,
    "tanh": tf.tanh,
}


class MLP(base.Problem):
    """A fully connected classifier trained on minibatches of a fixed split.

    With the defaults this is the paper's MNIST optimizee: 784-20-10, sigmoid
    hidden units, minibatches of 128 drawn (with replacement) from the split,
    15,910 parameters. Weights and biases start from N(0, 0.01^2).
    The parameters are, per layer, a kernel [in, out] and a bias [out], in
    the order and layout of `keras.layers.Dense`.

    Loss and scale: the mean softmax cross-entropy (nats) over the minibatch,
    as Keras's `SparseCategoricalCrossentropy(from_logits=True)`; about
    log(10) = 2.30 at the start. The reported loss (`eval_loss`) is the same
    mean cross-entropy over the whole split.

    Args:
      images: float32 [N, features], pixels scaled to [0, 1].
      labels: int [N], class ids in [0, num_classes).
      hidden_sizes: units of each hidden layer.
      activation: one of ACTIVATIONS.
      batch_size: minibatch size.
      num_classes: output units.
      init_stddev: stddev of the initial weights and biases.
    """

    name = "mlp"

    def __init__(self, images, labels, hidden_sizes: Sequence[int] = (20,),
                 activation: str = "sigmoid", batch_size: int = 128,
                 num_classes: int = 10, init_stddev: float = 0.01):
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of "
                             f"{sorted(ACTIVATIONS)}. "
                             f"Received: activation={activation!r}")
        hidden_sizes = tuple(hidden_sizes)
        if any(not isinstance(h, int) or h <= 0 for h in hidden_sizes):
            raise ValueError("`hidden_sizes` must hold positive integers. "
                             f"Received: hidden_sizes={hidden_sizes!r}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError("`batch_size` must be a positive integer. "
                             f"Received: batch_size={batch_size!r}")
        self.images = tf.convert_to_tensor(images, tf.float32)
        self.labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
        if self.images.shape.rank != 2 or (
                self.images.shape[0] != self.labels.shape[0]):
            raise ValueError(
                "`images` must be [N, features] and `labels` [N]. Received "
                f"shapes: images={self.images.shape}, "
                f"labels={self.labels.shape}")
        self.hidden_sizes = hidden_sizes
        self.activation = activation
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.init_stddev = float(init_stddev)

    def param_shapes(self):
        shapes = []
        width = self.images.shape[1]
        for h in self.hidden_sizes + (self.num_classes,):
            shapes += [(width, h), (h,)]
            width = h
        return shapes

    def param_names(self):
        """"dense_<l>/kernel" and "dense_<l>/bias" for each layer l."""
        return [f"dense_{l}/{kind}"
                for l in range(len(self.hidden_sizes) + 1)
                for kind in ("kernel", "bias")]

    def init(self, seed):
        seed = base.seed_pair(seed)
        params = [
            self.init_stddev * tf.random.stateless_normal(
                shape, base.fold_in(seed, i))
            for i, shape in enumerate(self.param_shapes())
        ]
        return params, base.fold_in(seed, 10_000)  # task: the batch seed.

    def batch(self, task, step):
        idx = tf.random.stateless_uniform(
            [self.batch_size], base.fold_in(task, step), minval=0,
            maxval=tf.shape(self.labels)[0], dtype=tf.int32)
        return tf.gather(self.images, idx), tf.gather(self.labels, idx)

    def logits(self, params, images):
        act = ACTIVATIONS[self.activation]
        x = images
        n_hidden = len(self.hidden_sizes)
        for l in range(n_hidden + 1):
            x = tf.matmul(x, params[2 * l]) + params[2 * l + 1]
            if l < n_hidden:
                x = act(x)
        return x

    def _xent(self, params, images, labels):
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=self.logits(params, images)))

    def loss(self, params, task, batch):
        del task
        images, labels = batch
        value = self._xent(params, images, labels)
        return value, value

    def eval_loss(self, params, task):
        del task
        return self._xent(params, self.images, self.labels)

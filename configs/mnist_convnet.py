"""Meta-trains on your own Keras model: a small conv net on embedded MNIST.

    python -m train.meta_train --config=configs/mnist_convnet.py --workdir=/tmp/l2l/mnist_convnet

The optimizee is any keras.Model that `problem_kwargs.build_fn` builds (here
l2l_tf.problems.zoo.mnist_convnet), trained functionally through
`stateless_call` so that the meta-gradient flows through the unroll.
Meta-training starts from the shipped MNIST-MLP weights.
"""

import ml_collections
from ml_collections import config_dict

from configs import mnist


def get_config():
    config = mnist.get_config()
    config.problem = "keras_model"
    config.problem_kwargs = ml_collections.ConfigDict(dict(
        build_fn="l2l_tf.problems.zoo:mnist_convnet",
        dataset="mnist_embedded",
        # The data options (l2l_tf.datasets), as in configs/mnist.py.
        data_dir=config_dict.placeholder(str),
        classes=config_dict.placeholder(tuple),
        max_examples=config_dict.placeholder(int),
        loss="sparse_categorical_crossentropy",
        batch_size=128,
    ))
    config.meta.init_weights = "mnist"  # Fine-tune the shipped weights.
    config.meta.num_iterations = 500
    config.meta.learning_rate = 1e-3
    config.meta.final_learning_rate = 1e-4
    return config

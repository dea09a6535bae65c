"""Meta-trains the LSTM optimizer on the paper's CIFAR-10 conv net (Sec. 3.3).

    python -m train.meta_train --config=configs/cifar10.py --config.problem_kwargs.data_dir=DIR --workdir=/tmp/l2l/cifar10

Needs CIFAR-10 prepared for tensorflow-datasets in DIR (nothing is
downloaded at run time): on a machine with internet access run
`tfds build cifar10 --data_dir=DIR` and copy DIR here; without it the run
stops at once with that instruction. Without a GPU a meta-iteration on the
full data is slow; --config.problem_kwargs.max_examples=N trains on the
first N images of each split.

The optimizee is l2l_tf.problems.zoo.cifar_convnet (three 5x5 conv layers
of 16 channels, batch norm, ReLU and 2x2 max-pooling, a fully connected
layer of 32 units, the output layer: 22,650 parameters) on minibatches of
128 from tfds CIFAR-10's training split (its first 90%; validation is the
last 10%). One 2x20 LSTM updates every parameter; configs/
cifar10_two_networks.py gives the conv and fully connected layers one LSTM
each. The reported loss is the cross-entropy over the whole split in
training mode (batch norm on the split's statistics), the training loss the
paper plots.

Held-out classes and the embedded stand-in (which runs here):
configs/cifar_heldout.py, configs/cifar10_standin.py.
"""

import ml_collections
from ml_collections import config_dict

from configs import mnist


def get_config():
    config = mnist.get_config()
    config.problem = "keras_model"
    config.problem_kwargs = ml_collections.ConfigDict(dict(
        build_fn="l2l_tf.problems.zoo:cifar_convnet",
        dataset="cifar10",
        # Where the prepared tfds data lives (None: tfds's default folder).
        data_dir=config_dict.placeholder(str),
        # Labels kept (relabelled 0..k-1); None: all 10.
        classes=config_dict.placeholder(tuple),
        # The first N images of each split; None: all of them.
        max_examples=config_dict.placeholder(int),
        loss="sparse_categorical_crossentropy",
        batch_size=128,        # The paper's.
        eval_training=True,    # Batch norm on batch statistics (see above).
    ))
    # The network is the MNIST one: 2x20 LSTM, log/sign preprocessing with
    # p = 10, output scale 0.1; meta-trained from scratch, as in the paper.
    config.meta.init_weights = ""
    config.meta.num_iterations = 1000
    config.meta.learning_rate = 1e-3
    config.meta.final_learning_rate = 1e-4
    # Overrides of problem_kwargs for the evaluation only (None: as in
    # problem_kwargs), e.g. --config.evaluation.problem_kwargs.max_examples=
    # 1000 to report the loss over the first 1,000 test images.
    config.evaluation.problem_kwargs = ml_collections.ConfigDict(dict(
        classes=config_dict.placeholder(tuple),
        max_examples=config_dict.placeholder(int),
    ))
    return config

"""The paper's two-network CIFAR-10 variant: one LSTM for the conv layers,
another for the fully connected ones (Sec. 3.3).

    python -m train.meta_train --config=configs/cifar10_two_networks.py --config.problem_kwargs.data_dir=DIR --workdir=/tmp/l2l/cifar10_two_networks

As configs/cifar10.py (prepared tfds CIFAR-10 in DIR), with
`network_groups`: each parameter goes to the first group whose regex
matches its Keras path. cifar_convnet names its layers conv_<i>, bn_<i>,
fc_0 and logits, so the conv group holds the convolution kernels and the
batch-norm scales and offsets of the conv blocks (14,096 coordinates), the
fc group the two dense layers (8,554). On the embedded stand-in add
--config.problem_kwargs.dataset=mnist_embedded_32x32x3.
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.network_groups = (("conv", r"^(conv|bn)_\d+/"),
                             ("fc", r"^(fc_\d+|logits)/"))
    return config

"""CIFAR-2 of the held-out-label study: the weights of configs/cifar_heldout.py
evaluated on two of its held-out classes, dog (5) and frog (6).

    python -m train.evaluate --config=configs/cifar_heldout_cifar2.py --config.problem_kwargs.data_dir=DIR --weights=/tmp/l2l/cifar_heldout/export --workdir=/tmp/l2l/cifar_heldout/cifar2

Meta-training fields equal configs/cifar_heldout.py's; only the
evaluation's classes differ.
"""

from configs import cifar_heldout


def get_config():
    config = cifar_heldout.get_config()
    config.evaluation.problem_kwargs.classes = (5, 6)  # CIFAR-2
    return config

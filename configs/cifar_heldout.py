"""Held-out labels: meta-train on 5 CIFAR-10 classes, evaluate on the other 5
(CIFAR-5) (the paper's Sec. 3.3 held-out-label study).

    python -m train.meta_train --config=configs/cifar_heldout.py --config.problem_kwargs.data_dir=DIR --workdir=/tmp/l2l/cifar_heldout

then CIFAR-2 (two of the held-out classes) with the same weights:

    python -m train.evaluate --config=configs/cifar_heldout_cifar2.py --config.problem_kwargs.data_dir=DIR --weights=/tmp/l2l/cifar_heldout/export --workdir=/tmp/l2l/cifar_heldout/cifar2

As configs/cifar10.py (prepared tfds CIFAR-10 in DIR), but meta-training
and validation see only classes 0-4 (airplane, automobile, bird, cat,
deer), relabelled 0-4, and the conv net has 5 outputs. The evaluation
(tuned baselines included) runs on classes 5-9 (dog, frog, horse, ship,
truck) of the test split through `evaluation.problem_kwargs`, which
overrides problem_kwargs for the evaluation only. On the embedded stand-in
(digits 0-4 / 5-9) add --config.problem_kwargs.dataset=mnist_embedded_32x32x3.
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.problem_kwargs.classes = (0, 1, 2, 3, 4)
    config.evaluation.problem_kwargs.classes = (5, 6, 7, 8, 9)  # CIFAR-5
    return config

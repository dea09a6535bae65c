"""configs/cifar10.py on the embedded 32x32x3 stand-in, sized for 2 CPU cores.

    python -m train.meta_train --config=configs/cifar10_standin.py --workdir=/tmp/l2l/cifar10_standin

CIFAR-10 cannot be downloaded here, so this runs the CIFAR code path (the
paper's conv net, batch norm, tfds-shaped data, the evaluation) on the
embedded MNIST digits padded to 32x32x3 ("mnist_embedded_32x32x3"). It
proves the path, not the paper's figures: the iteration counts are cut to
finish in about 15 minutes here, and for speed the minibatch is 32 (the
paper's 128 in configs/cifar10.py), the evaluation's reported loss is over
the first 256 test images, and the baselines are tuned on 2 seeds.
The variants run the same way, e.g.

    python -m train.meta_train --config=configs/cifar_heldout.py --config.problem_kwargs.dataset=mnist_embedded_32x32x3 --config.meta.num_iterations=50 --workdir=/tmp/l2l/cifar_heldout_standin
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.problem_kwargs.dataset = "mnist_embedded_32x32x3"
    config.problem_kwargs.batch_size = 32
    config.meta.num_iterations = 50       # 10 optimizee runs of 100 steps.
    config.checkpoint_every = 25
    config.eval_every = 25
    config.log_every = 5
    config.validation.num_seeds = 2
    config.validation.horizon = 50
    config.evaluation.num_seeds = 3
    config.evaluation.num_tuning_seeds = 2
    config.evaluation.problem_kwargs.max_examples = 256
    return config

"""Long runs on the MNIST MLP: learned weights against
tuned Adam over 1,000 and 10,000 steps, with the divergence check.

    python -m train.evaluate --config=configs/mnist_long.py --weights=mnist --workdir=/tmp/l2l/mnist_long

The problem is configs/mnist.py's (the 784-20-10 sigmoid MLP, trained and
reported on the test split); only the evaluation differs. Adam is tuned
per horizon on a grid around its best rate at step 100 (0.0316), on three
tuning seeds: a 10,000-step run is about 100x a 100-step one. Each
optimizer's entry in evaluation.json gets `stability`: finite, and the
largest loss / running-minimum ratio (diverged: above 2). The loss curves
are curves_1000.png and curves_10000.png.
"""

from configs import mnist


def get_config():
    config = mnist.get_config()
    e = config.evaluation
    e.horizons = (1000, 10_000)
    e.num_seeds = 10
    e.num_tuning_seeds = 3
    e.baselines = ("adam",)
    e.learning_rates = tuple(10 ** (k / 2) for k in range(-6, -1))  # 1e-3..0.1
    return config

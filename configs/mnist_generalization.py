"""The paper's MNIST generalization study (Sec. 3.2, Figs. 3-5), one command:

    python -m train.generalization --config=configs/mnist_generalization.py --workdir=/tmp/l2l/generalization

The shipped `mnist` weights, meta-trained on the 784-20-10 sigmoid MLP for
100 steps, run unchanged on each variant below and over a grid of hidden
units x hidden layers, against SGD, NAG, RMSprop and Adam tuned per horizon
on separate seeds (the evaluation protocol of l2l_tf.evaluation). Other
weights: --config.study.weights=PATH.
"""

import ml_collections

from configs import mnist


def get_config():
    config = mnist.get_config()
    # Each variant overrides the base config's problem_kwargs or horizons.
    variants = {
        "base": dict(),                              # As meta-trained.
        "steps_200": dict(horizons=(100, 200)),      # Fig. 4 left: 2x longer.
        "hidden_40": dict(problem_kwargs=dict(hidden_sizes=(40,))),
        "two_layers": dict(problem_kwargs=dict(hidden_sizes=(20, 20))),
        # The paper reports that the optimizer fails here (Fig. 4 right).
        "relu": dict(problem_kwargs=dict(activation="relu")),
    }
    config.study = ml_collections.ConfigDict(dict(
        weights="mnist",
        variants=ml_collections.ConfigDict(
            {k: ml_collections.ConfigDict(v) for k, v in variants.items()}),
        # Fig. 5: the ratio learned / best tuned baseline over architectures.
        # Fewer seeds per cell than the variants: 12 cells, each a full
        # tuning of four baselines.
        grid=ml_collections.ConfigDict(dict(
            hidden_units=(10, 20, 40, 80),
            hidden_layers=(1, 2, 3),
            horizon=100,
            num_seeds=5,
            num_tuning_seeds=3,
        )),
    ))
    return config

"""Meta-trains the LSTM optimizer on the paper's 10-d quadratics (Sec. 3.1).

    python -m train.meta_train --config=configs/quadratic.py --workdir=/tmp/l2l/quadratic

Each optimizee is a batch of 128 functions f_i = ||W_i theta_i - y_i||^2 in
10 dimensions; the 2x20 LSTM with log/sign preprocessing is meta-trained by
truncated BPTT over 100-step runs in unrolls of 20.
"""

import ml_collections

from configs import mnist


def get_config():
    config = mnist.get_config()
    config.seed = 0
    config.problem = "quadratic"
    config.problem_kwargs = ml_collections.ConfigDict(dict(
        dim=10,
        num_functions=128,
    ))
    config.meta.num_iterations = 5000
    config.meta.learning_rate = 3e-3
    config.meta.final_learning_rate = 3e-4
    config.meta.ema_decay = None  # The paper's plain phi.
    config.checkpoint_every = 500
    config.eval_every = 250
    config.log_every = 250
    config.validation.num_seeds = 5
    return config

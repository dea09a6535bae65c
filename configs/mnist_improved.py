"""The MNIST MLP recipe aimed at the end of the run, from the
shipped `mnist` weights:

    python -m train.meta_train --config=configs/mnist_improved.py --workdir=/tmp/l2l/mnist_improved

What the paper's recipe (configs/mnist.py) leaves on the table: its
meta-loss, the mean of f(theta_t) over the run, is dominated by the first
steps, where f is 2.3 rather than 0.05, and the shipped weights win at it
(mean loss over 100 steps 0.376 against tuned NAG's 0.563) while losing
where the figures are taken (step 100: 0.060 against 0.044). This config
changes the objective and the horizon, not the network:

- meta.meta_loss = "log_mean": the meta-loss is the mean of log f(theta_t),
  so each step counts by its relative progress and the late steps weigh as
  much as the early ones;
- meta.curriculum: 100-step runs, then 200-step runs (the second
  reported horizon), cut into the same unrolls of 20;
- validation on both reported horizons (the geometric mean of the mean
  losses at steps 100 and 200) picks the export;
- a lower, decaying meta learning rate, clipped meta-gradients and a
  Polyak average of phi, as it starts from trained weights rather than
  from scratch; the starting weights compete for the export.

The network, preprocessing and problem are configs/mnist.py's.
"""

from configs import mnist


def get_config():
    config = mnist.get_config()
    m = config.meta
    m.init_weights = "mnist"     # Fine-tune the paper recipe's weights.
    m.num_iterations = 3000
    m.meta_loss = "log_mean"
    m.curriculum = ((1000, 200),)   # 200 runs of 100 steps, then 200 steps.
    # Fresh Adam moments move trained weights off their optimum: in
    # 150-iteration screens the validation score (0.0246 at the start) went
    # to 0.028-0.031 at 1e-3 and 5e-4, and stayed at 0.023-0.025 at 1.5e-4.
    m.learning_rate = 2e-4
    m.final_learning_rate = 2e-5
    m.clip_norm = 5.0            # Log meta-loss: gradient norms ~2, tail 15.
    m.ema_decay = 0.99           # Validate and export the average of phi.
    m.param_scale_range = 1.0    # Random scaling: off (see BUILD.md).
    m.loss_scale_range = 1.0
    config.checkpoint_every = 100  # Multiples of 10: runs of 5 and 10 unrolls.
    config.eval_every = 200
    config.validation.horizon = 200
    config.validation.horizons = (100, 200)
    config.validation.include_initial = True  # Never export a regression.
    config.evaluation.horizons = (100, 200)
    return config

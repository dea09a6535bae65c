"""Meta-trains the LSTM optimizer on neural art at 64x64, one style (Sec. 3.4).

    python -m train.meta_train --config=configs/neural_art.py --workdir=/tmp/l2l/neural_art

Each optimizee is the 64x64 pixels of one image (12,288 coordinates),
stylized after scikit-image's Hubble Deep Field image (the paper used one
painting); its content image is a random crop of one of the training
photographs (l2l_tf.problems.neural_art.CONTENT_SPLITS). The loss is
NeuralArt's normalized content + Gram style loss on VGG-19 features when
their ImageNet weights are in the Keras cache, else on a fixed random conv
net; the one that ran is logged and recorded in the export's config.

Evaluation, images and loss curves of an export (three experiments):

    python -m train.neural_art --config=configs/neural_art.py --weights=/tmp/l2l/neural_art/export --workdir=/tmp/l2l/neural_art/eval_64
    python -m train.neural_art --config=configs/neural_art_128.py --weights=/tmp/l2l/neural_art/export --workdir=/tmp/l2l/neural_art/eval_128
    python -m train.neural_art --config=configs/neural_art_style.py --weights=/tmp/l2l/neural_art/export --workdir=/tmp/l2l/neural_art/eval_style

The paper trained on 1,800 ImageNet content images and one style, 64x64,
and tested on 100 held-out images, at 128x128 and with a second style; it
does not state its iteration count. Here a meta-iteration (a 20-step
unroll and its backward pass, random features) costs about 0.43 s on 2
CPU cores (2.3 it/s measured), a validation about 4 s. A 1,500-iteration
run validated best at iteration 300 and stayed flat to 850, so the run is
600 iterations, about 5-8 minutes.
"""

import ml_collections

from configs import mnist


def get_config():
    config = mnist.get_config()
    config.seed = 0
    config.problem = "neural_art"
    config.problem_kwargs = ml_collections.ConfigDict(dict(
        size=64,                    # The paper's training size.
        style="hubble_deep_field",  # The one training style.
        content=(),                 # () = the split's shipped photographs;
                                    # or image names / PNG or JPEG paths.
        content_weight=1.0,
        style_weight=1.0,
        features="auto",            # VGG-19 if cached, else random conv net.
        feature_seed=0,
        init="content",             # x_0 = content + N(0, 0.1^2) noise.
        init_noise=0.1,
        loss_scale=100.0,           # SGD's best rate near 1 (see NeuralArt).
    ))
    # The shipped MNIST weights already lower this loss for a few steps and
    # then overshoot (measured: 2.03 -> 1.14 in 3 steps, 8.2 at step 10,
    # 0.52 at step 100); meta-training starts from them to use the little
    # time this machine allows.
    config.meta.init_weights = "mnist"
    config.meta.num_iterations = 600
    # Decays 10x over the run; the best validation is exported.
    config.meta.learning_rate = 3e-3
    config.meta.final_learning_rate = 3e-4
    config.checkpoint_every = 100
    config.eval_every = 100
    config.log_every = 50
    config.validation.num_seeds = 3  # The validation photograph, 3 crops.
    config.validation.horizon = 100
    config.evaluation.horizons = (100,)
    config.evaluation.num_seeds = 6
    config.evaluation.num_tuning_seeds = 3
    return config

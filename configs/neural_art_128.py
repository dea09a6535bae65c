"""Neural art at 128x128: the paper's larger-image test (Sec. 3.4).

    python -m train.neural_art --config=configs/neural_art_128.py --weights=/tmp/l2l/neural_art/export --workdir=/tmp/l2l/neural_art/eval_128

The meta-training config (configs/neural_art.py) with size 128: the
optimizer trained on 64x64 images meets 4x as many pixels (49,152
coordinates) with the same per-pixel gradient scale (NeuralArt's
(size / 64)^2 factor). Fewer seeds than at 64x64: a run costs about 4x.
"""

from configs import neural_art


def get_config():
    config = neural_art.get_config()
    config.problem_kwargs.size = 128
    config.evaluation.num_seeds = 4
    config.evaluation.num_tuning_seeds = 2
    return config

"""Neural art in a style not seen in meta-training (Sec. 3.4).

    python -m train.neural_art --config=configs/neural_art_style.py --weights=/tmp/l2l/neural_art/export --workdir=/tmp/l2l/neural_art/eval_style

The meta-training config (configs/neural_art.py, style hubble_deep_field)
with scikit-image's "ihc" image (a stained tissue section: coloured
texture) as the style, at the training size of 64x64, on the test
photographs.
"""

from configs import neural_art


def get_config():
    config = neural_art.get_config()
    config.problem_kwargs.style = "ihc"
    return config

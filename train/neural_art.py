"""Evaluates learned weights on neural art and saves the images.

    python -m train.neural_art --config=configs/neural_art.py --weights=/tmp/l2l/neural_art/export --workdir=/tmp/l2l/neural_art/eval_64

Runs the evaluation protocol (SGD, NAG, RMSprop and Adam each at its best
learning rate, tuned on separate seeds) on the config's test split, prints
the table, and writes evaluation.json, loss_curves.png and the PNGs of the
content, style and final images into --workdir (l2l_tf.art_report).
"""

import os

import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from l2l_tf import art_report, evaluation, meta, saved_model
from train import _cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A neural-art config file (configs/neural_art*.py).",
    lock_config=True)
_WEIGHTS = flags.DEFINE_string(
    "weights", None, "Shipped weights name or SavedModel path.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where evaluation.json and the PNGs are written.")
flags.mark_flags_as_required(["config", "weights", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    tf.get_logger().setLevel("WARNING")
    config = _CONFIG.value
    _cli.checked(meta.validate_config, config)
    _cli.checked(saved_model.resolve_path, _WEIGHTS.value)
    results = art_report.evaluate_and_save(config, _WEIGHTS.value,
                                           _WORKDIR.value)
    print(f"Features: {results['neural_art']['features']}\n")
    print(evaluation.format_table(results))
    print(f"\nWritten into {os.path.abspath(_WORKDIR.value)}: "
          "evaluation.json, loss_curves.png, images.png, "
          + ", ".join(sorted(results["neural_art"]["images"].values())))


if __name__ == "__main__":
    app.run(main)

"""Runs a generalization study: learned weights on variants of their problem.

    python -m train.generalization --config=configs/mnist_generalization.py --workdir=/tmp/l2l/generalization

Evaluates `config.study.weights` on every variant and grid cell of the
config (see l2l_tf.generalization), prints the summary table and writes
per-variant evaluation.json and loss curves, grid.png and study.json into
--workdir. Rerunning the same command reuses the variants already done.
"""

import os

import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from l2l_tf import generalization
from train import _cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Study config file (e.g. configs/mnist_generalization.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the study's results and figures are written.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    tf.get_logger().setLevel("WARNING")
    _cli.checked(generalization.plan, _CONFIG.value)  # Bad input: no work.
    summary = generalization.run_study(_CONFIG.value, _WORKDIR.value)
    print(generalization.format_summary(summary))
    print(f"\nWritten: {os.path.join(_WORKDIR.value, 'study.json')}")


if __name__ == "__main__":
    app.run(main)

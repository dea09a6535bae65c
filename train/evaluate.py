"""Evaluates learned weights against SGD, NAG, RMSprop and Adam, each tuned.

    python -m train.evaluate --config=configs/mnist.py --weights=mnist --workdir=/tmp/l2l/eval
    # The learned optimizer with its state kept in bfloat16:
    python -m train.evaluate --config=configs/mnist.py --weights=mnist \
        --state_dtype=bfloat16 --workdir=/tmp/l2l/eval_bf16

--weights is a shipped name (see l2l_tf.pretrained_names()) or the path of a
SavedModel written by train.meta_train. Prints a table and writes
<workdir>/evaluation.json.
"""

import os

import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from l2l_tf import evaluation, meta, saved_model
from train import _cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).",
    lock_config=True)
_WEIGHTS = flags.DEFINE_string(
    "weights", None, "Shipped weights name or SavedModel path.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where evaluation.json is written.")
_STATE_DTYPE = flags.DEFINE_enum(
    "state_dtype", "float32", ["float32", "bfloat16"],
    "The learned optimizer's state dtype between steps (as "
    "LearnedOptimizer(state_dtype=...)); baselines are unaffected.")
flags.mark_flags_as_required(["config", "weights", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    tf.get_logger().setLevel("WARNING")  # SavedModel writing is chatty.
    config = _CONFIG.value
    _cli.checked(meta.validate_config, config)  # Fail before any work on a bad config ...
    _cli.checked(saved_model.resolve_path, _WEIGHTS.value)  # ... or bad weights.
    results = evaluation.evaluate_config(
        config, {"learned": _WEIGHTS.value}, _WORKDIR.value,
        state_dtype=_STATE_DTYPE.value)
    print(evaluation.format_table(results))
    print(f"\nWritten: {os.path.join(_WORKDIR.value, 'evaluation.json')}")


if __name__ == "__main__":
    app.run(main)

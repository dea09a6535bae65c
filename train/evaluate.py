"""Evaluates learned weights against SGD, NAG, RMSprop and Adam, each tuned.

    python -m train.evaluate --config=configs/mnist.py --weights=mnist --workdir=/tmp/l2l/eval
    # The learned optimizer with its state kept in bfloat16:
    python -m train.evaluate --config=configs/mnist.py --weights=mnist \
        --state_dtype=bfloat16 --workdir=/tmp/l2l/eval_bf16
    # On the TensorFlow ops instead of the fused kernel (the default where
    # it runs):
    python -m train.evaluate --config=configs/mnist.py --weights=mnist \
        --fused=off --workdir=/tmp/l2l/eval_tf

--weights is a shipped name (see l2l_tf.pretrained_names()) or the path of a
SavedModel written by train.meta_train; several, as NAME=SPEC pairs
separated by commas, are evaluated side by side against one tuning of the
baselines:

    python -m train.evaluate --config=configs/mnist_improved.py --weights=paper=mnist,improved=/tmp/l2l/mnist_improved/export --workdir=/tmp/l2l/eval

Prints a table and writes <workdir>/evaluation.json.
"""

import os

import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from l2l_tf import atomic, evaluation, meta, saved_model
from l2l_tf import fused as fused_lib
from train import _cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).",
    lock_config=True)
_WEIGHTS = flags.DEFINE_list(
    "weights", None, "Shipped weights name or SavedModel path (shown as "
    "'learned'), or NAME=SPEC pairs separated by commas.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where evaluation.json is written.")
_STATE_DTYPE = flags.DEFINE_enum(
    "state_dtype", "float32", ["float32", "bfloat16"],
    "The learned optimizer's state dtype between steps (as "
    "LearnedOptimizer(state_dtype=...)); baselines are unaffected.")
_FUSED = flags.DEFINE_enum(
    "fused", "auto", ["auto", "on", "off"],
    "Whether the learned optimizers step on the fused CPU kernel "
    "(l2l_tf.fused): 'auto' where it runs (no GPUs, a supported network, a "
    "C++ compiler), as LearnedOptimizer does; 'on' (an error where it "
    "cannot); 'off' (TensorFlow ops). Changes float32 rounding only.")
flags.mark_flags_as_required(["config", "weights", "workdir"])


def parse_weights(items) -> dict:
    """["SPEC"] -> {"learned": SPEC}; ["A=X", "B=Y"] -> {"A": X, "B": Y}."""
    if not items or not all(items):
        raise ValueError("--weights must be one SPEC or distinct NAME=SPEC "
                         f"pairs. Received: {','.join(items)!r}")
    if len(items) == 1 and "=" not in items[0]:
        return {"learned": items[0]}
    out = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec or name in out:
            raise ValueError(
                "--weights must be one SPEC or distinct NAME=SPEC pairs. "
                f"Received: {','.join(items)!r}")
        out[name] = spec
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    tf.get_logger().setLevel("WARNING")  # SavedModel writing is chatty.
    config = _CONFIG.value
    _cli.checked(atomic.check_folder, _WORKDIR.value)
    _cli.checked(meta.validate_config, config)  # Fail before any work on a bad config ...
    weights = _cli.checked(parse_weights, _WEIGHTS.value)
    fused = _cli.FUSED[_FUSED.value]
    for name, spec in weights.items():
        _cli.checked(saved_model.resolve_path, spec)  # ... or a bad weights name,
        rule = _cli.checked(saved_model.load, spec)[0]  # ... or a damaged one,
        # ... or --fused=on where it cannot run.
        _cli.checked(fused_lib.choose, rule, fused, _STATE_DTYPE.value,
                     what=f"the evaluation of {name!r}")
    results = evaluation.evaluate_config(config, weights, _WORKDIR.value,
                                         state_dtype=_STATE_DTYPE.value,
                                         fused=fused)
    print(evaluation.format_table(results))
    print(f"\nWritten: {os.path.join(_WORKDIR.value, 'evaluation.json')}")


if __name__ == "__main__":
    app.run(main)

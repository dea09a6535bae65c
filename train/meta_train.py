"""Meta-trains a learned optimizer, exports it, and evaluates the export.

    python -m train.meta_train --config=configs/mnist.py --workdir=/tmp/l2l/mnist

Rerunning the same command resumes from the last checkpoint in --workdir.
Override any config field with --config.FIELD=VALUE, for example
--config.meta.num_iterations=100.

On several devices, --strategy=mirrored splits config.meta.num_optimizees
over this machine's GPUs; --strategy=multi_worker over the hosts that the
TF_CONFIG environment variable lists (one process per host, the same
command and a shared --workdir; BUILD.md gives an example).
"""

import contextlib
import os
import sys

import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from l2l_tf import atomic, evaluation, meta
from train import _cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Folder for checkpoints, exports and results.")
_EVALUATE = flags.DEFINE_bool(
    "evaluate", True, "Evaluate the best export against tuned baselines.")
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", False,
    "Enable TensorFlow op determinism: reruns, and runs resumed after a "
    "crash, give bitwise-equal weights (about 1.5x slower on MNIST here).")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored", "multi_worker"],
    "tf.distribute strategy: 'default' (one device), 'mirrored' (all local "
    "GPUs, or the CPU if there are none) or 'multi_worker' (the cluster in "
    "TF_CONFIG).")
_FUSED = flags.DEFINE_enum(
    "fused", "auto", ["auto", "on", "off"],
    "Whether the unrolls run the LSTM step and its gradient on the fused CPU "
    "kernel (l2l_tf.fused): 'auto' where it runs (no GPUs, a supported "
    "network, a C++ compiler), 'on' (an error where it cannot), 'off' "
    "(TensorFlow ops). Changes float32 rounding only; a run may resume "
    "with another setting.")
_UNTIL = flags.DEFINE_integer(
    "until", None,
    "Stop after the checkpoint at this iteration (a multiple of "
    "checkpoint_every) and skip the evaluation; the same command without "
    "it resumes there. Splits a run across sessions, and rebuilds an export "
    "that came from a run stopped early.")
flags.mark_flags_as_required(["config", "workdir"])


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise app.UsageError(
                "--strategy=multi_worker needs the TF_CONFIG environment "
                "variable (see BUILD.md).")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    tf.get_logger().setLevel("WARNING")  # SavedModel writing is chatty.
    if _DETERMINISTIC.value:
        tf.config.experimental.enable_op_determinism()
    config = _CONFIG.value
    _cli.checked(meta.validate_config, config)  # Before a cluster is waited for.
    until = _UNTIL.value
    if until is not None:
        _cli.checked(meta.check_until, config, until)
    strategy = make_strategy(_STRATEGY.value)
    fused = _cli.FUSED[_FUSED.value]
    trainer = _cli.checked(meta.MetaTrainer, config, _WORKDIR.value,
                           strategy=strategy, fused=fused)
    _cli.checked(trainer.check_workdir)  # Another experiment's checkpoints.
    with contextlib.ExitStack() as stack:
        try:  # The run holds the workdir through its evaluation.
            stack.enter_context(trainer.holding_workdir())
        except atomic.InUse as e:  # Another run on it: refused at once.
            sys.stderr.write(f"{type(e).__name__}: {e}\n")
            sys.exit(2)
        result = trainer.train(until=until)
        if until is not None and result.iterations < config.meta.num_iterations:
            logging.info("Stopped at iteration %d (--until=%d); the same "
                         "command without --until continues.",
                         result.iterations, until)
            return
        logging.info("Meta-training done in %.0f s; best validation loss "
                     "%.4f; export: %s", result.seconds,
                     result.best_validation, result.export_dir)
        if _EVALUATE.value and trainer.is_chief and (
                until is None or until >= config.meta.num_iterations):
            weights = result.export_dir or result.export_last_dir
            results = evaluation.evaluate_config(
                config, {"learned": weights}, _WORKDIR.value, fused=fused)
            print(f"\nEvaluation of {weights} on the {config.problem} test "
                  f"split (mean over {config.evaluation.num_seeds} seeds):\n")
            print(evaluation.format_table(results))
            print("\nWritten: "
                  f"{os.path.join(_WORKDIR.value, 'evaluation.json')}")

if __name__ == "__main__":
    app.run(main)

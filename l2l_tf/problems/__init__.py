"""Optimizee families, as pure functions of parameter tensors (see base.py)."""

from l2l_tf import datasets
from l2l_tf.problems.base import Problem, fold_in, seed_pair
from l2l_tf.problems.keras_model import KerasModel
from l2l_tf.problems.mlp import ACTIVATIONS, MLP
from l2l_tf.problems.neural_art import NeuralArt
from l2l_tf.problems.quadratic import Quadratic

PROBLEMS = ("quadratic", "mnist", "keras_model", "neural_art")


def make(name: str, split: str = "train", **kwargs) -> Problem:
    """Builds the problem family `name` on data split `split`.

    "quadratic" takes Quadratic's arguments (it has no data; `split` only
    matters through the seeds a caller draws). "mnist" takes MLP's arguments
    plus `dataset` (a name in `datasets.DATASETS`). "keras_model" takes
    KerasModel's `build_fn`, `loss` and `batch_size`, plus `dataset`.
    "neural_art" takes NeuralArt's arguments; `split` picks its content
    photographs.
    """
    if name == "quadratic":
        return Quadratic(**kwargs)
    if name == "mnist":
        kwargs = dict(kwargs)
        images, labels = datasets.load(
            kwargs.pop("dataset", "mnist_embedded"), split)
        return MLP(images, labels, **kwargs)
    if name == "keras_model":
        kwargs = dict(kwargs)
        x, y = datasets.load(kwargs.pop("dataset", "mnist_embedded"), split)
        return KerasModel(x=x, y=y, **kwargs)
    if name == "neural_art":
        return NeuralArt(split=split, **kwargs)
    raise ValueError(f"`problem` must be one of {list(PROBLEMS)}. "
                     f"Received: problem={name!r}")


def from_config(config, split: str) -> Problem:
    """The problem a config names (`config.problem`, `config.problem_kwargs`)."""
    return make(config.problem, split, **dict(config.problem_kwargs))


__all__ = ["Problem", "Quadratic", "MLP", "KerasModel", "NeuralArt", "ACTIVATIONS", "PROBLEMS", "make", "from_config",
           "seed_pair", "fold_in"]

"""Optimizee families, as pure functions of parameter tensors (see base.py)."""

import inspect

from l2l_tf import datasets
from l2l_tf.problems.base import Problem, fold_in, seed_pair
from l2l_tf.problems import keras_model
from l2l_tf.problems.keras_model import KerasModel
from l2l_tf.problems.mlp import ACTIVATIONS, MLP
from l2l_tf.problems.neural_art import NeuralArt
from l2l_tf.problems.quadratic import Quadratic
from l2l_tf.problems.scaled import RandomlyScaled

PROBLEMS = ("quadratic", "mnist", "keras_model", "neural_art")

# problem_kwargs that choose the data (see l2l_tf.datasets), with defaults.
DATA_OPTIONS = {"dataset": "mnist_embedded", "data_dir": None,
                "classes": None, "max_examples": None}


def data_options(kwargs: dict) -> dict:
    """The data options of `problem_kwargs` (DATA_OPTIONS keys), defaults
    filled in."""
    out = {k: kwargs.get(k, v) for k, v in DATA_OPTIONS.items()}
    if out["classes"] is not None:
        out["classes"] = tuple(out["classes"])
    return out


def check_data(kwargs: dict) -> None:
    """Raises, before any work, if the data `problem_kwargs` names cannot be
    loaded (see datasets.check: the not-prepared error says how to prepare
    it offline)."""
    options = data_options(kwargs)
    datasets.check(options.pop("dataset"), **options)


def _load(kwargs: dict, split: str):
    """Pops the data options from `kwargs`; returns (x, y, num_classes)."""
    options = data_options(kwargs)
    for k in DATA_OPTIONS:
        kwargs.pop(k, None)
    name = options.pop("dataset")
    x, y = datasets.load(name, split, **options)
    return x, y, datasets.num_classes(name, options["classes"])


def make(name: str, split: str = "train", **kwargs) -> Problem:
    """Builds the problem family `name` on data split `split`.

    "quadratic" takes Quadratic's arguments (it has no data; `split` only
    matters through the seeds a caller draws). "mnist" takes MLP's arguments
    and "keras_model" KerasModel's (`build_fn`, `loss`, `batch_size`,
    `build_kwargs`, `eval_training`); both also take the data options
    DATA_OPTIONS: `dataset` (a name in `datasets.DATASETS`), `data_dir`,
    `classes` and `max_examples` (see l2l_tf.datasets).

    With `classes` (k labels kept), the MLP gets num_classes=k and a Keras
    model's `build_fn` is called with num_classes=k (it must take it).
    "neural_art" takes NeuralArt's arguments; `split` picks its content
    photographs.
    """
    if name == "quadratic":
        return Quadratic(**kwargs)
    if name == "mnist":
        kwargs = dict(kwargs)
        images, labels, k = _load(kwargs, split)
        if kwargs.setdefault("num_classes", k) != k:
            raise ValueError(
                f"`num_classes` must be {k}, the classes of the data. "
                f"Received: num_classes={kwargs['num_classes']!r}")
        return MLP(images, labels, **kwargs)
    if name == "keras_model":
        kwargs = dict(kwargs)
        classes = data_options(kwargs)["classes"]
        x, y, k = _load(kwargs, split)
        if classes is not None:
            build_fn = keras_model.resolve_build_fn(kwargs.get("build_fn"))
            if "num_classes" not in inspect.signature(build_fn).parameters:
                raise ValueError(
                    f"`classes` keeps {k} labels, so `build_fn` must take "
                    "`num_classes`. Received: build_fn="
                    f"{kwargs.get('build_fn')!r}")
            kwargs["build_kwargs"] = dict(kwargs.get("build_kwargs") or {},
                                          num_classes=k)
        return KerasModel(x=x, y=y, **kwargs)
    if name == "neural_art":
        return NeuralArt(split=split, **kwargs)
    raise ValueError(f"`problem` must be one of {list(PROBLEMS)}. "
                     f"Received: problem={name!r}")


def from_config(config, split: str) -> Problem:
    """The problem a config names (`config.problem`, `config.problem_kwargs`)."""
    return make(config.problem, split, **dict(config.problem_kwargs))


__all__ = ["Problem", "Quadratic", "MLP", "KerasModel", "NeuralArt",
           "RandomlyScaled",
           "ACTIVATIONS", "PROBLEMS", "DATA_OPTIONS", "data_options",
           "check_data", "make", "from_config",
           "seed_pair", "fold_in"]

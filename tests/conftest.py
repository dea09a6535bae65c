"""Shared test setup.

TensorFlow's C++ logging is quieted before it is imported, and the CPU is
split into two logical devices before any op runs, so that tf.distribute
tests can mirror across two "replicas" on one machine.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=wrong-import-position

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

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


import pytest  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole session.

    Several MirroredStrategy objects in one process can hand out the same
    collective instance keys to different all-reduces (TensorFlow then
    aborts with "Shape mismatch in the collective instance"), so tests share
    this one.
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    return tf.distribute.MirroredStrategy(devices)

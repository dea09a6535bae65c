"""Tests of l2l_tf.preprocess against hand-computed values."""

import math

import hypothesis
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import strategies as st

from l2l_tf import preprocess

P = 10.0
FLOAT32_MAX_LOG = math.log(np.finfo(np.float32).max)  # 88.72...


def _log_sign(values, p=P):
    return preprocess.log_sign(tf.constant(values, tf.float32), p).numpy()


@pytest.mark.parametrize("g, p, expected", [
    # Big branch: (log|g| / p, sign g).
    (1.0, 10.0, (0.0, 1.0)),
    (-1.0, 10.0, (0.0, -1.0)),
    (math.e, 10.0, (0.1, 1.0)),
    (-math.exp(-5.0), 10.0, (-0.5, -1.0)),
    (100.0, 10.0, (math.log(100.0) / 10.0, 1.0)),
    (-3e38, 10.0, (math.log(3e38) / 10.0, -1.0)),
    (math.exp(-2.0), 2.0, (-1.0, 1.0)),   # boundary, p = 2
    (0.5, 2.0, (math.log(0.5) / 2.0, 1.0)),
    # Small branch: (-1, exp(p) g).
    (1e-6, 10.0, (-1.0, math.exp(10.0) * 1e-6)),
    (-2e-5, 10.0, (-1.0, -math.exp(10.0) * 2e-5)),
    (0.0, 10.0, (-1.0, 0.0)),
    (0.1, 2.0, (-1.0, math.exp(2.0) * 0.1)),
])
def test_log_sign_hand_computed(g, p, expected):
    out = _log_sign([g], p)
    assert out.shape == (1, 2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-7)


def test_log_sign_batch_matches_elementwise():
    values = [1.0, -math.exp(-5.0), 1e-6, 0.0, -7.5]
    batch = _log_sign(values)
    assert batch.shape == (5, 2)
    for i, v in enumerate(values):
        np.testing.assert_array_equal(batch[i], _log_sign([v])[0])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_log_sign_boundary_is_continuous(sign):
    # At |g| = exp(-p) both branches give (-1, sign g): the features are
    # continuous there, whichever side float32 rounding puts g on.
    edge = np.float32(math.exp(-P))
    below = np.nextafter(edge, np.float32(0.0))
    above = np.nextafter(edge, np.float32(1.0))
    out = _log_sign(sign * np.array([below, edge, above], np.float32))
    np.testing.assert_allclose(out[:, 0], [-1.0, -1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], [sign] * 3, atol=1e-6)
    # Just above the boundary is the big branch (exact sign), just below
    # is the small one (exp(p) g, slightly less than 1 in magnitude).
    assert out[2, 1] == sign
    assert out[0, 0] == -1.0 and abs(out[0, 1]) < 1.0


def test_identity_shape_and_values():
    g = tf.constant([1.5, -2.0, 0.0], tf.float32)
    out = preprocess.identity(g, 10.0)
    assert out.shape == (3, 1)
    np.testing.assert_array_equal(out.numpy()[:, 0], [1.5, -2.0, 0.0])


def test_registry_widths_match_functions():
    g = tf.constant([0.3, -4e-7], tf.float32)
    for name in ("log_sign", "none"):
        pre = preprocess.get(name)
        assert pre.fn(g, 10.0).shape == (2, pre.width)
    assert preprocess.get("log_sign").fn is preprocess.log_sign
    assert preprocess.get("none").fn is preprocess.identity


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        preprocess.get("bogus")
    message = str(info.value)
    assert "`preprocess`" in message
    assert "'bogus'" in message
    for name in preprocess.PREPROCESSORS:
        assert repr(name) in message


_FINITE_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.lists(_FINITE_F32, min_size=1, max_size=64))
@hypothesis.example([0.0, -0.0, 1e-45, -1e-45, 1.2e-38, 3e38, -3e38,
                     float(np.finfo(np.float32).max),
                     float(-np.finfo(np.float32).max)])
@hypothesis.example([float(np.nextafter(np.float32(math.exp(-P)),
                                        np.float32(0.0))),
                     float(np.float32(math.exp(-P)))])
def test_log_sign_bounded_for_every_finite_float32(values):
    out = _log_sign(values)
    assert np.all(np.isfinite(out)), (values, out)
    first, second = out[:, 0], out[:, 1]
    assert np.all(first >= -1.0), (values, first)
    assert np.all(first <= np.float32(FLOAT32_MAX_LOG / P)), (values, first)
    assert np.all(np.abs(second) <= 1.0), (values, second)
    # The sign is kept for normal floats (TensorFlow's CPU kernels flush
    # denormals to zero, so a denormal may come out as 0).
    v = np.asarray(values, np.float32)
    normal = np.abs(v) >= np.finfo(np.float32).tiny
    assert np.all(np.sign(second[normal]) == np.sign(v[normal])), (
        values, second)


def test_log_sign_gradient_finite_at_zero_and_tiny():
    # tf.where back-propagates through both branches; log(0) in the branch
    # not taken would give NaN gradients.
    g = tf.constant([0.0, 1e-45, 1e-6, -2.0], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(g)
        out = preprocess.log_sign(g, P)
        total = tf.reduce_sum(out)
    grad = tape.gradient(total, g).numpy()
    assert np.all(np.isfinite(grad)), grad
    # Hand-computed: small branch d/dg = exp(p) (first feature is constant);
    # big branch d/dg log|g| / p = 1 / (p g), sign has zero gradient.
    np.testing.assert_allclose(
        grad, [math.exp(P), math.exp(P), math.exp(P), 1.0 / (P * -2.0)],
        rtol=1e-6)

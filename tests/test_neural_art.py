"""Tests of the neural-art problem (l2l_tf.problems.neural_art) and its
report (l2l_tf.art_report)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import art_report, figures, networks, problems, saved_model, unroll
from l2l_tf.problems import base
from l2l_tf.problems import neural_art as na


class TinyNet:
    """A fixed 'feature network' whose maps are easy to compute by hand:
    layer 0 the pixels themselves, layer 1 their 2x2 average pool."""

    style_layers = (0, 1)
    content_layer = 1

    def __call__(self, images):
        return [images, tf.nn.avg_pool2d(images, 2, 2, "VALID")]

    def describe(self):
        return {"features": "tiny"}


def _write_png(path, pixels):
    tf.io.write_file(str(path), tf.io.encode_png(
        np.asarray(pixels, np.uint8)))
    return str(path)


@pytest.fixture(name="tiny_files")
def _tiny_files(tmp_path):
    rng = np.random.default_rng(0)
    content = _write_png(tmp_path / "content.png",
                         rng.integers(0, 256, (4, 4, 3)))
    style = _write_png(tmp_path / "style.png",
                       rng.integers(0, 256, (4, 4, 3)))
    return content, style


def _np_gram(maps):
    """maps [h, w, C] -> F^T F / (h w)."""
    flat = maps.reshape(-1, maps.shape[-1]).astype(np.float64)
    return flat.T @ flat / flat.shape[0]


def _np_pool(x):
    h, w, c = x.shape
    return x.reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))


def test_gram_matches_hand_computed_values():
    # One channel, 2x2 positions: (1 + 4 + 9 + 16) / 4.
    maps = tf.constant([[[[1.0], [2.0]], [[3.0], [4.0]]]])
    np.testing.assert_allclose(na.gram(maps).numpy(), [[[7.5]]])
    # Two channels at two positions (1, 2) and (3, 4):
    # [[1*1 + 3*3, 1*2 + 3*4], [., 2*2 + 4*4]] / 2.
    maps = tf.constant([[[[1.0, 2.0], [3.0, 4.0]]]])
    np.testing.assert_allclose(na.gram(maps).numpy(),
                               [[[5.0, 7.0], [7.0, 10.0]]])


def test_losses_match_numpy_on_a_4x4_image(tiny_files):
    content_file, style_file = tiny_files
    problem = na.NeuralArt(size=4, content=[content_file], style=style_file,
                           content_weight=0.7, style_weight=2.0,
                           feature_net=TinyNet(), init_noise=0.0,
                           loss_scale=100.0)
    assert problem.features == "tiny"
    assert problem.param_shapes() == [(4, 4, 3)] and problem.num_params == 48
    params, task = problem.init(3)
    # The files are 4x4: every crop is the whole image (resize is identity).
    p = na.load_image(content_file).astype(np.float64)
    s = na.load_image(style_file).astype(np.float64)
    np.testing.assert_allclose(params[0].numpy(), p, atol=1e-6)
    x = np.random.default_rng(1).uniform(0, 1, (4, 4, 3))
    content = np.sum((_np_pool(x) - _np_pool(p)) ** 2) / np.sum(
        _np_pool(p) ** 2)
    style = sum(np.sum((_np_gram(f(x)) - _np_gram(f(s))) ** 2)
                / np.sum(_np_gram(f(s)) ** 2) for f in (lambda a: a, _np_pool))
    want = 0.7 * content + 2.0 * style
    xt = [tf.constant(x, tf.float32)]
    loss, reported = problem.loss(xt, task, problem.batch(task, 0))
    np.testing.assert_allclose(reported.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(problem.eval_loss(xt, task).numpy(), want,
                               rtol=1e-5)
    # The differentiated loss: loss_scale * (size / 64)^2 * L.
    np.testing.assert_allclose(loss.numpy(), 100.0 * (4 / 64) ** 2 * want,
                               rtol=1e-5)
    # At the content image itself the content term is zero.
    c_term, _ = problem.terms(params, task)
    assert abs(float(c_term)) < 1e-10


def test_init_is_seeded_and_splits_hold_different_photographs():
    train = problems.make("neural_art", "train", size=16, features="random")
    test = problems.make("neural_art", "test", size=16, features="random")
    assert train.content != test.content
    assert not set(train.content) & set(test.content)
    (a,), ta = train.init(5)
    (b,), tb = train.init(5)
    (c,), _ = train.init(6)
    assert a.shape == (16, 16, 3) and a.dtype == tf.float32
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(ta.numpy(), tb.numpy())
    assert not np.allclose(a.numpy(), c.numpy())
    # x_0 = content + N(0, 0.1^2).
    noise = a.numpy() - train.content_image(5).numpy()
    assert 0.08 < noise.std() < 0.12
    assert train.style_image.shape == (16, 16, 3)


def test_per_pixel_gradient_scale_does_not_depend_on_size():
    medians = []
    for size in (16, 32):
        problem = na.NeuralArt(size=size, features="random")
        params, task = problem.init(0)
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss, _ = problem.loss(params, task, ())
        medians.append(np.median(np.abs(tape.gradient(loss, params)[0])))
    assert 0.5 < medians[0] / medians[1] < 2.0, medians


def test_loss_falls_under_learned_optimizer_steps_on_16x16():
    # The shipped MNIST weights, as they are: on this problem they lower the
    # loss for about four steps and then overshoot (measured: 2.57 -> 1.81
    # at step 3, 3.8 at step 6), so "a few" steps here are three. Learned
    # weights for neural art come from configs/neural_art.py.
    rule, phi, _ = saved_model.load("mnist")
    problem = na.NeuralArt(size=16, features="random")
    run = unroll.make_run_fn(rule, problem, 3)
    phi = {k: tf.constant(v) for k, v in phi.items()}
    for seed in (0, 2):
        losses = run(phi, base.seed_pair(seed)).numpy()
        assert np.all(np.diff(losses) < 0), losses
        assert losses[-1] < 0.85 * losses[0], losses


def test_falls_back_to_random_features_without_cached_vgg(tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(na, "KERAS_FALLBACK_MODELS_DIR",
                        str(tmp_path / "tmp_keras"))
    assert na.cached_vgg19_weights() is None
    problem = na.NeuralArt(size=8, features="auto", feature_seed=3)
    assert problem.features == "random"
    assert isinstance(problem.net, na.RandomConvNet)
    assert problem.describe()["features"] == "random"
    assert problem.describe()["seed"] == 3
    with pytest.raises(FileNotFoundError, match="features='vgg19'"):
        na.make_features("vgg19")
    # A cached file is found where Keras keeps it (not loaded here).
    models = tmp_path / "keras" / "models"
    models.mkdir(parents=True)
    (models / na.VGG19_WEIGHTS_FILE).write_bytes(b"")
    assert na.cached_vgg19_weights() == str(models / na.VGG19_WEIGHTS_FILE)


def test_random_features_are_fixed_by_their_seed():
    images = tf.random.stateless_uniform([1, 8, 8, 3], [0, 1])
    a, b, c = (na.RandomConvNet(s)(images) for s in (0, 0, 1))
    assert [m.shape for m in a] == [(1, 8, 8, 32), (1, 8, 8, 32),
                                    (1, 4, 4, 64), (1, 2, 2, 64)]
    np.testing.assert_array_equal(a[-1].numpy(), b[-1].numpy())
    assert not np.allclose(a[-1].numpy(), c[-1].numpy())


def test_invalid_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"one of .*'ihc'.*Received: 'nope'"):
        na.load_image("nope")
    with pytest.raises(ValueError, match="`split` must be one of"):
        na.NeuralArt(split="dev", feature_net=TinyNet())
    with pytest.raises(ValueError, match="`features` must be one of"):
        na.make_features("resnet")
    with pytest.raises(ValueError, match="Received: size=2"):
        na.NeuralArt(size=2, feature_net=TinyNet())
    with pytest.raises(ValueError, match="Received: init='zeros'"):
        na.NeuralArt(init="zeros", feature_net=TinyNet())


def test_report_writes_images_and_curves(tmp_path, tiny_files):
    content_file, style_file = tiny_files
    problem = na.NeuralArt(size=4, content=[content_file], style=style_file,
                           feature_net=TinyNet(), init_noise=0.0)
    # A zero learning rate leaves the start as it is.
    (x,) = art_report.final_params(networks.get("sgd"),
                                   {"learning_rate": np.float32(0.0)},
                                   problem, base.seed_pair(1), 3)
    np.testing.assert_allclose(x.numpy(), problem.init(1)[0][0].numpy())
    path = str(tmp_path / "x.png")
    art_report.save_png(x.numpy() * 2.0 - 0.5, path)  # Out of range: clipped.
    decoded = tf.io.decode_png(tf.io.read_file(path)).numpy()
    assert decoded.shape == (4, 4, 3)
    want = art_report.to_uint8(x.numpy() * 2.0 - 0.5)
    np.testing.assert_array_equal(decoded, want)
    results = {"horizons": [3], "optimizers": {
        "learned": {"kind": "learned", "mean": [2.0, 1.0, 0.5, 0.4],
                    "stderr": [0.0, 0.1, 0.1, 0.1]},
        "adam": {"kind": "baseline", "mean": [2.0, 1.5, 1.0, 0.9],
                 "stderr": [0.0, 0.1, 0.1, np.inf],
                 "per_horizon": {"3": {"learning_rate": 0.1}}}}}
    figures.loss_curves(results, str(tmp_path / "curves.png"))
    assert tf.io.decode_png(tf.io.read_file(
        str(tmp_path / "curves.png"))).shape[-1] in (3, 4)
    json.dumps(problem.describe())  # JSON-ready.


def test_configs_validate_and_vary_one_field():
    from configs import neural_art, neural_art_128, neural_art_style  # pylint: disable=import-outside-toplevel
    from l2l_tf import meta  # pylint: disable=import-outside-toplevel
    base_config = neural_art.get_config()
    for module in (neural_art, neural_art_128, neural_art_style):
        meta.validate_config(module.get_config())
    assert base_config.problem == "neural_art"
    assert base_config.problem_kwargs.size == 64
    assert neural_art_128.get_config().problem_kwargs.size == 128
    style = neural_art_style.get_config().problem_kwargs.style
    assert style in na.STYLES and style != base_config.problem_kwargs.style


def test_meta_training_export_records_the_feature_network(tmp_path):
    from configs import neural_art  # pylint: disable=import-outside-toplevel
    from l2l_tf import meta  # pylint: disable=import-outside-toplevel
    config = neural_art.get_config()
    config.problem_kwargs.size = 8
    config.meta.init_weights = ""
    # The export alone (no meta-step): what train() writes at a new best.
    path = meta.MetaTrainer(config, str(tmp_path)).export("export", 1.0)
    _, _, metadata = saved_model.load(path)
    assert metadata["config"]["problem_kwargs"]["features"] == "auto"
    assert metadata["problem"]["features"] in ("random", "vgg19")
    assert metadata["problem"]["size"] == 8

"""Neural art (Gatys et al. 2015) as an optimizee: the parameters are pixels.

The paper's Sec. 3.4 trains the LSTM optimizer to stylize 64x64 images in
one style and tests it on new content images, on 128x128 images and on a
second style. This module is that problem family (NeuralArt, whose
docstring holds the loss); l2l_tf.art_report saves an evaluation's images
and loss curves.
"""

import importlib.util
import json
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from l2l_tf.problems import base

# -- images ------------------------------------------------------------------

# Images that scikit-image ships inside its wheel (skimage/data/; read from
# the installed package, never fetched): name -> file.
IMAGES = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "camera": "camera.png",          # Greyscale, used as RGB.
    "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png",                # A stained tissue section.
    "brick": "brick.png",            # Greyscale textures.
    "gravel": "gravel.png",
    "grass": "grass.png",
}

# Photographs for each split: seeds pick one of these and a random crop.
CONTENT_SPLITS = {
    "train": ("astronaut", "coffee", "chelsea"),
    "validation": ("motorcycle",),
    "test": ("rocket", "camera"),
}
STYLES = ("hubble_deep_field", "ihc", "brick", "gravel", "grass")
FEATURE_NETS = ("auto", "vgg19", "random")
INITS = ("content", "noise")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# What keras.applications.VGG19(include_top=False, weights="imagenet")
# downloads into <Keras home>/models/.
VGG19_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"


def shipped_image_dir() -> str:
    """scikit-image's data folder (found without importing skimage)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The shipped neural-art images come with "
                          "scikit-image: `pip install scikit-image`.")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_image(name_or_path: str) -> np.ndarray:
    """An RGB image float32 [H, W, 3] in [0, 1]: a name in IMAGES or the path
    of a PNG or JPEG file."""
    if name_or_path in IMAGES:
        path = os.path.join(shipped_image_dir(), IMAGES[name_or_path])
    elif (isinstance(name_or_path, str)
          and name_or_path.lower().endswith(_IMAGE_SUFFIXES)):
        path = name_or_path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No image file at {path!r}.")
    else:
        raise ValueError(f"An image must be one of {sorted(IMAGES)} or the "
                         f"path of a {'/'.join(_IMAGE_SUFFIXES)} file. "
                         f"Received: {name_or_path!r}")
    # Pillow (a matplotlib dependency) rather than tf.io.decode_image, whose
    # C++ logging warns about the sRGB profiles of the shipped PNGs.
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.float32) / 255.0


def center_square(image, size: int) -> tf.Tensor:
    """The largest centred square of `image`, resized to size x size."""
    h, w = image.shape[0], image.shape[1]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[top:top + s, left:left + s]
    return tf.image.resize(crop, [size, size], method="area",
                           antialias=True)


# -- feature networks ----------------------------------------------------------


def keras_models_dir() -> str:
    """Where Keras caches downloaded weights ($KERAS_HOME/models, read at
    call time; by default ~/.keras/models)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


# Where Keras caches when its home is not writable.
KERAS_FALLBACK_MODELS_DIR = os.path.join("/tmp", ".keras", "models")


def cached_vgg19_weights() -> Optional[str]:
    """The path of VGG-19's ImageNet weights if Keras has them cached, else
    None. Never downloads."""
    for folder in (keras_models_dir(), KERAS_FALLBACK_MODELS_DIR):
        path = os.path.join(folder, VGG19_WEIGHTS_FILE)
        if os.path.isfile(path):
            return path
    return None


class RandomConvNet:
    """A fixed random-weight conv net: the fallback feature network.

    conv3x3(3->32) ReLU, conv3x3(32->32) ReLU, avgpool 2, conv3x3(32->64)
    ReLU, avgpool 2, conv3x3(64->64) ReLU; "SAME" padding, no biases, He-
    normal weights from `seed`. Style layers: the four ReLUs; content layer:
    the third. Pixels in [0, 1] are standardized with ImageNet's channel
    mean and std first. Random shallow filters give working style losses
    (Ustyuzhaninov et al. 2016, "Texture synthesis using shallow
    convolutional networks with random filters").
    """

    name = "random"
    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, seed: int = 0, widths: Sequence[int] = (32, 32, 64, 64),
                 pool_after: Sequence[int] = (1, 2), content_layer: int = 2):
        self.seed = int(seed)
        self.widths = tuple(widths)
        self.pool_after = tuple(pool_after)
        self.content_layer = int(content_layer)
        self.kernels = []
        c_in = 3
        for i, c_out in enumerate(self.widths):
            std = np.sqrt(2.0 / (9 * c_in))
            self.kernels.append(std * tf.random.stateless_normal(
                [3, 3, c_in, c_out], [self.seed, i]))
            c_in = c_out
        self.style_layers = tuple(range(len(self.widths)))

    def __call__(self, images):
        """Feature maps [B, h_l, w_l, C_l] of `images` [B, H, W, 3], one per
        layer."""
        x = (images - tf.constant(self._MEAN)) / tf.constant(self._STD)
        out = []
        for i, k in enumerate(self.kernels):
            x = tf.nn.relu(tf.nn.conv2d(x, k, 1, "SAME"))
            out.append(x)
            if i in self.pool_after:
                x = tf.nn.avg_pool2d(x, 2, 2, "VALID")
        return out

    def describe(self) -> dict:
        return {"features": self.name, "seed": self.seed,
                "widths": list(self.widths)}


class VGG19Features:
    """VGG-19's ImageNet features (Gatys et al.'s layers).

    Style layers: block{1..5}_conv1; content layer: block4_conv2. Pixels in
    [0, 1] go through keras.applications.vgg19.preprocess_input (x255, BGR,
    mean subtracted). Built only from a cached weights file.
    """

    name = "vgg19"
    LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1",
              "block5_conv1", "block4_conv2")

    def __init__(self, weights_path: str):
        import keras  # pylint: disable=import-outside-toplevel
        self.weights_path = weights_path
        vgg = keras.applications.VGG19(include_top=False,
                                       weights=weights_path,
                                       input_shape=(None, None, 3))
        vgg.trainable = False
        self.model = keras.Model(
            vgg.input, [vgg.get_layer(n).output for n in self.LAYERS])
        self._preprocess = keras.applications.vgg19.preprocess_input
        self.style_layers = (0, 1, 2, 3, 4)
        self.content_layer = 5

    def __call__(self, images):
        return list(self.model(self._preprocess(images * 255.0),
                               training=False))

    def describe(self) -> dict:
        return {"features": self.name, "weights": self.weights_path}


def make_features(kind: str = "auto", seed: int = 0):
    """The feature network: "vgg19" (cached ImageNet weights required),
    "random" (RandomConvNet(seed)) or "auto" (VGG-19 if its weights are
    cached, else the random net)."""
    if kind not in FEATURE_NETS:
        raise ValueError(f"`features` must be one of {list(FEATURE_NETS)}. "
                         f"Received: features={kind!r}")
    path = cached_vgg19_weights()
    if kind == "vgg19" and path is None:
        raise FileNotFoundError(
            f"`features='vgg19'` needs {VGG19_WEIGHTS_FILE} in "
            f"{keras_models_dir()}; nothing is downloaded. Use "
            "features='auto' or 'random'.")
    if kind == "random" or path is None:
        net = RandomConvNet(seed)
    else:
        net = VGG19Features(path)
    logging.info("Neural art features: %s", net.describe())
    return net


# -- losses --------------------------------------------------------------------


def gram(features):
    """Gram matrices F^T F / M of feature maps [B, h, w, C] (M = h w): [B, C, C]."""
    shape = tf.shape(features)
    flat = tf.reshape(features, [shape[0], -1, shape[3]])
    m = tf.cast(tf.shape(flat)[1], features.dtype)
    return tf.matmul(flat, flat, transpose_a=True) / m


def relative_sq_error(x, target):
    """||x - target||^2 / ||target||^2 over all but the first axis: [B]."""
    axes = list(range(1, len(target.shape)))
    num = tf.reduce_sum(tf.square(x - target), axis=axes)
    return num / (tf.reduce_sum(tf.square(target), axis=axes) + 1e-12)


class NeuralArt(base.Problem):
    """Stylizing one image: the parameters are its pixels.

    The parameters are one tensor x [size, size, 3], RGB pixels on the [0, 1]
    scale, optimized unconstrained (the features see x as it is; images are
    clipped to [0, 1] only when saved). With F_l(x) [M_l, C_l] the features
    of layer l at M_l positions and G_l(x) = F_l^T F_l / M_l its Gram matrix,

        L(x) = content_weight * ||F_c(x) - F_c(p)||^2 / ||F_c(p)||^2
             + style_weight * sum_l ||G_l(x) - G_l(s)||^2 / ||G_l(s)||^2

    for content image p and style image s (Gatys et al. 2015, with each term
    normalized by its target so that L is dimensionless and the same for any
    feature network). L is the reported loss (`eval_loss`).

    Loss and scale: the differentiated loss is loss_scale * (size / 64)^2 * L.
    Each pixel's gradient of L shrinks like 1 / size^2 (L is a mean over
    positions): the (size / 64)^2 keeps per-pixel gradients the same at
    128x128 as at the 64x64 of meta-training (measured: equal medians).
    loss_scale = 100 makes them about 0.03-0.07 (median |g|, random
    features, content start), and puts plain SGD's best learning rate near
    1, inside the baselines' tuning grid 1e-4..10 (at scale 1 it was 100).
    At a content start L is mostly the style term: about 2-3.5 with the
    random features; tuned Adam brings it to about 0.43 in 100 steps.

    Seeds draw the content image: one of the split's photographs (or the
    user's `content` files), a random square crop of 50-100% of its short
    side, resized to size x size; then the start x_0 = content +
    N(0, init_noise^2) ("content") or 0.5 + N(0, init_noise^2) ("noise", as
    Gatys et al.). The paper does not state its start; "content" is the
    default, so that a 100-step run shows the style appearing on the photo.

    Args:
      split: "train", "validation" or "test": which photographs are used.
      size: image height and width in pixels (64 in meta-training).
      style: a style name in STYLES/IMAGES or the path of an image file.
      content: None (the split's photographs, CONTENT_SPLITS) or a sequence
        of image names or file paths, used for every split.
      content_weight, style_weight: the weights of the two terms.
      features: "auto", "vgg19" or "random" (see make_features); the one
        that ran is `self.features` ("vgg19" or "random").
      feature_seed: the random network's seed.
      init: "content" or "noise" (see above); init_noise: its stddev.
      loss_scale: the factor of the differentiated loss (see above).
    """

    name = "neural_art"

    def __init__(self, split: str = "train", size: int = 64,
                 style: str = "hubble_deep_field",
                 content: Optional[Sequence[str]] = None,
                 content_weight: float = 1.0, style_weight: float = 1.0,
                 features: str = "auto", feature_seed: int = 0,
                 init: str = "content", init_noise: float = 0.1,
                 loss_scale: float = 100.0, feature_net=None):
        if split not in CONTENT_SPLITS:
            raise ValueError(f"`split` must be one of {list(CONTENT_SPLITS)}."
                             f" Received: split={split!r}")
        if not (isinstance(loss_scale, (int, float)) and loss_scale > 0):
            raise ValueError("`loss_scale` must be positive. "
                             f"Received: loss_scale={loss_scale!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 4:
            raise ValueError("`size` must be an integer >= 4. "
                             f"Received: size={size!r}")
        if init not in INITS:
            raise ValueError(f"`init` must be one of {list(INITS)}. "
                             f"Received: init={init!r}")
        for arg, value in (("content_weight", content_weight),
                           ("style_weight", style_weight),
                           ("init_noise", init_noise)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"`{arg}` must be >= 0. "
                                 f"Received: {arg}={value!r}")
        names = tuple(content) if content else CONTENT_SPLITS[split]
        if not names:
            raise ValueError("`content` must name at least one image. "
                             f"Received: content={content!r}")
        self.split = split
        self.size = size
        self.style = style
        self.content = names
        self.content_weight = float(content_weight)
        self.style_weight = float(style_weight)
        self.init_mode = init
        self.init_noise = float(init_noise)
        # `feature_net` (tests): any callable images -> [maps] with
        # style_layers, content_layer and describe().
        self.net = feature_net or make_features(features, feature_seed)
        self.features = self.net.describe()["features"]
        self._photos = [tf.constant(load_image(n)) for n in names]
        self.style_image = center_square(load_image(style), size)
        maps = self.net(self.style_image[None])
        self.style_targets = [gram(maps[l]) for l in self.net.style_layers]
        self.loss_scale = float(loss_scale)
        self.grad_scale = self.loss_scale * (size / 64.0) ** 2

    def describe(self) -> dict:
        """What ran: JSON-ready (recorded next to results)."""
        return {"problem": self.name, "split": self.split, "size": self.size,
                "style": self.style, "content": list(self.content),
                "content_weight": self.content_weight,
                "style_weight": self.style_weight, "init": self.init_mode,
                "init_noise": self.init_noise, "loss_scale": self.loss_scale,
                **self.net.describe()}

    def param_shapes(self):
        return [(self.size, self.size, 3)]

    def param_names(self):
        return ["pixels"]

    def content_image(self, seed) -> tf.Tensor:
        """The content image [size, size, 3] that `seed` draws."""
        seed = base.seed_pair(seed)
        index = tf.random.stateless_uniform(
            [], base.fold_in(seed, 0), 0, len(self._photos), tf.int32)
        frac, top, left = tf.random.stateless_uniform(
            [3], base.fold_in(seed, 1)).numpy()
        photo = self._photos[int(index)]
        h, w = photo.shape[0], photo.shape[1]
        side = max(1, int(round((0.5 + 0.5 * frac) * min(h, w))))
        y0, x0 = int(top * (h - side)), int(left * (w - side))
        crop = photo[y0:y0 + side, x0:x0 + side]
        return tf.image.resize(crop, [self.size, self.size], method="area",
                               antialias=True)

    def init(self, seed):
        seed = base.seed_pair(seed)
        content = self.content_image(seed)
        noise = self.init_noise * tf.random.stateless_normal(
            content.shape, base.fold_in(seed, 2))
        start = content if self.init_mode == "content" else (
            0.5 * tf.ones_like(content))
        maps = self.net(content[None])
        return [start + noise], maps[self.net.content_layer]

    def terms(self, params, task) -> Tuple[tf.Tensor, tf.Tensor]:
        """(content term, [style term of each style layer]) of L, unweighted."""
        (x,) = params
        maps = self.net(x[None])
        content = relative_sq_error(maps[self.net.content_layer], task)[0]
        style = [relative_sq_error(gram(maps[l]), t)[0]
                 for l, t in zip(self.net.style_layers, self.style_targets)]
        return content, style

    def eval_loss(self, params, task):
        content, style = self.terms(params, task)
        return (self.content_weight * content
                + self.style_weight * tf.add_n(style))

    def loss(self, params, task, batch):
        del batch
        value = self.eval_loss(params, task)
        return self.grad_scale * value, value

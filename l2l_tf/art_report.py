"""Neural-art evaluation with pictures: the protocol's tables plus PNGs.

`evaluate_and_save(config, weights, workdir)` runs the evaluation protocol
of l2l_tf.evaluation on a neural-art config (the learned optimizer against
SGD, NAG, RMSprop and Adam, each at its best learning rate on separate
tuning seeds), then writes into `workdir`:

    evaluation.json   the protocol's results, plus "neural_art": what ran
                      (NeuralArt.describe(): features "vgg19" or "random",
                      size, style, content images) and the image files
    loss_curves.png   mean reported loss against steps, log-scale y (as the
                      paper's figures), one line per optimizer
    content.png, style.png, start.png
                      the first reported seed's content image, the style
                      image and the starting image
    <optimizer>.png   that seed's image after the longest horizon, for the
                      learned optimizer and each tuned baseline
    images.png        all of the above side by side, titled

Pixels are clipped to [0, 1] only here, when saved.
"""

import os
from typing import Dict

import numpy as np
import tensorflow as tf
from absl import logging

from l2l_tf import atomic, evaluation, networks, problems, saved_model, unroll
from l2l_tf.problems import base


def final_params(rule, phi, problem, seed, num_steps: int):
    """The parameters after `num_steps` steps of `rule` from `seed`'s start."""
    if hasattr(rule, "bind"):
        rule = rule.bind(problem)
    params, task = problem.init(seed)

    @tf.function
    def run(phi, params):
        state = rule.init_state(problem.num_params)

        def body(t, params, state):
            params, state, _ = unroll.opt_step(rule, phi, problem, params,
                                               state, task, t)
            return t + 1, params, state

        _, params, _ = tf.while_loop(lambda t, *_: t < num_steps, body,
                                     (tf.constant(0), params, state))
        return params

    return run({k: tf.constant(v) for k, v in phi.items()}, params)


def to_uint8(image) -> np.ndarray:
    """[H, W, 3] pixels on the [0, 1] scale, clipped, as uint8."""
    image = np.nan_to_num(np.asarray(image, np.float32), nan=0.0)
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def save_png(image, path: str):
    atomic.write_bytes(path, tf.io.encode_png(to_uint8(image)).numpy())


def _montage(panels: Dict[str, np.ndarray], path: str):
    from l2l_tf import figures  # pylint: disable=import-outside-toplevel
    plt = figures.plt

    fig, axes = plt.subplots(1, len(panels), figsize=(1.3 * len(panels), 1.6),
                             dpi=100)
    for ax, (name, image) in zip(axes, panels.items()):
        ax.imshow(to_uint8(image), interpolation="nearest")
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    fig.tight_layout(pad=0.2)
    figures.save(fig, path, dpi=100)


def evaluate_and_save(config, weights: str, workdir: str) -> dict:
    """Evaluates `weights` on neural-art `config` and writes the files of the
    module doc into `workdir`; returns the results (as evaluation.json)."""
    if config.problem != "neural_art":
        raise ValueError("`config.problem` must be 'neural_art'. "
                         f"Received: config.problem={config.problem!r}")
    os.makedirs(workdir, exist_ok=True)
    results = evaluation.evaluate_config(config, {"learned": weights})
    problem = problems.from_config(config, "test")
    num_steps = max(config.evaluation.horizons)
    seed = base.seed_pair(evaluation.TEST_SEED_BASE)  # The first reported.
    start, _ = problem.init(seed)
    panels = {"content": problem.content_image(seed).numpy(),
              "style": problem.style_image.numpy(),
              "start": start[0].numpy()}
    finals = {}
    rule, phi, _ = saved_model.load(weights)
    runs = {"learned": (rule, phi)}
    for name, entry in results["optimizers"].items():
        if entry.get("kind") == "baseline":
            lr = entry["per_horizon"][str(num_steps)]["learning_rate"]
            runs[f"{name}"] = (networks.get(name),
                               {"learning_rate": np.float32(lr)})
    for name, (rule, phi) in runs.items():
        (x,) = final_params(rule, phi, problem, seed, num_steps)
        panels[name] = x.numpy()
        finals[name] = float(problem.eval_loss([x], problem.init(seed)[1]))
    files = {}
    for name, image in panels.items():
        files[name] = f"{name}.png"
        save_png(image, os.path.join(workdir, files[name]))
    _montage(panels, os.path.join(workdir, "images.png"))
    d = problem.describe()
    from l2l_tf import figures  # pylint: disable=import-outside-toplevel
    figures.loss_curves(results, os.path.join(workdir, "loss_curves.png"),
                        title=(f"neural art {d['size']}x{d['size']}, style "
                               f"{os.path.basename(str(d['style']))}, "
                               f"{d['features']} features"))
    results["neural_art"] = dict(d, images=files, image_seed=int(
        evaluation.TEST_SEED_BASE), image_final_losses=finals)
    atomic.write_json(results, os.path.join(workdir, "evaluation.json"))
    logging.info("Neural art (%s features): wrote %s", d["features"],
                 sorted(files.values()) + ["images.png", "loss_curves.png",
                                           "evaluation.json"])
    return results

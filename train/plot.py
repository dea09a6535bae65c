"""Draws the loss curves of an evaluation.json as a PNG (log scale) and
prints its Markdown table.

    python -m train.plot --results=docs/evaluation_mnist.json --out=docs/figures/mnist.png --title="MNIST MLP"

train.evaluate and train.meta_train already write curves_<h>.png next to
their evaluation.json; this redraws any saved result.
"""

import json

from absl import app, flags

from l2l_tf import evaluation, figures

_RESULTS = flags.DEFINE_string("results", None, "An evaluation.json.")
_OUT = flags.DEFINE_string("out", None, "The PNG to write.")
_TITLE = flags.DEFINE_string("title", None, "The figure's title.")
_HORIZON = flags.DEFINE_integer(
    "horizon", None, "Whose tuned learning rates to draw (default: the "
    "longest horizon).")
flags.mark_flags_as_required(["results", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        with open(_RESULTS.value) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise app.UsageError(f"--results must be a readable evaluation.json. "
                             f"Received: --results={_RESULTS.value!r} ({e})")
    figures.loss_curves(results, _OUT.value, title=_TITLE.value,
                        horizon=_HORIZON.value)
    print(evaluation.format_markdown(results))
    print(f"\nWritten: {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

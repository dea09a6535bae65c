"""PNG figures of evaluation results: loss curves and heatmaps.

Curves are drawn as in the paper's figures: the mean loss over seeds at
every step on a log scale, with a band of one standard error. Files are
written atomically (a temporary file, then a rename), so an interrupted run
never leaves a half-written figure.
"""

import math
from typing import Optional, Sequence

import numpy as np

# A backend without a screen, chosen before pyplot is imported.
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from l2l_tf import atomic  # pylint: disable=wrong-import-position

_COLORS = {"sgd": "tab:green", "nag": "tab:purple", "rmsprop": "tab:orange",
           "adam": "tab:red"}
# Learned optimizers, in the order they come: blues and greys, apart from
# the baselines' colours.
_LEARNED_COLORS = ("tab:blue", "tab:cyan", "navy", "tab:gray", "tab:brown",
                   "tab:pink", "tab:olive")


def save(fig, path: str, dpi: int):
    """Writes `fig` to the PNG `path` atomically and closes it."""
    try:
        with atomic.temp_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)


def curve_label(name: str, entry: dict, horizon: int) -> str:
    """"adam (lr 0.0316)" for a baseline, the name alone for a learned rule."""
    if entry.get("kind") == "baseline":
        lr = entry["per_horizon"][str(horizon)]["learning_rate"]
        return f"{name} (lr {lr:.3g})"
    return name


def loss_curves(results: dict, path: str, title: Optional[str] = None,
                horizon: Optional[int] = None, dpi: int = 80) -> str:
    """Draws every optimizer's mean loss curve of `results` into `path`.

    Args:
      results: what `evaluation.evaluate` returns.
      path: the PNG to write.
      title: the figure's title.
      horizon: which horizon's tuned learning rate to draw for baselines
        (default: the longest); curves run to that horizon.
      dpi: resolution (the default keeps a figure under ~50 KB).

    Returns:
      `path`.
    """
    horizons = [int(h) for h in results["horizons"]]
    horizon = int(horizon or max(horizons))
    if horizon not in horizons:
        raise ValueError(f"`horizon` must be one of {horizons}. "
                         f"Received: horizon={horizon!r}")
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    learned_seen = 0
    for name, entry in results["optimizers"].items():
        if entry.get("kind") == "baseline":
            per = entry["per_horizon"][str(horizon)]
            mean, stderr = per.get("mean", entry["mean"]), per.get(
                "stderr", entry["stderr"])
        else:
            mean, stderr = entry["mean"], entry["stderr"]
        mean = np.asarray(mean, np.float64)[:horizon + 1]
        stderr = np.asarray(stderr, np.float64)[:horizon + 1]
        steps = np.arange(len(mean))
        shown = np.isfinite(mean) & (mean > 0)
        learned = entry.get("kind") != "baseline"
        if learned:
            color = _LEARNED_COLORS[learned_seen % len(_LEARNED_COLORS)]
            learned_seen += 1
        else:
            color = _COLORS.get(name)
        ax.plot(steps[shown], mean[shown], color=color,
                linewidth=2.0 if learned else 1.2,
                label=curve_label(name, entry, horizon))
        band = shown & np.isfinite(stderr)
        lo = np.maximum(mean - stderr, mean * 1e-3)
        ax.fill_between(steps[band], lo[band], (mean + stderr)[band],
                        color=color, alpha=0.2, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        # Long titles shrink to fit the figure's width.
        ax.set_title(title, fontsize=min(10.0, 480.0 / max(len(title), 1)))
    ax.legend(fontsize=7, frameon=False)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    save(fig, path, dpi)
    return path


def heatmap(values: Sequence[Sequence[float]], row_labels: Sequence,
            col_labels: Sequence, path: str, *, title: str = "",
            row_title: str = "", col_title: str = "",
            value_label: str = "", dpi: int = 80) -> str:
    """Draws matrix `values` [rows, cols] with each value written in its cell.

    The colour scale is logarithmic and centred on 1 (a ratio), so cells
    below 1 and above 1 get opposite colours.
    """
    values = np.asarray(values, np.float64)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"`values` must be [len(row_labels), len(col_labels)] = "
            f"[{len(row_labels)}, {len(col_labels)}]. Received shape: "
            f"{values.shape}")
    logs = np.log10(np.where(np.isfinite(values) & (values > 0), values,
                             np.nan))
    span = np.nanmax(np.abs(logs)) if np.isfinite(logs).any() else 1.0
    span = max(span, 0.05)
    fig, ax = plt.subplots(figsize=(1.1 * len(col_labels) + 2.2,
                                    0.8 * len(row_labels) + 1.6))
    image = ax.imshow(logs, cmap="coolwarm", vmin=-span, vmax=span,
                      aspect="auto")
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            v = values[r, c]
            text = f"{v:.2f}" if math.isfinite(v) else "inf"
            ax.text(c, r, text, ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels])
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    ax.set_xlabel(col_title)
    ax.set_ylabel(row_title)
    if title:
        ax.set_title(title, fontsize=10)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"log10 {value_label}".strip())
    fig.tight_layout()
    save(fig, path, dpi)
    return path

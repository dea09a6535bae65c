"""Evaluating update rules: fresh optimizees, tuned baselines, tables.

The protocol (used for every reported figure):

- each optimizer trains fresh optimizees drawn with the *reported* seeds
  (MNIST: on the test split), recording the reported loss at every step;
- each hand-designed baseline runs at its best learning rate on the grid
  10^(k/2), 1e-4 .. 10, chosen separately for every reported horizon by the
  mean loss at that horizon over *tuning* seeds that differ from the
  reported ones (a diverged run counts as +inf);
- the learned optimizer runs as meta-trained (learning rate multiplier 1).

Seeds of different purposes never overlap: meta-training draws its runs
from `TRAIN_SEED_BASE`, validation from `VALIDATION_SEED_BASE`, tuning from
`TUNING_SEED_BASE`, reported runs from `TEST_SEED_BASE`.
"""

import json
import math
import os
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from l2l_tf import atomic, networks, problems, saved_model, unroll
from l2l_tf import fused as fused_lib
from l2l_tf.problems import base

TRAIN_SEED_BASE = 0
VALIDATION_SEED_BASE = 1_000_000
TUNING_SEED_BASE = 2_000_000
TEST_SEED_BASE = 3_000_000


def lr_grid(lo: float = 1e-4, hi: float = 10.0) -> list:
    """The learning rates 10^(k/2) with lo <= lr <= hi."""
    k_lo = math.ceil(2 * math.log10(lo) - 1e-9)
    k_hi = math.floor(2 * math.log10(hi) + 1e-9)
    return [float(10 ** (k / 2)) for k in range(k_lo, k_hi + 1)]


def seeds(base_seed: int, count: int) -> list:
    return [base_seed + i for i in range(count)]


def run_curves(run_fn, phi, seed_list: Iterable[int]) -> np.ndarray:
    """Losses [num_seeds, num_steps + 1] of `run_fn` over `seed_list`."""
    return np.stack([
        run_fn(phi, base.seed_pair(s)).numpy() for s in seed_list])


def summarize(curves: np.ndarray) -> dict:
    """Mean and standard error over seeds, at every step."""
    curves = np.where(np.isfinite(curves), curves, np.inf)
    n = curves.shape[0]
    mean = curves.mean(axis=0)
    with np.errstate(invalid="ignore"):
        stderr = curves.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else (
            np.zeros_like(mean))
    return {"mean": mean, "stderr": np.nan_to_num(stderr, nan=np.inf)}


def summary(results: dict, num_points: int = 120) -> dict:
    """A small copy of `evaluate`'s results for committing: everything but
    the per-seed curves, and each optimizer's mean and standard error only
    at about `num_points` log-spaced steps (`curve_steps`, from 0 to the
    last horizon; every step of a short run)."""
    if not isinstance(num_points, int) or num_points < 2:
        raise ValueError("`num_points` must be an integer >= 2. "
                         f"Received: num_points={num_points!r}")
    last = max(results["horizons"])
    steps = sorted({0, last} | {int(round(x)) for x in
                                np.geomspace(1, max(last, 1), num_points)})
    out = {k: v for k, v in results.items() if k != "optimizers"}
    out["curve_steps"] = steps
    out["optimizers"] = {}
    for name, entry in results["optimizers"].items():
        mean, err = np.asarray(entry["mean"]), np.asarray(entry["stderr"])
        out["optimizers"][name] = {
            **{k: v for k, v in entry.items() if k not in (
                "mean", "stderr", "curves", "curves_by_lr", "per_horizon")},
            # A baseline's per-horizon curves are left out too.
            "per_horizon": {h: {k: v for k, v in e.items()
                                if k not in ("mean", "stderr")}
                            for h, e in entry["per_horizon"].items()},
            "mean_at_steps": [float(mean[s]) for s in steps],
            "stderr_at_steps": [float(err[s]) for s in steps]}
    return out


def stability(curves: np.ndarray, factor: float = 2.0) -> dict:
    """Whether runs diverge: every loss finite and never above `factor`
    times the lowest loss reached so far (its running minimum).

    Args:
      curves: losses [num_seeds, num_steps + 1].
      factor: the allowed rise over the running minimum.

    Returns:
      A JSON-ready dict: `stable` (every seed finite and within `factor`),
      `finite`, `max_ratio` (the largest loss / running-minimum ratio of any
      seed at any step, inf if a loss is not finite), `max_ratio_per_seed`,
      `worst_step` (the step of the largest ratio, per seed) and
      `mean_curve_max_ratio` (the same ratio for the mean curve).
    """
    curves = np.asarray(curves, np.float64)
    finite = np.all(np.isfinite(curves), axis=1)

    def ratios(c):
        c = np.where(np.isfinite(c), c, np.inf)
        running_min = np.minimum.accumulate(c, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(c == running_min, 1.0, c / running_min)
        return np.where(np.isnan(r), np.inf, r)

    per_step = ratios(curves)
    per_seed = per_step.max(axis=1)
    return {
        "factor": factor,
        "stable": bool(np.all(finite) and np.all(per_seed <= factor)),
        "finite": bool(np.all(finite)),
        "max_ratio": float(per_seed.max()),
        "max_ratio_per_seed": [float(r) for r in per_seed],
        "worst_step": [int(i) for i in per_step.argmax(axis=1)],
        "mean_curve_max_ratio": float(ratios(curves.mean(axis=0)).max()),
    }


def tune(rule: networks.UpdateRule, problem: base.Problem,
         horizons: Sequence[int], learning_rates: Sequence[float],
         tuning_seeds: Sequence[int]) -> Dict[int, float]:
    """The best learning rate of `rule` for each horizon (see module doc)."""
    run_fn = unroll.make_run_fn(rule, problem, max(horizons))
    scores = {}
    for lr in learning_rates:
        curves = run_curves(run_fn, {"learning_rate": tf.constant(lr)},
                            tuning_seeds)
        curves = np.where(np.isfinite(curves), curves, np.inf)
        scores[lr] = curves.mean(axis=0)
    return {h: min(learning_rates, key=lambda lr, h=h: scores[lr][h])
            for h in horizons}


def evaluate(problem: base.Problem, test_problem: Optional[base.Problem],
             learned: Dict[str, tuple], *, horizons: Sequence[int],
             num_seeds: int = 10, num_tuning_seeds: int = 5,
             baselines: Sequence[str] = networks.BASELINES,
             learning_rates: Optional[Sequence[float]] = None,
             state_dtype: str = "float32",
             fused: Optional[bool] = None) -> dict:
    """Runs the evaluation protocol of the module doc.

    Args:
      problem: the problem the baselines are tuned on (its tuning seeds).
      test_problem: the problem reported on (MNIST: the test split); None
        means `problem`.
      learned: name -> (rule, phi) of the learned optimizers to report.
      horizons: steps at which results are reported (and baselines tuned).
      num_seeds: reported seeds; num_tuning_seeds: tuning seeds.
      baselines: names of hand-designed rules to compare with.
      learning_rates: the tuning grid (default: `lr_grid()`).
      state_dtype: the dtype of the learned optimizers' state between steps
        ("float32" or "bfloat16", as LearnedOptimizer's `state_dtype`).
      fused: whether the learned optimizers step on the fused CPU kernel
        (`fused.choose`: None where it runs, as LearnedOptimizer does; True
        raises a ValueError, before any run, for one it cannot run). Their
        entries' "fused" says which ran on it.

    Returns:
      A JSON-ready dict: per optimizer and horizon, the learning rate, the
      mean loss at every step and its standard error, and the final figures.
    """
    if state_dtype not in networks.STATE_DTYPES:
        raise ValueError(f"`state_dtype` must be one of "
                         f"{networks.STATE_DTYPES}. "
                         f"Received: state_dtype={state_dtype!r}")
    on_kernel = {name: fused_lib.choose(rule, fused, state_dtype,
                                        what=f"the evaluation of {name!r}")
                 for name, (rule, _) in learned.items()}
    test_problem = test_problem or problem
    horizons = sorted(int(h) for h in horizons)
    learning_rates = list(learning_rates or lr_grid())
    num_steps = max(horizons)
    report_seeds = seeds(TEST_SEED_BASE, num_seeds)
    tuning_seeds = seeds(TUNING_SEED_BASE, num_tuning_seeds)
    results = {"horizons": horizons, "num_seeds": num_seeds,
               "state_dtype": state_dtype,
               "num_tuning_seeds": num_tuning_seeds,
               "learning_rate_grid": learning_rates, "optimizers": {}}

    clash = set(learned) & set(baselines)
    if clash:
        raise ValueError(f"Learned optimizers need names other than the "
                         f"baselines'. Received: {sorted(clash)}")

    def record(name, curves, per_horizon_lr):
        stats = summarize(curves)
        entry = {"kind": "learned", "curves": curves.tolist(),
                 "per_horizon": {}}
        for h in horizons:
            entry["per_horizon"][str(h)] = {
                "learning_rate": per_horizon_lr[h],
                "final_mean": float(stats["mean"][h]),
                "final_stderr": float(stats["stderr"][h]),
            }
        entry["mean"] = stats["mean"].tolist()
        entry["stderr"] = stats["stderr"].tolist()
        entry["stability"] = stability(curves)
        results["optimizers"][name] = entry

    for name, (rule, phi) in learned.items():
        logging.info("Evaluating %s on %d seeds.", name, num_seeds)
        phi_t = {k: tf.constant(v) for k, v in phi.items()}
        curves = run_curves(unroll.make_run_fn(rule, test_problem, num_steps,
                                               tf.as_dtype(state_dtype),
                                               fused=on_kernel[name]),
                            phi_t, report_seeds)
        record(name, curves, {h: 1.0 for h in horizons})
        results["optimizers"][name]["fused"] = on_kernel[name]

    for name in baselines:
        rule = networks.get(name)
        logging.info("Tuning %s over %d learning rates.", name,
                     len(learning_rates))
        best = tune(rule, problem, horizons, learning_rates, tuning_seeds)
        run_fn = unroll.make_run_fn(rule, test_problem, num_steps)
        per_lr = {}
        for lr in sorted(set(best.values())):
            per_lr[lr] = run_curves(
                run_fn, {"learning_rate": tf.constant(lr)}, report_seeds)
        # One reported curve per horizon's learning rate; "mean"/"stderr"
        # hold the curve of the longest horizon's choice.
        stats = {}
        for h in horizons:
            stats[h] = summarize(per_lr[best[h]])
        entry = {"kind": "baseline", "per_horizon": {}, "curves_by_lr": {
            repr(lr): c.tolist() for lr, c in per_lr.items()}}
        for h in horizons:
            entry["per_horizon"][str(h)] = {
                "learning_rate": best[h],
                "final_mean": float(stats[h]["mean"][h]),
                "final_stderr": float(stats[h]["stderr"][h]),
                "mean": stats[h]["mean"].tolist(),
                "stderr": stats[h]["stderr"].tolist(),
            }
        entry["mean"] = stats[num_steps]["mean"].tolist()
        entry["stderr"] = stats[num_steps]["stderr"].tolist()
        # Of the curve tuned for the longest horizon.
        entry["stability"] = stability(per_lr[best[num_steps]])
        results["optimizers"][name] = entry

    results["comparisons"] = compare(results)
    return results


def compare(results: dict) -> dict:
    """For each learned optimizer, horizon and baseline: does it beat it?

    "Beat" means a lower mean by more than the standard error of the
    difference, sqrt(se_learned^2 + se_baseline^2).
    """
    opts = results["optimizers"]
    learned = [n for n, e in opts.items() if e.get("kind") == "learned"]
    baselines = [n for n, e in opts.items() if e.get("kind") == "baseline"]
    out = {}
    for name in learned:
        for h in results["horizons"]:
            a = opts[name]["per_horizon"][str(h)]
            for b_name in baselines:
                b = opts[b_name]["per_horizon"][str(h)]
                se = math.sqrt(a["final_stderr"] ** 2 + b["final_stderr"] ** 2)
                out[f"{name}/{b_name}/{h}"] = {
                    "margin": b["final_mean"] - a["final_mean"],
                    "stderr": se,
                    "beats": bool(b["final_mean"] - a["final_mean"] > se),
                    "ratio": (a["final_mean"] / b["final_mean"]
                              if b["final_mean"] > 0 else float("nan")),
                }
    return out


def _number(x: float) -> str:
    """4 decimals, or 4 significant digits below 0.001 (long runs reach
    losses of 1e-5, which 4 decimals show as 0.0000)."""
    return f"{x:.4f}" if x == 0 or abs(x) >= 1e-3 or not math.isfinite(x) \
        else f"{x:.3e}"


def format_table(results: dict) -> str:
    """A plain-text table: final mean +- stderr per optimizer and horizon."""
    horizons = results["horizons"]
    lines = []
    head = f"{'optimizer':<12}" + "".join(
        f"{'step ' + str(h):>22}" + " " * 12 for h in horizons)
    lines += [head, "-" * len(head)]
    for name, entry in results["optimizers"].items():
        row = f"{name:<12}"
        for h in horizons:
            e = entry["per_horizon"][str(h)]
            lr = (f"(lr {e['learning_rate']:.3g})"
                  if entry.get("kind") == "baseline" else "")
            row += (f"{_number(e['final_mean']):>12} +- "
                    f"{_number(e['final_stderr'])} {lr:<11}")
        lines.append(row)
    verdicts = []
    for key, c in results.get("comparisons", {}).items():
        name, b_name, h = key.split("/")
        verdicts.append(
            f"{name} vs {b_name} at step {h}: "
            f"{'beats' if c['beats'] else 'does not beat'} "
            f"(ratio {c['ratio']:.3f}, margin {c['margin']:+.4f}, "
            f"stderr {c['stderr']:.4f})")
    for name, entry in results["optimizers"].items():
        st = entry.get("stability")
        if st:
            verdicts.append(
                f"{name} over {len(entry['mean']) - 1} steps: "
                f"{'stable' if st['stable'] else 'DIVERGES'} (finite: "
                f"{st['finite']}; max loss / running minimum "
                f"{st['max_ratio']:.3g}, of the mean curve "
                f"{st['mean_curve_max_ratio']:.3g}; limit {st['factor']:g})")
    return "\n".join(lines + [""] + verdicts)


def format_markdown(results: dict) -> str:
    """A Markdown table: per optimizer, mean +- stderr and learning rate at
    every horizon (the tuned rate is per horizon)."""
    horizons = results["horizons"]
    head = "| optimizer | " + " | ".join(
        f"step {h} | lr" for h in horizons) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(horizons))]
    for name, entry in results["optimizers"].items():
        cells = []
        for h in horizons:
            e = entry["per_horizon"][str(h)]
            lr = (f"{e['learning_rate']:.3g}" if entry.get("kind") ==
                  "baseline" else "as trained")
            cells += [f"{_number(e['final_mean'])} ± "
                      f"{_number(e['final_stderr'])}", lr]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def problem_kwargs(config) -> dict:
    """The problem_kwargs evaluated on: config.problem_kwargs updated by
    `evaluation.problem_kwargs` (held-out classes, another dataset, ...);
    an override at None (a config's unset placeholder) changes nothing."""
    e = config.evaluation
    overrides = e.problem_kwargs if "problem_kwargs" in e else {}
    return {**dict(config.problem_kwargs),
            **{k: v for k, v in dict(overrides).items() if v is not None}}


def evaluate_config(config, weights: Dict[str, str], workdir: Optional[str]
                    = None, extra: Optional[dict] = None,
                    title: Optional[str] = None,
                    state_dtype: str = "float32",
                    fused: Optional[bool] = None) -> dict:
    """Evaluates exported weights on the problem of `config` (test split).

    The problem is config.problem with `problem_kwargs(config)`: the
    meta-training problem unless `evaluation.problem_kwargs` overrides some
    of its arguments (configs/cifar_heldout.py evaluates on other classes).

    Args:
      config: an experiment config (configs/*.py); its `evaluation` fields set
        horizons, seeds, baselines and problem_kwargs overrides.
      weights: display name -> shipped name or SavedModel path.
      workdir: where `evaluation.json`, its `summary` (evaluation_summary.json,
        small enough to commit) and the loss curves (`curves_<h>.png` for
        each horizon h, log scale) are written (atomically); None: nowhere.
      extra: JSON-ready fields added to the results before they are written.
      title: the figures' title (default: the problem's name and split).
      state_dtype: the learned optimizers' state dtype ("float32" or
        "bfloat16"); the baselines are unaffected.
      fused: whether the learned optimizers step on the fused CPU kernel (as
        `evaluate`'s).
    """
    if workdir is not None:
        atomic.check_folder(workdir)
    e = config.evaluation
    learned = {}
    for name, spec in weights.items():
        rule, phi, _ = saved_model.load(spec)
        learned[name] = (rule, phi)
    kwargs = problem_kwargs(config)
    test_problem = problems.make(config.problem, "test", **kwargs)
    grid = e.learning_rates if "learning_rates" in e else ()
    results = evaluate(test_problem, None, learned, horizons=e.horizons,
                       num_seeds=e.num_seeds,
                       num_tuning_seeds=e.num_tuning_seeds,
                       baselines=e.baselines, state_dtype=state_dtype,
                       fused=fused,
                       learning_rates=list(grid) or None)
    results["problem"] = config.problem
    results["split"] = "test"
    results["problem_kwargs"] = json.loads(json.dumps(kwargs, default=str))
    results["weights"] = {k: str(v) for k, v in weights.items()}
    results.update(extra or {})
    if workdir:
        atomic.write_json(results, os.path.join(workdir, "evaluation.json"))
        atomic.write_json(summary(results),
                          os.path.join(workdir, "evaluation_summary.json"))
        from l2l_tf import figures  # matplotlib only where figures are drawn.
        for h in e.horizons:
            figures.loss_curves(
                results, os.path.join(workdir, f"curves_{h}.png"),
                title=(title or f"{config.problem} (test split)")
                + f", {e.num_seeds} seeds",
                horizon=h)
    return results

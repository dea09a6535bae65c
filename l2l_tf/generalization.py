"""Generalization studies: learned weights evaluated, without retraining, on
variants of the problem they were meta-trained on.

Andrychowicz et al. 2016 (Sec. 3.2, Figs. 3-5) meta-train the LSTM on the
784-20-10 sigmoid MLP for 100 steps and then run it, unchanged, for 200
steps, on 40 hidden units, on two hidden layers and with ReLU activations
(where it fails), and over a grid of hidden units x hidden layers. A study
config (`configs/mnist_generalization.py`) lists such variants as overrides
of its base config; `run_study` evaluates each with the usual protocol
(`evaluation.evaluate`: baselines tuned per horizon on separate seeds) and
summarizes every variant by

    ratio = learned final loss / best tuned baseline's final loss

(< 1: the learned optimizer wins). The grid is drawn as a heatmap of that
ratio. Each variant is written to its own folder as soon as it is done, and
a rerun of the same study reuses the folders whose recorded spec matches,
so an interrupted study resumes where it stopped.

Study fields (`config.study`):

    weights      shipped name or export path of the learned weights
    variants     {name: {problem_kwargs: {overrides}, horizons: (h, ...)}}
    grid         {hidden_units: (...), hidden_layers: (...), horizon,
                  num_seeds, num_tuning_seeds}; empty units: no grid
"""

import copy
import json
import math
import os
from typing import Dict, List

from absl import logging

from l2l_tf import atomic, evaluation, figures, meta, problems, saved_model


def _plain(value):
    """ConfigDicts, tuples and lists as JSON-ready plain values."""
    return json.loads(json.dumps(
        value.to_dict() if hasattr(value, "to_dict") else value))


def variant_config(config, problem_kwargs=None, horizons=None,
                   num_seeds=None, num_tuning_seeds=None):
    """A copy of `config` with the given problem and evaluation overrides."""
    out = copy.deepcopy(config)
    with out.unlocked():
        if "study" in out:
            del out["study"]
        for key, value in dict(problem_kwargs or {}).items():
            if key not in out.problem_kwargs:
                raise ValueError(
                    f"Study override `problem_kwargs.{key}` is not a field of "
                    f"the base config's problem_kwargs "
                    f"({sorted(out.problem_kwargs)}). Received: {key}={value!r}")
            if isinstance(value, list):
                value = tuple(value)
            out.problem_kwargs[key] = value
        if horizons is not None:
            out.evaluation.horizons = tuple(int(h) for h in horizons)
        if num_seeds is not None:
            out.evaluation.num_seeds = int(num_seeds)
        if num_tuning_seeds is not None:
            out.evaluation.num_tuning_seeds = int(num_tuning_seeds)
    return out


def plan(config) -> List[dict]:
    """Every evaluation the study runs: [{name, config, folder, cell}].

    Validates the whole study (every variant's config and problem) before any
    work is done; raises ValueError naming the field that is wrong.
    """
    if "study" not in config:
        raise ValueError("A study config needs a `study` field (see "
                         "configs/mnist_generalization.py).")
    study = config.study
    saved_model.resolve_path(study.weights)
    jobs = []
    for name, spec in dict(study.variants).items():
        spec = dict(spec)
        unknown = set(spec) - {"problem_kwargs", "horizons"}
        if unknown:
            raise ValueError(
                f"`study.variants.{name}` may hold `problem_kwargs` and "
                f"`horizons`. Received: {sorted(unknown)}")
        jobs.append({"name": name, "cell": None, "config": variant_config(
            config, spec.get("problem_kwargs"), spec.get("horizons"))})
    grid = dict(study.get("grid", {}) or {})
    units = tuple(grid.get("hidden_units", ()))
    layers = tuple(grid.get("hidden_layers", ()))
    if units or layers:
        if not units or not layers:
            raise ValueError("`study.grid` needs both `hidden_units` and "
                             f"`hidden_layers`. Received: {grid!r}")
        for u in units:
            for n in layers:
                jobs.append({
                    "name": f"grid_{u}x{n}", "cell": (u, n),
                    "config": variant_config(
                        config, {"hidden_sizes": (int(u),) * int(n)},
                        (grid.get("horizon", 100),), grid.get("num_seeds"),
                        grid.get("num_tuning_seeds"))})
    if not jobs:
        raise ValueError("`study` names no variants and no grid.")
    for job in jobs:
        meta.validate_config(job["config"])
        try:
            problems.from_config(job["config"], "test")
        except (TypeError, ValueError) as e:
            raise ValueError(f"Study variant {job['name']!r}: {e}") from e
        job["spec"] = {"weights": str(study.weights),
                       "problem": job["config"].problem,
                       "problem_kwargs": _plain(job["config"].problem_kwargs),
                       "evaluation": _plain(job["config"].evaluation)}
    return jobs


def _load_done(folder: str, spec: dict):
    path = os.path.join(folder, "evaluation.json")
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    return results if results.get("study_spec") == spec else None


def summarize(results: dict) -> Dict[str, dict]:
    """Per horizon: the learned figure, the best tuned baseline, the ratio."""
    opts = results["optimizers"]
    learned = next(n for n, e in opts.items() if e.get("kind") == "learned")
    out = {}
    for h in results["horizons"]:
        a = opts[learned]["per_horizon"][str(h)]
        per_baseline = {n: e["per_horizon"][str(h)] for n, e in opts.items()
                        if e.get("kind") == "baseline"}
        best = min(per_baseline, key=lambda n: per_baseline[n]["final_mean"])
        b = per_baseline[best]
        se = math.sqrt(a["final_stderr"] ** 2 + b["final_stderr"] ** 2)
        out[str(h)] = {
            "learned": a["final_mean"], "learned_stderr": a["final_stderr"],
            "best_baseline": best, "best_learning_rate": b["learning_rate"],
            "baseline": b["final_mean"], "baseline_stderr": b["final_stderr"],
            "ratio": (a["final_mean"] / b["final_mean"]
                      if b["final_mean"] > 0 else float("inf")),
            "beats_all": bool(b["final_mean"] - a["final_mean"] > se),
            "finite": bool(math.isfinite(a["final_mean"])),
        }
    return out


def run_study(config, workdir: str) -> dict:
    """Runs the study of `config` into `workdir`; returns the summary.

    Writes `<workdir>/<variant>/evaluation.json` and `curves_<h>.png` for
    each variant and grid cell, `grid.png` (the heatmap), and `study.json`
    (the summary).
    """
    jobs = plan(config)
    os.makedirs(workdir, exist_ok=True)
    summary = {"weights": str(config.study.weights), "variants": {},
               "grid": None}
    for i, job in enumerate(jobs):
        folder = os.path.join(workdir, job["name"])
        results = _load_done(folder, job["spec"])
        if results is None:
            logging.info("Study %d/%d: %s", i + 1, len(jobs), job["name"])
            results = evaluation.evaluate_config(
                job["config"], {"learned": config.study.weights}, folder,
                extra={"study_spec": job["spec"]},
                title=_title(job["name"], job["config"]))
        else:
            logging.info("Study %d/%d: %s done before, reused", i + 1,
                         len(jobs), job["name"])
        summary["variants"][job["name"]] = {
            "problem_kwargs": job["spec"]["problem_kwargs"],
            "per_horizon": summarize(results)}
    cells = [j for j in jobs if j["cell"] is not None]
    if cells:
        grid = dict(config.study.grid)
        units = [int(u) for u in grid["hidden_units"]]
        layers = [int(n) for n in grid["hidden_layers"]]
        h = str(grid.get("horizon", 100))
        ratios = [[summary["variants"][f"grid_{u}x{n}"]["per_horizon"][h]
                   ["ratio"] for u in units] for n in layers]
        summary["grid"] = {"hidden_units": units, "hidden_layers": layers,
                           "horizon": int(h), "ratio": ratios}
        figures.heatmap(
            ratios, layers, units, os.path.join(workdir, "grid.png"),
            title=f"learned / best tuned baseline, loss at step {h}",
            row_title="hidden layers", col_title="hidden units",
            value_label="ratio")
    atomic.write_json(summary, os.path.join(workdir, "study.json"), indent=1)
    return summary


def _title(name: str, config) -> str:
    """"hidden_40: MNIST MLP, hidden (40,), sigmoid, test split"."""
    kw = config.problem_kwargs
    return (f"{name}: MNIST MLP, hidden {tuple(kw.hidden_sizes)}, "
            f"{kw.activation}, test split")


def format_summary(summary: dict) -> str:
    """A plain-text table: one row per variant and horizon."""
    head = (f"{'variant':<14}{'step':>6}{'learned':>20}   "
            f"{'best tuned baseline':<32}{'ratio':>7}  verdict")
    lines = [head, "-" * len(head)]
    for name, v in summary["variants"].items():
        for h, s in v["per_horizon"].items():
            base = (f"{s['best_baseline']} (lr {s['best_learning_rate']:.3g}) "
                    f"{s['baseline']:.4f}")
            verdict = ("beats all" if s["beats_all"] else
                       "diverged" if not s["finite"] else "does not beat all")
            lines.append(
                f"{name:<14}{h:>6}{s['learned']:>11.4f} +- "
                f"{s['learned_stderr']:.4f}   {base:<32}{s['ratio']:>7.3f}  "
                f"{verdict}")
    return "\n".join(lines)

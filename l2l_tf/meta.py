"""Meta-training: truncated back-propagation through unrolled optimization.

As in Andrychowicz et al. 2016 (Sec. 2): an optimizee drawn from the problem
family is trained for `run_length` steps by the LSTM; the run is cut into
unrolls of `unroll_length` steps that carry the optimizee's parameters and
the LSTM state over. For each unroll the meta-loss is

    L(phi) = (1 / T) sum_{t=1..T} f(theta_t),   T = unroll_length,

differentiated with respect to phi through the whole unroll by one
tf.GradientTape, treating the optimizee's gradients as inputs (no second
derivatives). phi takes one Adam step per unroll (one "iteration"); every
`run_length / unroll_length` iterations a new optimizee is drawn.

Everything that decides the result is derived from the config and the
iteration counter (optimizee seeds, batches, the meta learning rate), and
checkpoints are taken only where a run starts, so a resumed run continues
exactly as if it had never stopped.
"""

import contextlib
import dataclasses
import json
import math
import numbers
import os
import shutil
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from l2l_tf import (atomic, evaluation, fused as fused_lib, grouped, networks,
                    problems, saved_model, unroll)


# Config fields added after weights were shipped, with the value that
# reproduces what came before. Code reads them through `field`, and a saved
# config (an export's metadata, a workdir's config.json) is compared after
# `with_defaults`, so configs written before a field existed stay valid.
CONFIG_DEFAULTS = {
    "meta.num_optimizees": 1,
    # ((group, regex on parameter names), ...): one network per group
    # (grouped.Grouped); empty: one network for every parameter.
    "network_groups": (),
    # Overrides of problem_kwargs for the evaluation (test split) only, e.g.
    # other classes for held-out-label studies; empty: the same problem.
    "evaluation.problem_kwargs": {},
    # How each step's loss enters the meta-loss: unroll.META_LOSSES.
    "meta.meta_loss": "mean",
    # ((start_iteration, run_length), ...): from each start on, optimizees
    # are trained for that many steps (a curriculum of growing horizons);
    # before the first start, meta.run_length. Empty: meta.run_length always.
    "meta.curriculum": (),
    # Random scaling of the training optimizees (problems.RandomlyScaled):
    # coordinate factors in [1/r, r] and a loss factor in [1/r_l, r_l];
    # 1.0: none. Validation and evaluation never scale.
    "meta.param_scale_range": 1.0,
    "meta.loss_scale_range": 1.0,
    # Steps at which validation scores an export (the geometric mean of the
    # mean losses there); empty: validation.horizon alone.
    "validation.horizons": (),
    # Validate (and export, as the best so far) the starting weights before
    # the first meta-step: with meta.init_weights, the export can then never
    # be worse on validation than the weights it started from.
    "validation.include_initial": False,
    # Penalises runs that rise during validation: when > 0 and a validation
    # seed's loss rises above this factor times its running minimum anywhere
    # up to the last horizon (evaluation.stability), the score is multiplied
    # by (that ratio / this factor), so a spiking candidate loses to a
    # steady one of similar loss. 0: no penalty.
    "validation.max_rise": 0.0,
    # The baselines' tuning grid; empty: evaluation.lr_grid().
    "evaluation.learning_rates": (),
}


def field(config, dotted: str):
    """`config`'s value at dotted path `dotted`, or its CONFIG_DEFAULTS value."""
    node = config
    for key in dotted.split("."):
        if key not in node:
            return CONFIG_DEFAULTS[dotted]
        node = node[key]
    return node


def with_defaults(saved: dict) -> dict:
    """A copy of plain-dict config `saved` with missing defaults filled in."""
    out = json.loads(json.dumps(saved))
    for dotted, value in CONFIG_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node.setdefault(leaf, json.loads(json.dumps(value)))
    # A data option at None (tfds's default folder, every class, every
    # example) is the same as no option: configs that gained these fields
    # as placeholders compare equal to what they wrote before.
    for kwargs in (out.get("problem_kwargs"),
                   out.get("evaluation", {}).get("problem_kwargs")):
        if isinstance(kwargs, dict):
            for key in problems.DATA_OPTIONS:
                if key in kwargs and kwargs[key] is None:
                    del kwargs[key]
    return out


def validate_config(config):
    """Raises ValueError naming the field for every invalid value."""
    m = config.meta
    positive_ints = {
        "meta.num_iterations": m.num_iterations,
        "meta.run_length": m.run_length,
        "meta.unroll_length": m.unroll_length,
        "checkpoint_every": config.checkpoint_every,
        "eval_every": config.eval_every,
        "log_every": config.log_every,
        "validation.num_seeds": config.validation.num_seeds,
    }
    for name, value in positive_ints.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer. "
                             f"Received: {name}={value!r}")
    if m.unroll_length > m.run_length:
        raise ValueError(
            "`meta.unroll_length` must not exceed `meta.run_length`. "
            f"Received: meta.unroll_length={m.unroll_length}, "
            f"meta.run_length={m.run_length}")
    if m.run_length % m.unroll_length:
        raise ValueError(
            "`meta.run_length` must be a multiple of `meta.unroll_length`. "
            f"Received: meta.run_length={m.run_length}, "
            f"meta.unroll_length={m.unroll_length}")
    per_run = m.run_length // m.unroll_length
    for name, value in (("meta.num_iterations", m.num_iterations),
                         ("checkpoint_every", config.checkpoint_every),
                         ("eval_every", config.eval_every)):
        if value % per_run:
            raise ValueError(
                f"`{name}` must be a multiple of the unrolls per run "
                f"(meta.run_length / meta.unroll_length = {per_run}), so that "
                f"it falls where a run starts. Received: {name}={value}")
    stages = run_stages(config)  # Validates meta.curriculum.
    if len(stages) > 1:
        period = math.lcm(*(s.unrolls_per_run for s in stages))
        starts = [("meta.curriculum start", s.start) for s in stages[1:]]
        for name, value in [("meta.num_iterations", m.num_iterations),
                            ("checkpoint_every", config.checkpoint_every),
                            ("eval_every", config.eval_every)] + starts:
            if value % period:
                raise ValueError(
                    f"`{name}` must be a multiple of {period}, the least "
                    "common multiple of the unrolls per run of every "
                    "meta.curriculum stage, so that it falls where a run "
                    f"starts. Received: {name}={value}")
    meta_loss = field(config, "meta.meta_loss")
    if meta_loss not in unroll.META_LOSSES:
        raise ValueError(f"`meta.meta_loss` must be one of "
                         f"{sorted(unroll.META_LOSSES)}. Received: "
                         f"meta.meta_loss={meta_loss!r}")
    for name in ("meta.param_scale_range", "meta.loss_scale_range"):
        value = field(config, name)
        if not (isinstance(value, numbers.Real) and math.isfinite(value)
                and value >= 1):
            raise ValueError(f"`{name}` must be a number >= 1 (1: no "
                             f"scaling). Received: {name}={value!r}")
    horizons = field(config, "validation.horizons")
    if any(not isinstance(h, int) or isinstance(h, bool) or h <= 0
           for h in horizons):
        raise ValueError("`validation.horizons` must hold positive integers."
                         f" Received: validation.horizons={horizons!r}")
    rise = field(config, "validation.max_rise")
    if not (isinstance(rise, numbers.Real) and not isinstance(rise, bool)
            and math.isfinite(rise) and (rise == 0 or rise >= 1)):
        raise ValueError("`validation.max_rise` must be 0 (no penalty) or a "
                         "number >= 1. Received: validation.max_rise="
                         f"{rise!r}")
    grid = field(config, "evaluation.learning_rates")
    if any(not (isinstance(lr, numbers.Real) and lr > 0
                and math.isfinite(lr)) for lr in grid):
        raise ValueError("`evaluation.learning_rates` must hold positive "
                         "numbers. Received: evaluation.learning_rates="
                         f"{grid!r}")
    for name in ("learning_rate", "final_learning_rate"):
        value = m[name]
        if not (isinstance(value, numbers.Real) and value > 0
                and math.isfinite(value)):
            raise ValueError(f"`meta.{name}` must be a positive number. "
                             f"Received: meta.{name}={value!r}")
    if not isinstance(m.max_consecutive_skips, int) or (
            m.max_consecutive_skips <= 0):
        raise ValueError("`meta.max_consecutive_skips` must be a positive "
                         "integer. Received: meta.max_consecutive_skips="
                         f"{m.max_consecutive_skips!r}")
    ema = m.ema_decay
    if ema is not None and not (isinstance(ema, numbers.Real) and 0 < ema < 1):
        raise ValueError("`meta.ema_decay` must be in (0, 1) or None. "
                         f"Received: meta.ema_decay={ema!r}")
    k = field(config, "meta.num_optimizees")
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError("`meta.num_optimizees` must be a positive integer. "
                         f"Received: meta.num_optimizees={k!r}")
    if m.clip_norm is not None and not m.clip_norm > 0:
        raise ValueError("`meta.clip_norm` must be positive or None. "
                         f"Received: meta.clip_norm={m.clip_norm!r}")
    e = config.evaluation
    overrides = field(config, "evaluation.problem_kwargs")
    if not hasattr(overrides, "keys"):
        raise ValueError("`evaluation.problem_kwargs` must be a dict of "
                         "problem_kwargs overrides. Received: "
                         f"evaluation.problem_kwargs={overrides!r}")
    for name in e.baselines:
        if name not in networks.BASELINES:
            raise ValueError(
                f"`evaluation.baselines` entries must be among "
                f"{list(networks.BASELINES)}. Received: {name!r}")
    for name in ("num_seeds", "num_tuning_seeds"):
        if not isinstance(e[name], int) or e[name] < 2:
            raise ValueError(f"`evaluation.{name}` must be an integer >= 2 "
                             "(a standard error needs two seeds). Received: "
                             f"evaluation.{name}={e[name]!r}")
    if not e.horizons or any(not isinstance(h, int) or h <= 0
                             for h in e.horizons):
        raise ValueError("`evaluation.horizons` must hold positive integers. "
                         f"Received: evaluation.horizons={e.horizons!r}")
    if not isinstance(config.validation.horizon, int) or (
            config.validation.horizon <= 0):
        raise ValueError("`validation.horizon` must be a positive integer. "
                         f"Received: {config.validation.horizon!r}")
    groups = field(config, "network_groups")
    if groups:
        grouped.validate_groups(groups)
    if config.problem not in problems.PROBLEMS:
        raise ValueError(f"`problem` must be one of {list(problems.PROBLEMS)}"
                         f". Received: problem={config.problem!r}")
    if config.problem != "quadratic":
        # The data: a known name, valid options and, for tensorflow-datasets,
        # prepared data (the error says how to prepare it offline).
        problems.check_data(dict(config.problem_kwargs))
        problems.check_data(evaluation.problem_kwargs(config))


@dataclasses.dataclass(frozen=True)
class Stage:
    """Iterations from `start` on train optimizees for `run_length` steps;
    the stage's first run has index `first_run` (runs count across stages,
    so every optimizee of a meta-training run is drawn once)."""
    start: int
    run_length: int
    unrolls_per_run: int
    first_run: int


def check_until(config, until: int):
    """Raises ValueError unless `until` is a positive multiple of
    `checkpoint_every`, where `MetaTrainer.train(until=...)` can stop."""
    if not isinstance(until, int) or until <= 0 or (
            until % config.checkpoint_every):
        raise ValueError("`until` must be a positive multiple of "
                         f"`checkpoint_every` ({config.checkpoint_every})."
                         f" Received: until={until!r}")


def run_stages(config) -> list:
    """The run-length schedule of `config` (meta.run_length, then the
    meta.curriculum stages) as Stages; raises ValueError on a bad curriculum.
    """
    m = config.meta
    stages = [Stage(0, m.run_length, m.run_length // m.unroll_length, 0)]
    for entry in field(config, "meta.curriculum"):
        if len(entry) != 2:
            raise ValueError("`meta.curriculum` entries must be pairs "
                             "(start_iteration, run_length). Received: "
                             f"{tuple(entry)!r}")
        start, length = entry
        last = stages[-1]
        if not (isinstance(start, int) and isinstance(length, int)) or (
                start <= last.start or length <= 0):
            raise ValueError(
                "`meta.curriculum` must hold (start_iteration, run_length) "
                "pairs of positive integers with increasing starts. "
                f"Received: {tuple(entry)!r}")
        if length % m.unroll_length:
            raise ValueError(
                "`meta.curriculum` run lengths must be multiples of "
                f"`meta.unroll_length` ({m.unroll_length}). Received: "
                f"{tuple(entry)!r}")
        if (start - last.start) % last.unrolls_per_run:
            raise ValueError(
                "`meta.curriculum` starts must fall where a run of the "
                f"previous stage starts (a multiple of "
                f"{last.unrolls_per_run} iterations after {last.start}). "
                f"Received: {tuple(entry)!r}")
        first_run = last.first_run + (start - last.start) // (
            last.unrolls_per_run)
        stages.append(Stage(start, length, length // m.unroll_length,
                            first_run))
    return stages


def run_position(stages, iteration: int):
    """(run index, unroll index within the run, the run's Stage) of the
    meta-iteration `iteration`."""
    stage = [s for s in stages if s.start <= iteration][-1]
    run, k = divmod(iteration - stage.start, stage.unrolls_per_run)
    return stage.first_run + run, k, stage


def _diff(a, b, prefix=""):
    """Dotted names of the fields where nested dicts `a` and `b` differ."""
    out = []
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def _chief_and_worker(strategy):
    """(whether this process writes the workdir, its worker index)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True, 0
    task_id = int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (
        task_type == "worker" and task_id == 0 and not has_chief)
    return is_chief, task_id if task_type == "worker" else -1


@dataclasses.dataclass
class Result:
    iterations: int
    best_validation: float
    export_dir: Optional[str]
    export_last_dir: str
    seconds: float


class MetaTrainer:
    """Meta-trains a CoordinatewiseLSTM on `config` (see configs/)."""

    def __init__(self, config, workdir: str,
                 strategy: Optional[tf.distribute.Strategy] = None,
                 fused: Optional[bool] = None):
        """`fused`: whether the unrolls run the LSTM step, and its gradient,
        on the fused CPU kernel (l2l_tf.fused). None (the default) takes it
        where it runs: no GPUs, one CoordinatewiseLSTM with log/sign or no
        preprocessing and up to 48 units, a C++ compiler. True raises a
        ValueError naming what stops it; False runs TensorFlow ops."""
        fused_lib.check_argument(fused)
        atomic.check_folder(workdir)
        validate_config(config)
        self._holding_workdir = False
        self._damaged = set()  # Checkpoints found damaged (warned once).
        self.config = config
        self.workdir = os.path.abspath(workdir)
        # K optimizees per meta-iteration, K / R on each of R replicas; the
        # meta-gradient is their mean, all-reduced across replicas.
        self.strategy = strategy or tf.distribute.get_strategy()
        self.num_optimizees = field(config, "meta.num_optimizees")
        replicas = self.strategy.num_replicas_in_sync
        if self.num_optimizees % replicas:
            raise ValueError(
                "`meta.num_optimizees` must be a multiple of the number of "
                f"replicas ({replicas} under {type(self.strategy).__name__}). "
                f"Received: meta.num_optimizees={self.num_optimizees}")
        self.local_optimizees = self.num_optimizees // replicas
        self.is_chief, worker = _chief_and_worker(self.strategy)
        self.problem = problems.from_config(config, "train")
        scale_p = field(config, "meta.param_scale_range")
        scale_l = field(config, "meta.loss_scale_range")
        if scale_p > 1 or scale_l > 1:  # Training optimizees only.
            self.problem = problems.RandomlyScaled(self.problem, scale_p,
                                                   scale_l)
        self.meta_loss = unroll.META_LOSSES[field(config, "meta.meta_loss")]
        self.stages = run_stages(config)
        groups = field(config, "network_groups")
        if groups:  # One network per group of parameters (paper, Sec. 3.3).
            self.rule = grouped.Grouped(groups, dict(config.network)).bind(
                self.problem)
        else:
            self.rule = networks.CoordinatewiseLSTM(**dict(config.network))
        self.val_problem = problems.from_config(config, "validation")
        self.fused = fused_lib.choose(self.rule, fused,
                                       what="this meta-training")
        if self.fused:
            logging.info("The unrolls and validation step on the fused CPU "
                         "kernel (l2l_tf.fused).")
        else:
            logging.info("The unrolls and validation step on TensorFlow ops "
                         "(%s).", "fused=False" if fused is False else
                         fused_lib.reason_not_taken(self.rule))
        # The rule the unrolls step with: the same weights and state, its
        # step (and gradient) on the fused kernel when self.fused.
        self.step_rule = (fused_lib.Differentiable(self.rule) if self.fused
                          else self.rule)
        m = config.meta
        self.unroll_length = m.unroll_length

        if m.init_weights:
            init_rule, init_phi, _ = saved_model.load(m.init_weights)
            if groups and isinstance(init_rule,
                                     networks.CoordinatewiseLSTM):
                # One network's weights start every group's network.
                init_phi = {f"{g}/{k}": v for g in self.rule.nets
                            for k, v in init_phi.items()}
                init_rule = grouped.Grouped(groups, init_rule.get_config())
            if init_rule.get_config() != self.rule.get_config():
                raise ValueError(
                    "`meta.init_weights` holds a network of another shape: "
                    f"{init_rule.get_config()}, while config.network asks for "
                    f"{self.rule.get_config()}.")
        else:
            init_phi = self.rule.init_phi(m.init_seed)
        self.names = list(self.rule.phi_shapes())
        with self.strategy.scope():  # Mirrored: read by every replica.
            self.phi = {n: tf.Variable(init_phi[n], name=n.replace("/", "_"))
                        for n in self.names}
        self.num_phi = sum(int(np.prod(v.shape)) for v in self.phi.values())
        # Adam's formulas only: its learning rate is passed at every step.
        self.meta_opt = networks.Adam()
        self.meta_state = [tf.Variable(tf.zeros(s), trainable=False)
                           for s in self.meta_opt.state_shapes(self.num_phi)]
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_validation = tf.Variable(np.inf, dtype=tf.float64,
                                           trainable=False)
        self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        # Halved each time repeated divergence forces a restore.
        self.lr_scale = tf.Variable(1.0, dtype=tf.float64, trainable=False)
        self._initial_phi = {n: np.array(init_phi[n]) for n in self.names}
        # Polyak averaging of phi (meta.ema_decay): validation and exports
        # use the average, which swings far less than phi itself.
        self.ema_decay = m.ema_decay
        self.phi_ema = ({n: tf.Variable(init_phi[n], trainable=False,
                                        name=n.replace("/", "_") + "_ema")
                         for n in self.names} if self.ema_decay else None)
        self.checkpoint = tf.train.Checkpoint(
            phi=self.phi, meta_state=self.meta_state,
            iteration=self.iteration, best_validation=self.best_validation,
            skipped_steps=self.skipped_steps, lr_scale=self.lr_scale,
            **({"phi_ema": self.phi_ema} if self.phi_ema else {}))
        # Every worker saves (saving may take part in collectives); only the
        # chief into the workdir, the others into scratch folders. All of them
        # restore from the chief's checkpoints (the workdir must be shared).
        self.checkpoint_dir = os.path.join(self.workdir, "checkpoints")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.checkpoint_dir if self.is_chief else
            os.path.join(self.workdir, f".worker_{worker}", "checkpoints"),
            max_to_keep=3)
        self.max_skips = int(m.max_consecutive_skips)
        self._meta_step = tf.function(self._meta_step_impl)
        self.val_horizons = tuple(field(config, "validation.horizons")) or (
            config.validation.horizon,)
        self._val_run = unroll.make_run_fn(self.rule, self.val_problem,
                                           max(self.val_horizons),
                                           fused=self.fused)

    # -- the compiled meta-iteration ---------------------------------------

    def _local_step(self, params, state, task, step0):
        """One replica's share: its optimizees' unrolls and meta-gradient.

        Returns (sum over its optimizees of the meta-loss, the flat gradient
        of that sum, their parameters and states at the unroll's end).
        """
        phi = [self.phi[n] for n in self.names]
        with tf.GradientTape() as tape:
            total = 0.0
            new_params, new_state = [], []
            for j in range(self.local_optimizees):
                loss_j, params_j, state_j = unroll.unroll(
                    self.step_rule, self.phi, self.problem, params[j], state[j],
                    task[j], step0, self.unroll_length, self.meta_loss)
                total += loss_j / self.unroll_length
                new_params.append([tf.stop_gradient(p) for p in params_j])
                new_state.append(tuple(tf.stop_gradient(x) for x in state_j))
        grads = tape.gradient(total, phi)
        return total, unroll.flatten(grads), new_params, new_state

    def _meta_step_impl(self, params, state, task, step0, learning_rate):
        total, flat, params, state = self.strategy.run(
            self._local_step, args=(params, state, task, step0))
        k = float(self.num_optimizees)
        total_sum = tf.distribute.ReduceOp.SUM
        meta_loss = self.strategy.reduce(total_sum, total, axis=None) / k
        flat = self.strategy.reduce(total_sum, flat, axis=None) / k
        norm = tf.norm(flat)
        ok = tf.math.is_finite(meta_loss) & tf.math.is_finite(norm)
        clip = self.config.meta.clip_norm
        if clip:
            flat = flat * tf.minimum(1.0, clip / tf.maximum(norm, 1e-12))
        # A non-finite meta-step changes nothing (selects, not tf.cond, so the
        # mirrored variables are updated the same way on every replica).
        updates, new_state = self.meta_opt.step(
            {"learning_rate": learning_rate}, flat, tuple(self.meta_state))
        phi = [self.phi[n] for n in self.names]
        for v, u in zip(phi, unroll.unflatten(updates, phi)):
            v.assign_add(tf.where(ok, u, tf.zeros_like(u)))
        for v, x in zip(self.meta_state, new_state):
            v.assign(tf.where(ok, x, v))
        if self.phi_ema:
            d = self.ema_decay
            for n in self.names:
                avg = self.phi_ema[n]
                avg.assign(tf.where(ok, d * avg + (1.0 - d) * self.phi[n],
                                    avg))
        self.skipped_steps.assign_add(tf.cast(tf.logical_not(ok), tf.int64))
        return meta_loss, params, state, norm, ok

    def draw(self, run: int):
        """The optimizees of run `run`: (params, state, task), each a list of
        this replica's K / R optimizees (per-replica values if distributed).

        Optimizee j of run r is drawn from seed index r * K + j, so K = 1
        draws the same optimizees as before num_optimizees existed.
        """
        k, local = self.num_optimizees, self.local_optimizees

        def value_fn(ctx):
            params, states, tasks = [], [], []
            for j in range(local):
                index = run * k + ctx.replica_id_in_sync_group * local + j
                p, t = self.problem.init(self.run_seed(index))
                params.append(p)
                tasks.append(t)
                states.append(self.rule.init_state(self.problem.num_params))
            return params, states, tasks

        return self.strategy.experimental_distribute_values_from_function(
            value_fn)

    # -- helpers -------------------------------------------------------------

    def learning_rate(self, iteration: int) -> float:
        """Exponential decay from meta.learning_rate to final_learning_rate."""
        m = self.config.meta
        frac = min(iteration / m.num_iterations, 1.0)
        return float(self.lr_scale.numpy()) * m.learning_rate * (
            m.final_learning_rate / m.learning_rate) ** frac

    def _recover(self):
        """Restores the last good checkpoint (or the initial weights) and
        halves the meta learning rate; returns the iteration to go on from."""
        scale = float(self.lr_scale.numpy()) / 2
        latest = self.latest_checkpoint()
        if latest:
            self.checkpoint.restore(latest)
        else:
            for n in self.names:
                self.phi[n].assign(self._initial_phi[n])
                if self.phi_ema:
                    self.phi_ema[n].assign(self._initial_phi[n])
            for v in self.meta_state:
                v.assign(tf.zeros_like(v))
            self.iteration.assign(0)
        self.lr_scale.assign(scale)
        logging.warning(
            "Meta-training diverged (%d non-finite meta-steps in a row): "
            "restored iteration %d, meta learning rate scaled by %g.",
            self.max_skips, int(self.iteration.numpy()), scale)
        return int(self.iteration.numpy())

    def run_seed(self, index: int) -> tf.Tensor:
        """The seed of the `index`-th optimizee drawn in meta-training."""
        return problems.fold_in(
            problems.seed_pair(self.config.seed + evaluation.TRAIN_SEED_BASE),
            index)

    def phi_numpy(self):
        return {n: v.numpy() for n, v in self.phi.items()}

    def _evaluated_phi(self):
        """The weights that are validated and exported (the average if
        meta.ema_decay is set)."""
        return self.phi_ema if self.phi_ema else self.phi

    def validate(self) -> float:
        """Mean reported loss at the validation horizon over fixed seeds.

        With several `validation.horizons`, the geometric mean over them of
        the mean loss at each (so that a late horizon, where losses are
        smaller, counts as much as an early one). With `validation.max_rise`
        set, multiplied by the largest rise over it (see CONFIG_DEFAULTS).
        """
        curves = evaluation.run_curves(
            self._val_run, self._evaluated_phi(),
            evaluation.seeds(evaluation.VALIDATION_SEED_BASE,
                             self.config.validation.num_seeds))
        finals = curves[:, list(self.val_horizons)]
        if not np.all(np.isfinite(finals)):
            return float("inf")
        means = np.mean(finals, axis=0)
        score = float(means[0]) if len(means) == 1 else float(
            np.exp(np.mean(np.log(np.maximum(means, 1e-30)))))
        max_rise = float(field(self.config, "validation.max_rise"))
        if max_rise:
            rise = evaluation.stability(curves, max_rise)["max_ratio"]
            if rise > max_rise:
                logging.info("Validation rose %.2fx over its running minimum "
                             "(allowed %.2fx): score %.4g -> %.4g.", rise,
                             max_rise, score, score * rise / max_rise)
                score *= rise / max_rise
        return score

    def export(self, name: str, validation_loss: float) -> str:
        if not self.is_chief:  # The chief writes the exports.
            return os.path.join(self.workdir, name)
        return saved_model.export(
            os.path.join(self.workdir, name), self.rule,
            {n: v.numpy() for n, v in self._evaluated_phi().items()},
            config=self.config.to_dict(),
            extra={"iteration": int(self.iteration.numpy()),
                   "validation_loss": validation_loss,
                   # What ran where the config leaves a choice (neural
                   # art's feature network: "auto" -> "vgg19" or "random").
                   **({"problem": self.problem.describe()}
                      if hasattr(self.problem, "describe") else {})})

    # -- the loop --------------------------------------------------------------

    def latest_checkpoint(self) -> Optional[str]:
        """The newest checkpoint that reads whole, or None if there is none.

        A damaged one (a truncated file, a disk error) is named in a
        warning, and the one before it is taken; the chief keeps a copy of
        its files in checkpoints/damaged/, since the resumed run writes a
        new checkpoint under its name. If none reads, a ValueError names
        the folder.
        """
        state = tf.train.get_checkpoint_state(self.checkpoint_dir)
        if not state:
            return None
        paths = list(state.all_model_checkpoint_paths) or [
            state.model_checkpoint_path]
        for path in reversed(paths):
            try:
                reader = tf.train.load_checkpoint(path)
                for name in reader.get_variable_to_shape_map():
                    reader.get_tensor(name)
                return path
            except (tf.errors.OpError, IndexError, ValueError, OSError) as e:
                if path not in self._damaged:
                    self._damaged.add(path)
                    kept = self._keep_damaged(path)
                    logging.warning(
                        "The checkpoint %s cannot be read (%s: %s): the one "
                        "before it is taken%s.", path, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "",
                        f"; its files are kept in {kept}" if kept else "")
        raise ValueError(
            f"None of the checkpoints in {self.checkpoint_dir!r} can be read "
            f"({', '.join(os.path.basename(p) for p in paths)}; the warnings "
            "above say why): restore them, or give another workdir.")

    def _keep_damaged(self, path: str) -> Optional[str]:
        """Copies checkpoint `path`'s files into checkpoints/damaged/ (the
        chief; a copy already there is kept); returns that folder."""
        if not self.is_chief:
            return None
        folder = os.path.join(self.checkpoint_dir, "damaged")
        os.makedirs(folder, exist_ok=True)
        prefix = os.path.basename(path) + "."
        for name in os.listdir(self.checkpoint_dir):
            target = os.path.join(folder, name)
            if name.startswith(prefix) and not os.path.exists(target):
                shutil.copy2(os.path.join(self.checkpoint_dir, name), target)
        return folder

    def check_workdir(self) -> bool:
        """Raises ValueError if the workdir holds checkpoints of another
        experiment (see `_check_same_experiment`), before any work; returns
        whether the validation changed since them."""
        latest = self.latest_checkpoint()
        return bool(latest) and self._check_same_experiment(
            int(tf.train.load_variable(
                latest, "iteration/.ATTRIBUTES/VARIABLE_VALUE")))

    def _check_same_experiment(self, iteration: int):
        """Refuses to resume a workdir that holds another experiment.

        Only fields that do not alter what was learned up to the checkpoint
        (at `iteration`) may change: meta.num_iterations, log_every,
        evaluation.*, validation.* and eval_every (they choose the export,
        not phi), and meta.curriculum stages that start at or after
        `iteration` (a run can branch into a new curriculum from a
        checkpoint). Returns whether the validation changed: the best
        validation loss then starts over.
        """
        path = os.path.join(self.workdir, "config.json")
        if not os.path.exists(path):
            return False
        with open(path) as f:
            saved = with_defaults(json.load(f))
        current = with_defaults(
            json.loads(json.dumps(self.config.to_dict(), default=str)))
        validation_changed = any(
            saved.get(k) != current.get(k) for k in ("validation", "eval_every"))
        for d in (saved, current):
            for key in ("log_every", "evaluation", "validation", "eval_every"):
                d.pop(key, None)
            d.get("meta", {}).pop("num_iterations", None)
            m = d.get("meta", {})
            m["curriculum"] = [list(e) for e in m.get("curriculum", [])
                               if e[0] < iteration]
        if saved != current:
            diff = sorted(_diff(saved, current))
            raise ValueError(
                f"--workdir {self.workdir!r} holds checkpoints of another "
                f"experiment; these config fields differ: {diff}. Use a new "
                "workdir (only meta.num_iterations, log_every, evaluation.*, "
                "validation.*, eval_every and meta.curriculum stages from the "
                f"checkpoint's iteration ({iteration}) on may change on "
                "resume).")
        return validation_changed

    def train(self, until: Optional[int] = None) -> Result:
        """Meta-trains to `config.meta.num_iterations` (resuming if possible).

        `until` stops early, after the checkpoint at that iteration (it must
        be a multiple of `checkpoint_every`): a long run can be split into
        pieces that each resume where the last one stopped.

        The chief holds the workdir while it trains: another run on it
        raises `atomic.InUse` before any work.
        """
        if until is not None:
            check_until(self.config, until)
        with self.holding_workdir():
            return self._train(until)

    @contextlib.contextmanager
    def holding_workdir(self):
        """Holds the workdir for this run while the block runs (the chief;
        nested holds are one): another run on it raises `atomic.InUse`.
        `train` holds it; hold it around more work on the workdir (as
        train.meta_train does around its evaluation)."""
        if not self.is_chief or self._holding_workdir:
            yield
            return
        with atomic.exclusive(self.workdir):
            self._holding_workdir = True
            try:
                yield
            finally:
                self._holding_workdir = False

    def _train(self, until: Optional[int]) -> Result:
        config = self.config
        validation_changed = self.check_workdir()
        os.makedirs(self.workdir, exist_ok=True)
        latest = self.latest_checkpoint()
        if self.is_chief:
            for name in ("export", "export_last"):
                saved_model.recover(os.path.join(self.workdir, name))
            atomic.write_json(config.to_dict(),
                              os.path.join(self.workdir, "config.json"),
                              indent=2, default=str)
        if latest:
            self.checkpoint.restore(latest)
            logging.info("Resumed from %s at iteration %d.", latest,
                         int(self.iteration.numpy()))
            if validation_changed:
                # Another validation: earlier losses do not compare, so the
                # best starts over here, with the checkpoint's phi.
                val = self.validate()
                logging.info("Validation changed: restarting the best "
                             "validation at %.4f.", val)
                self.best_validation.assign(val if np.isfinite(val) else np.inf)
                if np.isfinite(val):
                    self.export("export", val)
        start_it = int(self.iteration.numpy())
        total = config.meta.num_iterations
        if start_it == 0 and field(config, "validation.include_initial"):
            # Fine-tuning: the starting weights are a candidate export too,
            # so the export is never worse on validation than the start.
            val = self.validate()
            logging.info("Initial weights: val %.4f", val)
            if val < float(self.best_validation.numpy()):
                self.best_validation.assign(val)
                self.export("export", val)
        start_time = last_time = time.time()
        last_it = start_it
        # TensorBoard: `tensorboard --logdir=WORKDIR/tensorboard`.
        writer = (tf.summary.create_file_writer(
            os.path.join(self.workdir, "tensorboard")) if self.is_chief
            else tf.summary.create_noop_writer())
        params = state = task = None
        window, norms = [], []
        stop = total if until is None else min(until, total)
        if stop <= start_it and until is not None:
            logging.warning("until=%d is at or before the checkpoint's "
                            "iteration (%d): nothing to train.", until,
                            start_it)
        consecutive_skips = 0
        it = start_it
        while it < stop:
            run, k, _ = run_position(self.stages, it)
            if k == 0:
                params, state, task = self.draw(run)
            elif params is None:  # Checkpoints are only taken where k == 0.
                raise RuntimeError(f"Cannot resume at iteration {it}: it is "
                                   "in the middle of an optimizee's run.")
            meta_loss, params, state, norm, applied = self._meta_step(
                params, state, task, tf.constant(k * self.unroll_length),
                tf.constant(self.learning_rate(it), tf.float32))
            self.iteration.assign(it + 1)
            if not bool(applied):
                consecutive_skips += 1
                logging.warning(
                    "Iteration %d: non-finite meta-loss (%s) or meta-gradient "
                    "norm (%s); meta-step skipped.", it + 1,
                    float(meta_loss), float(norm))
                if consecutive_skips >= self.max_skips:
                    it, consecutive_skips, params = self._recover(), 0, None
                    continue
            else:
                consecutive_skips = 0
                window.append(float(meta_loss))
                norms.append(float(norm))
            it = done = it + 1
            last = done == total
            val = None
            if done % config.eval_every == 0 or last:
                val = self.validate()
                if val < float(self.best_validation.numpy()):
                    self.best_validation.assign(val)
                    self.export("export", val)
            if done % config.checkpoint_every == 0 or last:
                self.manager.save(checkpoint_number=done)
            if done % config.log_every == 0 or last or val is not None:
                now = time.time()
                rate = (done - last_it) / max(now - last_time, 1e-9)
                last_time, last_it = now, done
                eta = (total - done) / max(rate, 1e-9)
                mean_loss = float(np.mean(window)) if window else float("nan")
                logging.info(
                    "iter %d/%d  meta-loss %.4f  val %s  best val %.4f  "
                    "%.1f it/s  ETA %s", done, total, mean_loss,
                    "-" if val is None else f"{val:.4f}",
                    float(self.best_validation.numpy()), rate,
                    time.strftime("%H:%M:%S", time.gmtime(eta)))
                with writer.as_default(step=done):
                    if window:  # Means since the last point written.
                        tf.summary.scalar("meta_loss", mean_loss)
                        tf.summary.scalar("meta_gradient_norm",
                                          float(np.mean(norms)))
                    if val is not None:
                        tf.summary.scalar("validation_loss", val)
                    tf.summary.scalar("iterations_per_second", rate)
                    tf.summary.scalar("meta_learning_rate",
                                      self.learning_rate(done - 1))
                    tf.summary.scalar("skipped_meta_steps",
                                      int(self.skipped_steps.numpy()))
                window, norms = [], []
        writer.flush()
        best = float(self.best_validation.numpy())
        if not self.is_chief:
            shutil.rmtree(os.path.dirname(self.manager.directory),
                          ignore_errors=True)
        if stop < total:
            return Result(iterations=int(self.iteration.numpy()),
                          best_validation=best,
                          export_dir=None, export_last_dir="",
                          seconds=time.time() - start_time)
        export_dir = os.path.join(self.workdir, "export")
        if not os.path.isdir(export_dir):  # Only non-finite validations.
            export_dir = None
        last_dir = self.export("export_last", best)
        return Result(iterations=total, best_validation=best,
                      export_dir=export_dir, export_last_dir=last_dir,
                      seconds=time.time() - start_time)

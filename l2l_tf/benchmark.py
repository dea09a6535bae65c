"""What the learned optimizer costs on this machine, against what it could cost.

`python -m train.benchmark` (see BUILD.md) measures, in one run:

1. The machine's ceilings: the fp32 throughput of a large square matmul
   (FLOP/s) and the bandwidth of a large memory copy (bytes read + written
   per second).
2. The optimizer's update, isolated from the model: a tf.function calling
   `optimizer.apply(grads)` on the variables of 784-h-10 MLPs of about 100k,
   1M and 10M parameters, LearnedOptimizer next to keras Adam, with and
   without jit_compile.
3. The meta-iteration (one unroll of 20 steps with its backward pass and
   phi's Adam step, `MetaTrainer._meta_step`) on the quadratic and MNIST
   configs.
4. Optimizer state bytes per parameter and each row's peak process memory
   (VmHWM of the row's process: its own, not its parent's).
5. A profile of one LSTM step on the current tree (`measure_profile`): the
   step's own matmuls, at the network's shapes, timed alone, and one
   element-wise pass over a layer's [n, h] activations, next to the whole
   step. It shows what the square-matmul ceiling hides: a gate matmul
   [n, in + h + 1] x [in + h + 1, h] has an inner dimension of 23 or 41 and
   runs far below the rate of a 2048^2 one.

Each time is set against a lower bound, the time this machine needs for
the compulsory work alone:

    bound = max(2 * multiply-adds / matmul FLOP/s,
                compulsory bytes / copy bandwidth)

The counts are written out below (`lstm_macs_per_coordinate`,
`update_bytes_per_coordinate`, `meta_counts`, `optimizee_macs_per_step`),
derived from the network's hidden sizes, its preprocessing width and the
state's dtype. Element-wise work (the gates' sigmoids and tanhs) is not in
the bound: the bound is what a perfect implementation of the network's
matmuls and of its state traffic would take.

To compare with another checkout (for instance the commit before a change)
in the same run, pass `baseline_src`: every row is then measured in a fresh
subprocess, once for each tree, the baseline first, with that tree first on
`sys.path` and this file loaded by path. The measuring code therefore uses
only APIs that every measured tree has (`LearnedOptimizer`, `MetaTrainer`
with `draw` and `_meta_step`, `problems`, `preprocess.PREPROCESSORS`).
"""

import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

# ---------------------------------------------------------------------------
# Counts (pure functions; tests hold them against hand-computed numbers).

FLOAT32_BYTES = 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def lstm_macs_per_coordinate(hidden_sizes: Sequence[int],
                             input_width: int) -> int:
    """Multiply-adds of one coordinatewise LSTM step for one coordinate.

    Layer l multiplies [x_l, h_l] (width in_l + h_l) by its four-gate kernel
    [in_l + h_l, 4 h_l]; the output layer is a dot product with h_last. The
    default 2x20 network with log/sign preprocessing (width 2):
    (2 + 20) * 80 + (20 + 20) * 80 + 20 = 4,980.
    """
    macs, width = 0, int(input_width)
    for h in hidden_sizes:
        macs += (width + h) * 4 * h
        width = h
    return macs + width


def lstm_state_bytes(hidden_sizes: Sequence[int],
                     state_dtype_bytes: int = FLOAT32_BYTES) -> int:
    """(h, c) of every layer: 2 * sum(hidden_sizes) values a coordinate;
    the default 2x20 network in float32: 80 * 4 = 320 bytes."""
    return 2 * sum(hidden_sizes) * state_dtype_bytes


def update_bytes_per_coordinate(state_bytes: int, param_bytes: int = 4,
                                grad_bytes: int = 4) -> int:
    """Compulsory memory traffic of one update for one coordinate: read the
    gradient, read and write the parameter, read and write the state.
    The default LSTM (320 bytes of fp32 state): 4 + 8 + 640 = 652."""
    return grad_bytes + 2 * param_bytes + 2 * state_bytes


# Adam: m and v, 8 bytes of state (4 + 8 + 16 = 28 bytes of traffic a
# coordinate) and about 10 flops, counted as 5 multiply-adds: memory-bound.
ADAM_STATE_BYTES = 2 * FLOAT32_BYTES
ADAM_MACS_PER_COORDINATE = 5


def bound_seconds(macs: float, num_bytes: float, flops_per_second: float,
                  bytes_per_second: float) -> float:
    """max(2 * macs / matmul throughput, bytes / copy bandwidth)."""
    return max(2.0 * macs / flops_per_second, num_bytes / bytes_per_second)


def meta_counts(coordinates: int, unroll_length: int, lstm_macs: int,
                update_bytes: int, optimizee_macs_per_step: int):
    """(multiply-adds, bytes) of one meta-iteration.

    Per step and coordinate: the LSTM's forward pass (lstm_macs) and its
    backward pass, twice that (the gradients with respect to the layer
    inputs and to the weights), so 3 * lstm_macs; the forward pass's state
    traffic (update_bytes) and twice that backward (reading the saved
    states, reading and writing their adjoints), so 3 * update_bytes. Plus
    the optimizee's own work a step (`optimizee_macs_per_step`). phi's Adam
    step (5,141 weights) is negligible and left out.
    """
    steps = coordinates * unroll_length
    macs = 3 * lstm_macs * steps + optimizee_macs_per_step * unroll_length
    return macs, 3 * update_bytes * steps


def optimizee_macs_per_step(problem) -> int:
    """Multiply-adds of the optimizee per unroll step: 5F.

    Its forward pass (F), the backward pass of the gradient handed to the
    LSTM (2F) and the meta-loss's backward pass through the loss at theta_t
    (2F). F of an MLP: batch * sum(in * out) over its layers; of the
    quadratics: functions * dim^2. Other problems count 0 (their bound is
    then the LSTM's alone).
    """
    kind = type(problem).__name__
    if kind == "MLP":  # (kernel [in, out], bias [out]) per layer.
        forward = problem.batch_size * sum(
            int(np.prod(s)) for s in problem.param_shapes() if len(s) == 2)
    elif kind == "Quadratic":
        forward = problem.num_functions * problem.dim ** 2
    else:
        forward = 0
    return 5 * forward


def ratio(time_s: Optional[float], ref_s: Optional[float]) -> Optional[float]:
    """time_s / ref_s, or None where either is missing."""
    if time_s is None or not ref_s:
        return None
    return time_s / ref_s


def mlp_min_params(inputs: int = 784, classes: int = 10) -> int:
    """Parameters of the smallest MLP `mlp_shapes` builds, 784-1-10: 805."""
    return inputs + 1 + 2 * classes


def mlp_shapes(num_params: int, inputs: int = 784, classes: int = 10):
    """A 784-h-10 MLP of about `num_params` parameters: (kernel, bias) x 2."""
    if num_params < mlp_min_params(inputs, classes):
        raise ValueError("`num_params` must be at least the size of a "
                         f"784-1-10 MLP ({mlp_min_params(inputs, classes)}). "
                         f"Received: num_params={num_params!r}")
    h = max(1, round((num_params - classes) / (inputs + 1 + classes)))
    return [(inputs, h), (h,), (h, classes), (classes,)]


def network_counts(network: dict, state_dtype: str = "float32") -> dict:
    """The per-coordinate counts of `network` (CoordinatewiseLSTM's config)
    with its state kept in `state_dtype`."""
    from l2l_tf import preprocess
    if state_dtype not in DTYPE_BYTES:
        raise ValueError(f"`state_dtype` must be one of {list(DTYPE_BYTES)}."
                         f" Received: state_dtype={state_dtype!r}")
    hidden = tuple(network.get("hidden_sizes", (20, 20)))
    pre = preprocess.PREPROCESSORS[network.get("preprocess", "log_sign")]
    # A preprocessor's own state (Adam's moments) stays float32.
    state = (lstm_state_bytes(hidden, DTYPE_BYTES[state_dtype])
             + pre.state_width * FLOAT32_BYTES)
    return {"macs_per_coordinate": lstm_macs_per_coordinate(hidden,
                                                            pre.width),
            "state_bytes": state,
            "update_bytes_per_coordinate": update_bytes_per_coordinate(state)}


# ---------------------------------------------------------------------------
# Measurement.


def _times(fn, sync, repeats: int, warmup: int = 2, cpu: bool = False):
    """Wall times of `repeats` calls (and the process's CPU times if `cpu`)."""
    for _ in range(warmup):
        sync(fn())
    times, cpu_times = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        sync(fn())
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    return (times, cpu_times) if cpu else times


def _median_time(fn, sync, repeats: int, warmup: int = 2):
    """(median wall seconds, median CPU seconds of this process) a call.
    CPU time is the steadier figure when other jobs share the cores."""
    times, cpu_times = _times(fn, sync, repeats, warmup, cpu=True)
    return float(np.median(times)), float(np.median(cpu_times))


def measure_ceilings(matmul_size: int = 2048, copy_mb: int = 256,
                     repeats: int = 5) -> dict:
    """fp32 square-matmul FLOP/s and copy bandwidth (bytes read + written /s).

    The best of `repeats`: a ceiling is what the machine can do. The matmul
    is tf.matmul of two [size, size] matrices, 2 size^3 flops. The copy is
    the faster of numpy's memcpy into a preallocated array and TensorFlow's
    DeepCopy (an assign of one variable to another only swaps buffers, so it
    would measure nothing).
    """
    import tensorflow as tf
    a = tf.random.stateless_normal([matmul_size] * 2, [1, 2])
    b = tf.random.stateless_normal([matmul_size] * 2, [3, 4])
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    t_mm = min(_times(lambda: matmul(a, b), lambda r: r.numpy()[0, 0],
                      repeats))
    n = copy_mb * 2 ** 20 // FLOAT32_BYTES
    src, dst = np.ones(n, np.float32), np.zeros(n, np.float32)
    t_np = min(_times(lambda: np.copyto(dst, src), lambda _: None, repeats))
    del src, dst
    x = tf.ones([n])
    deep_copy = tf.function(lambda v: tf.raw_ops.DeepCopy(x=v)[0])
    t_tf = min(_times(lambda: deep_copy(x), lambda r: r.numpy(), repeats))
    copy_bytes = 2 * n * FLOAT32_BYTES
    return {
        "matmul_size": matmul_size,
        "matmul_flops_per_s": 2.0 * matmul_size ** 3 / t_mm,
        "copy_bytes": copy_bytes,
        "copy_bytes_per_s": copy_bytes / min(t_np, t_tf),
        "copy_bytes_per_s_numpy": copy_bytes / t_np,
        "copy_bytes_per_s_tf": copy_bytes / t_tf,
    }


def lstm_matmul_shapes(hidden_sizes: Sequence[int],
                       input_width: int) -> list:
    """(inner, outer) of the matmuls of one LSTM step, as the step runs
    them: per layer, four gate matmuls [n, in + h + 1] x [in + h + 1, h]
    (the ones column carries the bias), then the output [n, h] x [h, 1].
    The default 2x20 network: four (23, 20), four (41, 20), one (20, 1);
    5,140 multiply-adds a coordinate (4,980 without the bias columns).
    """
    shapes, width = [], int(input_width)
    for h in hidden_sizes:
        shapes += [(width + h + 1, h)] * 4
        width = h
    return shapes + [(width, 1)]


def profile_matmuls(shapes: Sequence[Tuple[int, int]], n: int):
    """A tf.function running one matmul per (inner, outer) of `shapes` on
    n rows, all of them, as in the step: the matmuls of one inner width
    share their input (a layer's four gates read one [n, in + h + 1]
    operand), and the executor may run independent ones side by side.
    Returns every product, so none is pruned."""
    import tensorflow as tf
    inputs = {k: tf.random.stateless_normal([n, k], [8, k])
              for k in sorted({k for k, _ in shapes})}
    kernels = [tf.random.stateless_normal([k, m], [9, i])
               for i, (k, m) in enumerate(shapes)]
    return tf.function(lambda: tuple(
        tf.matmul(inputs[k.shape[0]], k) for k in kernels))


def measure_profile(n: int, repeats: int = 5) -> dict:
    """Times one step of the default network on n coordinates, its matmuls
    alone (one tf.function running the step's matmuls at its shapes), and
    one element-wise pass (a sigmoid) over [n, h]."""
    import tensorflow as tf
    from l2l_tf import networks, preprocess

    rule = networks.CoordinatewiseLSTM()
    phi = {k: tf.constant(v) for k, v in rule.init_phi(0).items()}
    grads = tf.random.stateless_normal([n], [5, 6]) * 1e-2
    state = tuple(tf.random.stateless_normal(s, [7, i]) * 0.1
                  for i, s in enumerate(rule.state_shapes(n)))
    step = tf.function(rule.step)
    t_step = _median_time(lambda: step(phi, grads, state),
                          lambda r: r[0].numpy(), repeats)[0]
    from l2l_tf import fused
    t_fused = None
    if fused.unavailable_reason() is None:
        # As the optimizer runs it: the new state written in place.
        variables = [tf.Variable(s) for s in state]
        fused_step = tf.function(
            lambda p, g: fused.lstm_apply(rule, p, g, variables))
        t_fused = _median_time(lambda: fused_step(phi, grads),
                               lambda r: r.numpy(), repeats)[0]
    width = preprocess.PREPROCESSORS[rule.preprocess].width
    shapes = lstm_matmul_shapes(rule.hidden_sizes, width)
    matmuls = profile_matmuls(shapes, n)
    t_matmul = _median_time(matmuls, lambda r: r[-1].numpy(), repeats)[0]
    h = rule.hidden_sizes[-1]
    act = tf.random.stateless_normal([n, h], [10, 11])
    sigmoid = tf.function(tf.sigmoid)
    t_ew = _median_time(lambda: sigmoid(act), lambda r: r.numpy(),
                        repeats)[0]
    macs = n * sum(k * m for k, m in shapes)
    return {
        "coordinates": n,
        "step_seconds": t_step,
        "fused_step_seconds": t_fused,
        "matmul_shapes": [list(s) for s in shapes],
        "matmul_macs": macs,
        "matmul_seconds": t_matmul,
        "matmul_flops_per_s": 2.0 * macs / t_matmul,
        "elementwise_seconds": t_ew,
        "elementwise_bytes_per_s": 2 * n * h * FLOAT32_BYTES / t_ew,
    }


def vm_hwm_bytes(status: str) -> Optional[int]:
    """The peak resident memory in a /proc/<pid>/status text (its `VmHWM:`
    line, in kB) in bytes; None without that line."""
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "VmHWM":
            return int(value.split()[0]) * 1024  # The kernel writes kB.
    return None


def _peak_rss_bytes() -> int:
    """This process's peak resident memory, in bytes.

    VmHWM of /proc/self/status: it belongs to the address space and starts
    again at exec, so a row measured in a subprocess reports its own peak.
    Without /proc, ru_maxrss, which can hold the peak of the process that
    exec'ed this one (Linux keeps it across exec): a subprocess's figure is
    then at least its parent's.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            peak = vm_hwm_bytes(f.read())
    except OSError:
        peak = None
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # Else kB.


def state_bytes_per_param(opt, num_params: int) -> float:
    """Bytes of the optimizer's per-parameter state over `num_params`: every
    optimizer variable but phi (LearnedOptimizer's fixed 5,141 weights) and
    scalars (iterations, learning rate, counters)."""
    import tensorflow as tf
    fixed = {id(v) for v in getattr(opt, "_phi", [])}
    total = 0
    for v in opt.variables:
        if id(v) in fixed or len(v.shape) == 0:
            continue
        total += int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size
    return total / num_params


def _apply_fn(opt, variables):
    # A closure: tf.function would trace default arguments as inputs.
    def apply(grads):
        opt.apply(grads, variables)
    return apply


def measure_update(num_params: int, repeats: int = 5,
                   jit: Sequence[bool] = (False, True),
                   state_dtypes: Sequence[Optional[str]] = (None,),
                   kinds: Sequence[str] = ("adam", "learned"),
                   fused: Optional[bool] = None) -> dict:
    """Update times of LearnedOptimizer and Adam on a 784-h-10 MLP's
    variables; one fresh optimizer and tf.function per variant.

    state_dtypes: LearnedOptimizer's `state_dtype` per learned variant
    (None or "float32": the default, passed as no argument, so that trees
    without the argument run too).
    fused: LearnedOptimizer's `fused` (None: its default, passed as no
    argument; False: the TensorFlow ops, rows named `learned_tfops...`).
    """
    import keras
    import tensorflow as tf
    from l2l_tf.optimizer import LearnedOptimizer

    shapes = mlp_shapes(num_params)
    n = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(0)
    # Gradients of a trained MLP's typical size (the log/sign preprocessing
    # sees both sides of e^-10 for the tiny ones).
    grads = [tf.constant(rng.normal(0, 1e-2, s).astype(np.float32))
             for s in shapes]
    variants = ([("adam", None)] if "adam" in kinds else []) + (
        [("learned", d) for d in state_dtypes] if "learned" in kinds else [])
    rows = {}
    for kind, dtype in variants:
        for use_jit in jit:
            variables = [keras.Variable(np.zeros(s, np.float32))
                         for s in shapes]
            if kind == "adam":
                opt = keras.optimizers.Adam()
            else:  # float32 is every tree's default: no argument.
                opt = LearnedOptimizer(
                    **({"state_dtype": dtype}
                       if dtype not in (None, "float32") else {}),
                    **({} if fused is None else {"fused": fused}))
            opt.build(variables)

            fn = tf.function(_apply_fn(opt, variables), jit_compile=use_jit)
            t, t_cpu = _median_time(
                lambda: fn(grads), lambda _, o=opt: o.iterations.numpy(),
                repeats)
            key = kind + ("_tfops" if kind == "learned" and fused is False
                          else "") + (
                f"_{dtype}" if dtype not in (None, "float32") else "") + (
                "_jit" if use_jit else "")
            rows[key] = {
                "seconds": t,
                "cpu_seconds": t_cpu,
                "jit": use_jit,
                "traces": fn.experimental_get_tracing_count(),
                "state_dtype": (str(getattr(opt, "state_dtype", "float32"))
                                if kind == "learned" else "float32"),
                "state_bytes_per_param": state_bytes_per_param(opt, n),
            }
            del opt, variables, fn
    return {"num_params": n, "rows": rows, "peak_rss_bytes": _peak_rss_bytes()}


def config_path(src: Optional[str], name: str) -> str:
    """configs/<name>.py of the tree at `src` (None: the current tree)."""
    return os.path.join(src or _package_src(), "configs", f"{name}.py")


def _load_config(src: str, name: str, overrides: Optional[dict]):
    path = config_path(src, name)
    spec = importlib.util.spec_from_file_location(f"_bench_cfg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for dotted, value in (overrides or {}).items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return config


def measure_meta(src: str, config_name: str, repeats: int = 5,
                 overrides: Optional[dict] = None,
                 fused: Optional[bool] = None) -> dict:
    """Median time of one meta-iteration (MetaTrainer._meta_step) of
    `src`/configs/`config_name`.py, with dotted `overrides`; `fused` is
    passed to the trainer unless None (trees before the fused gradient do
    not take it)."""
    import tensorflow as tf
    from l2l_tf import meta

    config = _load_config(src, config_name, overrides)
    kwargs = {} if fused is None else {"fused": fused}
    with tempfile.TemporaryDirectory() as workdir:
        trainer = meta.MetaTrainer(config, workdir, **kwargs)
        params, state, task = trainer.draw(0)
        lr = tf.constant(trainer.learning_rate(0), tf.float32)
        step0 = tf.constant(0)
        t, t_cpu = _median_time(
            lambda: trainer._meta_step(params, state, task, step0, lr),
            lambda r: r[0].numpy(), repeats)
        return {
            "seconds": t,
            "cpu_seconds": t_cpu,
            "traces": trainer._meta_step.experimental_get_tracing_count(),
            "coordinates": int(trainer.problem.num_params),
            "unroll_length": int(config.meta.unroll_length),
            "network": dict(config.network),
            "optimizee_macs_per_step": optimizee_macs_per_step(
                trainer.problem),
            "fused": bool(getattr(trainer, "fused", False)),
            "peak_rss_bytes": _peak_rss_bytes(),
        }


# ---------------------------------------------------------------------------
# Rows measured in a subprocess on a given tree.

_CHILD = """
import importlib.util, json, sys
sys.path.insert(0, {src!r})
spec = importlib.util.spec_from_file_location("_l2l_benchmark", {me!r})
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
out = getattr(bench, {fn!r})(*{args!r}, **{kwargs!r})
print("BENCHMARK_JSON " + json.dumps(out))
"""


def _in_subprocess(src: str, fn: str, *args, **kwargs) -> dict:
    src = os.path.abspath(src)
    code = _CHILD.format(src=src, me=os.path.abspath(__file__), fn=fn,
                         args=args, kwargs=kwargs)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, cwd=src, env=env, check=False)
    lines = [l for l in out.stdout.splitlines()
             if l.startswith("BENCHMARK_JSON ")]
    if out.returncode or not lines:
        raise RuntimeError(f"Benchmark row {fn}{args} failed on {src}:\n"
                           f"{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("BENCHMARK_JSON "):])


def _package_src() -> str:
    import l2l_tf
    return os.path.dirname(os.path.dirname(os.path.abspath(l2l_tf.__file__)))


def paired_speedup(baseline: dict, current: dict) -> Optional[float]:
    """baseline / current time: the median over rounds of the ratio within
    each round (measured a minute apart, so the machine's drift cancels),
    where both rows have the same rounds; else the ratio of their times."""
    a, b = baseline.get("rounds_seconds"), current.get("rounds_seconds")
    if a and b and len(a) == len(b):
        return float(np.median([ratio(x, y) for x, y in zip(a, b)]))
    return ratio(baseline["seconds"], current["seconds"])


# The meta-iteration's rows: the baseline tree, the current tree as it runs
# by default (the fused kernel where it runs) and on TensorFlow ops.
META_TREES = ("baseline", "current", "current_tfops")


def add_bounds(result: dict) -> dict:
    """Adds bounds and ratios (time / bound, time / Adam, baseline / current)
    to a result of `run` in place, and returns it."""
    c = result["ceilings"]
    fps, bps = c["matmul_flops_per_s"], c["copy_bytes_per_s"]
    network = result.get("network", {})
    adam_bytes = update_bytes_per_coordinate(ADAM_STATE_BYTES)
    for row in result["update"]:
        n = row["num_params"]
        row["bound_seconds"] = {"adam": bound_seconds(
            ADAM_MACS_PER_COORDINATE * n, adam_bytes * n, fps, bps)}
        for tree in ("current", "baseline"):
            for key, r in row.get(tree, {}).items():
                if key.startswith("learned"):
                    counts = network_counts(network, r["state_dtype"])
                    r["bound_seconds"] = bound_seconds(
                        counts["macs_per_coordinate"] * n,
                        counts["update_bytes_per_coordinate"] * n, fps, bps)
                    adam = row[tree].get("adam_jit" if r["jit"] else "adam")
                    r["time_over_adam"] = ratio(r["seconds"],
                                                adam and adam["seconds"])
                else:
                    r["bound_seconds"] = row["bound_seconds"]["adam"]
                r["time_over_bound"] = ratio(r["seconds"], r["bound_seconds"])
        if "baseline" in row:
            row["speedup"] = {
                k: ratio(row["baseline"][k]["seconds"], v["seconds"])
                for k, v in row["current"].items() if k in row["baseline"]}
    for row in result["meta"]:
        for tree in META_TREES:
            r = row.get(tree)
            if not r:
                continue
            net = network_counts(r["network"])
            macs, nbytes = meta_counts(
                r["coordinates"], r["unroll_length"],
                net["macs_per_coordinate"],
                net["update_bytes_per_coordinate"],
                r["optimizee_macs_per_step"])
            r["macs"], r["bytes"] = macs, nbytes
            r["bound_seconds"] = bound_seconds(macs, nbytes, fps, bps)
            r["time_over_bound"] = ratio(r["seconds"], r["bound_seconds"])
        if "baseline" in row:
            row["speedup"] = paired_speedup(row["baseline"], row["current"])
            if "current_tfops" in row:
                row["speedup_tfops"] = paired_speedup(row["baseline"],
                                                      row["current_tfops"])
    p = result.get("profile")
    if p:
        p["matmul_share_of_square_rate"] = p["matmul_flops_per_s"] / fps
        p["step_over_matmuls"] = ratio(p["step_seconds"], p["matmul_seconds"])
        p["fused_step_over_matmuls"] = ratio(p.get("fused_step_seconds"),
                                             p["matmul_seconds"])
        # What the fused step's arithmetic alone would take at the square
        # matmul's rate: its time over that is what the kernel leaves.
        p["fused_step_over_bound"] = ratio(
            p.get("fused_step_seconds"), 2.0 * p["matmul_macs"] / fps)
        p["elementwise_share_of_copy_bandwidth"] = (
            p["elementwise_bytes_per_s"] / bps)
    return result


# `--quick`: a smoke test of every row in seconds (tests run it in-process).
QUICK = dict(sizes=(2000,), meta_configs=("quadratic",), matmul_size=256,
             meta_rounds=1,
             profile_size=2000,
             copy_mb=8, meta_overrides={"meta.unroll_length": 2,
                                        "meta.run_length": 2})


def run(sizes: Sequence[int] = (100_000, 1_000_000, 10_000_000),
        meta_configs: Sequence[str] = ("quadratic", "mnist"),
        repeats: int = 5, baseline_src: Optional[str] = None,
        isolate: bool = True, matmul_size: int = 2048, copy_mb: int = 256,
        meta_overrides: Optional[dict] = None,
        state_dtypes: Sequence[Optional[str]] = (None,),
        jit: Sequence[bool] = (False, True),
        profile_size: Optional[int] = 1_000_000,
        tfops: bool = True, meta_rounds: int = 3,
        log: Callable[[str], None] = lambda msg: None) -> dict:
    """Runs the whole benchmark; returns the result with bounds and ratios.

    isolate: measure each row in a fresh subprocess (always so with a
    baseline, whose rows run in subprocesses on `baseline_src`); a row's
    `peak_rss_bytes` is then its process's peak, else this process's so
    far.
    state_dtypes: the learned variants of the current tree (the baseline
    runs its default only).
    profile_size: coordinates of the step profile (`measure_profile`, the
    current tree only); None: no profile.
    tfops: also time the current tree's learned rows on the TensorFlow ops
    (`fused=False`), next to the default (the fused kernel where it runs).
    meta_rounds: rounds of the meta-iteration rows, each measuring every
    tree once in turn; a row reports its median round (this machine's speed
    drifts by 1.5x within minutes, so alternating is what makes the trees
    comparable).
    """
    for name, value in (("repeats", repeats), ("meta_rounds", meta_rounds)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"`{name}` must be a positive integer. "
                             f"Received: {name}={value!r}")
    src = _package_src()
    isolate = isolate or baseline_src is not None

    def measure(tree_src, fn, *args, **kwargs):
        if isolate:
            return _in_subprocess(tree_src, fn, *args, **kwargs)
        return globals()[fn](*args, **kwargs)

    trees = ([("baseline", baseline_src)] if baseline_src else []) + [
        ("current", src)]
    ceilings = [measure_ceilings(matmul_size, copy_mb, repeats)]
    log(f"ceilings: {ceilings[-1]}")
    result = {"src": src, "baseline_src": baseline_src, "update": [],
              "meta": [], "load_average_start": os.getloadavg()}
    for n in sizes:
        row = {}
        for tree, tree_src in trees:
            # One process per variant: at 10M parameters a learned
            # optimizer holds 3.2 GB of state, and processes give it back.
            dtypes = list(state_dtypes) if tree == "current" else [None]
            variants = [dict(kinds=["adam"], jit=[j]) for j in jit] + [
                dict(kinds=["learned"], state_dtypes=[d], jit=[j])
                for d in dtypes for j in jit]
            if tree == "current" and tfops:
                variants += [dict(kinds=["learned"], state_dtypes=[d],
                                  jit=[False], fused=False) for d in dtypes]
            row[tree], peak = {}, 0
            for variant in variants:
                out = measure(tree_src, "measure_update", n, repeats=repeats,
                              **variant)
                row["num_params"] = out["num_params"]
                for r in out["rows"].values():
                    r["peak_rss_bytes"] = out["peak_rss_bytes"]
                row[tree].update(out["rows"])
                peak = max(peak, out["peak_rss_bytes"])
                log(f"update {n} {tree}: {out['rows']}")
            row[f"{tree}_peak_rss_bytes"] = peak
        result["update"].append(row)
    for name in meta_configs:
        variants = [(tree, tree_src, {}) for tree, tree_src in trees]
        if tfops:
            variants.append(("current_tfops", src, {"fused": False}))
        runs = {tree: [] for tree, _, _ in variants}
        for _ in range(meta_rounds):
            for tree, tree_src, extra in variants:
                runs[tree].append(measure(
                    tree_src, "measure_meta", tree_src, name,
                    repeats=repeats, overrides=meta_overrides, **extra))
                log(f"meta {name} {tree}: {runs[tree][-1]}")
        row = {"config": name}
        for tree, outs in runs.items():
            ranked = sorted(outs, key=lambda r: r["seconds"])
            row[tree] = dict(ranked[(len(ranked) - 1) // 2],
                             rounds_seconds=[r["seconds"] for r in outs])
        result["meta"].append(row)
    if profile_size:
        result["profile"] = measure(src, "measure_profile", profile_size,
                                    repeats=repeats)
        log(f"profile: {result['profile']}")
    ceilings.append(measure_ceilings(matmul_size, copy_mb, repeats))
    log(f"ceilings: {ceilings[-1]}")
    # The better of the two measurements (start and end of the run) is the
    # ceiling; both are kept.
    result["ceilings"] = {
        "matmul_size": matmul_size,
        "matmul_flops_per_s": max(c["matmul_flops_per_s"] for c in ceilings),
        "copy_bytes_per_s": max(c["copy_bytes_per_s"] for c in ceilings),
        "measurements": ceilings,
    }
    from l2l_tf import networks
    result["network"] = networks.CoordinatewiseLSTM().get_config()
    # This process's own: the ceilings, and every row unless isolated.
    result["peak_rss_bytes"] = _peak_rss_bytes()
    result["load_average_end"] = os.getloadavg()
    return add_bounds(result)


def _ms(seconds):
    return None if seconds is None else seconds * 1e3


def _fmt(x, spec):
    return "-".rjust(len(format(0.0, spec))) if x is None else format(x, spec)


def format_table(result: dict) -> str:
    """The result as a plain-text table."""
    c = result["ceilings"]
    lines = [
        f"ceilings: matmul {c['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({c['matmul_size']}^2 fp32), copy "
        f"{c['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write); load "
        f"average {result['load_average_start'][0]:.2f} at the start, "
        f"{result['load_average_end'][0]:.2f} at the end",
        "",
        "update (optimizer.apply on an MLP's variables)",
        f"{'params':>10} {'variant':<22} {'tree':<8} {'ms':>9} {'cpu ms':>8} "
        f"{'bound ms':>8} {'t/bound':>7} {'t/adam':>6} {'speedup':>7} "
        f"{'B/param':>7} {'traces':>6} {'peak GiB':>8}",
    ]
    for row in result["update"]:
        for tree in ("baseline", "current"):
            for key, r in row.get(tree, {}).items():
                rss = r.get("peak_rss_bytes", row.get(
                    f"{tree}_peak_rss_bytes", 0)) / 2 ** 30
                speed = (row.get("speedup", {}).get(key)
                         if tree == "current" else None)
                lines.append(
                    f"{row['num_params']:>10,} {key:<22} {tree:<8} "
                    f"{r['seconds'] * 1e3:>9.1f} "
                    f"{_fmt(_ms(r.get('cpu_seconds')), '8.1f')} "
                    f"{r['bound_seconds'] * 1e3:>8.1f} "
                    f"{_fmt(r.get('time_over_bound'), '7.2f')} "
                    f"{_fmt(r.get('time_over_adam'), '6.1f')} "
                    f"{_fmt(speed, '7.2f')} "
                    f"{r['state_bytes_per_param']:>7.1f} "
                    f"{r['traces']:>6} {rss:>8.2f}")
    unrolls = sorted({r["unroll_length"] for row in result["meta"]
                      for r in (row.get("current"), row.get("baseline")) if r})
    lines += ["", "meta-iteration (unroll of "
              f"{'/'.join(map(str, unrolls)) or '-'} + backward + phi's Adam "
              "step)",
              f"{'config':<10} {'tree':<8} {'coords':>8} {'ms':>9} {'cpu ms':>8} "
              f"{'bound ms':>8} {'t/bound':>7} {'speedup':>7} {'traces':>6} "
              f"{'peak GiB':>8}"]
    for row in result["meta"]:
        for tree in META_TREES:
            r = row.get(tree)
            if not r:
                continue
            speed = {"current": row.get("speedup"),
                     "current_tfops": row.get("speedup_tfops")}.get(tree)
            label = {"current_tfops": "tf ops"}.get(tree, tree)
            lines.append(
                f"{row['config']:<10} {label:<8} {r['coordinates']:>8,} "
                f"{r['seconds'] * 1e3:>9.1f} "
                f"{_fmt(_ms(r.get('cpu_seconds')), '8.1f')} "
                f"{r['bound_seconds'] * 1e3:>8.1f} "
                f"{_fmt(r['time_over_bound'], '7.2f')} {_fmt(speed, '7.2f')} "
                f"{r['traces']:>6} {r['peak_rss_bytes'] / 2 ** 30:>8.2f}")
    p = result.get("profile")
    if p:
        shapes = ", ".join(f"[n,{k}]x[{k},{m}]" for k, m in sorted(
            set(map(tuple, p["matmul_shapes"])), reverse=True))
        lines += [
            "", f"profile of one LSTM step, n = {p['coordinates']:,} "
            "(current tree)",
            f"  whole step (TF ops)        {p['step_seconds'] * 1e3:9.1f} ms",
            f"  whole step (fused, in place)"
            f"{_fmt(_ms(p.get('fused_step_seconds')), '9.1f')} ms"
            f"  {_fmt(p.get('fused_step_over_bound'), '.2f')} x its "
            "matmuls at the square rate",
            f"  its matmuls alone          {p['matmul_seconds'] * 1e3:9.1f} ms"
            f"  {p['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s = "
            f"{p['matmul_share_of_square_rate']:.2f} of the square rate "
            f"({shapes})",
            f"  one sigmoid over [n, h]    "
            f"{p['elementwise_seconds'] * 1e3:9.1f} ms"
            f"  {p['elementwise_bytes_per_s'] / 1e9:.1f} GB/s = "
            f"{p['elementwise_share_of_copy_bandwidth']:.2f} of the copy "
            "bandwidth",
            f"  step / matmuls alone       {p['step_over_matmuls']:9.2f} (TF "
            f"ops), {_fmt(p.get('fused_step_over_matmuls'), '.2f')} (fused)",
        ]
    return "\n".join(lines)

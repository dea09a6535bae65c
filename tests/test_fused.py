"""The fused CPU kernel: the same step as the TensorFlow ops, and where the
optimizer takes it."""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import (evaluation, fused, networks, problems, saved_model,
                    unroll)
from l2l_tf.optimizer import LearnedOptimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Where a C++ compiler exists the kernel must build (a failed build fails
# these tests rather than skipping them).
pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX") or "c++") is None,
    reason="no C++ compiler: the fused kernel cannot be built here")


def test_kernel_builds_and_loads():
    assert fused.unavailable_reason() is None


def _grads(n, seed=0):
    """Gradients over 16 orders of magnitude, both signs, exact zeros and
    values on both sides of log/sign's threshold e^-10."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 2, n)
    g[::7] = 0.0
    g[1::11] = np.exp(-10.0) * rng.choice([-1, 1], len(g[1::11]))
    return tf.constant(g.astype(np.float32))


def _random_state(rule, n, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return tuple(tf.cast(rng.normal(0, 0.7, s).astype(np.float32), dtype)
                 for s in rule.state_shapes(n))


def _phi(rule, seed):
    phi = rule.init_phi(seed)
    rng = np.random.default_rng(seed)
    # Non-zero biases and a larger output layer than the initialization's.
    phi = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32)
           for k, v in phi.items()}
    return {k: tf.constant(v) for k, v in phi.items()}


# Networks the parity tests run: the paper's, one layer, three layers
# without preprocessing, the widest layer.
NETWORKS = [
    {},  # The paper's: 2 x 20, log/sign.
    {"hidden_sizes": [40]},
    {"hidden_sizes": [7, 13, 5], "preprocess": "none", "output_scale": 0.5},
    {"hidden_sizes": [48, 3], "preprocess_p": 5.0},
]


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("n", [0, 1, 5, 1003])
def test_same_step_as_tensorflow_ops(network, n):
    rule = networks.CoordinatewiseLSTM(**network)
    phi = _phi(rule, seed=n + 2)
    grads = _grads(n)
    state = _random_state(rule, n, tf.float32)
    want_u, want_s = rule.step(phi, grads, state)
    got_u, got_s = fused.lstm_step(rule, phi, grads, state)
    assert got_u.shape == (n,) and len(got_s) == len(want_s)
    np.testing.assert_allclose(got_u, want_u, rtol=1e-5, atol=1e-6)
    for got, want in zip(got_s, want_s):
        assert got.shape == want.shape and got.dtype == tf.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_shipped_weights_and_bfloat16_state():
    """The default weights on bfloat16 state: the new state is the float32
    step's rounded to bfloat16, so it differs from the TF path's by at most
    one bfloat16 rounding (and mostly not at all)."""
    rule, phi, _ = saved_model.load("mnist_log_mean_10k")
    phi = {k: tf.constant(v) for k, v in phi.items()}
    n = 4099
    grads = _grads(n, seed=5)
    state = _random_state(rule, n, tf.bfloat16)
    want_u, want_s = rule.step(phi, grads, state)
    got_u, got_s = fused.lstm_step(rule, phi, grads, state)
    np.testing.assert_allclose(got_u, want_u, rtol=1e-5, atol=1e-6)
    for got, want in zip(got_s, want_s):
        assert got.dtype == tf.bfloat16
        got = tf.cast(got, tf.float32).numpy()
        want = tf.cast(want, tf.float32).numpy()
        # One bfloat16 ulp: 2^-7 of the value's binade; near 0, the
        # kernel's tanh(z) = 2 sigmoid(2z) - 1 is exact to ~6e-8 absolute.
        np.testing.assert_allclose(got, want, rtol=2.0**-7, atol=1e-7)
        assert np.mean(got == want) > 0.99


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_in_place_apply_equals_the_step(dtype):
    """L2lLstmApply writes what L2lLstmStep returns into the variables,
    over three steps: the first from buffers the variables share with the
    start tensors (the kernel writes new buffers then, never into a shared
    one), the next two in place. A read of a variable taken before the
    kernel keeps the old value."""
    rule = networks.CoordinatewiseLSTM()
    phi = _phi(rule, 4)
    n = 1001
    grads = [_grads(n, seed=9 + t) for t in range(3)]
    start = _random_state(rule, n, dtype, seed=3)
    want_u, want_s = [], start
    for g in grads:
        u, want_s = fused.lstm_step(rule, phi, g, want_s)
        want_u.append(u)
    variables = [tf.Variable(s) for s in start]

    @tf.function
    def apply_with_a_live_read(g):
        before = variables[1].read_value()
        updates = fused.lstm_apply(rule, phi, g, variables)
        with tf.control_dependencies([updates]):
            return updates, tf.identity(before)

    for live_read in (False, True):
        for v, s in zip(variables, start):
            v.assign(s)
        for t, g in enumerate(grads):
            if live_read:
                before = variables[1].numpy()
                updates, read = apply_with_a_live_read(g)
                np.testing.assert_array_equal(read, before)
            else:
                updates = fused.lstm_apply(rule, phi, g, variables)
            np.testing.assert_array_equal(updates, want_u[t])
        for v, want in zip(variables, want_s):
            np.testing.assert_array_equal(tf.cast(v, tf.float32),
                                          tf.cast(want, tf.float32))


def test_non_finite_gradients_stay_non_finite():
    """NaN in, NaN out (the optimizer skips such steps before the kernel
    runs; the kernel itself must not hide them)."""
    rule = networks.CoordinatewiseLSTM()
    phi = _phi(rule, 0)
    grads = tf.constant([np.nan, 1.0, 0.0, -np.inf], tf.float32)
    state = rule.init_state(4)
    updates, new_state = fused.lstm_step(rule, phi, grads, state)
    assert np.isnan(updates[0]) and np.isfinite(updates[1:3]).all()
    assert np.isnan(new_state[1][0]).all()


def test_bad_shapes_name_the_argument():
    rule = networks.CoordinatewiseLSTM()
    phi = _phi(rule, 0)
    state = rule.init_state(3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"state\[2\]"):
        fused.lstm_step(rule, phi, tf.zeros([3]),
                        state[:2] + (tf.zeros([4, 20]),) + state[3:])
    bad = dict(phi)
    bad["lstm_1/kernel"] = tf.zeros([41, 80])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"kernels\[1\]"):
        fused.lstm_step(rule, bad, tf.zeros([3]), state)


def test_unsupported_networks_are_named():
    assert fused.unsupported_reason(networks.CoordinatewiseLSTM()) is None
    assert "log_sign_adam" in fused.unsupported_reason(
        networks.CoordinatewiseLSTM(preprocess="log_sign_adam"))
    assert "49" in fused.unsupported_reason(
        networks.CoordinatewiseLSTM(hidden_sizes=(49,)))
    assert "float16" in fused.unsupported_reason(
        networks.CoordinatewiseLSTM(), tf.float16)
    assert "not the LSTM" in fused.unsupported_reason(networks.Adam())


def _ops_of_update(opt, variables, jit_compile=False):
    opt.build(variables)
    grads = [tf.ones_like(v) * 1e-3 for v in variables]
    fn = tf.function(lambda: opt.apply(grads, variables),
                     jit_compile=jit_compile)
    graph = fn.get_concrete_function().graph
    types = set()
    for op in graph.get_operations():
        types.add(op.type)
        for f in op.graph._functions.values():  # pylint: disable=protected-access
            types.update(o.type for o in f.graph.get_operations())
    return types, fn


def _variables():
    return [keras.Variable(np.full([30, 20], 0.1, np.float32), name="w"),
            keras.Variable(np.zeros([20], np.float32), name="b")]


def test_optimizer_takes_the_kernel_where_it_runs():
    types, _ = _ops_of_update(LearnedOptimizer(), _variables())
    assert "L2lLstmApply" in types
    types, _ = _ops_of_update(LearnedOptimizer(fused=False), _variables())
    assert "L2lLstmApply" not in types and "MatMul" in types


def test_jit_compile_falls_back_to_tensorflow_ops():
    variables = _variables()
    opt = LearnedOptimizer()
    _, fn = _ops_of_update(opt, variables, jit_compile=True)
    fn()  # XLA compiles it: no fused op inside.
    reference = _variables()
    ref_opt = LearnedOptimizer(fused=False)
    ref_opt.apply([tf.ones_like(v) * 1e-3 for v in reference], reference)
    for got, want in zip(variables, reference):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5,
                                   atol=1e-7)
    with pytest.raises(ValueError, match="jit_compile"):
        _ops_of_update(LearnedOptimizer(fused=True), _variables(),
                       jit_compile=True)


def test_fused_argument_is_checked():
    with pytest.raises(ValueError, match="fused.*Received: fused='yes'"):
        LearnedOptimizer(fused="yes")
    with pytest.raises(ValueError, match="Received: fused=1"):
        LearnedOptimizer(fused=1)  # 1 == True, but not a bool.
    with pytest.warns(UserWarning, match="not found"), pytest.raises(
            ValueError, match="fused=True.*log_sign_adam"):
        LearnedOptimizer(network={"preprocess": "log_sign_adam"},
                         weights="/nonexistent", fused=True)
    opt = LearnedOptimizer(fused=False)
    assert opt.get_config()["fused"] is False
    assert LearnedOptimizer.from_config(opt.get_config()).fused is False


def test_model_fit_fused_equals_tensorflow_ops():
    """Ten steps of model.fit, fused and on the TF ops: the same losses and
    weights to float32 rounding. With bfloat16 state a float32 difference
    can flip a state value's rounding (one bfloat16 ulp), which moves a few
    weights by up to ~1e-3 of their size after ten steps."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (320, 784)).astype(np.float32)
    y = rng.integers(0, 10, 320)
    for state_dtype in ("float32", "bfloat16"):
        runs = []
        for use_fused in (True, False):
            keras.utils.set_random_seed(3)
            model = keras.Sequential([
                keras.Input((784,)),
                keras.layers.Dense(20, activation="sigmoid"),
                keras.layers.Dense(10)])
            model.compile(
                optimizer=LearnedOptimizer(fused=use_fused,
                                           state_dtype=state_dtype),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
            history = model.fit(x, y, batch_size=32, shuffle=False,
                                verbose=0)
            runs.append((history.history["loss"], model.get_weights()))
        (loss_f, w_f), (loss_t, w_t) = runs
        np.testing.assert_allclose(loss_f, loss_t, rtol=1e-4)
        atol = 1e-5 if state_dtype == "float32" else 1e-3
        for a, b in zip(w_f, w_t):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)


# ---------------------------------------------------------------------------
# Validation and evaluation runs.


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_runs_on_the_kernel_equal_tensorflow_ops(state_dtype, monkeypatch):
    """unroll.make_run_fn and evaluation.evaluate step on the kernel by
    default, to the TF ops' losses; one trace for every seed."""
    traced = []
    step = fused.Forward.step
    monkeypatch.setattr(fused.Forward, "step",
                        lambda self, *args: traced.append(1) or step(self, *args))
    problem = problems.Quadratic(dim=10, num_functions=4)
    rule, phi, _ = saved_model.load("quadratic")
    dtype = tf.as_dtype(state_dtype)
    on_kernel = unroll.make_run_fn(rule, problem, 20, dtype)
    on_ops = unroll.make_run_fn(rule, problem, 20, dtype, fused=False)
    assert on_kernel.fused and not on_ops.fused
    phi_t = {k: tf.constant(v) for k, v in phi.items()}
    seeds = evaluation.seeds(evaluation.TEST_SEED_BASE, 3)  # evaluate's.
    got = evaluation.run_curves(on_kernel, phi_t, seeds)
    want = evaluation.run_curves(on_ops, phi_t, seeds)
    assert on_kernel.experimental_get_tracing_count() == 1
    assert len(traced) == 1  # The kernel run's one trace; none for on_ops.
    assert np.all(np.isfinite(want)) and want[:, -1].mean() < want[:, 0].mean()
    # The same step to float32 rounding (test_same_step_as_tensorflow_ops:
    # along these trajectories, updates within 6e-8); the trajectories then
    # amplify the rounding (measured: 2e-7 over the first 5 steps, up to
    # 7e-3 from step 6, where TF's own graph and eager runs differ by 4e-5).
    np.testing.assert_allclose(
        got[:, :6], want[:, :6],
        rtol=2e-5 if state_dtype == "float32" else 2e-4)
    np.testing.assert_allclose(got, want, rtol=5e-2)
    for fused_arg in (None, False):
        results = evaluation.evaluate(
            problem, None, {"learned": (rule, phi)}, horizons=[20],
            num_seeds=3, baselines=(), state_dtype=state_dtype,
            fused=fused_arg)
        entry = results["optimizers"]["learned"]
        assert entry["fused"] == (fused_arg is None)
        curves = np.array(entry["curves"])
        assert curves.shape == want.shape
        np.testing.assert_allclose(
            curves, got if fused_arg is None else want, rtol=1e-6)


def test_runs_fused_argument():
    problem = problems.Quadratic(dim=3, num_functions=2)
    assert not unroll.make_run_fn(networks.SGD(), problem, 2).fused
    with pytest.raises(ValueError, match=r"fused=True.*SGD.*not the LSTM"):
        unroll.make_run_fn(networks.SGD(), problem, 2, fused=True)
    with pytest.raises(ValueError, match="Received: fused='yes'"):
        unroll.make_run_fn(networks.CoordinatewiseLSTM(), problem, 2,
                           fused="yes")
    rule = networks.CoordinatewiseLSTM(preprocess="log_sign_adam")
    with pytest.raises(ValueError, match="log_sign_adam"):
        unroll.make_run_fn(rule, problem, 2, fused=True)
    assert not unroll.make_run_fn(rule, problem, 2).fused
    with pytest.raises(ValueError, match=r"fused=True.*'learned'"):
        evaluation.evaluate(problem, None, {"learned": (rule, {})},
                            horizons=[2], baselines=(), fused=True)


def test_evaluate_binary_fused_on_where_it_cannot_run(tmp_path):
    """--fused=on without the kernel: exit 2 with the reason, before any
    evaluation (nothing written)."""
    workdir = tmp_path / "eval"
    env = dict(os.environ, L2L_TF_FUSED="0", PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "train.evaluate",
         "--config=configs/quadratic.py", "--weights=quadratic",
         f"--workdir={workdir}", "--fused=on"],
        env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "`fused=True`" in proc.stderr and "L2L_TF_FUSED=0" in proc.stderr
    assert "'learned'" in proc.stderr and "Traceback" not in proc.stderr
    assert not workdir.exists()


def test_build_errors_and_switch_off(tmp_path):
    """Without a compiler the reason names it; L2L_TF_FUSED=0 turns the
    kernel off (and the optimizer still trains, on the TF ops). Fresh
    processes, so that this process's loaded kernel is not in the way."""
    code = ("import warnings\n"
            "from l2l_tf import fused\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    print(fused.unavailable_reason())\n"
            "print('warned at', [x.filename for x in w])\n")
    env = dict(os.environ, L2L_TF_KERNEL_CACHE=str(tmp_path / "cache"),
               CXX="/nonexistent/c++", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "no C++ compiler: '/nonexistent/c++'" in out
    assert "warned at ['<string>']" in out  # The caller's line, not ours.
    code = "from l2l_tf import fused; print(fused.unavailable_reason())"
    (tmp_path / "a_file").write_text("")
    env = dict(os.environ, PYTHONPATH=REPO,
               L2L_TF_KERNEL_CACHE=str(tmp_path / "a_file" / "cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "cannot be made" in out and "L2L_TF_KERNEL_CACHE" in out
    code = ("import numpy as np, tensorflow as tf\n"
            "from l2l_tf import fused, LearnedOptimizer\n"
            "print(fused.unavailable_reason())\n"
            "v = [tf.Variable(tf.ones([5]))]\n"
            "LearnedOptimizer().apply([tf.ones([5])], v)\n"
            "print(np.isfinite(v[0].numpy()).all(), (v[0].numpy() != 1).all())")
    env = dict(os.environ, L2L_TF_FUSED="0", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "L2L_TF_FUSED=0" in out and "True True" in out


def test_a_cache_that_cannot_be_written_falls_back(tmp_path):
    """A cache folder that exists but takes no files (here: a folder where
    the lock file goes): the reason names the cache, the default optimizer
    trains on the TF ops, fused=True says why it cannot."""
    cache = tmp_path / "cache"
    key = fused._build_key(fused._compiler())
    (cache / f"lstm_step_{key}.so.lock").mkdir(parents=True)
    code = ("import numpy as np, tensorflow as tf\n"
            "from l2l_tf import fused, LearnedOptimizer\n"
            "print(fused.unavailable_reason())\n"
            "v = [tf.Variable(tf.ones([5]))]\n"
            "LearnedOptimizer().apply([tf.ones([5])], v)\n"
            "print(np.isfinite(v[0].numpy()).all(), (v[0].numpy() != 1).all())\n"
            "try:\n"
            "    LearnedOptimizer(fused=True)\n"
            "except ValueError as e:\n"
            "    print('ValueError:', e)\n")
    env = dict(os.environ, L2L_TF_KERNEL_CACHE=str(cache), PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert f"the kernel cache '{cache}' cannot be written" in out
    assert "True True" in out
    assert "ValueError: `fused=True`, but the fused kernel cannot run this " \
           "optimizer: the kernel cache" in out
    assert os.listdir(cache) == [f"lstm_step_{key}.so.lock"]


def test_build_is_cached():
    path = fused.build()
    assert os.path.exists(path) and fused.build() == path


def test_a_damaged_cached_library_is_rebuilt(tmp_path):
    """A cached library cut short (loading such a file can kill the process
    with SIGBUS) or missing its digest is built again before it is loaded."""
    built = fused.build()
    for damage in ("truncated", "no digest"):
        cache = tmp_path / damage.replace(" ", "_")
        cache.mkdir()
        library = cache / os.path.basename(built)
        data = open(built, "rb").read()
        if damage == "truncated":
            library.write_bytes(data[:50_000])
            (cache / (library.name + ".sha256")).write_text(
                open(built + ".sha256").read())
        else:
            library.write_bytes(data)
        code = "from l2l_tf import fused; print(fused.unavailable_reason())"
        env = dict(os.environ, L2L_TF_KERNEL_CACHE=str(cache),
                   PYTHONPATH=REPO)
        out = subprocess.run([sys.executable, "-c", code], env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == "None", (
            damage, out.returncode, out.stderr[-2000:])
        assert library.stat().st_size == len(data), damage


def test_portable_path_without_avx512(tmp_path):
    """The kernel built without AVX-512 (its plain C++ path, which machines
    without AVX-512 run) computes the same step, and the same gradient, as
    the TF ops."""
    code = (
        "import numpy as np, tensorflow as tf\n"
        "from l2l_tf import fused, networks\n"
        "assert fused.unavailable_reason() is None, fused.unavailable_reason()\n"
        "for network, dtype in [({}, tf.float32), ({}, tf.bfloat16),\n"
        "                       ({'hidden_sizes': [7, 13]}, tf.float32)]:\n"
        "    rule = networks.CoordinatewiseLSTM(**network)\n"
        "    phi = {k: tf.constant(v) for k, v in rule.init_phi(1).items()}\n"
        "    rng = np.random.default_rng(0)\n"
        "    g = tf.constant((rng.standard_normal(1003) * 10.0 ** rng.uniform(\n"
        "        -12, 1, 1003)).astype(np.float32))\n"
        "    s = tuple(tf.cast(rng.normal(0, .7, sh).astype(np.float32), dtype)\n"
        "              for sh in rule.state_shapes(1003))\n"
        "    (u1, s1), (u2, s2) = rule.step(phi, g, s), fused.lstm_step(\n"
        "        rule, phi, g, s)\n"
        "    np.testing.assert_allclose(u2, u1, rtol=1e-5, atol=1e-6)\n"
        "    for a, b in zip(s2, s1):\n"
        "        np.testing.assert_allclose(tf.cast(a, tf.float32),\n"
        "                                   tf.cast(b, tf.float32),\n"
        "                                   rtol=2.0 ** -7, atol=1e-6)\n"
        "    # The gradient (float32 state): phi's and the state's.\n"
        "    if dtype == tf.bfloat16: continue\n"
        "    grads = []\n"
        "    for step in (rule.step, lambda p, g, s: fused.lstm_step(\n"
        "            rule, p, g, s, differentiable=True)):\n"
        "        v = {k: tf.Variable(x) for k, x in phi.items()}\n"
        "        with tf.GradientTape() as tape:\n"
        "            tape.watch(s)\n"
        "            u, ns = step(v, g, s)\n"
        "            loss = tf.reduce_sum(u * u) + sum(\n"
        "                tf.reduce_sum(x * x) for x in ns)\n"
        "        grads.append(tape.gradient(loss, [*s, *v.values()]))\n"
        "    for a, b in zip(*grads):\n"
        "        np.testing.assert_allclose(b, a, rtol=1e-4,\n"
        "            atol=1e-5 * float(np.max(np.abs(a))))\n"
        "print('same')\n")
    env = dict(os.environ, L2L_TF_KERNEL_CACHE=str(tmp_path / "cache"),
               L2L_TF_KERNEL_FLAGS="-mno-avx512f", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "same" in out.stdout, out.stderr[-3000:]

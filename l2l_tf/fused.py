"""The fused CPU kernel of the LSTM step (l2l_tf/kernels/lstm_step.cc).

`CoordinatewiseLSTM.step` written with TensorFlow ops runs about twenty
ops, each a pass over [n, 20] through memory. The custom op `L2lLstmStep`
computes the same step, for each group of coordinates through the whole
network at once, with the weights in L1 (BUILD.md has the measurements).
It computes what `step` computes, to float32 rounding (tested), for the
preprocessors "log_sign" and "none", hidden sizes up to 48 and float32 or
bfloat16 state. It serves the Keras optimizer's update, where
`L2lLstmApply` also writes the new state into the state variables in
place, and meta-training: with `save=True` (`lstm_step(...,
differentiable=True)`) the step keeps its gates and tanh(c), from which
`L2lLstmStepGrad` computes the gradients of its inputs (registered as its
gradient, so a GradientTape differentiates it). Validation and
evaluation runs (`unroll.make_run_fn`) step with it too (`Forward`);
`choose` decides, for all of them, whether a run takes it.

The kernel is compiled from source on first use, against the installed
TensorFlow, for this machine's processor (`-march=native`), with the C++
compiler in `$CXX` (else `c++`) and any extra flags in
`$L2L_TF_KERNEL_FLAGS`, and cached under `$L2L_TF_KERNEL_CACHE`
(default `~/.cache/l2l_tf/kernels`) keyed by the source, the TensorFlow
version, the compiler and the processor. Without a compiler, or with
`L2L_TF_FUSED=0`, everything runs on the TensorFlow ops.
"""

import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import warnings
from typing import Optional

import tensorflow as tf
from tensorflow.python.framework import ops as _ops
from tensorflow.python.ops import control_flow_util as _cf_util

from l2l_tf import atomic

SOURCE = os.path.join(os.path.dirname(__file__), "kernels", "lstm_step.cc")
PREPROCESSORS = ("log_sign", "none")
MAX_HIDDEN = 48
STATE_DTYPES = (tf.float32, tf.bfloat16)
_FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-w",
          "-shared", "-fPIC")


def _flags():
    """The compiler flags, with `$L2L_TF_KERNEL_FLAGS` last (for instance
    "-mno-avx512f" builds the kernel's portable path)."""
    return _FLAGS + tuple(os.environ.get("L2L_TF_KERNEL_FLAGS", "").split())


class Unavailable(RuntimeError):
    """The fused kernel cannot be built or loaded here (the message says
    why)."""


def cache_dir() -> str:
    return os.environ.get("L2L_TF_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME")
        or os.path.join(os.path.expanduser("~"), ".cache"),
        "l2l_tf", "kernels")


def _compiler() -> str:
    cxx = os.environ.get("CXX") or "c++"
    path = shutil.which(cxx)
    if path is None:
        raise Unavailable(f"no C++ compiler: {cxx!r} is not on PATH (set CXX "
                          "or install g++)")
    return path


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _build_key(cxx: str) -> str:
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True,
                                 text=True, check=False).stdout
    except OSError as e:
        raise Unavailable(f"the C++ compiler {cxx!r} does not run: {e}") from e
    h = hashlib.sha256()
    with open(SOURCE, "rb") as f:
        h.update(f.read())
    for part in (tf.__version__, tf.sysconfig.get_include(), version,
                 _cpu_flags(), " ".join(_flags())):
        h.update(part.encode())
    return h.hexdigest()[:16]


def build(verbose: bool = False) -> str:
    """Compiles the kernel unless it is cached; returns the library's path.

    Raises `Unavailable` with the compiler's message when it fails.
    """
    cxx = _compiler()
    folder = cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise Unavailable(f"the kernel cache {folder!r} cannot be made: {e} "
                          "(set L2L_TF_KERNEL_CACHE to a writable folder)"
                          ) from e
    library = os.path.join(folder, f"lstm_step_{_build_key(cxx)}.so")
    if _intact(library):
        return library
    try:
        return _compile(cxx, folder, library, verbose)
    except OSError as e:  # A cache that exists but cannot be written.
        raise Unavailable(f"the kernel cache {folder!r} cannot be written: "
                          f"{e} (set L2L_TF_KERNEL_CACHE to a writable "
                          "folder)") from e


def _compile(cxx: str, folder: str, library: str, verbose: bool) -> str:
    # One process compiles; the others wait for it and use its library.
    with open(library + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _intact(library):
            return library
        logging.getLogger(__name__).info(
            "Compiling l2l_tf's fused LSTM kernel (once, cached in %s).",
            folder)
        with atomic.temp_file(library, suffix=".so") as tmp:
            command = ([cxx, *_flags(), *tf.sysconfig.get_compile_flags(),
                        SOURCE, "-o", tmp, *tf.sysconfig.get_link_flags()])
            if verbose:
                print(" ".join(command))
            try:
                done = subprocess.run(command, capture_output=True,
                                      text=True, check=False)
            except OSError as e:
                raise Unavailable(f"running the compiler {cxx!r} failed: "
                                  f"{e}") from e
            if done.returncode:
                raise Unavailable(
                    f"compiling {SOURCE} failed ({' '.join(command)}):\n"
                    + done.stderr[-4000:])
            digest = _sha256(tmp)
        # The digest is written after the library is in place: a library
        # without it (or with another) is built again before it is loaded,
        # since loading a damaged one can kill the process.
        atomic.write_text(library + ".sha256", digest)
    return library


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _intact(library: str) -> bool:
    """Whether `library` is there and is what l2l_tf built."""
    try:
        with open(library + ".sha256") as f:
            return f.read().strip() == _sha256(library)
    except OSError:
        return False


_LOADED = {}  # "module" or "error": one build attempt a process.


def _user_stacklevel() -> int:
    """The `stacklevel` that points a warning issued by this function's
    caller at the first frame outside l2l_tf, Keras and TensorFlow: the
    user's line (or the outermost frame)."""
    import keras  # pylint: disable=import-outside-toplevel
    skip = tuple(os.path.dirname(m.__file__) for m in (atomic, keras, tf))
    frame, level = sys._getframe(1), 1  # pylint: disable=protected-access
    while frame.f_back is not None and frame.f_code.co_filename.startswith(
            skip):
        frame, level = frame.f_back, level + 1
    return level


def _load():
    if os.environ.get("L2L_TF_FUSED", "1") == "0":
        raise Unavailable("L2L_TF_FUSED=0 turns the fused kernel off")
    if "error" in _LOADED:
        raise _LOADED["error"]
    if "module" not in _LOADED:
        try:
            library = build()
            try:
                _LOADED["module"] = tf.load_op_library(library)
            except (tf.errors.NotFoundError, OSError) as e:
                raise Unavailable(f"loading {library} failed: {e} (delete "
                                  "it to build it again)") from e
        except Unavailable as e:
            _LOADED["error"] = e
            warnings.warn(f"l2l_tf: the fused LSTM kernel is unavailable, "
                          f"so l2l_tf's LSTM steps run on TensorFlow ops "
                          f"(about 1.5x slower on a CPU): {e}",
                          stacklevel=_user_stacklevel())
            raise
    return _LOADED["module"]


def load():
    """The compiled op module (built on first use); raises `Unavailable`.
    A failed build is not retried in the same process."""
    return _load()


def unavailable_reason() -> Optional[str]:
    """None where the kernel loads; else why it does not."""
    try:
        load()
    except Unavailable as e:
        return str(e)
    return None


def unsupported_reason(rule, state_dtype=tf.float32) -> Optional[str]:
    """None where the kernel computes `rule`'s step with state in
    `state_dtype`; else what it does not support."""
    if getattr(rule, "name", None) != "lstm":
        return f"the rule {rule!r} is not the LSTM"
    if rule.preprocess not in PREPROCESSORS:
        return (f"preprocess={rule.preprocess!r} (fused: "
                f"{', '.join(PREPROCESSORS)})")
    if max(rule.hidden_sizes) > MAX_HIDDEN:
        return (f"hidden_sizes={list(rule.hidden_sizes)} (fused: up to "
                f"{MAX_HIDDEN} units)")
    if tf.as_dtype(state_dtype) not in STATE_DTYPES:
        return f"state dtype {tf.as_dtype(state_dtype).name}"
    return None


def in_xla_context() -> bool:
    """Whether ops traced now are compiled by XLA (jit_compile=True), which
    has no kernel for the fused op."""
    return _cf_util.GraphOrParentsInXlaContext(_ops.get_default_graph())


def has_gpus() -> bool:
    """Whether this process sees GPUs, where the TensorFlow ops run on them
    (the fused kernel is CPU-only)."""
    return bool(tf.config.list_logical_devices("GPU"))


def choose(rule, fused: Optional[bool], state_dtype=tf.float32,
           what: str = "this run") -> bool:
    """Whether `what` steps `rule` on the fused kernel.

    `fused`: None takes it where it runs (a supported CoordinatewiseLSTM,
    the kernel built, no GPUs, where the TensorFlow ops would run on them);
    True takes it or raises a ValueError that says why it cannot; False
    never takes it.
    """
    check_argument(fused)
    if fused is False:
        return False
    if fused is None:
        return reason_not_taken(rule, state_dtype) is None
    reason = unsupported_reason(rule, state_dtype) or unavailable_reason()
    if reason:
        raise ValueError(f"`fused=True`, but the fused kernel cannot run "
                         f"{what}: {reason}.")
    return True


def check_argument(fused):
    """Raises a ValueError unless `fused` is None, True or False (not 1)."""
    if fused is not None and not isinstance(fused, bool):
        raise ValueError("`fused` must be None (where it runs), True or "
                         f"False. Received: fused={fused!r}")


def reason_not_taken(rule, state_dtype=tf.float32) -> Optional[str]:
    """Why `choose(rule, None, state_dtype)` does not take the kernel; None
    where it does."""
    reason = unsupported_reason(rule, state_dtype) or unavailable_reason()
    if reason is None and has_gpus():
        reason = "GPUs are present (the fused kernel is CPU-only)"
    return reason


def _weights_and_attrs(rule, phi):
    """The ops' weight inputs (kernels, biases, output kernel and bias) and
    the network's attributes, the same for both ops."""
    layers = range(len(rule.hidden_sizes))
    weights = ([phi[f"lstm_{l}/kernel"] for l in layers],
               [phi[f"lstm_{l}/bias"] for l in layers],
               phi["output/kernel"], phi["output/bias"])
    attrs = dict(preprocess=rule.preprocess, p=rule.preprocess_p,
                 output_scale=rule.output_scale)
    return weights, attrs


def lstm_step(rule, phi, grads, state, differentiable: bool = False):
    """`rule.step(phi, grads, state)` through the fused kernel: (updates [n]
    float32, new state in the dtype it came in).

    With `differentiable`, the step also keeps the activations its gradient
    needs (5h floats a coordinate and layer, until the gradient is taken),
    and a GradientTape differentiates it with `L2lLstmStepGrad` with
    respect to the state, phi and the gradients. Without it, the step cannot
    be differentiated (a tape raises an error that says so).
    """
    weights, attrs = _weights_and_attrs(rule, phi)
    updates, new_state, _ = load().l2l_lstm_step(
        tf.cast(grads, tf.float32), list(state), *weights,
        save=bool(differentiable), **attrs)
    return updates, tuple(new_state)


class Forward:
    """`rule` (a CoordinatewiseLSTM) with its step on the fused kernel
    (`lstm_step`); everything else is `rule`'s. Validation and evaluation
    runs step with it. Its step cannot be differentiated: `Differentiable`
    can."""

    differentiable = False

    def __init__(self, rule, state_dtype=tf.float32):
        reason = unsupported_reason(rule, state_dtype)
        if reason:
            raise ValueError(f"The fused kernel cannot run {rule!r}: "
                             f"{reason}.")
        self.rule = rule

    def step(self, phi, grads, state):
        return lstm_step(self.rule, phi, grads, state,
                         differentiable=self.differentiable)

    def __getattr__(self, name):
        return getattr(self.rule, name)

    def __repr__(self):
        return f"fused.{type(self).__name__}({self.rule!r})"


class Differentiable(Forward):
    """`rule` with its step on the fused kernel, differentiable
    (`lstm_step(..., differentiable=True)`). Meta-training unrolls with
    it."""

    differentiable = True


@_ops.RegisterGradient("L2lLstmStep")
def _lstm_step_grad(op, d_updates, *d_outputs):
    """The gradients of L2lLstmStep's inputs, by L2lLstmStepGrad."""
    if not op.get_attr("save"):
        raise ValueError(
            "The fused LSTM step was run without the activations its "
            "gradient needs: call l2l_tf.fused.lstm_step(..., "
            "differentiable=True) to differentiate it.")
    num_state = op.get_attr("num_state")
    num_layers = op.get_attr("num_layers")
    inputs = list(op.inputs)
    grads, state = inputs[0], inputs[1:1 + num_state]
    kernels = inputs[1 + num_state:1 + num_state + num_layers]
    out_kernel, out_bias = inputs[-2], inputs[-1]
    if d_updates is None:
        d_updates = tf.zeros_like(op.outputs[0])
    d_new_state = [tf.zeros_like(op.outputs[1 + s]) if d is None else d
                   for s, d in enumerate(d_outputs[:num_state])]
    (d_grads, d_state, d_kernels, d_biases, d_out_kernel,
     d_out_bias) = load().l2l_lstm_step_grad(
         grads, state, op.outputs[-1], kernels, out_kernel, d_updates,
         d_new_state, preprocess=op.get_attr("preprocess"),
         p=op.get_attr("p"), output_scale=op.get_attr("output_scale"))
    return ([d_grads, *d_state, *d_kernels, *d_biases, d_out_kernel,
             tf.reshape(d_out_bias, tf.shape(out_bias))])


def lstm_apply(rule, phi, grads, state_variables):
    """`lstm_step` with the new state written into `state_variables` (the
    tf.Variables holding the state, in `rule.state_shapes` order) in place:
    no new state buffers, and half the peak state memory. Returns the
    updates [n] float32."""
    weights, attrs = _weights_and_attrs(rule, phi)
    return load().l2l_lstm_apply(
        tf.cast(grads, tf.float32), [v.handle for v in state_variables],
        *weights, S=state_variables[0].dtype, **attrs)

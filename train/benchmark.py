"""Measures what the learned optimizer costs here, against this machine's bounds.

    python -m train.benchmark --out=/tmp/l2l/benchmark.json
    # Against the commit before a change, in the same run:
    git worktree add /tmp/l2l/before <commit>
    python -m train.benchmark --baseline_src=/tmp/l2l/before \
        --out=/tmp/l2l/benchmark.json

Prints a table and writes JSON; BUILD.md explains how to read it. The
counts and bounds are in l2l_tf/benchmark.py.
"""

import os

from absl import app, flags, logging

from l2l_tf import atomic, benchmark

_OUT = flags.DEFINE_string("out", None, "Where the JSON result is written.")
_SIZES = flags.DEFINE_list(
    "sizes", ["100000", "1000000", "10000000"],
    "Approximate parameter counts of the MLPs whose update is timed.")
_META = flags.DEFINE_list(
    "meta", ["quadratic", "mnist"],
    "Configs (configs/<name>.py) whose meta-iteration is timed; empty: none.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per row (median).")
_BASELINE = flags.DEFINE_string(
    "baseline_src", None,
    "A checkout of another commit, measured row by row in the same run.")
_ISOLATE = flags.DEFINE_bool(
    "isolate", True, "Measure every row in a fresh subprocess.")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Tiny sizes, for a smoke test: a 2,395-parameter MLP, a "
    "256^2 matmul, an 8 MB copy, 2-step unrolls of the quadratics.")
_STATE_DTYPES = flags.DEFINE_list(
    "state_dtypes", ["float32", "bfloat16"],
    "LearnedOptimizer state dtypes measured on the current tree (the "
    "baseline runs its default).")
_JIT = flags.DEFINE_list(
    "jit", ["false", "true"], "jit_compile settings of the update rows.")
_PROFILE = flags.DEFINE_integer(
    "profile_size", 1_000_000,
    "Coordinates of the LSTM step profile (its matmuls alone, one "
    "element-wise pass); 0: no profile.")
_META_ROUNDS = flags.DEFINE_integer(
    "meta_rounds", 3,
    "Rounds of the meta-iteration rows, each timing every tree in turn; a "
    "row reports its median round.")
_TFOPS = flags.DEFINE_bool(
    "tfops", True,
    "Also time the learned optimizer on TensorFlow ops (fused=False), next "
    "to its default (the fused CPU kernel where it runs).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    jit = []
    for value in _JIT.value:
        if value.lower() not in ("true", "false"):
            raise app.UsageError(f"--jit takes true/false. Received: {value!r}")
        jit.append(value.lower() == "true")
    kwargs = dict(sizes=[int(s) for s in _SIZES.value],
                  meta_configs=[m for m in _META.value if m],
                  repeats=_REPEATS.value, baseline_src=_BASELINE.value,
                  isolate=_ISOLATE.value, jit=jit,
                  state_dtypes=[d for d in _STATE_DTYPES.value if d],
                  profile_size=_PROFILE.value or None,
                  tfops=_TFOPS.value, meta_rounds=_META_ROUNDS.value,
                  log=logging.info)
    if _QUICK.value:
        kwargs.update(benchmark.QUICK)
    result = benchmark.run(**kwargs)
    print(benchmark.format_table(result))
    if _OUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)),
                    exist_ok=True)
        atomic.write_json(result, _OUT.value, indent=2)
        print(f"\nWritten: {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

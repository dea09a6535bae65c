"""Measures what the learned optimizer costs here, against this machine's bounds.

    python -m train.benchmark --out=/tmp/l2l/benchmark.json
    # Against the commit before a change, in the same run:
    git worktree add /tmp/l2l/before <commit>
    python -m train.benchmark --baseline_src=/tmp/l2l/before \
        --out=/tmp/l2l/benchmark.json

Prints a table and writes JSON; BUILD.md explains how to read it. The
counts and bounds are in l2l_tf/benchmark.py. A bad flag value ends it with
its message (exit status 2) before anything is measured.
"""

import os
import tempfile

from absl import app, flags, logging

from l2l_tf import atomic, benchmark, networks
from train import _cli

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


def run_kwargs(sizes, meta, repeats, baseline_src, state_dtypes, jit,
               profile_size, meta_rounds, out) -> dict:
    """benchmark.run's arguments from the flags' values, every one checked
    before anything is measured: a ValueError names the flag and the value
    received. --out's folder is made and written to here, since the JSON
    is written only at the end of the run."""
    def bad(flag, value, why):
        if isinstance(value, list):
            value = ",".join(value)
        return ValueError(f"--{flag} {why}. Received: --{flag}={value}")

    smallest = benchmark.mlp_min_params()
    try:
        counts = [int(s) for s in sizes]
    except ValueError:
        counts = None
    if counts is None or any(n < smallest for n in counts):
        raise bad("sizes", sizes, "takes whole parameter counts, each at "
                  f"least {smallest} (a 784-1-10 MLP)")
    meta_configs = [m for m in meta if m]
    if baseline_src is not None and not os.path.isdir(
            os.path.join(baseline_src, "l2l_tf")):
        raise bad("baseline_src", baseline_src,
                  "must be a checkout of this repository (a folder with "
                  "l2l_tf/ in it)")
    for name in meta_configs:
        for src in (None, baseline_src) if baseline_src else (None,):
            path = benchmark.config_path(src, name)
            if not os.path.isfile(path):
                raise bad("meta", meta, "takes names of configs/<name>.py "
                          f"in every measured tree; {path} does not exist")
    for flag, value, least in (("repeats", repeats, 1),
                               ("meta_rounds", meta_rounds, 1),
                               ("profile_size", profile_size, 0)):
        if value < least:
            raise bad(flag, value, f"must be at least {least}")
    dtypes = [d for d in state_dtypes if d]
    if any(d not in networks.STATE_DTYPES for d in dtypes):
        raise bad("state_dtypes", state_dtypes,
                  f"takes {' and '.join(networks.STATE_DTYPES)}")
    if any(v.lower() not in ("true", "false") for v in jit):
        raise bad("jit", jit, "takes true and false")
    if out:
        if os.path.isdir(out):
            raise bad("out", out, "must be a file's path, not a folder")
        folder = os.path.dirname(os.path.abspath(out))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise bad("out", out, f"needs its folder {folder}, which cannot "
                      f"be made ({e.strerror})") from None
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise bad("out", out, "needs a folder that takes new files; "
                      f"{folder} does not ({e.strerror})") from None
    return dict(sizes=counts, meta_configs=meta_configs, repeats=repeats,
                baseline_src=baseline_src, state_dtypes=dtypes,
                jit=[v.lower() == "true" for v in jit],
                profile_size=profile_size or None, meta_rounds=meta_rounds)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # A bad flag ends the run with its message (exit 2) before any row.
    kwargs = _cli.checked(
        run_kwargs, sizes=_SIZES.value, meta=_META.value,
        repeats=_REPEATS.value, baseline_src=_BASELINE.value,
        state_dtypes=_STATE_DTYPES.value, jit=_JIT.value,
        profile_size=_PROFILE.value, meta_rounds=_META_ROUNDS.value,
        out=_OUT.value)
    kwargs.update(isolate=_ISOLATE.value, tfops=_TFOPS.value,
                  log=logging.info)
    if _QUICK.value:
        kwargs.update(benchmark.QUICK)
    result = benchmark.run(**kwargs)
    print(benchmark.format_table(result))
    if _OUT.value:
        atomic.write_json(result, _OUT.value, indent=2)
        print(f"\nWritten: {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

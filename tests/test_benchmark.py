"""The benchmark's counts, bounds and ratios by hand, and a tiny run.

Timings are never asserted: only that every row runs, traces once, and
that the arithmetic on its numbers is right.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from l2l_tf import benchmark, fused, problems


def test_lstm_counts_by_hand():
    # Layer 1: [x (2), h (20)] x [22, 80]; layer 2: [40, 80]; output 20.
    assert benchmark.lstm_macs_per_coordinate((20, 20), 2) == (
        22 * 80 + 40 * 80 + 20) == 4980
    # One layer of 5 on the raw gradient: [1 + 5, 20] + 5.
    assert benchmark.lstm_macs_per_coordinate((5,), 1) == 6 * 20 + 5
    assert benchmark.lstm_state_bytes((20, 20)) == 80 * 4 == 320
    assert benchmark.lstm_state_bytes((20, 20), 2) == 160
    # Read g, read + write theta, read + write the state.
    assert benchmark.update_bytes_per_coordinate(320) == 4 + 8 + 640 == 652
    assert benchmark.update_bytes_per_coordinate(160) == 332
    counts = benchmark.network_counts(
        {"hidden_sizes": [20, 20], "preprocess": "log_sign"}, "bfloat16")
    assert counts == {"macs_per_coordinate": 4980, "state_bytes": 160,
                      "update_bytes_per_coordinate": 332}
    with pytest.raises(ValueError, match="state_dtype.*Received: "
                                         "state_dtype='int8'"):
        benchmark.network_counts({}, "int8")
    # Adam-normalised inputs: width 4, and (m, v, t) in float32.
    counts = benchmark.network_counts(
        {"hidden_sizes": [20, 20], "preprocess": "log_sign_adam"}, "bfloat16")
    assert counts == {"macs_per_coordinate": 24 * 80 + 40 * 80 + 20,
                      "state_bytes": 160 + 12,
                      "update_bytes_per_coordinate": 4 + 8 + 2 * 172}
    # The step's matmuls as it runs them: the ones column adds a row.
    shapes = benchmark.lstm_matmul_shapes((20, 20), 2)
    assert shapes == [(23, 20)] * 4 + [(41, 20)] * 4 + [(20, 1)]
    assert sum(k * m for k, m in shapes) == 4980 + 4 * 20 * 2 == 5140


def test_optimizee_and_meta_counts_by_hand():
    mnist = problems.make("mnist", "train")
    # 5 x batch 128 x (784 * 20 + 20 * 10) multiply-adds a step.
    assert benchmark.optimizee_macs_per_step(mnist) == 5 * 128 * 15880
    quadratic = problems.make("quadratic", "train")
    assert benchmark.optimizee_macs_per_step(quadratic) == 5 * 128 * 100
    macs, nbytes = benchmark.meta_counts(15910, 20, 4980, 652, 10_163_200)
    assert macs == 3 * 4980 * 15910 * 20 + 10_163_200 * 20
    assert nbytes == 3 * 652 * 15910 * 20


def test_mlp_shapes_hit_the_size():
    for n in (100_000, 1_000_000, 10_000_000):
        shapes = benchmark.mlp_shapes(n)
        total = sum(int(np.prod(s)) for s in shapes)
        assert abs(total - n) <= (784 + 1 + 10) / 2  # Half a hidden unit.
        assert shapes[0][0] == 784 and shapes[2][1] == 10
    with pytest.raises(ValueError, match="Received: num_params=10"):
        benchmark.mlp_shapes(10)


def test_bounds_and_ratios_by_hand():
    result = {
        "ceilings": {"matmul_flops_per_s": 1e11, "copy_bytes_per_s": 1e10},
        "network": {"hidden_sizes": [20, 20], "preprocess": "log_sign"},
        "update": [{
            "num_params": 1000,
            "baseline": {
                "adam": {"seconds": 1e-5, "jit": False},
                "learned": {"seconds": 4e-4, "jit": False,
                            "state_dtype": "float32"}},
            "current": {
                "adam": {"seconds": 1e-5, "jit": False},
                "learned": {"seconds": 2e-4, "jit": False,
                            "state_dtype": "float32"},
                "learned_bfloat16": {"seconds": 1e-4, "jit": False,
                                     "state_dtype": "bfloat16"}},
        }],
        "meta": [{"config": "x", "current": {
            "seconds": 0.5, "coordinates": 1000, "unroll_length": 20,
            "network": {"hidden_sizes": [20, 20]},
            "optimizee_macs_per_step": 0}}],
    }
    benchmark.add_bounds(result)
    row = result["update"][0]
    # Compute: 2 * 4980 * 1000 / 1e11 = 9.96e-5 s; memory 652e3 / 1e10.
    learned = row["current"]["learned"]
    assert learned["bound_seconds"] == pytest.approx(9.96e-5)
    assert learned["time_over_bound"] == pytest.approx(2e-4 / 9.96e-5)
    assert learned["time_over_adam"] == pytest.approx(20.0)
    # Adam: memory-bound, 28 bytes a coordinate.
    assert row["bound_seconds"]["adam"] == pytest.approx(28e3 / 1e10)
    # bf16 state: still compute-bound here (332e3 / 1e10 < 9.96e-5).
    assert row["current"]["learned_bfloat16"]["bound_seconds"] == (
        pytest.approx(9.96e-5))
    assert row["speedup"] == {"adam": pytest.approx(1.0),
                              "learned": pytest.approx(2.0)}
    meta = result["meta"][0]["current"]
    assert meta["macs"] == 3 * 4980 * 20_000
    assert meta["bytes"] == 3 * 652 * 20_000
    assert meta["bound_seconds"] == pytest.approx(
        max(2 * 3 * 4980 * 20_000 / 1e11, 3 * 652 * 20_000 / 1e10))
    assert benchmark.ratio(1.0, None) is None
    assert benchmark.ratio(None, 1.0) is None


def test_profile_runs_every_matmul_of_the_step():
    shapes = benchmark.lstm_matmul_shapes((20, 20), 2)
    products = benchmark.profile_matmuls(shapes, 5)()
    assert [tuple(p.shape) for p in products] == [(5, m) for _, m in shapes]


def test_quick_run_measures_every_row():
    # Without jit_compile (XLA compiles take seconds; the optimizer's XLA
    # path is tested in test_optimizer_keras.py).
    result = benchmark.run(**{**benchmark.QUICK, "repeats": 1,
                              "isolate": False, "jit": (False,)})
    (row,) = result["update"]
    assert row["num_params"] == 784 * 3 + 3 + 30 + 10
    assert set(row["current"]) == {"adam", "learned", "learned_tfops"}
    for key, r in row["current"].items():
        assert r["traces"] == 1, key
        assert r["seconds"] > 0 and r["time_over_bound"] > 0
    assert row["current"]["learned"]["state_bytes_per_param"] == 320
    assert row["current"]["learned_tfops"]["state_bytes_per_param"] == 320
    assert row["current"]["adam"]["state_bytes_per_param"] == 8
    (meta,) = result["meta"]
    assert meta["current"]["coordinates"] == 1280
    assert meta["current"]["traces"] == 1
    assert meta["current"]["macs"] == (3 * 4980 * 1280 * 2 + 64_000 * 2)
    # The default (the fused kernel and its gradient where they run) and
    # the TF-ops row, the same counts.
    assert meta["current"]["fused"] == (fused.unavailable_reason() is None)
    assert meta["current_tfops"]["fused"] is False
    assert meta["current_tfops"]["macs"] == meta["current"]["macs"]
    assert meta["current"]["rounds_seconds"] == [meta["current"]["seconds"]]
    profile = result["profile"]
    assert profile["coordinates"] == 2000
    assert profile["matmul_macs"] == 2000 * 5140
    for key in ("step_seconds", "matmul_seconds", "elementwise_seconds"):
        assert profile[key] > 0, key
    assert profile["matmul_flops_per_s"] == pytest.approx(
        2 * 2000 * 5140 / profile["matmul_seconds"])
    assert profile["step_over_matmuls"] == pytest.approx(
        profile["step_seconds"] / profile["matmul_seconds"])
    if fused.unavailable_reason() is not None:  # No compiler here.
        assert profile["fused_step_seconds"] is None
    else:
        assert profile["fused_step_seconds"] > 0
        assert profile["fused_step_over_matmuls"] == pytest.approx(
            profile["fused_step_seconds"] / profile["matmul_seconds"])
        assert profile["fused_step_over_bound"] == pytest.approx(
            profile["fused_step_seconds"] * result["ceilings"][
                "matmul_flops_per_s"] / (2 * 2000 * 5140))
    assert profile["elementwise_bytes_per_s"] == pytest.approx(
        2 * 2000 * 20 * 4 / profile["elementwise_seconds"])
    c = result["ceilings"]
    assert profile["matmul_share_of_square_rate"] == pytest.approx(
        profile["matmul_flops_per_s"] / c["matmul_flops_per_s"])
    assert profile["elementwise_share_of_copy_bandwidth"] == pytest.approx(
        profile["elementwise_bytes_per_s"] / c["copy_bytes_per_s"])
    table = benchmark.format_table(result)
    assert "learned" in table and "quadratic" in table
    assert "its matmuls alone" in table and "fused, in place" in table


def test_meta_rows_report_their_median_round(monkeypatch):
    """Each round times every tree in turn; a row is its median round."""
    seconds = iter([0.5, 0.9, 0.2, 0.4, 0.6, 0.8])
    calls = []

    def fake_meta(src, name, repeats, overrides, fused=None):
        calls.append(fused)
        return {"seconds": next(seconds), "coordinates": 10,
                "unroll_length": 2, "optimizee_macs_per_step": 0,
                "network": {"hidden_sizes": [20, 20]}}

    monkeypatch.setattr(benchmark, "measure_meta", fake_meta)
    monkeypatch.setattr(benchmark, "measure_ceilings", lambda *a: {
        "matmul_flops_per_s": 1e9, "copy_bytes_per_s": 1e9})
    result = benchmark.run(sizes=(), meta_configs=("quadratic",),
                           isolate=False, profile_size=None, meta_rounds=3)
    (row,) = result["meta"]
    # Rounds: (current, tf ops) = (0.5, 0.9), (0.2, 0.4), (0.6, 0.8).
    assert calls == [None, False] * 3
    assert row["current"]["rounds_seconds"] == [0.5, 0.2, 0.6]
    assert row["current"]["seconds"] == 0.5
    assert row["current_tfops"]["seconds"] == 0.8
    # Paired within rounds: the median of 0.5/0.9, 0.2/0.4 and 0.6/0.8.
    assert benchmark.paired_speedup(
        {"rounds_seconds": [0.5, 0.2, 0.6]},
        {"rounds_seconds": [0.9, 0.4, 0.8]}) == pytest.approx(0.5 / 0.9)
    assert benchmark.paired_speedup({"seconds": 2.0},
                                    {"seconds": 0.5}) == 4.0
    with pytest.raises(ValueError, match="meta_rounds"):
        benchmark.run(sizes=(), meta_configs=(), meta_rounds=0)
    with pytest.raises(ValueError, match="Received: repeats=0"):
        benchmark.run(sizes=(), meta_configs=(), repeats=0)


def test_peak_memory_is_read_from_vm_hwm():
    status = ("Name:\tpython\nVmPeak:\t 2000000 kB\nVmSize:\t 1900000 kB\n"
              "VmHWM:\t  123456 kB\nVmRSS:\t  100000 kB\n")
    assert benchmark.vm_hwm_bytes(status) == 123456 * 1024
    assert benchmark.vm_hwm_bytes("Name:\tpython\n") is None


# Loads this benchmark.py by path as a row's subprocess does, allocates
# (and touches) the given MiB, prints its peak; with a second argument, then
# runs itself without the allocation as a subprocess, which prints its own.
_PEAK_CHILD = """
import importlib.util, subprocess, sys
spec = importlib.util.spec_from_file_location("_bench", {path!r})
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
block = b"x" * (int(sys.argv[1]) << 20)
print(bench._peak_rss_bytes(), flush=True)
if len(sys.argv) > 2:
    subprocess.run([sys.executable, "-c", sys.argv[2], "0"], check=True)
"""


def test_a_subprocess_reports_its_own_peak_not_its_parents():
    """ru_maxrss carries the parent's peak over fork + exec on Linux: every
    row showed the benchmark's 1.36 GiB. A child allocating 300 MiB more
    than the one it starts reports a peak larger by about that much."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc: the figure is ru_maxrss, the parent's too")
    code = _PEAK_CHILD.format(path=benchmark.__file__)
    out = subprocess.run([sys.executable, "-c", code, "300", code],
                         capture_output=True, text=True, check=True)
    big, small = map(int, out.stdout.split())
    assert abs((big - small) - (300 << 20)) < (20 << 20), (big, small)


def _flags(**changes):
    return {**dict(sizes=["2000"], meta=["quadratic"], repeats=1,
                   baseline_src=None, state_dtypes=["float32", "bfloat16"],
                   jit=["false", "true"], profile_size=0, meta_rounds=1,
                   out=None), **changes}


@pytest.mark.parametrize("changes, message", [
    (dict(meta=["nosuch"]),
     r"--meta .*configs/nosuch\.py does not exist\. Received: --meta=nosuch"),
    (dict(sizes=["500"]), r"--sizes .*at least 805 .*Received: --sizes=500"),
    (dict(sizes=["804"]), r"Received: --sizes=804"),
    (dict(sizes=["2000", "abc"]), r"--sizes .*Received: --sizes=2000,abc"),
    (dict(state_dtypes=["float16"]),
     r"--state_dtypes takes float32 and bfloat16\. "
     r"Received: --state_dtypes=float16"),
    (dict(repeats=0), r"--repeats must be at least 1\. Received: --repeats=0"),
    (dict(meta_rounds=0), r"Received: --meta_rounds=0"),
    (dict(profile_size=-1), r"Received: --profile_size=-1"),
    (dict(jit=["maybe"]),
     r"--jit takes true and false\. Received: --jit=maybe"),
    (dict(baseline_src="/nonexistent"),
     r"--baseline_src .*l2l_tf/.*Received: --baseline_src=/nonexistent"),
    (dict(out="/proc/b.json"),
     r"--out needs a folder that takes new files; /proc does not .*"
     r"Received: --out=/proc/b\.json$"),
    (dict(out="/proc/nosuch/b.json"),
     r"--out needs its folder /proc/nosuch, .*"
     r"Received: --out=/proc/nosuch/b\.json$"),
])
def test_bad_flags_are_named_before_any_measurement(changes, message):
    from train import benchmark as binary
    with pytest.raises(ValueError, match=message):
        binary.run_kwargs(**_flags(**changes))


def test_flags_become_run_arguments(tmp_path):
    from train import benchmark as binary
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "new" / "b.json"
    kwargs = binary.run_kwargs(**_flags(
        sizes=["805", "1000000"], meta=["quadratic", ""], out=str(out),
        baseline_src=repo, state_dtypes=["bfloat16", ""]))
    assert kwargs == dict(sizes=[805, 1_000_000], meta_configs=["quadratic"],
                          repeats=1, baseline_src=repo,
                          state_dtypes=["bfloat16"], jit=[False, True],
                          profile_size=None, meta_rounds=1)
    # The folder is made and written to at the start, and left empty.
    assert out.parent.is_dir() and not list(out.parent.iterdir())
    with pytest.raises(ValueError,
                       match=re.escape(f"Received: --out={tmp_path}")):
        binary.run_kwargs(**_flags(out=str(tmp_path)))
    # The baseline's configs count too: a tree without configs/quadratic.py.
    (tmp_path / "old" / "l2l_tf").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"old/configs/quadratic\.py does "
                                         "not exist"):
        binary.run_kwargs(**_flags(baseline_src=str(tmp_path / "old")))


def test_bad_flag_exits_2_with_the_message_alone(capsys):
    from train import _cli
    from train import benchmark as binary
    with pytest.raises(SystemExit) as exit_info:
        _cli.checked(binary.run_kwargs, **_flags(repeats=0))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ValueError: --repeats") and "Traceback" not in err

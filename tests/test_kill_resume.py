"""Killing meta-training at random moments loses nothing but time."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT_EVERY = 4


def _cmd(workdir):
    return [sys.executable, "-m", "train.meta_train",
            "--config=configs/quadratic.py", f"--workdir={workdir}",
            "--noevaluate", "--deterministic",
            "--config.meta.num_iterations=48",
            "--config.meta.run_length=4", "--config.meta.unroll_length=2",
            f"--config.checkpoint_every={CHECKPOINT_EVERY}",
            "--config.eval_every=8", "--config.log_every=4",
            "--config.problem_kwargs.dim=3",
            "--config.problem_kwargs.num_functions=4",
            "--config.validation.num_seeds=2",
            "--config.validation.horizon=4"]


ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _latest_checkpoint(workdir):
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    return -1 if path is None else int(path.rsplit("-", 1)[1])


def _phi(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    return {k: reader.get_tensor(k)
            for k in reader.get_variable_to_shape_map() if k.startswith("phi/")}


def test_five_random_kills_then_resume_equal_an_uninterrupted_run(tmp_path):
    reference = str(tmp_path / "reference")
    subprocess.run(_cmd(reference), cwd=REPO, env=ENV, check=True,
                   capture_output=True, timeout=600)

    workdir = str(tmp_path / "killed")
    rng = random.Random(1234)
    seen = []
    while len(seen) < 5:
        proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        start = _latest_checkpoint(workdir)
        deadline = time.time() + 300
        # Wait for a new checkpoint, then kill at a random moment after it.
        while _latest_checkpoint(workdir) <= start and proc.poll() is None:
            assert time.time() < deadline, "no progress"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:
            break  # Finished before the kill: nothing left to kill.
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(_latest_checkpoint(workdir))
    assert len(seen) == 5, f"the run finished after {len(seen)} kills"
    # The kills are spread over several checkpoint intervals, and every
    # restart resumed (never went back before its last checkpoint).
    assert seen == sorted(seen) and seen[-1] - seen[0] >= 2 * CHECKPOINT_EVERY
    out = subprocess.run(_cmd(workdir), cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Resumed from" in out.stderr
    assert _latest_checkpoint(workdir) == 48
    want, got = _phi(reference), _phi(workdir)
    assert want.keys() == got.keys() and len(want) == 6
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6,
                                   err_msg=name)
    assert not [p for p in os.listdir(workdir) if ".tmp-" in p or ".old-" in p]

"""Meta-training on K optimizees per iteration, on one device or several.

conftest.py splits the CPU into two logical devices, so MirroredStrategy
runs two real replicas here; MultiWorkerMirroredStrategy runs two worker
processes talking over loopback, as two hosts would.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import meta, unroll
from tests.test_meta import REPO, tiny_quadratic_config



def _config(k, num_iterations=6):
    config = tiny_quadratic_config(num_optimizees=k,
                                   num_iterations=num_iterations)
    config.checkpoint_every = config.eval_every = 2
    return config


def test_meta_gradient_is_the_mean_over_optimizees(tmp_path):
    trainer = meta.MetaTrainer(_config(2), str(tmp_path))
    params, state, task = trainer.draw(0)
    total, flat, _, _ = trainer._local_step(params, state, task,
                                            tf.constant(0))
    phi = [trainer.phi[n] for n in trainer.names]
    expected_loss, expected_grad = 0.0, 0.0
    for j in range(2):  # Each optimizee on its own, as with K = 1.
        with tf.GradientTape() as tape:
            loss, _, _ = unroll.unroll(trainer.rule, trainer.phi,
                                       trainer.problem, params[j], state[j],
                                       task[j], 0, trainer.unroll_length)
            loss = loss / trainer.unroll_length
        expected_loss += float(loss)
        expected_grad += unroll.flatten(tape.gradient(loss, phi)).numpy()
    assert float(total) == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(flat.numpy(), expected_grad, rtol=1e-5,
                               atol=1e-7)
    # The two optimizees differ (distinct seeds), so both terms count.
    assert not np.allclose(params[0][0].numpy(), params[1][0].numpy())


def test_one_optimizee_draws_the_runs_of_before(tmp_path):
    trainer = meta.MetaTrainer(_config(1), str(tmp_path))
    params, _, _ = trainer.draw(3)
    want, _ = trainer.problem.init(trainer.run_seed(3))
    np.testing.assert_array_equal(params[0][0].numpy(), want[0].numpy())


def test_mirrored_strategy_equals_single_device(tmp_path, two_cpu_strategy):
    single = meta.MetaTrainer(_config(2), str(tmp_path / "single"))
    single.train()
    strategy = two_cpu_strategy
    mirrored = meta.MetaTrainer(_config(2), str(tmp_path / "mirrored"),
                                strategy=strategy)
    assert mirrored.local_optimizees == 1
    mirrored.train()
    one = meta.MetaTrainer(_config(1), str(tmp_path / "one"))
    one.train()
    for name, value in single.phi_numpy().items():
        np.testing.assert_allclose(mirrored.phi_numpy()[name], value,
                                   rtol=1e-5, atol=1e-7)
    # K = 2 is not K = 1: the second optimizee changed the weights.
    assert not np.allclose(one.phi_numpy()["lstm_0/kernel"],
                           single.phi_numpy()["lstm_0/kernel"], rtol=1e-3)


def test_optimizees_must_split_evenly_over_replicas(tmp_path,
                                                   two_cpu_strategy):
    strategy = two_cpu_strategy
    with pytest.raises(ValueError, match=r"multiple of the number of "
                       r"replicas \(2.*num_optimizees=3"):
        meta.MetaTrainer(_config(3), str(tmp_path / "w"), strategy=strategy)
    assert not os.path.exists(tmp_path / "w")


_WORKER = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
sys.path.insert(0, {repo!r})
from l2l_tf import meta
from tests.test_distributed_meta import _config
strategy = tf.distribute.MultiWorkerMirroredStrategy()
trainer = meta.MetaTrainer(_config(2), {workdir!r}, strategy=strategy)
trainer.train()
np.savez(os.path.join({out!r}, "phi_%d.npz" % strategy.cluster_resolver.task_id),
         **{{k.replace("/", "__"): v for k, v in trainer.phi_numpy().items()}})
"""


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_mirrored_strategy_on_loopback(tmp_path):
    """Two worker processes (one replica each) equal one process with K=2."""
    workdir, out = str(tmp_path / "work"), str(tmp_path)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    script = _WORKER.format(repo=REPO, workdir=workdir, out=out)
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": i}}))
        env.pop("CUDA_VISIBLE_DEVICES", None)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", script], env=env, cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    single = meta.MetaTrainer(_config(2), str(tmp_path / "single"))
    single.train()
    for i in range(2):
        got = np.load(os.path.join(out, f"phi_{i}.npz"))
        for name, value in single.phi_numpy().items():
            np.testing.assert_allclose(got[name.replace("/", "__")], value,
                                       rtol=1e-5, atol=1e-7)
    # Only the chief wrote the workdir; the other worker cleaned up.
    assert os.path.isfile(os.path.join(workdir, "export_last",
                                       "saved_model.pb"))
    assert not [d for d in os.listdir(workdir) if d.startswith(".worker_")]

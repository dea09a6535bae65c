"""Tests of l2l_tf.saved_model: round trips, signatures, atomic writes."""

import json
import os
import shutil
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import networks, saved_model

N = 5
GRADS = [[0.5, -2e-3, 3e-7, 0.0, -40.0],
         [0.4, -1e-3, -2e-6, 1e-2, -30.0],
         [0.1, 5e-4, 0.0, 2e-2, -10.0]]
CONFIG = {"problem": "quadratic", "unroll_length": 20, "meta_lr": 0.001}


def _rule():
    return networks.CoordinatewiseLSTM(hidden_sizes=(3, 2), output_scale=0.2)


def _phi(rule, seed):
    # Random biases too, so that every weight influences the updates.
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0.0, 0.3, v.shape)).astype(np.float32)
            for k, v in rule.init_phi(seed).items()}


def _reference_updates(rule, phi):
    """Updates of `rule.step` over GRADS, carrying state."""
    phi = {k: tf.constant(v) for k, v in phi.items()}
    state = rule.init_state(N)
    out = []
    for g in GRADS:
        updates, state = rule.step(phi, tf.constant(g, tf.float32), state)
        out.append(updates.numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    rule = _rule()
    phi = _phi(rule, seed=0)
    path = os.path.join(str(tmp_path_factory.mktemp("export")), "weights")
    returned = saved_model.export(path, rule, phi, config=CONFIG,
                                  extra={"note": "test"})
    assert returned == path
    return path, rule, phi


def test_export_load_round_trip(exported):
    path, rule, phi = exported
    loaded_rule, loaded_phi, metadata = saved_model.load(path)
    assert isinstance(loaded_rule, networks.CoordinatewiseLSTM)
    assert loaded_rule.get_config() == rule.get_config()
    assert sorted(loaded_phi) == sorted(phi)
    for name in phi:
        assert loaded_phi[name].dtype == np.float32
        np.testing.assert_array_equal(loaded_phi[name], phi[name])
    assert metadata["config"] == CONFIG
    assert metadata["network"] == rule.get_config()
    assert metadata["format_version"] == saved_model.FORMAT_VERSION
    assert metadata["note"] == "test"
    assert isinstance(metadata["git_commit"], str) and metadata["git_commit"]


def test_step_signature_matches_rule_step(exported):
    path, rule, phi = exported
    module = tf.saved_model.load(path)
    width = 2 * sum(rule.hidden_sizes)
    state = module.signatures["initial_state"](n=tf.constant(N))["state"]
    assert state.shape == (N, width) and state.dtype == tf.float32
    np.testing.assert_array_equal(state.numpy(), np.zeros((N, width)))
    got = []
    for g in GRADS:
        out = module.signatures["step"](grads=tf.constant(g, tf.float32),
                                        state=state)
        assert out["state"].shape == (N, width)
        state = out["state"]
        got.append(out["updates"].numpy())
    want = _reference_updates(rule, phi)
    assert np.all(np.abs(want[:, :4]) > 1e-4)  # A non-trivial comparison.
    np.testing.assert_allclose(np.stack(got), want, rtol=1e-6, atol=1e-8)


_STANDALONE = textwrap.dedent("""
    import sys

    class _BlockL2L:
        def find_spec(self, name, path=None, target=None):
            if name == "l2l_tf" or name.startswith("l2l_tf."):
                raise ImportError("l2l_tf is blocked in this test")
            return None

    sys.meta_path.insert(0, _BlockL2L())
    try:
        import l2l_tf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the l2l_tf block failed")

    import json
    import tensorflow as tf

    path, grads = sys.argv[1], json.loads(sys.argv[2])
    module = tf.saved_model.load(path)
    state = module.signatures["initial_state"](
        n=tf.constant(len(grads[0])))["state"]
    out = []
    for g in grads:
        result = module.signatures["step"](
            grads=tf.constant(g, tf.float32), state=state)
        state = result["state"]
        out.append(result["updates"].numpy().tolist())
    assert not any(m.startswith("l2l_tf") for m in sys.modules)
    print("UPDATES=" + json.dumps(out))
""")


def test_export_runs_in_plain_tensorflow_without_l2l_tf(exported, tmp_path):
    path, rule, phi = exported
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", _STANDALONE, path, json.dumps(GRADS)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("UPDATES=")]
    assert len(lines) == 1, proc.stdout
    got = np.array(json.loads(lines[0][len("UPDATES="):]), np.float32)
    np.testing.assert_allclose(got, _reference_updates(rule, phi), rtol=1e-6,
                               atol=1e-8)


def test_export_refuses_non_finite_phi_and_writes_nothing(tmp_path):
    rule = _rule()
    for bad in (np.nan, np.inf):
        phi = rule.init_phi()
        phi["lstm_1/kernel"][0, 0] = bad
        with pytest.raises(ValueError, match="lstm_1/kernel.*non-finite"):
            saved_model.export(str(tmp_path / "sub" / "weights"), rule, phi)
    assert os.listdir(tmp_path) == []


def test_export_checks_shapes_and_rule_type(tmp_path):
    rule = _rule()
    phi = rule.init_phi()
    phi["output/bias"] = np.zeros((2,), np.float32)
    with pytest.raises(ValueError, match="output/bias"):
        saved_model.export(str(tmp_path / "w"), rule, phi)
    phi = rule.init_phi()
    del phi["lstm_0/bias"]
    with pytest.raises(ValueError, match="lstm_0/bias"):
        saved_model.export(str(tmp_path / "w"), rule, phi)
    with pytest.raises(TypeError, match="CoordinatewiseLSTM"):
        saved_model.export(str(tmp_path / "w"), networks.SGD(),
                           networks.SGD().init_phi())
    assert os.listdir(tmp_path) == []


def test_export_over_existing_export_replaces_it(tmp_path):
    path = str(tmp_path / "weights")
    first_rule = networks.CoordinatewiseLSTM(hidden_sizes=(2,))
    saved_model.export(path, first_rule, first_rule.init_phi(0),
                       config={"run": 1})
    with open(os.path.join(path, "stray.txt"), "w") as f:
        f.write("left over from the old export")
    rule = _rule()
    phi = _phi(rule, seed=1)
    saved_model.export(path, rule, phi, config={"run": 2})
    assert not os.path.exists(os.path.join(path, "stray.txt"))
    assert os.listdir(tmp_path) == ["weights"]  # No .tmp- / .old- folders.
    loaded_rule, loaded_phi, metadata = saved_model.load(path)
    assert loaded_rule.get_config() == rule.get_config()
    assert metadata["config"] == {"run": 2}
    for name in phi:
        np.testing.assert_array_equal(loaded_phi[name], phi[name])


def test_missing_path_error_names_path_and_shipped_names(tmp_path):
    missing = str(tmp_path / "no_such_weights")
    for fn in (saved_model.resolve_path, saved_model.load):
        with pytest.raises(ValueError) as info:
            fn(missing)
        message = str(info.value)
        assert missing in message
        assert str(saved_model.pretrained_names()) in message
        assert "shipped" in message


def test_folder_without_saved_model_pb_is_rejected(tmp_path):
    folder = tmp_path / "not_an_export"
    folder.mkdir()
    (folder / "variables").mkdir()
    with pytest.raises(ValueError, match="is not a SavedModel") as info:
        saved_model.load(str(folder))
    assert str(folder) in str(info.value)


def test_foreign_saved_model_is_rejected(tmp_path):
    path = str(tmp_path / "foreign")
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, path)
    with pytest.raises(ValueError, match="not an l2l_tf export"):
        saved_model.load(path)


def test_a_damaged_export_is_named_and_left_as_it_is(exported, tmp_path):
    path = str(tmp_path / "damaged")
    shutil.copytree(exported[0], path)
    variables = os.path.join(path, "variables")
    (data,) = [p for p in os.listdir(variables) if ".data" in p]
    with open(os.path.join(variables, data), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(variables, data)) // 2)
    size = os.path.getsize(os.path.join(variables, data))
    with pytest.raises(ValueError, match=r"`weights` path '.*damaged' cannot "
                       r"be read: it is damaged or incomplete"):
        saved_model.load(path)
    assert os.path.getsize(os.path.join(variables, data)) == size


def test_resolve_path_returns_existing_export(exported):
    path, _, _ = exported
    assert saved_model.resolve_path(path) == path
    with pytest.raises(TypeError, match="weights"):
        saved_model.resolve_path(3)


def test_recover_finishes_an_interrupted_export(tmp_path):
    rule = networks.CoordinatewiseLSTM(hidden_sizes=(3,))
    path = str(tmp_path / "export")
    saved_model.export(path, rule, rule.init_phi(0))
    # A crash between the two renames: only the .old copy exists, plus a
    # half-written temporary folder.
    os.replace(path, path + ".old-123")
    os.makedirs(str(tmp_path / ".export.tmp-abc"))
    saved_model.recover(path)
    assert sorted(os.listdir(tmp_path)) == ["export"]
    _, phi, _ = saved_model.load(path)
    np.testing.assert_array_equal(phi["output/bias"],
                                  rule.init_phi(0)["output/bias"])


def test_weights_path_errors_say_what_to_pass_instead(tmp_path):
    rule = networks.CoordinatewiseLSTM()
    path = saved_model.export(str(tmp_path / "export"), rule, rule.init_phi(0))
    with pytest.raises(ValueError, match="folder, not a file.*'" +
                       re.escape(path) + "'"):
        saved_model.resolve_path(os.path.join(path, "saved_model.pb"))
    # Between _replace_dir's two renames only export.old-<pid> exists.
    os.replace(path, path + ".old-123")
    with pytest.raises(ValueError, match=re.escape(path + ".old-123")):
        saved_model.resolve_path(path)
    saved_model.recover(path)
    assert saved_model.resolve_path(path) == path

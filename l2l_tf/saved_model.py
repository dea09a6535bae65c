"""Trained weights as a TensorFlow SavedModel: the distribution format.

An export holds

- `phi`: the network's weights, one variable per name of
  `CoordinatewiseLSTM.phi_shapes()`;
- `metadata`: a JSON string variable with the network's hyperparameters
  (`network`), the config that produced the weights (`config`), the git
  commit (`git_commit`), the package version and a format version;
- two signatures that plain TensorFlow can call with no l2l_tf installed::

      m = tf.saved_model.load(path)
      s = m.signatures["initial_state"](n=tf.constant(n))["state"]
      out = m.signatures["step"](grads=g, state=s)   # g: float32 [n]
      theta += out["updates"]; s = out["state"]      # output scale applied

Exports are written atomically: into a temporary folder beside the target,
then renamed into place, so a crash never leaves a half-written export.
"""

import glob
import json
import os
import shutil
import subprocess
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from l2l_tf import atomic, networks

FORMAT_VERSION = 1
PRETRAINED_DIR = os.path.join(os.path.dirname(__file__), "pretrained")


def pretrained_names():
    """Names of the weights shipped with the package."""
    if not os.path.isdir(PRETRAINED_DIR):
        return []
    return sorted(
        d for d in os.listdir(PRETRAINED_DIR)
        if os.path.isfile(os.path.join(PRETRAINED_DIR, d, "saved_model.pb")))


def git_commit(path: Optional[str] = None) -> str:
    """The commit of the checkout holding `path`, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True,
            cwd=path or os.path.dirname(os.path.abspath(__file__)),
            timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class _Export(tf.Module):
    """The object tree that gets saved."""

    def __init__(self, rule: networks.CoordinatewiseLSTM, phi, metadata):
        super().__init__(name="l2l_tf_export")
        self._rule = rule
        self.phi = {name: tf.Variable(np.asarray(phi[name], np.float32),
                                      trainable=False,
                                      name=name.replace("/", "_"))
                    for name in rule.phi_shapes()}
        self.metadata = tf.Variable(json.dumps(metadata), trainable=False,
                                    name="metadata")
        # The signatures pack the state into one tensor [n, sum of the state
        # widths] ((h, c) of each layer side by side, then a preprocessor's
        # own, if any: [n, 80] or [n, 83]) so any runtime can carry it.
        widths = [s[1] for s in rule.state_shapes(1)]
        width = sum(widths)

        @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="n")])
        def initial_state(n):
            return {"state": tf.zeros(tf.stack([n, width]), tf.float32)}

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.float32, name="grads"),
            tf.TensorSpec([None, width], tf.float32, name="state")])
        def step(grads, state):
            updates, new_state = self._rule.step(
                self.phi, grads, tuple(tf.split(state, widths, axis=1)))
            return {"updates": updates,
                    "state": tf.concat(new_state, axis=1)}

        self.initial_state = initial_state
        self.step = step


def _replace_dir(src: str, dst: str):
    """Moves folder `src` to `dst`, replacing `dst`. At every moment a
    complete export exists: at `dst` (old or new) or, between the two
    renames, at `dst.old-<pid>`, which `recover` (run by every
    train.meta_train start) moves back and `resolve_path` points to."""
    old = None
    if os.path.exists(dst):
        old = dst + f".old-{os.getpid()}"
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover(path: str):
    """Finishes or undoes an export that a crash interrupted at `path`.

    Restores `path` from its `.old-*` copy if the crash came between the two
    renames of `_replace_dir`, and removes stale temporary folders.
    """
    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        full = os.path.join(parent, entry)
        if entry.startswith(name + ".old-"):
            if not os.path.exists(path):
                os.replace(full, path)
            else:
                shutil.rmtree(full, ignore_errors=True)
        elif entry.startswith("." + name + ".tmp-"):
            shutil.rmtree(full, ignore_errors=True)


GROUPS_FILE = "groups.json"


def export(path: str, rule, phi: Dict[str, np.ndarray],
           config: Optional[dict] = None,
           extra: Optional[dict] = None) -> str:
    """Writes `phi` of `rule` as a SavedModel at `path`, atomically.

    A `grouped.Grouped` rule is written as a folder holding one complete
    export per group (`path/<group>/`, each loadable on its own) and
    `groups.json` (the groups, in order, and the metadata).
    """
    from l2l_tf import grouped  # pylint: disable=import-outside-toplevel
    if isinstance(rule, grouped.Grouped):
        return _export_grouped(path, rule, phi, config, extra)
    if not isinstance(rule, networks.CoordinatewiseLSTM):
        raise TypeError("Only a CoordinatewiseLSTM or a Grouped rule can be "
                        f"exported. Received: rule={rule!r}")
    _checked(rule, phi)  # Before anything is written.
    path = os.path.abspath(path)
    tmp = atomic.temp_dir(path)
    try:
        _write(tmp, rule, phi, _metadata(rule, config, extra))
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _metadata(rule, config, extra):
    from l2l_tf import __version__  # pylint: disable=import-outside-toplevel
    return {
        "format_version": FORMAT_VERSION,
        "l2l_tf_version": __version__,
        "network": rule.get_config(),
        "config": config or {},
        "git_commit": git_commit(),
        **(extra or {}),
    }


def _export_grouped(path, rule, phi, config, extra):
    _checked(rule, phi)  # Before anything is written.
    path = os.path.abspath(path)
    tmp = atomic.temp_dir(path)
    try:
        metadata = _metadata(rule, config, extra)
        for group, sub_phi in rule.split_phi(phi).items():
            net = rule.nets[group]
            _write(os.path.join(tmp, group), net, sub_phi,
                   dict(_metadata(net, config, extra), group=group))
        with open(os.path.join(tmp, GROUPS_FILE), "w") as f:
            json.dump(metadata, f, indent=2)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write(folder: str, rule: networks.CoordinatewiseLSTM, phi, metadata):
    """Saves the SavedModel into new folder `folder`."""
    phi = _checked(rule, phi)
    module = _Export(rule, phi, metadata)
    tf.saved_model.save(module, folder, signatures={
        "step": module.step, "initial_state": module.initial_state})


def _checked(rule, phi):
    """`phi` as float32 arrays; ValueError on a missing, misshapen or
    non-finite weight."""
    phi = {k: np.asarray(v, np.float32) for k, v in phi.items()}
    for name, shape in rule.phi_shapes().items():
        if name not in phi or phi[name].shape != tuple(shape):
            raise ValueError(
                f"`phi[{name!r}]` must have shape {shape}. Received: "
                f"{None if name not in phi else phi[name].shape}")
        if not np.all(np.isfinite(phi[name])):
            raise ValueError(f"`phi[{name!r}]` holds non-finite values; "
                             "refusing to export them.")
    return phi


def resolve_path(weights: str) -> str:
    """A shipped name or a SavedModel folder -> the folder; clear errors."""
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError("`weights` must be the name of shipped weights "
                        f"({pretrained_names()}) or a path to a SavedModel. "
                        f"Received: weights={weights!r}")
    weights = os.fspath(weights)
    if weights in pretrained_names():
        return os.path.join(PRETRAINED_DIR, weights)
    path = os.path.expanduser(weights)
    if os.path.isfile(path):
        raise ValueError(
            f"`weights` must be a SavedModel's folder, not a file. Received: "
            f"weights={weights!r}; pass the folder that holds it "
            f"({os.path.dirname(path) or '.'!r}).")
    if not os.path.exists(path):
        old = sorted(glob.glob(glob.escape(path.rstrip(os.sep)) + ".old-*"))
        if old:
            raise ValueError(
                f"`weights` path {weights!r} is missing, but {old[-1]!r} "
                "holds the export it replaced: an export was interrupted "
                "between its two renames. Rerun the train.meta_train command "
                "(it restores it) or pass that folder.")
        raise ValueError(
            f"`weights` must be one of the shipped names {pretrained_names()} "
            f"or the path of a SavedModel. Received: weights={weights!r}, "
            "which is neither.")
    if not os.path.isfile(os.path.join(path, "saved_model.pb")) and (
            not os.path.isfile(os.path.join(path, GROUPS_FILE))):
        raise ValueError(
            f"`weights` path {weights!r} is not a SavedModel (no "
            "saved_model.pb inside); pass the `export` folder written by "
            "train.meta_train.")
    return path


def load(weights: str) -> Tuple[networks.CoordinatewiseLSTM,
                                Dict[str, np.ndarray], dict]:
    """Reads an export: returns (rule, phi as numpy arrays, metadata).

    Only values are copied out of the SavedModel; none of its functions is
    kept, so the result works in any context (tf.distribute, XLA).
    """
    path = resolve_path(weights)
    if os.path.isfile(os.path.join(path, GROUPS_FILE)):
        from l2l_tf import grouped  # pylint: disable=import-outside-toplevel
        with open(os.path.join(path, GROUPS_FILE)) as f:
            metadata = json.load(f)
        rule = grouped.Grouped(metadata["network"]["groups"],
                               metadata["network"]["network"])
        phi = {}
        for group in rule.nets:
            _, sub_phi, _ = load(os.path.join(path, group))
            phi.update({f"{group}/{k}": v for k, v in sub_phi.items()})
        return rule, phi, metadata
    try:
        loaded = tf.saved_model.load(path)
    except (tf.errors.OpError, IndexError, OSError) as e:  # Damaged files.
        raise ValueError(
            f"`weights` path {path!r} cannot be read: it is damaged or "
            f"incomplete ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Received: "
            f"weights={weights!r}") from e
    if not hasattr(loaded, "metadata") or not hasattr(loaded, "phi"):
        raise ValueError(f"`weights` path {weights!r} is a SavedModel but not "
                         "an l2l_tf export (no `metadata`/`phi`).")
    metadata = json.loads(loaded.metadata.numpy().decode("utf-8"))
    rule = networks.CoordinatewiseLSTM(**metadata["network"])
    phi = {name: loaded.phi[name].numpy() for name in rule.phi_shapes()}
    return rule, phi, metadata

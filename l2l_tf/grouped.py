"""Several learned networks in one optimizer, each for its own parameters.

The paper's CIFAR-10 experiments (Sec. 3.3) use two LSTMs: one updates the
convolutional layers' parameters, the other the fully connected ones, since
their gradients behave differently. `Grouped` does this for any number of
groups: an ordered list of (group name, regular expression) pairs assigns
every parameter tensor of an optimizee, by its name, to the first group
whose pattern `re.search`-matches it; each group has its own
CoordinatewiseLSTM (same architecture, separate weights).

    rule = Grouped([("conv", "conv"), ("fc", "dense")], network={...})
    rule = rule.bind(problem)        # which coordinates belong to which net

phi holds every group's weights under "<group>/<name>" (e.g.
"conv/lstm_0/kernel"). A bound rule gathers each group's coordinates from
the flat gradient, steps that group's network on them, and stitches the
updates back, so it is an UpdateRule like any other and meta-training,
evaluation and the unroll need nothing special.
"""

import re
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from l2l_tf import networks

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def validate_groups(groups) -> Tuple[Tuple[str, str], ...]:
    """Checks ((name, pattern), ...); returns it as a tuple of pairs."""
    try:
        pairs = tuple((name, pattern) for name, pattern in groups)
    except (TypeError, ValueError):
        raise ValueError("`network_groups` must be a sequence of (name, "
                         "regex) pairs. Received: "
                         f"network_groups={groups!r}") from None
    if not pairs:
        raise ValueError("`network_groups` must name at least one group. "
                         f"Received: network_groups={groups!r}")
    names = [n for n, _ in pairs]
    for name, pattern in pairs:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError("`network_groups` names must be identifiers "
                             f"(letters, digits, _). Received: {name!r}")
        if not isinstance(pattern, str):
            raise ValueError("`network_groups` patterns must be strings. "
                             f"Received: {pattern!r} for group {name!r}")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"`network_groups` pattern {pattern!r} of group "
                             f"{name!r} is not a valid regex: {e}") from None
    if len(set(names)) != len(names):
        raise ValueError("`network_groups` names must be unique. Received: "
                         f"{names}")
    return pairs


def assign(groups, names: Sequence[str]) -> list:
    """The group of each parameter name (first matching pattern)."""
    out = []
    for name in names:
        for group, pattern in groups:
            if re.search(pattern, name):
                out.append(group)
                break
        else:
            raise ValueError(
                f"Parameter {name!r} matches none of the `network_groups` "
                f"patterns {[p for _, p in groups]}; add a group for it (a "
                "last pattern '.*' catches every remaining parameter).")
    return out


class Grouped(networks.UpdateRule):
    """One CoordinatewiseLSTM per group of parameter tensors.

    Args:
      groups: ((group name, regex on parameter names), ...), in priority
        order.
      network: CoordinatewiseLSTM arguments, shared by every group's network.
    """

    name = "grouped"

    def __init__(self, groups, network: Optional[dict] = None):
        self.groups = validate_groups(groups)
        self.network = dict(network or {})
        self.nets = {g: networks.CoordinatewiseLSTM(**self.network)
                     for g, _ in self.groups}
        self._index: Optional[Dict[str, np.ndarray]] = None
        self._size = None

    def get_config(self):
        return {"groups": [list(p) for p in self.groups],
                "network": next(iter(self.nets.values())).get_config()}

    # -- binding to an optimizee -----------------------------------------

    def bind(self, problem=None, *, names=None, shapes=None) -> "Grouped":
        """A copy that knows which flat coordinates go to which network.

        Pass a problem (its `param_names()` and `param_shapes()`), or the
        names and shapes of the parameter tensors in flattening order.
        """
        if problem is not None:
            names, shapes = problem.param_names(), problem.param_shapes()
        names, shapes = list(names), [tuple(s) for s in shapes]
        owners = assign(self.groups, names)
        index = {g: [] for g, _ in self.groups}
        start = 0
        for owner, shape in zip(owners, shapes):
            size = int(np.prod(shape, dtype=np.int64))
            index[owner].append(np.arange(start, start + size))
            start += size
        for group, parts in index.items():
            if not parts:
                raise ValueError(
                    f"`network_groups` group {group!r} matches no parameter "
                    f"of the optimizee; its parameters are {names}.")
        bound = Grouped(self.groups, self.network)
        bound._index = {g: np.concatenate(p).astype(np.int32)
                        for g, p in index.items()}
        bound._size = start
        return bound

    def group_sizes(self) -> Dict[str, int]:
        self._check_bound()
        return {g: len(i) for g, i in self._index.items()}

    def _check_bound(self, n=None):
        if self._index is None:
            raise ValueError("This Grouped rule is not bound to an optimizee:"
                             " call `rule.bind(problem)` first.")
        if n is not None and n != self._size:
            raise ValueError(f"The rule was bound to {self._size} "
                             f"coordinates. Received: n={n}")

    # -- UpdateRule ---------------------------------------------------------

    def phi_shapes(self):
        return {f"{g}/{k}": s for g, net in self.nets.items()
                for k, s in net.phi_shapes().items()}

    def init_phi(self, seed: int = 0):
        return {f"{g}/{k}": v for i, (g, net) in enumerate(self.nets.items())
                for k, v in net.init_phi(seed + i).items()}

    def split_phi(self, phi) -> Dict[str, dict]:
        """{group: that network's phi with unprefixed names}."""
        return {g: {k: phi[f"{g}/{k}"] for k in net.phi_shapes()}
                for g, net in self.nets.items()}

    def state_shapes(self, n: int):
        self._check_bound(n)
        return tuple(s for g, net in self.nets.items()
                     for s in net.state_shapes(len(self._index[g])))

    def state_dtypes(self, dtype=tf.float32):
        return tuple(d for net in self.nets.values()
                     for d in net.state_dtypes(dtype))

    def state_bytes_per_coordinate(self, dtype=tf.float32) -> int:
        return next(iter(self.nets.values())).state_bytes_per_coordinate(
            dtype)

    def step(self, phi, grads, state):
        self._check_bound()
        sub_phi = self.split_phi(phi)
        updates, indices, new_state = [], [], []
        pos = 0
        for g, net in self.nets.items():
            width = len(net.state_shapes(1))
            idx = tf.constant(self._index[g])
            u, s = net.step(sub_phi[g], tf.gather(grads, idx),
                            tuple(state[pos:pos + width]))
            pos += width
            updates.append(u)
            indices.append(idx)
            new_state.extend(s)
        return tf.dynamic_stitch(indices, updates), tuple(new_state)

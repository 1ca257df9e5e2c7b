"""The branch-depth search space of the paper's NAS, generalised.

A configuration gives, for every task group, the number of 64-unit dense layers of each task branch
of that group (the paper: n1..n4 in {1..5} for its four requisite groups, 5^4 = 625 configurations;
spec/icao_paper.md section 9.1). Configurations are tuples of ints in group order: hashable, and
JSON as a list or as ``{"g0": n1, ...}``.

The space also declares itself as keras-tuner ``HyperParameters`` (one ``Choice`` per group, named
``depth_<group>``), so one declaration serves every controller and is saved with each trial.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from icao_mtl.errors import ConfigError

Config = tuple


@dataclass(frozen=True)
class BranchDepthSpace:
    """Depth choices per task group.

    Args:
        groups: group names, in order (e.g. ``("g0", "g1", "g2", "g3")``).
        depths: allowed depths: one tuple shared by every group, or one tuple per group.
    """

    groups: tuple
    depths: tuple = (1, 2, 3, 4, 5)

    def __post_init__(self):
        groups = tuple(self.groups)
        if not groups:
            raise ConfigError("The search space has no task group. Fix: give at least one group.")
        if len(set(groups)) != len(groups):
            raise ConfigError(f"Group names repeat in {list(groups)}. Fix: name each group once.")
        depths = tuple(self.depths)
        per_group = depths and isinstance(depths[0], (tuple, list))
        choices = tuple(tuple(d) for d in depths) if per_group else (tuple(depths),) * len(groups)
        if len(choices) != len(groups):
            raise ConfigError(f"The space gives depth choices for {len(choices)} groups but has {len(groups)} groups "
                              f"{list(groups)}. Fix: one tuple of depths per group, or one tuple for all.")
        for g, c in zip(groups, choices):
            if not c:
                raise ConfigError(f"Group {g!r} has no depth to choose from. Fix: give at least one depth.")
            if any(not isinstance(d, int) or d < 1 for d in c) or len(set(c)) != len(c):
                raise ConfigError(f"Depths of group {g!r} must be distinct integers >= 1. Received: {list(c)}.")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "depths", tuple(tuple(sorted(c)) for c in choices))

    @classmethod
    def paper(cls, groups=("g0", "g1", "g2", "g3"), max_depth: int = 5) -> "BranchDepthSpace":
        """The paper's space: every group's depth in {1, ..., max_depth}."""
        return cls(tuple(groups), tuple(range(1, max_depth + 1)))

    @property
    def size(self) -> int:
        n = 1
        for c in self.depths:
            n *= len(c)
        return n

    def choices(self, group_index: int) -> tuple:
        return self.depths[group_index]

    def __iter__(self):
        """Every configuration, in lexicographic order."""
        return iter(itertools.product(*self.depths))

    def index(self, config: Config) -> int:
        """Position of ``config`` in the enumeration (a bijection with ``range(size)``)."""
        config = self.check(config)
        i = 0
        for c, d in zip(self.depths, config):
            i = i * len(c) + c.index(d)
        return i

    def at(self, index: int) -> Config:
        """The configuration at position ``index`` of the enumeration."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} outside the space of {self.size} configurations")
        out = []
        for c in reversed(self.depths):
            index, r = divmod(index, len(c))
            out.append(c[r])
        return tuple(reversed(out))

    def check(self, config) -> Config:
        """Validate a configuration (tuple, list or dict by group); returns it as a tuple."""
        if isinstance(config, dict):
            missing = [g for g in self.groups if g not in config]
            if missing:
                raise ConfigError(f"Configuration {config} lacks groups {missing}.")
            config = [config[g] for g in self.groups]
        config = tuple(int(v) for v in config)
        if len(config) != len(self.groups):
            raise ConfigError(f"A configuration needs {len(self.groups)} depths (groups {list(self.groups)}). "
                              f"Received: {list(config)}.")
        for g, c, d in zip(self.groups, self.depths, config):
            if d not in c:
                raise ConfigError(f"Depth {d} is not allowed for group {g!r} (choices {list(c)}).")
        return config

    # keras-tuner ------------------------------------------------------------------------------
    def hp_name(self, group: str) -> str:
        return f"depth_{group}"

    def hyperparameters(self):
        """The space as keras-tuner ``HyperParameters``: one ``Choice`` per group."""
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        for g, c in zip(self.groups, self.depths):
            hp.Choice(self.hp_name(g), list(c), ordered=True)
        return hp

    def to_values(self, config: Config) -> dict:
        config = self.check(config)
        return {self.hp_name(g): d for g, d in zip(self.groups, config)}

    def from_values(self, values: dict) -> Config:
        try:
            return self.check([values[self.hp_name(g)] for g in self.groups])
        except KeyError as exc:
            raise ConfigError(f"Trial values {values} lack {exc}.") from None

    # JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"groups": list(self.groups), "depths": [list(c) for c in self.depths]}

    @classmethod
    def from_dict(cls, d: dict) -> "BranchDepthSpace":
        return cls(tuple(d["groups"]), tuple(tuple(c) for c in d["depths"]))

    def config_json(self, config: Config) -> str:
        return json.dumps(dict(zip(self.groups, self.check(config))))

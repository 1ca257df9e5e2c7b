"""The branched network a BMTAS search found: the branch structure of a configuration (groups per
layer, copies, MAdds), the network as a plain Keras model (registered layers, ``.keras`` with
``safe_mode=True``), the supergraph's weights moved into it, and the learning-rate groups of its
retraining."""

from __future__ import annotations

import keras
import numpy as np

from icao_mtl.errors import ConfigError

from ..common.blocks import Layout, load_application_weights, pretrained_application
from .partitions import branch_groups
from .supergraph import Supergraph


def structure(config, layer_names, unit_names, units, lut: dict) -> dict:
    """The branch structure of ``config`` (L, U): the groups of units per layer (a tree), the copies per
    layer, and the MAdds (stem + sum_l c_l |G_l| + heads)."""
    groups = branch_groups(config)
    copies = [len(g) for g in groups]
    encoder = sum(lut["layers"][n] * c for n, c in zip(layer_names, copies))
    n_tasks = sum(len(u) for u in units)
    madds = {"stem": lut["stem"], "encoder": int(encoder), "heads": lut["head"] * n_tasks}
    madds["total"] = int(sum(madds.values()))
    return {"config": np.asarray(config).tolist(), "layers": list(layer_names), "unit_names": list(unit_names),
            "units": [list(u) for u in units], "groups": [[list(p) for p in g] for g in groups], "copies": copies,
            "madds": madds}


def branch_name(layer: str, group, unit_names) -> str:
    """Name of the copy of searchable layer ``layer`` shared by the units of ``group``."""
    return f"{layer}__{'_'.join(unit_names[u] for u in group)}"


def build_branched(spec: Layout, tasks, units, config, *, image_size: int, weights: str = "none",
                   unit_names=None) -> tuple[keras.Model, dict]:
    """The branched network of ``config`` (L, U op indices): the meet of the units' choices gives the
    groups of every layer; each group gets its own copy of the layer (affine batch norms), fed by its
    parent group's copy; each task's head (GAP -> Dense(2)) reads its unit's branch.

    Returns:
        ``(model, sharing)``: a functional model from raw images (batch, s, s, 3) in [0, 255] to
        {task: (batch, 2)}, and {layer name: number of units sharing it} (stem: all units).
    """
    from icao_mtl.backbones import HEAD_PREFIX, Preprocess

    config = np.asarray(config)
    n_units = len(units)
    if config.shape != (len(spec.layers), n_units):
        raise ConfigError(f"A branch configuration for {len(spec.layers)} layers and {n_units} units has shape "
                          f"({len(spec.layers)}, {n_units}); received {config.shape}.")
    unit_names = list(unit_names or [f"u{u}" for u in range(n_units)])
    app = pretrained_application(spec.backbone, weights, image_size)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess(spec.preprocess, name="preprocess")(inputs)
    sharing: dict[str, int] = {}
    for i, s in enumerate(spec.stem):
        layer = s.make(True, f"stem_{i}")
        x = layer(x)
        sharing[layer.name] = n_units
        if app is not None:
            load_application_weights(layer, s.sources, app)
    branches = {tuple(range(n_units)): x}
    for s, groups in zip(spec.layers, branch_groups(config)):
        new = {}
        for g in groups:
            parent = next(p for p in branches if set(g) <= set(p))
            layer = s.make(True, branch_name(s.name, g, unit_names))
            new[g] = layer(branches[parent])
            sharing[layer.name] = len(g)
            if app is not None:
                load_application_weights(layer, s.sources, app)
        branches = new
    outputs = {}
    for g, y in branches.items():
        f = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool_{'_'.join(unit_names[u] for u in g)}")(y)
        for u in g:
            for t in units[u]:
                outputs[t] = keras.layers.Dense(2, activation="softmax", dtype="float32", name=t)(f)
    model = keras.Model(inputs, {t: outputs[t] for t in tasks}, name="bmtas_branched")
    return model, sharing


def transplant(supergraph: Supergraph, branched: keras.Model, config, unit_names=None) -> None:
    """Copy the supergraph's weights into the branched network of ``config``: the copy of group g at
    layer l gets the supergraph's copy o_(l,t) for a unit t of g (all units of a meet group chose the
    same index); stem and heads are copied as they are. Non-affine batch norms count as scale 1,
    offset 0."""
    from ..common.blocks import copy_layer_weights

    config = np.asarray(config)
    unit_names = list(unit_names or [f"u{u}" for u in range(supergraph.n_units)])
    for i, layer in enumerate(supergraph.stem):
        copy_layer_weights(branched.get_layer(f"stem_{i}"), layer)
    for l, (s, groups) in enumerate(zip(supergraph.spec.layers, branch_groups(config))):
        for g in groups:
            dst = branched.get_layer(branch_name(s.name, g, unit_names))
            copy_layer_weights(dst, supergraph.mixed[l].ops[int(config[l, g[0]])])
    for t, head in zip(supergraph.tasks, supergraph.heads):
        for dst, src in zip(branched.get_layer(t).weights, head.weights):
            dst.assign(src)


def lr_groups(model: keras.Model, sharing: dict, optimizer, division: bool) -> dict:
    """Variable groups of the retraining: one per sharing degree n, with the learning rate divided by n
    (``optimizer(lr_scale)`` makes an optimiser factory); with Adam dividing the gradient instead
    would change nothing, so each degree gets its own optimiser."""
    from icao_mtl.training import VariableGroup

    by_degree: dict[int, list[str]] = {}
    for layer in model.layers:
        if layer.trainable_weights:
            by_degree.setdefault(sharing.get(layer.name, 1) if division else 1, []).append(layer.name)
    return {f"shared_by_{n}": VariableGroup(
        f"shared_by_{n}", optimizer(1.0 / n),
        lambda m, names=frozenset(names): [v for l in m.layers if l.name in names for v in l.trainable_weights])
        for n, names in sorted(by_degree.items())}

"""The restricted-DAG network on the engine (spec dag_mtl.md §8.4, items 2, 3, 4, 8, 9) and end-to-end
runs on real digits and the synthetic faces."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas.dag.graph import SubNetwork, edges
from nas.dag.network import (DagSpec, GateMix, GateReadOut, build_network, gate_layers, gate_variables,
                             network_variables, set_hard, set_masks, transplant)
from nas.dag.search import groups, on_paths, phases, squeeze_loss


def _col(v):
    return tf.fill([1, 1, 1, 1], float(v))


def test_the_forward_normalisation_of_the_toy_network():
    """Item 3 (A1): e_ij(x) = w_ij x, R_j = O_i = identity, N = 3, M = 2, w = (2, 3, 4), x = 1, gates 0.5:
    v = (0.5, 0.5, 0.75), v_L = 0.875; with the fine-tune masks A = (1,0,0), edges {(1,2), (2,3)},
    B = (0,0,1): v = (1, 2, 8), v_L = 8."""
    x = _col(1.0)
    mix = [GateMix(1, [], name="mix_1"), GateMix(1, [1], name="mix_2"), GateMix(1, [1, 2], name="mix_3")]
    out = GateReadOut(1, 3, name="readout")

    def forward():
        v1 = mix[0]([x])
        v2 = mix[1]([x, 2.0 * v1])
        v3 = mix[2]([x, 3.0 * v1, 4.0 * v2])
        return [float(tf.reshape(v, [])) for v in (v1, v2, v3)], float(tf.reshape(out([v1, v2, v3]), []))

    states, v_l = forward()
    assert states == pytest.approx([0.5, 0.5, 0.75]) and v_l == pytest.approx(0.875)
    mix[0].masks.assign([[1.0]])
    mix[1].masks.assign([[0.0, 1.0]])
    mix[2].masks.assign([[0.0, 0.0, 1.0]])
    out.masks.assign([[0.0, 0.0, 1.0]])
    for layer in (*mix, out):
        layer.hard.assign(1.0)
    states, v_l = forward()
    assert states == pytest.approx([1.0, 2.0, 8.0]) and v_l == pytest.approx(8.0)


def test_the_a2_reading_of_the_toy_network():
    """Item 3 (A2: the read-in outside the normalisation, the edges divided by their number):
    v = (0.5, 1.0, 1.875), v_L = 1.6875."""
    x = _col(1.0)
    mix = [GateMix(1, [], combine="a2"), GateMix(1, [1], combine="a2"), GateMix(1, [1, 2], combine="a2")]
    v1 = mix[0]([x])
    v2 = mix[1]([x, 2.0 * v1])
    v3 = mix[2]([x, 3.0 * v1, 4.0 * v2])
    v_l = GateReadOut(1, 3)([v1, v2, v3])
    assert [float(tf.reshape(v, [])) for v in (v1, v2, v3)] == pytest.approx([0.5, 1.0, 1.875])
    assert float(tf.reshape(v_l, [])) == pytest.approx(1.6875)
    # a network built with it saves and loads with the reading
    spec = DagSpec(n=3, m=2, width=4, image_size=16, combine="a2")
    model = build_network(spec, ["a", "b"])
    assert all(l.combine == "a2" for l in model.layers if isinstance(l, GateMix))
    clone = keras.Model.from_config(model.get_config())
    assert all(l.combine == "a2" for l in clone.layers if isinstance(l, GateMix))


def test_squeeze_loss_values_and_gradients():
    """Item 4: K = 2, |E| = 5 (N = 4, M = 2), gamma = 0: kappa = 2 -> 2 (2.5 - 2) = 1.0 and d/dgamma =
    0.25 on every edge; kappa = 3 (or >= |E|) -> 0 and no gradient."""
    spec = DagSpec(n=4, m=2, width=4, image_size=32)
    model = build_network(spec, ("a", "b"))
    assert len(edges(4, 2)) == 5
    for kappa, value, grad in ((2.0, 1.0, 0.25), (3.0, 0.0, 0.0), (5.0, 0.0, 0.0), (0.0, 5.0, 0.25)):
        with tf.GradientTape() as tape:
            loss, _ = squeeze_loss(model, kappa)
        grads = tape.gradient(loss, gate_variables(model))
        assert float(loss) == pytest.approx(value)
        for layer, g in zip(gate_layers(model), grads):
            g = np.zeros(layer.logits.shape) if g is None else g.numpy()
            if isinstance(layer, GateMix):
                np.testing.assert_allclose(g[:, 1:], grad)  # edges
                np.testing.assert_allclose(g[:, 0], 0.0)  # read-ins are not squeezed
            else:
                np.testing.assert_allclose(g, 0.0)


def _tiny(n_tasks=3, n=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (48, 32, 32, 3)).astype("float32")
    tasks = tuple(f"t{k}" for k in range(n_tasks))
    y = {t: (x[..., k % 3].mean((1, 2)) > 127).astype("int32") for k, t in enumerate(tasks)}
    spec = DagSpec(n=n, m=3, width=8, image_size=32)

    def source(epoch):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    return spec, tasks, source


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_dag.py
def test_warmup_keeps_the_gates_at_one_half_and_the_rewind_restores_the_warmup_weights(tmp_path):
    """Items 2 and 9, also after a resume at the search/fine-tune boundary."""
    from icao_mtl.training import Engine

    spec, tasks, source = _tiny()
    seen = {}

    class Watch(keras.callbacks.Callback):
        def __init__(self, model):
            super().__init__()
            self.net = model

        def on_epoch_end(self, epoch, logs=None):
            phase = self.model.engine.history[-1]["phase"]
            if phase == "warmup":
                seen["gates"] = [v.numpy().copy() for v in gate_variables(self.net)]
                seen["warmup"] = [v.numpy().copy() for v in network_variables(self.net)]

        def on_epoch_begin(self, epoch, logs=None):
            if self.model.engine.phase.name == "finetune" and "finetune" not in seen:
                seen["finetune"] = [v.numpy().copy() for v in network_variables(self.net)]

    def fit(run_dir, resume=False, cut=False):
        keras.utils.set_random_seed(0)
        model = build_network(spec, tasks)
        engine = Engine(model, tasks, groups=groups(model), run_dir=run_dir, monitor="loss", verbose=0)

        class Cut(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if cut and engine.phase.name == "finetune":
                    raise KeyboardInterrupt

        engine.fit(phases(model, spec, tasks, warmup=2, search=2, finetune=1, lambda_sq=0.05, kappa=3.0),
                   {"train": source}, resume=resume, callbacks=[Watch(model), Cut()])
        return model

    fit(tmp_path / "full")
    assert all(np.all(g == 0) for g in seen["gates"])  # sigmoid(0) = 0.5, unchanged by the warm-up
    for a, b in zip(seen["warmup"], seen["finetune"]):
        np.testing.assert_array_equal(a, b)  # bit for bit
    first = dict(seen)
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "cut", cut=True)
    seen.clear()
    fit(tmp_path / "cut", resume=True)
    for a, b in zip(first["warmup"], seen["finetune"]):
        np.testing.assert_array_equal(a, b)


def test_the_pruned_network_computes_the_masked_network_and_counts_only_what_it_keeps():
    """Item 8: the final network (only the edges, read-ins and read-outs some task uses) gives the masked
    full network's outputs with the same weights, and its parameters are those of its layers."""
    from nas.dag.command import _network_params

    spec, tasks, _ = _tiny()
    keras.utils.set_random_seed(1)
    full = build_network(spec, tasks)
    x = np.random.default_rng(2).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    full(x, training=True)  # moving statistics away from their initial values
    subs = {"t0": SubNetwork(6, (1, 0, 0, 0, 0, 0), (0, 0, 1, 0, 0, 1), frozenset({(1, 2), (2, 3), (3, 6)})),
            "t1": SubNetwork(6, (0, 1, 0, 0, 0, 0), (0, 0, 0, 0, 1, 0), frozenset({(2, 4), (4, 5)})),
            "t2": SubNetwork(6, (1, 0, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0), frozenset())}
    set_masks(full, subs, tasks, spec)
    set_hard(full, True)
    final = build_network(spec, tasks, subs=subs)
    transplant(full, final)
    a, b = full(x, training=False), final(x, training=False)
    for t in tasks:
        np.testing.assert_allclose(b[t].numpy(), a[t].numpy(), rtol=1e-5, atol=1e-6)
    kept = {l.name for l in final.layers}
    assert "head_edge_1_2" in kept and "head_edge_1_3" not in kept and "readin_3" not in kept
    assert _network_params(final) < _network_params(full)
    expected = sum(l.count_params() for l in final.layers if not isinstance(l, (GateMix, GateReadOut)))
    assert _network_params(final) == expected


def test_on_a_backbone_feature_map_the_pruned_network_still_computes_the_masked_one(tmp_path):
    """v_0 = a backbone's feature map (computed once for every task): the state sides halve from its
    side, the weights load from a file into a frozen backbone, and pruning keeps the outputs."""
    from icao_mtl.backbones import build_backbone, save_backbone_weights

    keras.utils.set_random_seed(4)
    _, mbv2 = build_backbone("mobilenet_v2", keras.Input((64, 64, 3)), weights="none")
    path = tmp_path / "mbv2.weights.h5"
    save_backbone_weights(mbv2, path)
    spec = DagSpec(n=4, m=2, width=8, image_size=64, backbone="mobilenet_v2")
    assert spec.input_side() == 2 and spec.sizes() == [2, 2, 1, 1]
    tasks = ["t0", "t1"]
    full = build_network(spec, tasks, weights=str(path), freeze_backbone=True)
    np.testing.assert_array_equal(full.get_layer("Conv1").get_weights()[0], mbv2.get_layer("Conv1").get_weights()[0])
    frozen = {id(v) for v in full.get_layer("Conv1").weights}
    assert not frozen & {id(v) for v in network_variables(full)}  # a frozen backbone is in no optimiser
    x = np.random.default_rng(5).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    subs = {"t0": SubNetwork(4, (1, 0, 0, 0), (0, 0, 0, 1), frozenset({(1, 2), (2, 4)})),
            "t1": SubNetwork(4, (0, 1, 0, 0), (0, 0, 1, 0), frozenset({(2, 3)}))}
    set_masks(full, subs, tasks, spec)
    set_hard(full, True)
    final = build_network(spec, tasks, subs=subs)
    transplant(full, final)
    a, b = full(x, training=False), final(x, training=False)
    for t in tasks:
        np.testing.assert_allclose(b[t].numpy(), a[t].numpy(), rtol=1e-5, atol=1e-6)
    final.save(tmp_path / "final.keras")
    loaded = keras.models.load_model(tmp_path / "final.keras", safe_mode=True)
    for t, v in loaded(x).items():
        np.testing.assert_allclose(v.numpy(), b[t].numpy(), rtol=1e-5, atol=1e-6)


def test_a_backbone_run_end_to_end_on_digits(tmp_path, data_root, monkeypatch):
    from nas.dag import DagConfig, run

    monkeypatch.setenv("ICAO_MTL_DATA", str(data_root))
    cfg = DagConfig(data="digits", backbone="small_cnn", img_size=32, n=4, m=2, warmup_epochs=1, search_epochs=1,
                    finetune_epochs=3, out=str(tmp_path / "run"), verbose=0)
    assert cfg.resolved()["freeze_backbone"] is False  # from scratch: trained with the central network
    run(cfg)
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert test["eer_mean"] < 0.3


def test_links_on_no_input_output_path_are_dropped():
    sub = SubNetwork(4, (1, 0, 0, 0), (0, 1, 0, 0), frozenset({(1, 2), (3, 4)}))
    assert on_paths(sub).hidden == {(1, 2)}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, data_root):
    import os

    from nas.dag import DagConfig, run

    old = os.environ.get("ICAO_MTL_DATA")
    os.environ["ICAO_MTL_DATA"] = str(data_root)
    try:
        out = tmp_path_factory.mktemp("dag") / "digits"
        cfg = DagConfig(data="digits", n=6, m=3, warmup_epochs=2, search_epochs=3, finetune_epochs=4, batch_size=32,
                        out=str(out), verbose=0)
        return run(cfg), out
    finally:
        if old is None:
            os.environ.pop("ICAO_MTL_DATA")
        else:
            os.environ["ICAO_MTL_DATA"] = old


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_dag.py
def test_digits_end_to_end_beats_chance_and_is_smaller_than_the_searched_network(digits_run):
    result, out = digits_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["eer_mean"] < 0.3 and metrics["test"]["accuracy_mean"] > 0.85
    params = json.loads((out / "params.json").read_text())
    assert params["final"]["params"] < params["searched"]["params"]
    assert params["final"]["madds"] < params["searched"]["madds"]
    assert params["shared_bottom"]["params_relative"] == 1.0
    topo = json.loads((out / "topology.json").read_text())
    assert set(topo) == {f"n_{d}" for d in range(10)}
    for t, row in topo.items():
        assert row["read_in"] and row["read_out"] and (out / "tasks" / f"{t}.png").is_file()
        assert 0 <= row["topology"]["sparsity"] <= 1
    trace = json.loads((out / "trace.json").read_text())
    assert [e["phase"] for e in trace] == ["warmup"] * 2 + ["search"] * 3 + ["finetune"] * 4
    assert trace[1]["squeeze"] is None and trace[2]["squeeze"] is not None
    for f in ("model.keras", "split.csv", "table.md", "det.png", "far_frr.png", "curves.png", "trace.png",
              "status.json", "reduction.json", "topology.md"):
        assert (out / f).is_file(), f
    import icao_mtl

    model = icao_mtl.load_model(out / "model.keras")
    assert sorted(model.output_names) == sorted(topo)


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_dag.py
def test_relative_performance_against_a_single_task_run(digits_run, tmp_path):
    from nas.dag.command import _relative

    result, out = digits_run
    metrics = json.loads((out / "metrics.json").read_text())
    single = tmp_path / "stl"
    single.mkdir()
    worse = {t: {"eer": 2 * v["eer"]} for t, v in metrics["test"]["per_requisite"].items()}
    (single / "metrics.json").write_text(json.dumps({"test": {"per_requisite": worse}}))
    rel = _relative(tmp_path, metrics, single)
    assert rel["delta_t"] == pytest.approx(50.0)  # half the single-task EER on every task: +50%


def test_command_errors_name_the_option(capsys, tmp_path):
    from nas.dag import main

    assert main(["--N", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--N must be a positive integer" in capsys.readouterr().err
    assert main(["--backbone", "inception_v3", "--out", str(tmp_path / "y")]) == 2
    assert "feature map of one of" in capsys.readouterr().err
    assert main(["--weights", "imagenet", "--out", str(tmp_path / "z")]) == 2
    assert "needs a --backbone" in capsys.readouterr().err
    assert main(["--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "Nothing to resume" in capsys.readouterr().err


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_dag.py
def test_synthetic_faces_end_to_end_beats_chance_on_held_out_images(tmp_path):
    """The 23 requisites batched task-major (a small N = 4 network at 32 px): the fine-tuned
    sub-networks see what changes the whole image clearly better than chance."""
    from icao_mtl.requisites import IMAGE_LEVEL
    from icao_mtl.synth import SynthConfig, generate
    from nas.dag import DagConfig, run

    data = generate(tmp_path / "faces", SynthConfig(n=800, size=64, seed=7), progress=False, workers=2)
    run(DagConfig(data=str(data), img_size=32, n=4, m=2, width=16, warmup_epochs=2, search_epochs=2, finetune_epochs=6,
                  lr=3e-3, out=str(tmp_path / "run"), verbose=0))
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert len(test["per_requisite"]) == 23
    image_level = [test["per_requisite"][t]["eer"] for t in IMAGE_LEVEL]
    assert np.mean(image_level) < 0.35 and test["per_requisite"]["washed_out"]["eer"] < 0.15


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_dag.py
def test_evaluate_analyze_check_and_export_work_on_its_run_directory(digits_run, data_root, tmp_path, monkeypatch):
    from _run_dir_commands import exercise_run_dir_commands

    monkeypatch.setenv("ICAO_MTL_DATA", str(data_root))
    photo = next((data_root / "digits" / "images").glob("*"))
    exercise_run_dir_commands(digits_run[1], photo, "n_3", tmp_path)

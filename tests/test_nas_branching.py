"""BMTAS on the engine: supergraph, measured MAdds, builder, equivalence, an end-to-end search (spec
branching_bmtas.md §8.8 items 10-13; items 1-9 are in test_nas_partitions.py)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from nas.common.blocks import layout, madds_table
from nas.common.madds import measure_madds
from nas.bmtas import (BranchingConfig, Supergraph, branch_name, build_branched, main, make_units, run,
                           structure, transplant)
from nas.bmtas.partitions import branch_groups

# spec §8.2: analytic MAdds of one copy of each MobileNetV2 layer at 224x224, in millions
MBV2_224 = [10.04, 29.20, 25.74, 15.47, 10.99, 10.99, 7.56, 10.31, 10.31, 10.31, 12.72, 22.69, 22.69, 15.61, 15.48,
            15.48, 23.00, 20.07]


def test_measured_lut_equals_the_analytic_madds_of_the_spec():
    lut = madds_table(layout("mobilenet_v2", "fine"), 224)
    assert list(lut["layers"]) == [f"block_{b}" for b in range(17)] + ["Conv_1"]
    np.testing.assert_allclose([v / 1e6 for v in lut["layers"].values()], MBV2_224, atol=0.006)
    assert lut["stem"] / 1e6 == pytest.approx(10.8, abs=0.05)
    coarse = madds_table(layout("mobilenet_v2", "coarse"), 224)
    assert len(coarse["layers"]) == 8
    assert sum(coarse["layers"].values()) == sum(lut["layers"].values())  # the stages regroup the same blocks
    vgg = madds_table(layout("vgg16", "fine"), 224)["layers"]
    assert len(vgg) == 13
    assert vgg["block1_conv2"] / 1e6 == pytest.approx(1849.7, abs=0.1)
    assert sum(vgg.values()) / 1e9 == pytest.approx(15.35, abs=0.01)


def _units():
    return ["a", "b", "c"], [("t0",), ("t1", "t2"), ("t3",)]


@pytest.mark.parametrize("config, groups, copies", [
    ([[0, 0, 0], [0, 0, 1], [0, 1, 1], [2, 1, 0]], [[[0, 1, 2]], [[0, 1], [2]], [[0], [1], [2]], [[0], [1], [2]]],
     [1, 2, 3, 3]),
    ([[0, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]], [[[0], [1, 2]]] * 4, [2, 2, 2, 2]),  # the meet keeps {0|12}
])
def test_builder_copies_parameters_and_measured_madds(config, groups, copies):
    spec = layout("small_cnn", "fine")
    names, units = _units()
    tasks = [t for u in units for t in u]
    model, sharing = build_branched(spec, tasks, units, config, image_size=64, unit_names=names)
    assert [[list(p) for p in g] for g in branch_groups(config)] == groups
    lut = madds_table(spec, 64)
    info = structure(config, spec.names, names, units, lut)
    assert info["copies"] == copies
    # parameters: sum_l |G_l| params(l) + stem + heads
    per_layer = []
    for s, shape in zip([*spec.stem, *spec.layers], [(64, 64, 3), (32, 32, 16), (16, 16, 32), (8, 8, 64),
                                                      (4, 4, 128)]):
        layer = s.make(True, "probe")
        layer.build((1, *shape))
        per_layer.append(layer.count_params())
    heads = len(tasks) * (128 * 2 + 2)
    assert model.count_params() == per_layer[0] + sum(c * p for c, p in zip(copies, per_layer[1:])) + heads
    # measured on the whole built network = stem + sum_l c_l |G_l| + heads
    assert measure_madds(model, (64, 64, 3)) == info["madds"]["total"]
    # Grad-CAM's default layer follows each task's own branch
    from icao_mtl.backbones import last_conv_layer

    last = {tuple(p): branch_name("block4", p, names) for p in branch_groups(config)[-1]}
    for u, unit in enumerate(units):
        want = next(name for p, name in last.items() if u in p)
        assert all(last_conv_layer(model, tasks, t) == want for t in unit)
    # the sharing degree of each copy, for the learning-rate division
    assert sharing["stem_0"] == 3
    for l, (s, g) in enumerate(zip(spec.layers, branch_groups(config))):
        for part in g:
            assert sharing[branch_name(s.name, part, names)] == len(part)


def _randomise(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.path.endswith(("alpha", "temperature", "noise_step")):
            continue
        shape = tuple(v.shape)
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        else:
            v.assign((0.2 * rng.standard_normal(shape)).astype("float32"))


@pytest.mark.parametrize("backbone, granularity, size", [("small_cnn", "fine", 32), ("mobilenet_v2", "coarse", 32)])
def test_supergraph_with_one_hot_routes_equals_the_built_branched_network(backbone, granularity, size):
    spec = layout(backbone, granularity)
    names, units = _units()
    tasks = [t for u in units for t in u]
    keras.utils.set_random_seed(1)
    sg = Supergraph(spec, tasks, units, 3, size)
    # every copy starts from the same weights (the warm-up breaks the symmetry)
    for op in sg.mixed:
        for other in op.ops[1:]:
            for a, b in zip(other.weights, op.ops[0].weights):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
    _randomise(sg)
    rng = np.random.default_rng(0)
    config = rng.integers(0, 3, size=(len(spec.layers), 3))
    config[0] = [0, 0, 1]
    branched, _ = build_branched(spec, tasks, units, config, image_size=size, unit_names=names)
    transplant(sg, branched, config, names)
    x = rng.uniform(0, 255, (4, size, size, 3)).astype("float32")
    want = sg.forward_config(x, config, training=False)
    got = branched(x, training=False)
    for t in tasks:
        np.testing.assert_allclose(got[t].numpy(), want[t].numpy(), atol=1e-5)
    # the warm-up's shortcut (only copy u computed) equals the one-hot mixture e_u over all copies
    for u in range(3):
        fast = sg.forward_route(x, u, [u] * len(spec.layers), training=False)
        full = sg.forward_unit(x, u, np.eye(3, dtype="float32")[[u] * len(spec.layers)], training=False)
        for t in units[u]:
            np.testing.assert_allclose(fast[t].numpy(), full[t].numpy(), atol=1e-6)
    # every unit at once (the stem and the first layer's copies computed once) equals each unit alone,
    # in its outputs and in the gradients of the mixtures
    import tensorflow as tf

    mixtures = [tf.Variable(rng.dirichlet(np.ones(3), size=len(spec.layers)).astype("float32")) for _ in range(3)]
    with tf.GradientTape(persistent=True) as tape:
        together = sg.forward_units(x, mixtures, training=False)
        alone = [sg.forward_unit(x, u, mixtures[u], training=False) for u in range(3)]
        loss_together = tf.add_n([tf.reduce_sum(o[t][:, 1]) for o in together for t in o])
        loss_alone = tf.add_n([tf.reduce_sum(o[t][:, 1]) for o in alone for t in o])
    for u in range(3):
        for t in units[u]:
            np.testing.assert_allclose(together[u][t].numpy(), alone[u][t].numpy(), atol=1e-6)
    for a, b in zip(tape.gradient(loss_together, mixtures), tape.gradient(loss_alone, mixtures)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    # and the supergraph's own call routes along argmax(alpha)
    sg.alpha.assign(np.eye(3)[config].astype("float32") * 3.0)
    got_call = sg(x, training=False)
    for t in tasks:
        np.testing.assert_allclose(got_call[t].numpy(), want[t].numpy(), atol=1e-6)


def test_pretrained_weights_reach_every_copy_of_the_branched_network(tmp_path):
    """The branched MobileNetV2 loaded from a keras.applications weights file computes the application's
    features (same padding, same weights, every copy)."""
    app = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    _randomise(app, seed=3)
    path = tmp_path / "mbv2.weights.h5"
    app.save_weights(path)
    spec = layout("mobilenet_v2", "fine")
    names, units = _units()
    config = np.tile([0, 0, 1], (len(spec.layers), 1))
    model, _ = build_branched(spec, ["t0", "t1", "t2", "t3"], units, config, image_size=32, weights=str(path),
                              unit_names=names)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    want = app(x / 127.5 - 1.0, training=False).numpy()
    for branch in ("Conv_1__a_b", "Conv_1__c"):
        trunk = keras.Model(model.input, model.get_layer(branch).output)
        np.testing.assert_allclose(trunk(x, training=False).numpy(), want, rtol=1e-4, atol=1e-4)


def test_units_follow_the_requisite_groups():
    names, units = make_units(["a", "b", "c", "d"], {"g0": ("a", "c"), "g1": ("b",)}, "groups")
    assert names == ["g0", "g1", "other"] and units == [("a", "c"), ("b",), ("d",)]
    assert make_units(["a", "b"], {}, "tasks") == (["a", "b"], [("a",), ("b",)])


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_nas_branching.py
def test_search_retrain_resume_and_baselines_end_to_end(synth_small, tmp_path):
    """A small search on the synthetic set: warm-up, alternation, temperature, discretisation, the built
    network retrained and evaluated with the project's metrics; then a resume that adds a lambda and the
    baselines, and the Pareto plot."""
    from icao_mtl.runs import load_models, read_scores

    out = tmp_path / "bmtas"
    # a large architecture learning rate, so that the few architecture steps of this small run suffice
    cfg = BranchingConfig(data=str(synth_small), img_size=32, epochs=5, warmup=1, batch_size=16, arch_fraction=0.4,
                          arch_lr=0.5, cost="meet", retrain_epochs=2, lambdas=[1000.0], out=str(out), verbose=0)
    result = run(cfg)
    trace = json.loads((out / "lambda_1000" / "trace.json").read_text())
    assert [e["phase"] for e in trace] == ["warmup"] + ["search"] * 4
    assert trace[1]["temperature"] == pytest.approx(5.0) and trace[-1]["temperature"] == pytest.approx(0.1)
    assert np.allclose(trace[0]["probabilities"], 0.25)  # the warm-up leaves alpha at zero
    # a huge lambda drives the expected cost from the uniform routes' (the warm-up's entry) to full
    # sharing (1.0): with the exact cost of the built network (meet) within these 4 search epochs, for
    # seeds 0, 1 and 2 (measured 2026-12-07; the chain loss stopped at 2.16, 1.34 and 1.15 copies)
    big = result.structures["lambda_1000"]
    assert trace[0]["expected_cost"] > 3.0
    assert trace[-1]["expected_cost"] < 1.05 and big["copies"] == [1, 1, 1, 1]
    for f in ("structure.json", "tree.png", "trace.png", "branched/model.keras", "branched/metrics.json",
              "branched/far_frr.png", "branched/table.md"):
        assert (out / "lambda_1000" / f).is_file(), f
    # the saved branched model loads in safe mode and reproduces the evaluation's scores
    run_dir = out / "lambda_1000" / "branched"
    model = load_models(run_dir)["model"]
    from icao_mtl.data import ImagePipeline, load, split_dataset

    ds = load(str(synth_small))
    test = split_dataset(ds, seed=0).test
    names, scores, _ = read_scores(run_dir / "scores_test.csv")
    assert names == list(test.names)
    x, _ = next(iter(ImagePipeline(test, 32, batch_size=8).eval()))
    pred = model(x, training=False)
    task = next(iter(scores))
    np.testing.assert_allclose(pred[task][:, 1].numpy(), scores[task][:8], atol=1e-5)

    # resume with another lambda and the baselines: the finished search is reused, not redone
    before = (out / "lambda_1000" / "structure.json").read_text()
    again = run(BranchingConfig(**{**cfg.__dict__, "lambdas": [1000.0, 0.0], "baselines": True}), resume=True)
    assert (out / "lambda_1000" / "structure.json").read_text() == before
    rows = {r["name"]: r for r in json.loads((out / "pareto.json").read_text())}
    assert set(rows) == {"lambda_0", "lambda_1000", "baseline_shared", "baseline_single"} == {r["name"] for r in again.rows}
    assert rows["baseline_single"]["madds"] > rows["lambda_1000"]["madds"] >= rows["baseline_shared"]["madds"]
    assert rows["baseline_single"]["params"] > rows["lambda_1000"]["params"] >= rows["baseline_shared"]["params"]
    assert all(r["test_eer_mean"] is not None and 0 <= r["test_eer_mean"] <= 1 for r in rows.values())
    assert (out / "pareto.png").is_file()
    with pytest.raises(Exception, match="already holds"):
        run(cfg)


def test_command_errors_before_any_work(synth_small, tmp_path, capsys):
    assert main(["--units", "tasks", "--cost", "chain", "--data", str(synth_small), "--out", str(tmp_path / "x"),
                 "--epochs", "2", "--retrain-epochs", "0"]) == 2
    assert "infeasible" in capsys.readouterr().err
    assert main(["--backbone", "resnet50_v2"]) == 2
    assert "mobilenet_v2, vgg16 and small_cnn" in capsys.readouterr().err
    assert main(["--lambda", "-1"]) == 2
    assert main(["--epochs", "3", "--warmup", "3"]) == 2
    assert main(["--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "Nothing to resume" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_large_lambda_collapses_to_full_sharing(synth_small, tmp_path, seed):
    """Spec §8.8 item 14: a very large lambda ends with every unit on the same copy of every layer (the
    Shared network's cost). With the exact cost of the built network (meet) and an architecture
    learning rate for this search's 200 architecture steps (the reference takes some 19,000 at 1e-2).
    The chain loss, or 1e-2 here, can stop in a consistent split tree, a local minimum of the resource
    loss (test_nas_partitions); measured 2026-12-07: chain at 5e-2 ended [1, 1, 1, 2] and [1, 2, 2, 2]
    for these two seeds, chain at 1e-2 [1, 1, 3, 3] and [1, 2, 3, 3], meet at 5e-2 [1, 1, 1, 1] for both."""
    cfg = BranchingConfig(data=str(synth_small), img_size=32, epochs=24, warmup=1, batch_size=8, arch_fraction=0.4,
                          arch_lr=0.05, cost="meet", retrain_epochs=0, lambdas=[1000.0], out=str(tmp_path / "b"),
                          seed=seed, verbose=0)
    info = run(cfg).structures["lambda_1000"]
    trace = json.loads((tmp_path / "b" / "lambda_1000" / "trace.json").read_text())
    assert info["copies"] == [1, 1, 1, 1]
    assert trace[-1]["expected_cost"] < 1.05


def test_resume_continues_with_the_recorded_options(tmp_path, monkeypatch):
    """``--resume --out DIR`` alone continues a run with its own options (lambdas and baselines
    included); options written again override the requested ones and must match the search's."""
    import nas.bmtas.command as B

    out = tmp_path / "run"
    out.mkdir()
    cfg = BranchingConfig(epochs=7, lambdas=[0.0, 2.0], baselines=True, retrain_epochs=3, lr_division=False)
    (out / "branching.json").write_text(json.dumps({**cfg.identity(), "requested": {
        "lambdas": [0.0, 2.0], "baselines": True, "retrain_epochs": 3, "retrain_lr": 2e-3, "lr_division": False}}))
    seen = []
    monkeypatch.setattr(B, "run", lambda c, resume: seen.append((c, resume)))
    assert main(["--resume", "--out", str(out)]) == 0
    c, resume = seen[-1]
    assert resume and c.epochs == 7 and c.lambdas == [0.0, 2.0] and c.baselines and c.retrain_epochs == 3
    assert c.lr_division is False
    assert main(["--resume", "--out", str(out), "--lambda", "5"]) == 0
    assert seen[-1][0].lambdas == [5.0] and seen[-1][0].epochs == 7


def test_the_search_on_the_new_step_plan_computes_what_it_computed_before():
    """The engine's rewrite (step plans, traced iterators, guarded updates) leaves BMTAS's numbers as
    they were: a tiny search's trace equals the one recorded with the engine of commit af66f94.

    The reference was recorded on a CPU with AVX-512. Another CPU's float32 kernels round differently
    in the last bits, and from the first search epoch on the Gumbel samples' hard choices turn those
    bits into another path (measured on an AMD EPYC with AVX2, 2026-12-07: the loss 2e-6, 9e-6, 5e-3,
    2e-2 relative from the reference over the four epochs, alpha 0, 2e-3, 0.12, 0.19 apart). So the
    numbers are compared where no choice has amplified them yet, the warm-up and the first search
    epoch, at tolerances above that rounding and far below what a change of the computation moves
    (a step more or less, another loss, another order of the passes); the later epochs keep their
    phases and temperatures."""
    import sys

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    try:
        from _bmtas_trace import search_trace
    finally:
        sys.path.remove(str(here))
    now = search_trace()
    before = json.loads((here / "data" / "bmtas_trace_reference.json").read_text())
    assert [(e["epoch"], e["phase"]) for e in now] == [(e["epoch"], e["phase"]) for e in before]
    for a, b in zip(now, before):
        assert a["temperature"] == pytest.approx(b["temperature"])
    first_search = next(i for i, e in enumerate(before) if e["phase"] != before[0]["phase"])
    for a, b in zip(now[:first_search + 1], before[:first_search + 1]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert (a["weights_loss"] is None) == (b["weights_loss"] is None)
        if b["weights_loss"] is not None:
            assert a["weights_loss"] == pytest.approx(b["weights_loss"], rel=5e-3)
        np.testing.assert_allclose(a["alpha"], b["alpha"], atol=1e-2)


def test_the_search_runs_at_half_the_training_resolution_by_default(synth_small):
    """The paper searches at half resolution; the MAdds table and the retraining keep the training one."""
    from nas.bmtas.command import _data

    assert BranchingConfig(img_size=128).resolved_search_size() == 64
    assert BranchingConfig(img_size=32).resolved_search_size() == 32  # never below 32 px
    assert BranchingConfig(img_size=128, search_size=96).resolved_search_size() == 96
    assert BranchingConfig(backbone="mobilenet_v2").resolved_search_size() == 112
    cfg = BranchingConfig(data=str(synth_small), img_size=64, verbose=0)
    _, _, _, streams, pipes, size = _data(cfg, 0)
    assert size == 64 and pipes["train"].image_size == 64
    assert {s.image_size for s in streams.values()} == {32}
    x, _ = next(iter(streams["weights"].train(0)))
    assert tuple(x.shape[1:3]) == (32, 32)
    with pytest.raises(Exception, match="--search-size"):
        BranchingConfig(search_size=8).validate()

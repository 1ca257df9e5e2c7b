"""The engine's plan (interleaved steps, losses tied to groups, streams, snapshots, stateful parts,
context) and the defects of the review (issue 11), each with the run that showed it.

"Killed" here means an exception raised from a callback after a checkpoint, then a *fresh* model and
engine (as a new process would build them) resuming from the run directory; ``test_resume.py`` does
the same with real ``kill -9`` of the commands.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from icao_mtl.errors import CollapsedModelError, ConfigError, NonFiniteLossError
from icao_mtl.losses import MaskedMultiTaskLoss
from icao_mtl.training import Engine, Pass, Phase, Step, VariableGroup, optimizer_factory


class Interrupt(Exception):
    """Stands for a kill: raised from a callback, after the checkpoint of an epoch."""


def _data(n=48, seed=0, size=8):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    y = {"a": (x[..., 0].mean((1, 2)) > 127).astype("int32"), "b": (x[..., 1].mean((1, 2)) > 127).astype("int32")}
    return x, y


class Source:
    """A training source as the pipelines are: ``train(epoch)`` shuffles from the epoch, ``steps`` known."""

    def __init__(self, x, y, batch=8, seed=0):
        self.x, self.y, self.batch, self.seed = x, y, batch, seed
        self.steps = math.ceil(len(x) / batch)

    def __len__(self):
        return len(self.x)

    @property
    def batch_size(self):
        return self.batch

    def train(self, epoch, rows=None):
        idx = np.arange(len(self.x)) if rows is None else np.asarray(rows)
        idx = np.random.default_rng([self.seed, epoch]).permutation(idx)
        return tf.data.Dataset.from_tensor_slices((self.x[idx], {t: v[idx] for t, v in self.y.items()})).batch(self.batch)

    def eval(self):
        return tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(self.batch)


def _model(seed=0, dropout=0.0, tasks=("a", "b"), activation="tanh"):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, activation=activation, name="conv")(inp / 255.0)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    h = keras.layers.Dense(8, activation=activation, name="hidden")(h)
    if dropout:
        h = keras.layers.Dropout(dropout, seed=seed, name="drop")(h)
    return keras.Model(inp, {t: keras.layers.Dense(2, activation="softmax", name=t)(h) for t in tasks})


def _engine(model, tmp_path=None, **kwargs):
    kwargs.setdefault("optimizer", lambda: keras.optimizers.Adam(1e-2))
    kwargs.setdefault("monitor", "loss")
    return Engine(model, ("a", "b"), run_dir=tmp_path, verbose=0, **kwargs)


def _weights(model):
    return [np.array(v.numpy()) for v in model.variables]


def _interrupt_after(epoch):
    class Cut(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            if e == epoch:
                raise Interrupt()
    return Cut()


# ---------------------------------------------------------------------------------------------
# defects of the review

def test_resume_at_a_phase_boundary_runs_the_setup_after_the_restore(tmp_path):
    """Defect 1: the fine-tune setup zeroes a kernel (and freezes it); after a kill at the boundary the
    resumed run must keep it zero, as the uninterrupted run does."""
    x, y = _data()

    def zero_conv(engine):
        conv = engine.model.get_layer("conv")
        conv.kernel.assign(tf.zeros_like(conv.kernel))
        conv.trainable = False

    phases = [Phase("train", 2), Phase("finetune", 2, setup=zero_conv)]
    full = _model()
    _engine(full, tmp_path / "full").fit(phases, {"train": Source(x, y)})
    assert not np.any(full.get_layer("conv").kernel.numpy())
    cut = _model()
    with pytest.raises(Interrupt):
        _engine(cut, tmp_path / "cut").fit(phases, {"train": Source(x, y)}, callbacks=[_interrupt_after(2)])
    resumed = _model()
    _engine(resumed, tmp_path / "cut").fit(phases, {"train": Source(x, y)}, resume=True)
    assert not np.any(resumed.get_layer("conv").kernel.numpy())
    for a, b in zip(_weights(full), _weights(resumed)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_resuming_a_finished_schedule_without_a_best_restores_its_last_weights(tmp_path):
    """Defect 2: a finished schedule whose phases select no best left the model at its initial weights."""
    x, y = _data()
    phases = [Phase("search", 2, select_best=False)]
    trained = _model()
    _engine(trained, tmp_path).fit(phases, {"train": Source(x, y)})
    fresh = _model()
    before = _weights(fresh)
    _engine(fresh, tmp_path).fit(phases, {"train": Source(x, y)}, resume=True)
    changed = [not np.array_equal(a, b) for a, b in zip(before, _weights(fresh))]
    assert any(changed)
    for a, b in zip(_weights(trained), _weights(fresh)):
        np.testing.assert_array_equal(a, b)


def _frozen_loss_engine(**kwargs):
    """A model whose loss cannot improve after epoch 1 (a learning rate of 1e-12, batches in one order)."""
    return _engine(_model(), optimizer=lambda: keras.optimizers.SGD(1e-12), **kwargs)


def _unshuffled(x, y):
    return lambda epoch: tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def test_patience_counts_only_selecting_epochs_and_stops_only_its_phase():
    """Defect 3: warm-up epochs (select_best=False) do not use up the patience, and an early stop ends
    the phase, not the schedule (Experiment III with --patience keeps its frozen part)."""
    x, y = _data()
    hist = _frozen_loss_engine(patience=1).fit(
        [Phase("warmup", 3, select_best=False), Phase("train", 5), Phase("frozen", 2)], {"train": _unshuffled(x, y)})
    phases = [h["phase"] for h in hist]
    assert phases == ["warmup"] * 3 + ["train"] * 2 + ["frozen"] * 2


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stopping_stops_at_the_epoch_keras_early_stopping_does(patience):
    x, y = _data()
    ours = _frozen_loss_engine(patience=patience).fit([Phase("train", 10)], {"train": _unshuffled(x, y)})
    theirs = _frozen_loss_engine().fit([Phase("train", 10)], {"train": _unshuffled(x, y)},
                                       callbacks=[keras.callbacks.EarlyStopping(monitor="loss", patience=patience)])
    assert len(ours) == len(theirs) == 1 + patience


def test_dropout_continues_its_random_stream_after_a_resume(tmp_path):
    """Defect 4: Keras 3 keeps dropout's seed-generator state out of ``model.weights``; the checkpoint
    holds ``model.variables``, so a resumed run with dropout equals the uninterrupted one."""
    x, y = _data()
    phases = [Phase("train", 4)]
    full = _model(dropout=0.5)
    _engine(full, tmp_path / "full").fit(phases, {"train": Source(x, y)})
    with pytest.raises(Interrupt):
        _engine(_model(dropout=0.5), tmp_path / "cut").fit(phases, {"train": Source(x, y)},
                                                           callbacks=[_interrupt_after(2)])
    resumed = _model(dropout=0.5)
    _engine(resumed, tmp_path / "cut").fit(phases, {"train": Source(x, y)}, resume=True)
    for a, b in zip(_weights(full), _weights(resumed)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_a_non_finite_step_makes_no_update_at_all():
    """Defect 5: the step with a NaN leaves weights, optimiser slots and ``iterations`` untouched, and
    the run stops at it; the state equals that of a run that stopped before it."""
    x, y = _data(24)
    bad = x.copy()
    bad[9] = np.nan  # the second batch of 8

    def source(data):
        return lambda epoch: tf.data.Dataset.from_tensor_slices((data, y)).batch(8)

    ref = _model()
    ref_engine = _engine(ref)
    ref_engine.fit([Phase("train", 1, passes=[Pass(max_steps=1)])], {"train": source(x)})
    model = _model()
    engine = _engine(model)
    with pytest.raises(NonFiniteLossError, match=r"pass 'train', step 2 \(global step 2\)"):
        engine.fit([Phase("train", 1)], {"train": source(bad)})
    opt, ref_opt = engine.optimizers["model"], ref_engine.optimizers["model"]
    assert int(opt.iterations) == int(ref_opt.iterations) == 1
    for a, b in zip(_weights(ref), _weights(model)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ref_opt.variables, opt.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_sgd_nesterov_keeps_every_keyword():
    """Defect 6."""
    opt = optimizer_factory("sgd_nesterov", 0.1, weight_decay=1e-4, clipnorm=2.0)()
    assert opt.nesterov and opt.momentum == pytest.approx(0.9)
    assert opt.weight_decay == pytest.approx(1e-4) and opt.clipnorm == pytest.approx(2.0)
    assert optimizer_factory("sgd_nesterov", 0.1, momentum=0.5)().momentum == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="does not accept"):
        optimizer_factory("adam", 1e-3, not_an_option=1)


def test_weight_decay_shrinks_kernels_only_by_lr_times_decay():
    """``weight_decay`` is decoupled (w -= lr * wd * w per step, whatever the gradient) and leaves biases
    and batch normalisation's scale and offset alone."""
    inputs = keras.Input((4,))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3, name="dense")(inputs))
    model = keras.Model(inputs, h)
    for v in model.trainable_variables:
        v.assign(np.full(v.shape, 2.0, np.float32))
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt = optimizer_factory("adam", 0.1, weight_decay=0.5)()
    opt.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in model.trainable_variables])
    for v in model.trainable_variables:
        expected = before[v.path] * (1 - 0.1 * 0.5) if v.name == "kernel" else before[v.path]
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, err_msg=v.path)
    assert {v.name for v in model.trainable_variables} == {"kernel", "bias", "gamma", "beta"}


def test_a_learning_rate_schedule_continues_across_phases():
    """Defect 7: a cosine sized for two one-epoch phases ends the first at half the rate and the second
    at zero (it restarted in every phase: 0.005, 0.005); ``restart_schedules`` restarts it."""
    x, y = _data(48)
    opt = optimizer_factory("adam", 0.01, schedule="cosine", epochs=2, steps_per_epoch=6)
    hist = _engine(_model(), optimizer=opt).fit([Phase("a", 1), Phase("b", 1)], {"train": Source(x, y)})
    assert [h["lr"] for h in hist] == pytest.approx([0.005, 0.0], abs=1e-7)
    hist = _engine(_model(), optimizer=opt).fit([Phase("a", 1), Phase("b", 1, restart_schedules=True)],
                                                {"train": Source(x, y)})
    assert [h["lr"] for h in hist] == pytest.approx([0.005, 0.005], abs=1e-7)


def test_keras_callbacks_work_unchanged(tmp_path):
    """Defect 9: EarlyStopping, ReduceLROnPlateau, ModelCheckpoint, CSVLogger, TensorBoard and
    TerminateOnNaN, as with Model.fit."""
    x, y = _data()
    cbs = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=10),
           keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=1, factor=0.5, min_delta=10.0),
           keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras")),
           keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
           keras.callbacks.TensorBoard(str(tmp_path / "tb")), keras.callbacks.TerminateOnNaN()]
    engine = _engine(_model(), optimizer=lambda: keras.optimizers.Adam(1e-2), monitor="val_loss")
    hist = engine.fit([Phase("train", 4)], {"train": Source(x, y)}, Source(x, y), callbacks=cbs)
    lrs = [h["lr"] for h in hist]  # no improvement by 10: halved at the end of epochs 2 and 3
    assert lrs == pytest.approx([lrs[0], lrs[0], lrs[0] / 2, lrs[0] / 4])
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == len(hist) + 1 and "val_loss" in rows[0]
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert getattr(reloaded, "optimizer", None) is None  # the engine's model holds no optimiser
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_a_collapsed_model_stops_the_run_with_a_clear_error(tmp_path):
    """Defect 16: with an absurd learning rate every score becomes the same value; the run stops after
    two such epochs (not 24) and says why, instead of reporting 50% EER on every task."""
    x, y = _data(64)
    engine = _engine(_model(activation="relu"), tmp_path, optimizer=lambda: keras.optimizers.Adam(1e6),
                     monitor="val_loss")
    with pytest.raises(CollapsedModelError, match="same for every image.*Fix: lower the learning rate"):
        engine.fit([Phase("train", 24)], {"train": Source(x, y)}, Source(x, y))
    assert len(engine.history) == 2
    assert all(h["val_score_range"] < 1e-6 for h in engine.history)


def test_a_collapse_after_good_epochs_keeps_the_best_epoch():
    x, y = _data(64)

    class Explode(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # from epoch 3 on, every output is saturated
                self.model.engine.optimizers["model"].learning_rate.assign(1e6)

    engine = _engine(_model(activation="relu"), optimizer=lambda: keras.optimizers.Adam(1e-2), monitor="val_loss")
    hist = engine.fit([Phase("train", 12)], {"train": Source(x, y)}, Source(x, y), callbacks=[Explode()])
    assert len(hist) == 4 and engine.collapse["best_epoch"] in (1, 2) and not engine.collapse["fatal"]
    assert engine.evaluate(Source(x, y))["score_range"] > 1e-3  # the kept model is the best, not the collapsed


# ---------------------------------------------------------------------------------------------
# the plan: interleaved steps, losses tied to groups, streams

def _scalar_model():
    """Two scalar parameters a and b in a model that ignores its input (for exact gradient checks)."""

    class Scalars(keras.layers.Layer):
        def build(self, shape):
            self.a = self.add_weight(shape=(), initializer="zeros", name="a")
            self.b = self.add_weight(shape=(), initializer="zeros", name="b")

        def call(self, x):
            return x * 0.0 + self.a + self.b

    inp = keras.Input((1,))
    out = Scalars(name="scalars")(inp)
    model = keras.Model(inp, {"a": keras.layers.Concatenate()([out, out])})
    model.scalars = model.get_layer("scalars")
    return model


def _ids_source(n, batch=1, offset=0):
    """Batches whose input is the row id (plus offset), label 0."""
    ids = np.arange(n, dtype="float32")[:, None] + offset

    def make(epoch):
        return tf.data.Dataset.from_tensor_slices((ids, {"a": np.zeros(n, "int32")})).batch(batch)

    class S:
        steps = math.ceil(n / batch)
        train = staticmethod(make)
        eval = staticmethod(lambda: make(0))
    return S()


def test_interleaved_steps_alternate_batch_by_batch_each_updating_its_group_and_traced_once():
    model = _scalar_model()
    seen, traces = [], {"w": 0, "arch": 0}

    def loss_for(name, var):
        def fn(m, x, y, ctx):
            traces[name] += 1  # runs when traced only
            tf.py_function(lambda v: seen.append((name, int(v))), [x[0, 0]], [])
            return tf.square(var - 1.0) + 0.0 * tf.reduce_sum(x), {}
        return fn

    groups = {"w": VariableGroup("w", lambda: keras.optimizers.SGD(0.1), lambda m: [m.scalars.a]),
              "arch": VariableGroup("arch", lambda: keras.optimizers.SGD(0.1), lambda m: [m.scalars.b])}
    plan = Pass(steps=[Step("w", ("w",), [loss_for("w", model.scalars.a)]),
                       Step("arch", ("arch",), [loss_for("arch", model.scalars.b)])])
    engine = Engine(model, ("a",), groups=groups, monitor="loss", verbose=0)
    hist = engine.fit([Phase("search", 2, passes=[plan])], {"w": _ids_source(3), "arch": _ids_source(3, offset=100)})
    assert seen[:6] == [("w", 0), ("arch", 100), ("w", 1), ("arch", 101), ("w", 2), ("arch", 102)]
    assert len(seen) == 12 and traces == {"w": 1, "arch": 1}
    # each group moved only from its own loss: 6 SGD steps of (v - 1)^2 from 0
    expected = 1 - 0.8 ** 6
    assert float(model.scalars.a.numpy()) == pytest.approx(expected) == float(model.scalars.b.numpy())
    assert set(hist[0]) >= {"loss", "arch_loss"}


def test_a_loss_per_group_from_one_forward_updates_each_group_from_its_own_loss():
    model = _scalar_model()
    a, b = model.scalars.a, model.scalars.b

    def joint(m, x, y, ctx):
        # the "w" group sees (a - 1)^2 only, the "arch" group (b - 2)^2 + 100 a: a must not get 100's
        return {"w": tf.square(a - 1.0) + 0.0 * tf.reduce_sum(x), "arch": tf.square(b - 2.0) + 100.0 * a}, {}

    groups = {"w": VariableGroup("w", lambda: keras.optimizers.SGD(0.5), lambda m: [a]),
              "arch": VariableGroup("arch", lambda: keras.optimizers.SGD(0.25), lambda m: [b])}
    engine = Engine(model, ("a",), groups=groups, monitor="loss", verbose=0)
    engine.fit([Phase("search", 1, passes=[Pass(steps=[Step("train", ("w", "arch"), [joint])], max_steps=1)])],
               {"train": _ids_source(4)})
    assert float(a.numpy()) == pytest.approx(1.0)  # 0 - 0.5 * 2 * (0 - 1)
    assert float(b.numpy()) == pytest.approx(1.0)  # 0 - 0.25 * 2 * (0 - 2)
    with pytest.raises(ConfigError, match="does not update"):
        Engine(_scalar_model(), ("a",), groups={"w": groups["w"]}, monitor="loss", verbose=0).fit(
            [Phase("s", 1, passes=[Pass(steps=[Step("train", ("w",), [joint])])])], {"train": _ids_source(2)})


def test_a_continuing_stream_goes_on_across_passes_and_epochs(tmp_path):
    """Three batches of "w" per pass, one "val" batch per "w" batch from a 2-batch stream that restarts
    (its next cycle) only when it runs out; its position survives a resume."""
    model = _scalar_model()
    seen = []

    def note(name):
        def fn(m, x, y, ctx):
            tf.py_function(lambda v: seen.append((name, int(v))), [x[0, 0]], [])
            return tf.square(m.scalars.a - 1.0) + 0.0 * tf.reduce_sum(x), {}
        return fn

    def val_source():
        class S:
            steps = 2

            @staticmethod
            def train(cycle):  # each cycle its own rows
                ids = np.array([[10.0 * cycle], [10.0 * cycle + 1]], "float32")
                return tf.data.Dataset.from_tensor_slices((ids, {"a": np.zeros(2, "int32")})).batch(1)
        return S()

    def run(engine, **kw):
        plan = Pass(steps=[Step("w", ("model",), [note("w")]), Step("val", ("model",), [note("val")], continuing=True)])
        return engine.fit([Phase("s", 2, passes=[plan])], {"w": _ids_source(3), "val": val_source()}, **kw)

    run(Engine(model, ("a",), optimizer=lambda: keras.optimizers.SGD(0.01), monitor="loss", verbose=0))
    vals = [v for k, v in seen if k == "val"]
    assert vals == [0, 1, 10, 11, 20, 21]
    seen.clear()
    eng = Engine(_scalar_model(), ("a",), optimizer=lambda: keras.optimizers.SGD(0.01), monitor="loss", verbose=0,
                 run_dir=tmp_path)
    with pytest.raises(Interrupt):
        run(eng, callbacks=[_interrupt_after(1)])
    seen.clear()
    run(Engine(_scalar_model(), ("a",), optimizer=lambda: keras.optimizers.SGD(0.01), monitor="loss", verbose=0,
               run_dir=tmp_path), resume=True)
    assert [v for k, v in seen if k == "val"] == [11, 20, 21]


def test_split_view_redraws_disjoint_parts_every_epoch_and_trains_on_them():
    from icao_mtl.data import SplitView

    x, y = _data(40)
    view = SplitView(Source(x, y, batch=8), fractions=(0.5, 0.5), seed=3)
    r0, r1 = view.rows(0), view.rows(1)
    assert sorted(np.r_[r0[0], r0[1]].tolist()) == list(range(40)) and len(r0[0]) == 20
    assert not np.array_equal(r0[0], r1[0])
    np.testing.assert_array_equal(SplitView(Source(x, y), seed=3).rows(1)[0], r1[0])  # the same after a resume
    part = view.part(1)
    assert part.steps == 3
    rows = np.concatenate([b[0].numpy() for b in part.train(1)])
    np.testing.assert_array_equal(np.sort(rows.reshape(len(rows), -1), axis=0),
                                  np.sort(x[r1[1]].reshape(20, -1), axis=0))
    hist = _engine(_model()).fit([Phase("s", 2, passes=[Pass(steps=[Step("w"), Step("a")])])],
                                 {"w": view.part(0), "a": view.part(1)})
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["a_loss"]) for h in hist)


def test_image_pipeline_rows_are_the_whole_passes_images_with_their_augmentation(synth_small):
    from icao_mtl.data import ImagePipeline, SplitView, augment_config, load

    ds = load(str(synth_small), check_images="none")
    pipe = ImagePipeline(ds, 32, batch_size=16, augment=augment_config("reference"), seed=2)
    whole = {}
    for (x, _), idx in zip(pipe.train(3), _batches_of_ids(pipe, 3)):
        whole.update({int(i): img for i, img in zip(idx, x.numpy())})
    view = SplitView(pipe, seed=1)
    rows = view.rows(3)[0]
    got = np.concatenate([x.numpy() for x, _ in view.part(0).train(3)])
    assert len(got) == len(rows)
    want = np.stack([whole[int(i)] for i in rows])
    # the same images with the same augmentation, in the part's own shuffled order
    np.testing.assert_allclose(np.sort(got.reshape(len(got), -1).sum(1)), np.sort(want.reshape(len(want), -1).sum(1)),
                               rtol=1e-5)


def _batches_of_ids(pipe, epoch):

    ds = pipe.base().shuffle(len(pipe.ds), seed=pipe.seed * 100003 + epoch, reshuffle_each_iteration=False)
    return [idx.numpy() for idx, _ in ds.batch(pipe.batch_size)]


# ---------------------------------------------------------------------------------------------
# snapshots, stateful parts, context, logs

def test_a_snapshot_taken_at_the_end_of_warmup_is_rewound_to_even_after_a_resume(tmp_path):
    """The DAG method's recipe: warm up, snapshot, search, then fine-tune from the warm-up weights."""
    x, y = _data()

    def take(engine):
        engine.snapshot("warmup")

    def rewind(engine):
        engine.rewind("warmup", [engine.model.get_layer("conv").kernel])

    phases = [Phase("warmup", 1, on_end=take), Phase("search", 2), Phase("finetune", 2, setup=rewind)]
    full = _model()
    hist_full = _engine(full, tmp_path / "full").fit(phases, {"train": Source(x, y)})
    with pytest.raises(Interrupt):
        _engine(_model(), tmp_path / "cut").fit(phases, {"train": Source(x, y)}, callbacks=[_interrupt_after(3)])
    resumed = _model()
    engine = _engine(resumed, tmp_path / "cut")
    hist = engine.fit(phases, {"train": Source(x, y)}, resume=True)
    assert engine.snapshots == ["warmup"]
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in hist_full], rtol=1e-6)
    for a, b in zip(_weights(full), _weights(resumed)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match="No snapshot named 'nope'"):
        engine.rewind("nope")


class RunningMean:
    """A stateful part: a reward baseline updated by a hook after every pass."""

    def __init__(self):
        self.value, self.count = 0.0, 0

    def get_state(self):
        return {"value": self.value, "count": self.count, "history": np.arange(self.count, dtype=float)}

    def set_state(self, state):
        self.value, self.count = state["value"], state["count"]
        assert len(state["history"]) == self.count


def test_stateful_parts_are_checkpointed_with_the_weights(tmp_path):
    x, y = _data()

    def run(run_dir, callbacks=(), resume=False):
        model, baseline, rng = _model(), RunningMean(), np.random.default_rng(5)
        policy = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        draws = []

        def update(engine):  # what an agent does after a pass: draw, learn, move its baseline
            draws.append(float(rng.random()))
            baseline.value = 0.9 * baseline.value + 0.1 * draws[-1]
            baseline.count += 1
            policy.layers[0].kernel.assign_add(tf.fill(policy.layers[0].kernel.shape, draws[-1]))

        engine = _engine(model, run_dir, parts={"baseline": baseline, "rng": rng, "policy": policy})
        engine.fit([Phase("train", 4, passes=[Pass(on_end=update)])], {"train": Source(x, y)}, callbacks=callbacks,
                   resume=resume)
        return baseline, draws, policy

    b_full, d_full, p_full = run(tmp_path / "full")
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", callbacks=[_interrupt_after(2)])
    b, d, p = run(tmp_path / "cut", resume=True)
    assert (b.value, b.count) == (pytest.approx(b_full.value), 4) and d == d_full[2:]
    np.testing.assert_allclose(p.layers[0].kernel.numpy(), p_full.layers[0].kernel.numpy())
    with pytest.raises(ConfigError, match="cannot be checkpointed"):
        _engine(_model()).register("x", object())


def test_losses_see_the_step_context_and_every_scalar_they_return_is_logged(tmp_path):
    x, y = _data(32)  # 4 steps per epoch
    task = MaskedMultiTaskLoss(("a", "b"))
    seeds = []

    def fn(m, xb, yb, ctx):
        loss, logs = task(yb, m(xb, training=ctx.training))
        noise = tf.random.stateless_uniform([], seed=ctx.seed)
        tf.py_function(lambda s: seeds.append(tuple(s.numpy())), [ctx.seed], [])
        progress = tf.cast(ctx.phase_step, tf.float32) / tf.cast(ctx.phase_steps, tf.float32)
        return loss, {**logs, "step": tf.cast(ctx.step, tf.float32), "progress": progress, "noise": noise,
                      "epoch_seen": tf.cast(ctx.epoch, tf.float32)}

    engine = _engine(_model(), tmp_path, seed=7)
    hist = engine.fit([Phase("a", 1), Phase("b", 2, passes=[Pass(losses=[fn])])], {"train": Source(x, y)})
    assert "step" not in hist[0]
    assert [h["step"] for h in hist[1:]] == [5.5, 9.5]  # mean of global steps 4..7 and 8..11
    assert [h["progress"] for h in hist[1:]] == pytest.approx([1.5 / 8, 5.5 / 8])
    assert [h["epoch_seen"] for h in hist[1:]] == [1.0, 2.0]
    assert len(set(seeds)) == 8 and all(s[0] == 7 for s in seeds)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((tmp_path / "tensorboard").glob("events*"))))
    acc.Reload()
    assert {"noise", "progress", "loss"} <= set(acc.Tags()["tensors"])


def test_a_checkpoint_of_another_engine_version_is_refused_with_a_fix(tmp_path):
    import io

    x, y = _data()
    (tmp_path / "checkpoints").mkdir()
    buf = io.BytesIO()
    np.savez(buf, w0=np.zeros(1), state=np.frombuffer(json.dumps({"epoch": 1}).encode(), np.uint8))
    (tmp_path / "checkpoints" / "last.npz").write_bytes(buf.getvalue())
    with pytest.raises(ConfigError, match="another version of the engine.*new --out"):
        _engine(_model(), tmp_path).fit([Phase("train", 1)], {"train": Source(x, y)}, resume=True)


# ---------------------------------------------------------------------------------------------
# several steps per call, optimisers reused across fits

@pytest.mark.parametrize("per_call", [4, 5, 100])
def test_several_steps_per_call_train_exactly_as_one_step_per_call(per_call):
    """6 batches a pass: calls of 4 (4 + 2), 5 (5 + 1) or 100 (one call): the same weights, optimiser
    state, step count and epoch logs as one step per call."""
    x, y = _data(48)
    runs = {}
    for k in (1, per_call):
        model = _model()
        engine = _engine(model)
        hist = engine.fit([Phase("train", 2, passes=[Pass(steps_per_call=k)])], {"train": Source(x, y, 8)})
        runs[k] = (model, engine, hist)
    (m1, e1, h1), (mk, ek, hk) = runs[1], runs[per_call]
    for a, b in zip(_weights(m1), _weights(mk)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert ek.global_step == e1.global_step == 12
    assert int(ek.optimizers["model"].iterations) == 12
    for a, b in zip(h1, hk):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"])


def test_several_steps_per_call_stop_at_a_non_finite_step_with_no_update():
    x, y = _data(24)
    bad = x.copy()
    bad[9] = np.nan  # the second batch of 8
    model = _model()
    engine = _engine(model)
    with pytest.raises(NonFiniteLossError, match=r"global step 2\)"):
        engine.fit([Phase("train", 1, passes=[Pass(steps_per_call=8)])],
                   {"train": lambda epoch: tf.data.Dataset.from_tensor_slices((bad, y)).batch(8)})
    assert int(engine.optimizers["model"].iterations) == 1


def test_several_steps_per_call_are_refused_where_they_cannot_work():
    x, y = _data(16)
    engine = _engine(_model())
    with pytest.raises(ConfigError, match="several step kinds"):
        engine.fit([Phase("p", 1, passes=[Pass(steps=[Step("train"), Step("train")], steps_per_call=2)])],
                   {"train": Source(x, y)})

    class Batches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    with pytest.raises(ConfigError, match="every batch"):
        engine.fit([Phase("p", 1, passes=[Pass(steps_per_call=2)])], {"train": Source(x, y)}, callbacks=[Batches()])


def test_a_reused_optimiser_starts_each_fit_fresh_without_retracing():
    """Two models trained in turn in the same variables by assignment, the optimiser reused: each fit
    equals a fit with a fresh optimiser, and the step is traced once."""
    x, y = _data(32)
    start = _weights(_model(seed=1))
    traces = []

    def loss(model, xb, yb, ctx):
        traces.append(1)  # runs when traced only
        return MaskedMultiTaskLoss(("a", "b"))(yb, model(xb, training=True))

    model = _model()
    groups = {"model": VariableGroup("model", lambda: keras.optimizers.Adam(1e-2), reuse=True)}
    engine = Engine(model, ("a", "b"), groups=groups, monitor="loss", verbose=0)
    plan = [Phase("train", 2, passes=[Pass(losses=[loss], steps_per_call=3)])]
    engine.fit(plan, {"train": Source(x, y)})
    opt = engine.optimizers["model"]
    for v, w in zip(model.variables, start):
        v.assign(w)
    engine.fit(plan, {"train": Source(x, y)})
    assert engine.optimizers["model"] is opt and len(traces) == 2  # outside and inside the graph loop, once

    fresh = _model()
    for v, w in zip(fresh.variables, start):
        v.assign(w)
    _engine(fresh).fit([Phase("train", 2)], {"train": Source(x, y)})
    for a, b in zip(_weights(fresh), _weights(model)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_engine_iterates_its_data_without_tf_data_autotuning():
    """Deleting an iterator waits for the autotuning thread's next wake-up (seconds on a busy CPU, at the
    end of every epoch): every dataset the engine reads, training and evaluation, has autotuning off,
    whatever its source, and still gives the same batches."""
    from icao_mtl.training import _dataset

    x, y = _data()
    source = Source(x, y)
    for ds in (_dataset(source, 3, True), _dataset(source, 0, False), _dataset(source.train, 1, True),
               _dataset(source.train(2), 2, True)):
        assert ds.options().autotune.enabled is False
    got = np.concatenate([b.numpy() for b, _ in _dataset(source, 3, True)])
    np.testing.assert_array_equal(got, np.concatenate([b.numpy() for b, _ in source.train(3)]))


def test_a_pass_compiled_by_xla_trains_as_the_plain_one():
    x, y = _data()
    results = []
    for jit in (False, True):
        model = _model()
        engine = _engine(model)
        engine.fit([Phase("train", 2, passes=[Pass(jit_compile=jit)])], {"train": Source(x, y)})
        many = _engine(_model())  # and in a graph loop of several steps per call
        many.fit([Phase("train", 2, passes=[Pass(steps_per_call=3, jit_compile=jit)])], {"train": Source(x, y)})
        results.append((_weights(model), _weights(many.model), engine.history[-1]["loss"]))
    for plain, compiled in zip(results[0][:2], results[1][:2]):
        for a, b in zip(plain, compiled):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert results[0][2] == pytest.approx(results[1][2], rel=1e-5)

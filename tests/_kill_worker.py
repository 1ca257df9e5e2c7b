"""Run a command of the package in this process and kill it with SIGKILL at a chosen point.

    python tests/_kill_worker.py MODULE [ARGS...]

with the environment variable ``KILL_AT`` (absent: the command runs to its end):

- ``step:E:N``: in the E-th engine the process creates (1-based), right after its N-th optimisation step
  (the middle of an epoch: the epoch's checkpoint is not written yet);
- ``fit:E:K``: in the E-th engine (or the engine of the model named E), as its K-th ``fit`` begins (an engine reused for many trainings: the
  K-th trial of a population search);
- ``phase:E:NAME``: in the E-th engine, right after the checkpoint written at the end of phase NAME (a
  phase boundary: the next phase's setup has not run).

The kill is a real ``kill -9`` of this process: nothing is flushed or cleaned up, as when a machine
loses power. The tests then run the same command with ``--resume`` and compare with an uninterrupted run.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _install(spec: str) -> None:
    import keras

    import icao_mtl.training as training

    kind, engine_no, where = spec.split(":", 2)
    model_name = None if engine_no.isdigit() else engine_no  # an engine named by its model's name
    engine_no = int(engine_no) if model_name is None else -1
    made = [0]
    init, fit, save = training.Engine.__init__, training.Engine.fit, training.Engine._save

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made[0] += 1
        self._kill_here = made[0] == engine_no or (model_name is not None and self.model.name == model_name)

    class KillAtStep(keras.callbacks.Callback):
        def __init__(self, engine):
            super().__init__()
            self.engine = engine

        def on_train_batch_end(self, batch, logs=None):
            if self.engine.global_step >= int(where):
                die()

    class KillAtFit(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            die()

    def fit_(self, phases, data, validation=None, *, resume=False, callbacks=()):
        callbacks = list(callbacks)
        if self._kill_here and kind == "step":
            callbacks.append(KillAtStep(self))
        self._fits = getattr(self, "_fits", 0) + 1
        if self._kill_here and kind == "fit" and self._fits == int(where):
            callbacks.append(KillAtFit())
        return fit(self, phases, data, validation, resume=resume, callbacks=callbacks)

    def save_(self, name, state, *, full):
        save(self, name, state, full=full)
        if self._kill_here and kind == "phase" and name == "last" and self.phase.name == where and \
                state["phase_epoch"] >= self.phase.epochs:
            die()

    training.Engine.__init__, training.Engine.fit, training.Engine._save = __init__, fit_, save_


if __name__ == "__main__":
    module, argv = sys.argv[1], sys.argv[2:]
    if os.environ.get("KILL_AT"):
        _install(os.environ["KILL_AT"])
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)

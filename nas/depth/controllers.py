"""Search controllers as keras-tuner oracles: they propose configurations and remember results; they
never build or train a model (any keras-tuner Tuner can use them, also in keras-tuner's distributed
chief / worker mode).

- :class:`RandomOracle` (the paper's approach 1): uniform over the space, no configuration repeated
  until the space is exhausted.
- :class:`ReinforceOracle` (approach 2, done right): an LSTM policy that samples one depth per task
  group, autoregressively, and learns with REINFORCE.
- :class:`ReferenceOracle`: the reference code's "REINFORCE" controller reproduced as it really
  behaves (spec/icao_paper.md sections 9.5-9.6), a **baseline that does not learn**, so benchmarks can
  show what the published search explored.
- :class:`ExhaustiveOracle`: every configuration once, the ground truth of controller benchmarks.

All three keep their whole state (trial history, random streams, policy weights, baseline,
optimiser slots) in keras-tuner's ``oracle.json`` through ``get_state`` / ``set_state``, so a reloaded
search continues the same sequence.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import io
import math

import keras_tuner
import numpy as np

from icao_mtl.errors import ConfigError

from .space import BranchDepthSpace, Config

REWARDS = ("accuracy", "eer")


def _reward_from_metrics(metrics: dict, reward: str) -> float:
    if reward == "accuracy":
        return float(metrics["val_accuracy"])
    return 1.0 - float(metrics["val_eer_mean"])


def _trial_metrics(trial) -> dict:
    out = {}
    for name in ("val_accuracy", "val_eer_mean"):
        if trial.metrics.exists(name):
            out[name] = trial.metrics.get_last_value(name)
    return out



def _encode_arrays(arrays) -> str:
    """Arrays as one base64 string (an .npz), for a JSON oracle state."""
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode_arrays(text: str) -> list:
    with np.load(io.BytesIO(base64.b64decode(text))) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]

def drive_with_rewards(oracle, reward, trials: int, project_dir) -> list:
    """Run an oracle against a reward function instead of trained models, as a keras-tuner Tuner drives
    it (``create_trial`` / ``update_trial`` / ``end_trial``): for controller benchmarks and tests on
    bandits whose best configuration is known.

    Args:
        oracle: one of this module's oracles.
        reward: ``config -> float``, a validation accuracy in [0, 1] (reported as ``val_accuracy`` and
            ``1 - reward`` as ``val_eer_mean``).
        trials: at most this many trials (fewer when the oracle stops).
        project_dir: where the oracle saves its state.

    Returns:
        the proposed configurations, in order.
    """
    oracle._set_project_dir(str(project_dir), "search")
    oracle.verbose = 0
    proposed = []
    with contextlib.redirect_stdout(io.StringIO()):
        for _ in range(trials):
            trial = oracle.create_trial("tuner0")
            if trial.status == "STOPPED":
                break
            config = oracle.space.from_values(trial.hyperparameters.values)
            proposed.append(config)
            r = float(reward(config))
            oracle.update_trial(trial.trial_id, {"val_accuracy": r, "val_eer_mean": 1 - r})
            trial.status = "COMPLETED"
            oracle.end_trial(trial)
    return proposed


class _SpaceOracle(keras_tuner.Oracle, metaclass=abc.ABCMeta):
    """Shared logic: a :class:`BranchDepthSpace`, the objective (validation mean EER, minimised), the
    list of finished trials as ``(config, reward)`` and the hook :meth:`propose`."""

    label = "base"

    def __init__(self, space: BranchDepthSpace, *, max_trials: int = 10, seed: int = 0, reward: str = "accuracy",
                 objective=None, **kwargs):
        if reward not in REWARDS:
            raise ConfigError(f"reward must be one of {REWARDS}. Received: reward={reward!r}")
        if not isinstance(max_trials, int) or max_trials < 1:
            raise ConfigError(f"max_trials must be a positive integer. Received: {max_trials!r}")
        super().__init__(objective=objective or keras_tuner.Objective("val_eer_mean", "min"), max_trials=max_trials,
                         hyperparameters=space.hyperparameters(), allow_new_entries=False, tune_new_entries=False,
                         seed=seed, **kwargs)
        # keras-tuner draws a random seed for seed=0 (``seed or random.randint(...)``): seed 0 is a seed here
        self.seed = self._seed_state = int(seed)
        self.space = space
        self.reward = reward
        self.history: list = []  # [config (list), reward] per completed trial, in end order
        self.stop_reason: str | None = None

    # subclasses ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def propose(self) -> Config | None:
        """The next configuration, or None to stop (then set ``self.stop_reason``)."""

    def observe(self, config: Config, reward: float) -> None:
        """Learn from a finished trial (default: nothing)."""

    def after_trial(self) -> None:
        """Called after every ended trial, finished or failed, once it no longer runs (default: nothing)."""

    # keras-tuner hooks ------------------------------------------------------------------------------
    def populate_space(self, trial_id):
        config = self.propose()
        if config is None:
            return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}
        return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING, "values": self.space.to_values(config)}

    @keras_tuner.synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        trial = self.trials[trial.trial_id]
        if trial.status == "COMPLETED":
            metrics = _trial_metrics(trial)
            if metrics:
                config = self.space.from_values(trial.hyperparameters.values)
                r = _reward_from_metrics(metrics, self.reward)
                self.history.append([list(config), r])
                self.observe(config, r)
        self.after_trial()
        self.save()

    def tried(self) -> set:
        """Configurations proposed so far (running or finished)."""
        return {self.space.from_values(t.hyperparameters.values) for t in self.trials.values()
                if t.hyperparameters.values}

    def get_state(self):
        state = super().get_state()
        state.update(space=self.space.to_dict(), reward=self.reward, history=self.history, stop_reason=self.stop_reason,
                     label=self.label)
        return state

    def set_state(self, state):
        super().set_state(state)
        if state.get("space") and BranchDepthSpace.from_dict(state["space"]) != self.space:
            raise ConfigError("The saved search used another search space. Fix: resume with the same groups and "
                              "depths, or start a new search directory.")
        self.history = state.get("history", [])
        self.stop_reason = state.get("stop_reason")


class _PolicyOracle(_SpaceOracle):
    """A controller with a network: its variables, its optimiser's, the baseline and the last
    configuration are saved with the search (``policy`` holds the arrays as one base64 .npz)."""

    @abc.abstractmethod
    def _policy_variables(self) -> list:
        """The variables of the controller's network (each controller names its own)."""

    def get_state(self):
        state = super().get_state()
        arrays = [v.numpy() for v in self._policy_variables()] + [v.numpy() for v in self._opt.variables]
        state.update(policy=_encode_arrays(arrays), baseline=self.baseline,
                     last_config=list(self.last_config) if self.last_config else None)
        return state

    def set_state(self, state):
        super().set_state(state)
        if "policy" not in state:
            return
        arrays = _decode_arrays(state["policy"])
        variables = self._policy_variables() + list(self._opt.variables)
        if len(arrays) != len(variables) or any(tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, variables)):
            raise ConfigError("The saved controller does not match this controller's shape (units or space). Fix: "
                              "resume with the same controller options.")
        for v, a in zip(variables, arrays):
            v.assign(a)
        self.baseline = state["baseline"]
        self.last_config = tuple(state["last_config"]) if state["last_config"] else None


class RandomOracle(_SpaceOracle):
    """Uniform sampling without repetition until the space is exhausted (then the search stops and
    says so). Its random stream is saved with the search, so a resumed search proposes what an
    uninterrupted one would have."""

    label = "random"

    def __init__(self, space, **kwargs):
        super().__init__(space, **kwargs)
        self._rng = np.random.default_rng(self.seed)

    def propose(self):
        tried = self.tried()
        if len(tried) >= self.space.size:
            self.stop_reason = f"the space is exhausted: all {self.space.size} configurations were tried"
            return None
        if self.space.size <= 100_000:
            remaining = [i for i in range(self.space.size) if self.space.at(i) not in tried]
            return self.space.at(int(remaining[self._rng.integers(len(remaining))]))
        while True:  # huge spaces: rejection sampling
            config = tuple(int(c[self._rng.integers(len(c))]) for c in self.space.depths)
            if config not in tried:
                return config

    def get_state(self):
        state = super().get_state()
        state["rng"] = self._rng.bit_generator.state
        return state

    def set_state(self, state):
        super().set_state(state)
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]


class ExhaustiveOracle(_SpaceOracle):
    """Every configuration of the space once, in enumeration order (``max_trials`` is the space's
    size whatever is asked): the ground truth a controller's regret is measured against. With a
    population of P children trained at a time, the 625 configurations of the paper's space take
    625 / P training runs."""

    label = "exhaustive"

    def __init__(self, space, **kwargs):
        kwargs["max_trials"] = space.size
        super().__init__(space, **kwargs)

    def propose(self):
        tried = self.tried()
        for config in self.space:
            if config not in tried:
                return config
        self.stop_reason = f"the space is exhausted: all {self.space.size} configurations were tried"
        return None


# ---------------------------------------------------------------------------------------------------
# REINFORCE

def _encode(space: BranchDepthSpace, config: Config | None) -> np.ndarray:
    """One-hot encoding of a configuration, concatenated over groups, shape (sum of choices,)."""
    parts = []
    for g, c in enumerate(space.depths):
        v = np.zeros(len(c), np.float32)
        if config is not None:
            v[c.index(config[g])] = 1.0
        parts.append(v)
    return np.concatenate(parts)


class ReinforceOracle(_PolicyOracle):
    """REINFORCE with an LSTM policy (Williams 1992, as ENAS uses it; Zoph and Le 2017).

    The policy is an LSTM of ``units`` cells run for one step per task group. At step g its input is
    the one-hot of the depth chosen at step g - 1 (zeros at the first step), the one-hot encoding of
    the last trial's configuration (the paper feeds the controller the previous configuration) and a
    one-hot of the step. A dense layer per group turns the LSTM output into logits over that group's
    depths; the depth is **sampled** from the softmax, so ``log pi(config) = sum_g log pi(a_g | ...)``
    is known for every proposal.

    After a trial with reward R (mean validation accuracy over requisites, in [0, 1], or 1 - mean
    EER), the controller minimises ``-(R - b) * log pi(config) - beta * H(pi)``, ``updates`` times,
    where b is an exponential moving average of past rewards (taken before this reward enters it) and
    H the entropy of the per-step distributions. The gradient of ``(R - b) log pi`` is the REINFORCE
    estimate of the gradient of the expected reward; the baseline lowers its variance without bias
    because it does not depend on the sampled action; the entropy bonus keeps the policy from
    collapsing before it has seen enough. Plain SGD is the default optimiser (Adam is an option; on a
    625-configuration bandit it collapsed early on suboptimal configurations for half of the seeds).

    The advantage is **normalised** by default: divided by a running root mean square of past
    advantages (same decay as the baseline), so the step does not depend on the reward's scale. Real
    children differ by a point of accuracy or less; with the raw advantage such rewards barely move the
    policy (gap 0.5 point per depth step: P(best) 0.003-0.007 after 80 trials, best never found, for 5
    of 5 seeds) while the entropy bonus keeps it uniform. Normalised, the search proposes the same
    configurations at gaps of 0.5, 2 or 10 points (``benchmarks/bench_controllers.py``). The
    defaults ``learning_rate=0.1, entropy_weight=0.05`` are the normalised mode's (chosen on that
    bandit: the best found and P(best) >= 0.97 for 8 of 8 seeds within 80 trials); with
    ``normalize=False`` the step follows the raw advantage and ``learning_rate=1.0,
    entropy_weight=0.01`` (the former defaults) suit rewards that differ by about 5 points.

    How it differs from the reference code's controller (:class:`ReferenceOracle`): that one maps one
    4-way softmax to depths by fixed bins, never samples and never forms log pi; its loss
    ``y * (R - b)`` is constant in the weights because the softmax sums to 1, so its gradient is zero and
    it never learns (and it would push the wrong way if it did).

    A configuration already evaluated is not trained again: its stored reward updates the policy and
    another one is sampled; after ``max_resamples`` repeats in a row the policy has converged on
    evaluated configurations and the search stops, saying so.

    Args:
        space: the search space.
        units: LSTM cells (the paper: 32).
        learning_rate: controller step, in units of the normalised advantage (the reference code used
            Adam at 3.5e-4, far too small to move the policy in tens of trials).
        baseline_decay: EMA decay of the baseline (the reference code: 0.999).
        entropy_weight: beta.
        updates: gradient steps per finished trial (the paper: m).
        max_resamples: consecutive repeated proposals (each a cheap update from the stored reward)
            before the search stops.
        optimizer: "sgd" (default) or "adam".
        normalize: divide advantages by their running root mean square (scale-free steps; default).
        batch: **batch REINFORCE**: the policy is updated once per ``batch`` finished trials (the
            configurations a population of children trained together: ``--population``), from the mean
            of their ``advantage * grad log pi`` with one baseline, the one before the batch, and the
            baseline then moves by the batch's mean reward. Proposals within a batch are drawn from
            the same policy, conditioned on the same last configuration. ``batch=1``: one update per
            trial (the paper). A batch also ends when no trial is running any more (the last, partial
            population of a search).
    """

    label = "reinforce"

    def __init__(self, space, *, units: int = 32, learning_rate: float = 0.1, baseline_decay: float = 0.8,
                 entropy_weight: float = 0.05, updates: int = 1, max_resamples: int = 200, optimizer: str = "sgd",
                 normalize: bool = True, batch: int = 1, **kwargs):
        super().__init__(space, **kwargs)
        if not (learning_rate > 0 and 0 <= baseline_decay < 1 and entropy_weight >= 0 and updates >= 1):
            raise ConfigError("REINFORCE needs learning_rate > 0, 0 <= baseline_decay < 1, entropy_weight >= 0 and "
                              f"updates >= 1. Received: {learning_rate}, {baseline_decay}, {entropy_weight}, {updates}.")
        if not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"REINFORCE's batch must be a positive integer. Received: {batch!r}.")
        self.batch = batch
        self.pending: list = []  # [config, reward] of the running batch
        self.units, self.learning_rate = units, learning_rate
        self.baseline_decay, self.entropy_weight = baseline_decay, entropy_weight
        self.updates, self.max_resamples = updates, max_resamples
        self.optimizer_name, self.normalize = optimizer, normalize
        self.reward_var = None
        self.baseline: float | None = None
        self.last_config: Config | None = None
        self._rng = np.random.default_rng(self.seed)
        self._build()

    # the policy --------------------------------------------------------------------------------
    def _build(self):
        import keras

        kmax = max(len(c) for c in self.space.depths)
        self._in_dim = kmax + sum(len(c) for c in self.space.depths) + len(self.space.groups)
        init = keras.initializers.GlorotUniform(seed=int(self.seed))
        self._cell = keras.layers.LSTMCell(self.units, kernel_initializer=init,
                                           recurrent_initializer=keras.initializers.Orthogonal(seed=int(self.seed)))
        self._cell.build((None, self._in_dim))
        self._heads = []
        for g, c in enumerate(self.space.depths):
            d = keras.layers.Dense(len(c), kernel_initializer=keras.initializers.GlorotUniform(seed=int(self.seed) + g + 1))
            d.build((None, self.units))
            self._heads.append(d)
        self._variables = [*self._cell.trainable_variables, *(v for h in self._heads for v in h.trainable_variables)]
        self._opt = (keras.optimizers.Adam(self.learning_rate) if self.optimizer_name == "adam"
                     else keras.optimizers.SGD(self.learning_rate))
        self._opt.build(self._variables)
        self._compile()

    def _compile(self):
        import tensorflow as tf

        groups = len(self.space.groups)
        kmax = max(len(c) for c in self.space.depths)

        def run(enc, actions=None, seed=None):
            """Unrolled over groups: returns (actions, log pi, entropy)."""
            state = [tf.zeros((1, self.units)), tf.zeros((1, self.units))]
            prev = tf.zeros((1, kmax))
            logp, ent, chosen = 0.0, 0.0, []
            for g in range(groups):
                x = tf.concat([prev, enc, tf.one_hot([g], groups)], axis=1)
                h, state = self._cell(x, state)
                logits = self._heads[g](h)
                logq = tf.nn.log_softmax(logits)[0]
                if actions is None:
                    a = tf.random.stateless_categorical(logits, 1, seed=tf.stack([seed, g]))[0, 0]
                else:
                    a = actions[g]
                a = tf.cast(a, tf.int32)
                chosen.append(a)
                logp += logq[a]
                ent += -tf.reduce_sum(tf.exp(logq) * logq)
                prev = tf.one_hot([a], kmax)
            return tf.stack(chosen), logp, ent

        @tf.function(reduce_retracing=True)
        def sample(enc, seed):
            return run(enc, seed=seed)[0]

        @tf.function(reduce_retracing=True)
        def logp(enc, actions):
            return run(enc, actions=actions)[1]

        @tf.function(reduce_retracing=True)
        def update(enc, actions, advantage):
            with tf.GradientTape() as tape:
                _, lp, ent = run(enc, actions=actions)
                loss = -advantage * lp - self.entropy_weight * ent
            self._opt.apply(tape.gradient(loss, self._variables), self._variables)
            return loss

        @tf.function(reduce_retracing=True)
        def update_batch(enc, actions, advantages):
            """The mean of the batch's REINFORCE losses (actions (B, G), advantages (B,)): one step."""
            with tf.GradientTape() as tape:
                loss = 0.0
                for i in range(actions.shape[0]):  # B is static: one trace per batch size
                    _, lp, ent = run(enc, actions=actions[i])
                    loss += -advantages[i] * lp - self.entropy_weight * ent
                loss = loss / actions.shape[0]
            self._opt.apply(tape.gradient(loss, self._variables), self._variables)
            return loss

        self._sample_fn, self._logp_fn, self._update_fn = sample, logp, update
        self._update_batch_fn = update_batch

    def _enc(self, last: Config | None):
        return _encode(self.space, last)[None, :]

    def _actions(self, config: Config):
        return np.array([c.index(d) for c, d in zip(self.space.depths, config)], np.int32)

    def probability_of(self, config: Config, last: Config | None = None) -> float:
        """pi(config | last), exactly (last defaults to the last trial's configuration)."""
        last = self.last_config if last is None else last
        return float(math.exp(float(self._logp_fn(self._enc(last), self._actions(self.space.check(config))))))

    def _sample(self) -> Config:
        seed = np.int32(self._rng.integers(2**31 - 1))
        actions = self._sample_fn(self._enc(self.last_config), seed).numpy()
        return tuple(c[int(a)] for c, a in zip(self.space.depths, actions))

    def _advantage(self, reward: float, b: float) -> float:
        advantage = reward - b
        if self.normalize:
            var = self.reward_var if self.reward_var is not None else 0.0
            self.reward_var = self.baseline_decay * var + (1 - self.baseline_decay) * advantage ** 2
            advantage = advantage / math.sqrt(self.reward_var + 1e-8)
        return advantage

    def _update(self, last: Config | None, config: Config, reward: float) -> None:
        b = reward if self.baseline is None else self.baseline
        advantage = self._advantage(reward, b)
        enc, actions = self._enc(last), self._actions(config)
        for _ in range(self.updates):
            self._update_fn(enc, actions, np.float32(advantage))
        self.baseline = b * self.baseline_decay + (1 - self.baseline_decay) * reward if self.baseline is not None \
            else reward

    def _update_batch(self, last: Config | None, batch: list) -> None:
        """One policy step from a batch of ``(config, reward)`` sampled from the same policy."""
        rewards = [r for _, r in batch]
        b = float(np.mean(rewards)) if self.baseline is None else self.baseline
        advantages = np.array([self._advantage(r, b) for r in rewards], np.float32)
        actions = np.stack([self._actions(c) for c, _ in batch])
        enc = self._enc(last)
        for _ in range(self.updates):
            self._update_batch_fn(enc, actions, advantages)
        mean = float(np.mean(rewards))
        self.baseline = b * self.baseline_decay + (1 - self.baseline_decay) * mean if self.baseline is not None \
            else mean

    # the oracle --------------------------------------------------------------------------------------
    def propose(self):
        if not self.trials:  # the paper starts from a random configuration
            return tuple(int(c[self._rng.integers(len(c))]) for c in self.space.depths)
        tried = {tuple(c): r for c, r in self.history}
        running = self.tried()
        for _ in range(self.max_resamples):
            config = self._sample()
            if config not in running:
                return config
            if config in tried:  # learn from the known reward instead of training it again
                self._update(self.last_config, config, tried[config])
        if len(running) >= self.space.size:
            self.stop_reason = f"the space is exhausted: all {self.space.size} configurations were tried"
        else:
            self.stop_reason = (f"the policy converged: {self.max_resamples} samples in a row were configurations "
                                "already evaluated")
        return None

    def observe(self, config, reward):
        if self.batch == 1:
            self._update(self.last_config, config, reward)
            self.last_config = config
            return
        self.pending.append([tuple(config), float(reward)])

    def after_trial(self):
        # a batch ends when full, or when nothing runs any more (a partial last population, failures)
        if self.pending and (len(self.pending) >= self.batch or not self.ongoing_trials):
            self._update_batch(self.last_config, self.pending)
            self.last_config = tuple(self.pending[-1][0])
            self.pending = []

    def _policy_variables(self) -> list:
        return list(self._variables)

    def get_state(self):
        state = super().get_state()
        state.update(rng=self._rng.bit_generator.state, reward_var=self.reward_var,
                     pending=[[list(c), r] for c, r in self.pending],
                     hyper=dict(units=self.units, learning_rate=self.learning_rate, baseline_decay=self.baseline_decay,
                                entropy_weight=self.entropy_weight, updates=self.updates, normalize=self.normalize,
                                batch=self.batch))
        return state

    def set_state(self, state):
        super().set_state(state)
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]
        self.reward_var = state.get("reward_var")
        self.pending = [[tuple(c), r] for c, r in state.get("pending", [])]


# ---------------------------------------------------------------------------------------------------
# the reference code's controller, as it behaves

class ReferenceOracle(_PolicyOracle):
    """The paper's reference "REINFORCE" controller (``nas_controller_2.py``), reproduced as a
    baseline. It is NOT a policy gradient and does not learn.

    An RNN over an LSTMCell(32) (uniform(-0.1, 0.1) initialisers) reads a (1, G) input, then a
    Dense(G) and a softmax over G values. The first proposal is predicted from the constant input
    (42, ..., 42), later ones from the previous configuration as raw integers. Each softmax value v is
    binned into a depth: the i-th of K depths when i/K <= v < (i+1)/K (K = 5: v < 0.2 gives 1, ...).
    No sampling, so the search is deterministic. "Training" fits the network on the constant input with
    the loss ``mean(y * (R - b))`` with R the mean accuracy in percent and b an EMA baseline (decay
    0.999), Adam(3.5e-4, amsgrad); because the G softmax values sum to 1 that loss equals (R - b) / G
    whatever the weights, so its gradient is zero: numerically exactly 0 or float32 rounding noise,
    which Adam's normalisation turns into a random walk of at most the learning rate per step
    (``gradient_norms`` records it). Only configurations whose
    bins are consistent with G values summing to 1 can ever be proposed (65 of the 625 of the paper's
    space: :func:`reachable_configs`); in practice it proposes (2, 2, 2, 2) again and again, and a search
    becomes repeated retraining of one architecture. Repeated configurations are trained again, as in
    the reference code.
    """

    label = "reference"

    def __init__(self, space, *, updates: int = 1, **kwargs):
        super().__init__(space, **kwargs)
        self.updates = updates
        self.baseline = None
        self.last_config: Config | None = None
        self.gradient_norms: list = []  # measured after each "training": exactly 0
        self._build()

    def _build(self):
        import keras

        g = len(self.space.groups)
        init = keras.initializers.RandomUniform(-0.1, 0.1, seed=int(self.seed))
        inp = keras.Input((1, g))
        x = keras.layers.RNN(keras.layers.LSTMCell(32, kernel_initializer=init, recurrent_initializer=init))(inp)
        out = keras.layers.Dense(g, activation="softmax",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=int(self.seed)))(x)
        self._model = keras.Model(inp, out)
        self._opt = keras.optimizers.Adam(keras.optimizers.schedules.InverseTimeDecay(3.5e-4, 1, 1e-3), amsgrad=True)
        self._opt.build(self._model.trainable_variables)

    def _bin(self, values) -> Config:
        out = []
        for v, c in zip(values, self.space.depths):
            i = int(math.floor(float(v) * len(c)))
            out.append(c[min(max(i, 0), len(c) - 1)])  # v == 1.0 matched no bin in the reference: clipped here
        return tuple(out)

    def predict(self, inputs) -> np.ndarray:
        return self._model(np.asarray(inputs, np.float32).reshape(1, 1, -1)).numpy()[0]

    def propose(self):
        g = len(self.space.groups)
        inputs = [42.0] * g if self.last_config is None else list(self.last_config)
        config = self._bin(self.predict(inputs))
        self.last_config = config
        return config

    def observe(self, config, reward):
        import tensorflow as tf

        r = 100.0 * reward  # the reference's reward was the mean accuracy in percent
        self.baseline = 0.0 if self.baseline is None else self.baseline
        self.baseline = self.baseline - (1 - 0.999) * (self.baseline - r)
        x = np.full((1, 1, len(self.space.groups)), 42.0, np.float32)
        for _ in range(self.updates):
            with tf.GradientTape() as tape:
                y = self._model(x, training=True)
                loss = tf.reduce_mean(y * (r - self.baseline))
            grads = tape.gradient(loss, self._model.trainable_variables)
            self.gradient_norms.append(float(tf.linalg.global_norm(grads)))
            self._opt.apply(grads, self._model.trainable_variables)

    def _policy_variables(self) -> list:
        return list(self._model.weights)

    def get_state(self):
        state = super().get_state()
        state.update(gradient_norms=self.gradient_norms)
        return state

    def set_state(self, state):
        super().set_state(state)
        self.gradient_norms = state.get("gradient_norms", [])


def reachable_configs(space: BranchDepthSpace) -> list[Config]:
    """Configurations the reference controller can propose: bins whose lower edges sum to at most 1
    and whose upper edges sum to more than 1 (G softmax values summing to 1 must fit in them),
    excluding exact bin-edge ties. For the paper's space: 65 of 625."""
    out = []
    for config in space:
        lows = [c.index(d) / len(c) for c, d in zip(space.depths, config)]
        highs = [(c.index(d) + 1) / len(c) for c, d in zip(space.depths, config)]
        if sum(lows) < 1 - 1e-9 and sum(highs) > 1 + 1e-9:
            out.append(config)
    return out


CONTROLLERS = {"random": RandomOracle, "reinforce": ReinforceOracle, "reference": ReferenceOracle,
               "exhaustive": ExhaustiveOracle}

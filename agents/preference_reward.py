"""Online reward learning from pairwise preferences (RL-VLM-F on PEBBLE, methods.md sections 2 and 4).

Data flow inside :class:`PreferenceRewardVecEnv`, one vector step at a time::

    env step -> net input of each sub-env's step (64x64 frame or observation) -> the
    PreferenceLearner buffers it, runs query rounds and Bradley-Terry refits on its schedule
    -> agent reward = the learner's normalised ensemble-mean prediction of each step's input

The query schedule, pair sampling, labels, fits and reward normalisation, and why they are as
they are, live in :mod:`vlmrl.agents.preference_rounds`. Here:

- The wrapper adapts the vector env to the learner: it picks the net input of each step (the
  step's frame at the net's size, or its own observation: the terminal one at an episode end)
  and hands the labeler's frames over only when the labeler reads frames.
- PEBBLE relabelling (:class:`~vlmrl.agents.rollout_relabel.SACReplayRelabelCallback`). The
  replay buffer holds observations, not frames, so the callback keeps a parallel ring of the
  wrapper's net inputs (64x64 frames or observations, the terminal observation at episode ends)
  at the replay buffer's write position, and rewrites every stored reward after each refit. One
  mechanism serves both nets and gives exactly the reward the wrapper would give now. With
  ``labeling: async`` PPO's rollout is relabelled the same way before each update
  (:class:`~vlmrl.agents.rollout_relabel.PPORolloutRelabelCallback`): labels arrive while the
  rollout is collected, and late ones must still count.
- Labelling mode (``preference.labeling``): ``sync`` waits for each round inside the env step;
  ``async`` hands rounds to a background worker and polls its answers every step
  (:mod:`vlmrl.agents.async_labelling`). The wrapper closes the worker on ``close()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from vlmrl.agents.async_labelling import make_pair_answers
from vlmrl.agents.pebble import StateEntropyExploration
from vlmrl.agents.preference_config import OnlinePreferenceConfig
from vlmrl.agents.preference_rounds import PairAnswers, PreferenceLearner, PreferenceRoundStats
from vlmrl.agents.reward_wrapper import RewardVecEnvWrapper
from vlmrl.agents.rollout_relabel import PPORolloutRelabelCallback, SACReplayRelabelCallback
from vlmrl.agents.training_callbacks import RewardMetricsCallback
from vlmrl.errors import ConfigError
from vlmrl.reward_learning import FitResult
from vlmrl.reward_nets import RewardModel, downsample_frames


def preference_needs_frames(labeler: Any, schedule: OnlinePreferenceConfig) -> bool:
    """Whether the envs must render: a VLM labeler or a cnn net needs frames; the teacher with an mlp does not."""
    return bool(getattr(labeler, "needs_frames", True)) or schedule.net.kind == "cnn"


def make_preference_reward_model(
    schedule: OnlinePreferenceConfig, observation_space: Any, device: str = "auto", seed: int = 0
) -> RewardModel:
    """A fresh ensemble for the schedule's ``net``: cnn on frames, or mlp on flat Box observations."""
    obs_dim = None
    if schedule.net.kind == "mlp":
        shape = getattr(observation_space, "shape", None)
        if shape is None or len(shape) != 1:
            raise ConfigError(f"preference.net.kind 'mlp' needs a flat Box observation space, got {observation_space}")
        obs_dim = int(shape[0])
    return RewardModel(schedule.net.net_config(obs_dim), ensemble_size=schedule.net.ensemble_size, device=device, seed=seed)


class PreferenceRewardVecEnv(RewardVecEnvWrapper):
    """Gives the agent a reward learned from preferences between its own recent steps.

    Each sub-env must be wrapped in :class:`~vlmrl.agents.frame_capture.FrameInInfo` (frames in
    ``info["frame"]`` when the labeler or a cnn net needs them). ``info["true_reward"]`` is kept,
    ``info["learned_reward"]`` holds the reward given. The reward is 0 before the first fit.

    Args:
        venv: the vector env.
        labeler: ``compare(first, second, goal, true_rewards=(r1, r2)) -> float32 [N]`` (1.0 first
            preferred, 0.0 second, 0.5 tie, NaN none): a VLM preference labeler or the teacher.
        goal: the task description shown to a VLM.
        reward_model: the ensemble to fit (cnn on frames or mlp on observations).
        schedule: query and fit schedule (the ``preference:`` section).
        seed: seeds pair sampling and the fits.
        answers: where query rounds are labelled (:func:`build_preference_env` builds them for
            ``labeler`` and ``schedule.labeling`` with
            :func:`~vlmrl.agents.async_labelling.make_pair_answers`).

    Attributes:
        learner: the :class:`~vlmrl.agents.preference_rounds.PreferenceLearner` (ring buffer,
            pairs, counters, schedule position).
        last_inputs: the net inputs of the latest vector step (read by the PEBBLE callback).
    """

    reward_info_key = "learned_reward"
    given_return_metric: ClassVar[str] = "reward/learned_return"
    reward_net_file: ClassVar[str] = "preference_reward_net"
    arrays_file: ClassVar[str] = "preference_pairs.npz"
    state_file: ClassVar[str] = "preference_state.json"

    def __init__(
        self,
        venv: VecEnv,
        labeler: Any,
        goal: str,
        reward_model: RewardModel,
        schedule: OnlinePreferenceConfig | None = None,
        seed: int = 0,
        *,
        answers: PairAnswers,
    ) -> None:
        super().__init__(venv)
        self.labeler = labeler
        self.schedule = schedule or OnlinePreferenceConfig()
        if reward_model.config.kind != self.schedule.net.kind:
            raise ValueError(f"reward_model is a {reward_model.config.kind} but schedule.net.kind is {self.schedule.net.kind!r}")
        self.labeler_reads_frames = bool(getattr(labeler, "needs_frames", True))
        self.learner = PreferenceLearner(self.schedule, reward_model, self.num_envs, answers, seed=seed)
        self.labeling_at_checkpoint: str | None = None
        """The labelling mode of the checkpoint this run resumed from (None before a load)."""

    @property
    def reward_model(self) -> RewardModel:
        # The learner fits it; a checkpoint load replaces it through the setter.
        return self.learner.reward_model

    @reward_model.setter
    def reward_model(self, model: RewardModel) -> None:
        self.learner.reward_model = model

    @property
    def stats(self) -> PreferenceRoundStats:
        return self.learner.stats

    @property
    def fitted(self) -> bool:
        return self.learner.fitted

    @property
    def needs_frames(self) -> bool:
        return preference_needs_frames(self.labeler, self.schedule)

    @property
    def reward_version(self) -> int:
        return self.learner.stats.fits

    def labelling_failure(self) -> str | None:
        failures = getattr(self.learner.answers, "failures", None)
        return failures.describe() if failures is not None and failures.tripped else None

    def close(self) -> None:
        """Stop the labelling worker (questions in flight are abandoned), then close the envs."""
        close_answers = getattr(self.learner.answers, "close", None)
        if close_answers is not None:
            close_answers()
        super().close()

    def _rewards(
        self, observations: Any, frames: np.ndarray | None, true_rewards: np.ndarray, dones: np.ndarray, infos: list[dict]
    ) -> np.ndarray:
        truncated = np.array([info.get("TimeLimit.truncated", False) for info in infos], dtype=bool)
        ends = np.asarray(dones, dtype=bool)
        inputs = self._net_inputs(observations, frames, ends, infos)
        self.learner.add_step(inputs, frames if self.labeler_reads_frames else None, true_rewards, ends, ends & ~truncated)
        self.learner.update(self.env_steps)
        self.last_inputs = inputs
        return self.reward(inputs)

    def _net_inputs(self, observations: Any, frames: np.ndarray | None, dones: np.ndarray, infos: list[dict]) -> np.ndarray:
        """The net's input for each sub-env's step: uint8 ``[n_envs, S, S, 3]`` or float32 ``[n_envs, obs_dim]``."""
        if self.reward_model.config.kind == "cnn":
            return downsample_frames(frames, self.reward_model.config.input_size)
        if not isinstance(observations, np.ndarray):
            raise TypeError("the mlp reward net needs array observations (not dict observations)")
        states = np.array(observations, dtype=np.float32).reshape(self.num_envs, -1)
        # The step's own state: the vector env already replaced a finished episode's with a reset one.
        for i in np.flatnonzero(dones):
            states[i] = np.asarray(infos[i]["terminal_observation"], dtype=np.float32).reshape(-1)
        return states

    def reward(self, inputs: np.ndarray) -> np.ndarray:
        """The agent's reward for net inputs (frames or observations): float32 ``[N]``; zeros before the first fit."""
        return self.learner.reward(inputs)

    def refit(self) -> FitResult | None:
        """Refit the ensemble on all pairs so far (from its current weights); None without any label."""
        return self.learner.refit()

    def labeler_stats(self) -> dict[str, int]:
        """The labeler's own counters (asked/answered/unsure/... of a VLM labeler), or {}."""
        stats = getattr(self.labeler, "stats", None)
        return stats.as_dict() if hasattr(stats, "as_dict") else {}

    # -- reporting and checkpoints ---------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """Episode returns since the last call, label and fit counters, the labeler's own counters
        (keys listed in :class:`~vlmrl.agents.training_callbacks.RewardMetricsCallback`)."""
        stats = self.stats
        labeler_stats = self.labeler_stats()
        metrics = {
            **super().metrics(),
            "labels/asked": stats.asked,
            "labels/answered": stats.labelled,
            "labels/ties": stats.ties,
            "labels/unsure": labeler_stats.get("unsure", stats.unlabelled),
            "labels/failed": labeler_stats.get("failed", 0),
            "labels/rounds": stats.rounds,
            "reward_model/fits": stats.fits,
            "labels/in_flight": self.learner.pairs_in_flight,
            "labels/dropped": stats.dropped,
            "time/label_seconds": stats.label_seconds,
            "time/fit_seconds": stats.fit_seconds,
        }
        if "cached" in labeler_stats:
            metrics["labels/cached"] = labeler_stats["cached"]
        for key, value in (
            ("labels/lag_steps", stats.lag_steps_mean),
            ("labels/accuracy_vs_oracle", stats.accuracy_vs_oracle),
            ("reward_model/heldout_accuracy", stats.heldout_accuracy),
            ("reward_model/train_accuracy", stats.train_accuracy),
        ):
            if not math.isnan(value):
                metrics[key] = value
        return metrics

    def summary(self) -> dict[str, Any]:
        """Pairs asked and labelled, rounds, fits, label accuracy vs the true reward, held-out
        accuracy; the labelling mode, pairs in flight and dropped, label lag (env steps from
        submit to answer, mean and max) and the seconds ``step_wait`` spent labelling."""
        stats = self.stats

        def finite(value: float) -> float | None:
            # NaN (no decisive pair, no held-out split yet) is written as null: summary.json stays strict JSON.
            return None if math.isnan(value) else value

        return {
            **super().summary(),
            "pairs_asked": stats.asked,
            "pairs_labelled": stats.labelled,
            "query_rounds": stats.rounds,
            "reward_fits": stats.fits,
            "label_accuracy_vs_oracle": finite(stats.accuracy_vs_oracle),
            "heldout_accuracy": finite(stats.heldout_accuracy),
            "labeling": self.schedule.labeling,
            "pairs_in_flight": self.learner.pairs_in_flight,
            "pairs_dropped": stats.dropped,
            "label_lag_steps_mean": finite(stats.lag_steps_mean),
            "label_lag_steps_max": stats.lag_steps_max,
            "label_wait_seconds": round(stats.label_seconds, 3),
        }

    def video_scorer(self) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
        # Videos get frames: draw the learned reward only when the net reads frames.
        if self.reward_model.config.kind == "cnn":
            return self.reward_model.predict, "learned"
        return super().video_scorer()

    def state_dict(self) -> dict[str, Any]:
        """Vector steps, the labelling mode and the learner's state (pairs as arrays); the ring
        buffer of recent steps and the pairs in flight are not saved."""
        return {**super().state_dict(), "labeling": self.schedule.labeling, "learner": self.learner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.labeling_at_checkpoint = state.get("labeling", "sync")  # checkpoints before async: sync
        self.learner.load_state_dict(state["learner"])


def build_preference_env(
    venv: VecEnv,
    labeler: Any,
    goal: str,
    schedule: OnlinePreferenceConfig,
    algo: str,
    seed: int = 0,
    device: str = "auto",
    reward_model: RewardModel | None = None,
    answers: PairAnswers | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[PreferenceRewardVecEnv, list[BaseCallback]]:
    """The preference wrapper around ``venv`` and the callbacks the learner needs.

    Args:
        venv: vector env from ``make_vec_env(..., capture_frames=preference_needs_frames(labeler, schedule))``.
        labeler: a pairwise labeler (``vlmrl.factory.make_labeler(config.labeler, "pair", ...)``).
        goal: the task description shown to a VLM.
        schedule: the ``preference:`` section (``config.preference``).
        algo: ``"ppo"`` or ``"sac"`` (SAC also gets the PEBBLE replay relabelling).
        seed: seeds the net, pair sampling and fits.
        device: reward-net device.
        reward_model: an existing ensemble; None builds one from the schedule.
        answers: where rounds are labelled; None builds them for ``schedule.labeling``
            (:func:`~vlmrl.agents.async_labelling.make_pair_answers`).
        should_stop: checked while a synchronous round waits for its answers; True (e.g. after
            SIGTERM) cuts the wait short so the run can stop.

    Returns:
        (wrapper, callbacks): ``[RewardMetricsCallback]``, plus ``SACReplayRelabelCallback`` for
        SAC, or ``PPORolloutRelabelCallback`` for PPO with ``labeling: async``.
    """
    if reward_model is None:
        reward_model = make_preference_reward_model(schedule, venv.observation_space, device=device, seed=seed)
    if answers is None:
        answers = make_pair_answers(labeler, goal, schedule.labeling, schedule.queue_size,
                                    schedule.max_consecutive_failures, should_stop)
    wrapper = PreferenceRewardVecEnv(venv, labeler, goal, reward_model, schedule, seed=seed, answers=answers)
    callbacks: list[BaseCallback] = [RewardMetricsCallback(wrapper)]
    if algo == "sac":
        callbacks.append(SACReplayRelabelCallback(wrapper))
    elif schedule.labeling == "async":
        # Sync mode keeps PPO's collected rewards, as it always did (bit-exact).
        callbacks.append(PPORolloutRelabelCallback(wrapper))
    if schedule.unsupervised_steps:
        if algo != "sac":
            raise ConfigError("preference.unsupervised_steps (PEBBLE's unsupervised exploration) needs agent.algo: sac")
        # Hand over to the learnt reward only once it exists: a slow first round never leaves SAC on zero.
        callbacks.append(StateEntropyExploration(schedule.unsupervised_steps, learned_reward_ready=lambda: wrapper.fitted))
    return wrapper, callbacks


__all__ = [
    "PreferenceRewardVecEnv",
    "build_preference_env",
    "make_preference_reward_model",
    "preference_needs_frames",
]

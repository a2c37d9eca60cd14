"""Online reward learning from pairwise preferences (RL-VLM-F on PEBBLE, methods.md sections 2 and 4).

Data flow inside :class:`PreferenceRewardVecEnv`, one vector step at a time::

    env step -> ring buffer of the newest ``frame_buffer`` steps (net input, frame for the
    labeler, true reward, episode end) -> every ``round_every`` env steps: sample
    ``pairs_per_round`` pairs, ask the labeler -> all pairs so far -> Bradley-Terry refit of the
    ensemble -> agent reward = normalised ensemble-mean prediction of each step's input

Decisions, and why:

- What the labeler sees. VLM labelers get the frames as rendered, unless the ring buffer would
  then hold more than ``label_frame_mb`` MiB of them: frames are then shrunk once, on arrival,
  keeping their aspect ratio, until the buffer fits (224x224 frames fit 10,000 steps in about
  1.5 GB, so the default 1 GiB shrinks them to about 183x183). The label store keys on the
  pixels the VLM saw, so the cache stays valid across runs with the same settings. The scripted
  teacher (``needs_frames = False``) reads only true rewards and no frames are kept for it.
- Segments for the teacher. ``segment_length = 1`` is RL-VLM-F: one frame per side, the teacher
  compares the two steps' true rewards. With ``segment_length = H > 1`` each side is the
  B-Pref segment of the next ``H`` steps of the same env starting at the sampled step; its
  true return counts zero reward after a termination (the terminal state is absorbing) and a
  segment cut by a truncation (time limit) is never sampled, because its future is unknown.
  The net still scores the segment's first step only (its input, its frame), so the learned
  reward orders states by how much true reward follows them within ``H`` steps. This is what
  makes the teacher informative on CartPole-v1, whose true reward is +1 on every step: single
  frames are always tied there, while a segment that runs into the pole falling is worse.
- The budget counts every pair handed to the labeler, whatever came back (NaN for unsure,
  unparseable, failed or identical frames; 0.5 for ties), as in RL-VLM-F. Pairs of the same
  step are never drawn.
- Reward scale. Bradley-Terry identifies a reward only up to an additive constant. After each
  fit the prediction is mapped affinely so the buffered steps span [0, 1]
  (``reward_normalisation="buffer_minmax"``). An affine map with positive slope leaves the best
  policy of a fixed-length episode unchanged; in envs that terminate it makes living never
  look worse than ending the episode, which is right for "keep the pole up" and wrong for
  tasks where ending the episode is the goal (use ``"none"`` there).
- PEBBLE relabelling (:class:`SACReplayRelabelCallback`). The replay buffer holds observations,
  not frames, so the callback keeps a parallel ring of the wrapper's net inputs (64x64 frames
  or observations, the terminal observation at episode ends) at the replay buffer's write
  position, and rewrites every stored reward after each refit. One mechanism serves both nets
  and gives exactly the reward the wrapper would give now.
"""

from __future__ import annotations

import dataclasses
import json
import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from vlmrl.agents.preference_config import OnlinePreferenceConfig
from vlmrl.errors import ConfigError
from vlmrl.reward_learning import FitResult, fit_bradley_terry
from vlmrl.reward_nets import RewardModel, downsample_frames


PAIRS_FILE = "preference_pairs.npz"
STATE_FILE = "preference_state.json"
REWARD_NET_FILE = "preference_reward_net"
REPLAY_INPUTS_FILE = "replay_reward_inputs.npz"

# Batches up to this many items are scored on one CPU thread (see _one_thread).
SMALL_BATCH = 64

# Vector steps of the ring buffer whose predictions set the reward normalisation after a fit.
NORMALISATION_ROWS = 1024


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


@contextlib.contextmanager
def _one_thread(items: int) -> Iterator[None]:
    """Score a small batch on one CPU thread.

    A vector step's few inputs gain nothing from intra-op threads, and on a busy CPU the thread
    pool's hand-offs dominate: 2 frames through a 2-member cnn took 125 ms with 2 threads and
    1.2 ms with 1 on this project's shared 2-core machine.
    """
    threads = torch.get_num_threads()
    if items > SMALL_BATCH or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _shrunk_size(height: int, width: int, rows: int, budget_mb: int) -> tuple[int, int]:
    """(height, width) with the aspect ratio kept so ``rows`` RGB frames fit in ``budget_mb`` MiB."""
    needed = rows * height * width * 3
    budget = budget_mb * 2**20
    if needed <= budget:
        return height, width
    k = math.sqrt(budget / needed)
    return max(int(height * k), 1), max(int(width * k), 1)


class StepRing:
    """The newest steps of every sub-env, one row per vector step.

    Arrays are ``[rows, n_envs, ...]``; row ``total_rows % rows`` is written next. Sized
    ``ceil(frame_buffer / n_envs)`` rows, so it holds at least ``frame_buffer`` env steps.

    Attributes:
        inputs: net inputs, uint8 ``[S, S, 3]`` frames or float32 ``[obs_dim]`` observations.
        frames: frames for the labeler (uint8 ``[h, w, 3]``), or None when it reads no frames.
        rewards: float32 true rewards. ends: the episode ended at this step.
        terminated: it ended by termination (not by truncation).
    """

    def __init__(self, frame_buffer: int, n_envs: int, label_frame_mb: int) -> None:
        self.rows = math.ceil(frame_buffer / n_envs)
        self.n_envs = n_envs
        self.label_frame_mb = label_frame_mb
        self.inputs: np.ndarray | None = None
        self.frames: np.ndarray | None = None
        self.frame_size: tuple[int, int] | None = None
        self.rewards = np.zeros((self.rows, n_envs), dtype=np.float32)
        self.ends = np.zeros((self.rows, n_envs), dtype=bool)
        self.terminated = np.zeros((self.rows, n_envs), dtype=bool)
        self.total_rows = 0

    @property
    def size(self) -> int:
        return min(self.total_rows, self.rows)

    def add(
        self,
        inputs: np.ndarray,
        frames: np.ndarray | None,
        rewards: np.ndarray,
        ends: np.ndarray,
        terminated: np.ndarray,
    ) -> None:
        if self.inputs is None:
            # calloc'd: pages are committed only as rows are written.
            self.inputs = np.zeros((self.rows, *inputs.shape), dtype=inputs.dtype)
        row = self.total_rows % self.rows
        self.inputs[row] = inputs
        if frames is not None:
            if self.frames is None:
                height, width = _shrunk_size(frames.shape[1], frames.shape[2], self.rows * self.n_envs, self.label_frame_mb)
                self.frame_size = (height, width)
                self.frames = np.zeros((self.rows, self.n_envs, height, width, 3), dtype=np.uint8)
            self.frames[row] = self._fit_frames(frames)
        self.rewards[row] = rewards
        self.ends[row] = ends
        self.terminated[row] = terminated
        self.total_rows += 1

    def _fit_frames(self, frames: np.ndarray) -> np.ndarray:
        if frames.shape[1:3] == self.frame_size:
            return frames
        height, width = self.frame_size
        # BOX (area averaging) anti-aliases a downscale, like the envs' own resizing.
        return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BOX)) for f in frames])

    def chronological_rows(self) -> np.ndarray:
        """Row indices of the buffered steps, oldest first: int ``[size]``."""
        start = self.total_rows - self.size
        return np.arange(start, self.total_rows) % self.rows

    def segment_returns(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """True return of the ``length``-step segment starting at each buffered step.

        Returns:
            (returns float64 ``[size, n_envs]``, valid bool ``[size, n_envs]``). Rewards after a
            termination count as zero; a segment is valid when it is complete, or ends in a
            termination, and is not cut short by a truncation.
        """
        order = self.chronological_rows()
        rewards = self.rewards[order].astype(np.float64)
        ends, terminated = self.ends[order], self.terminated[order]
        size = len(order)
        returns = np.zeros((size, self.n_envs))
        valid = np.zeros((size, self.n_envs), dtype=bool)
        cut = np.zeros((size, self.n_envs), dtype=bool)
        alive = np.ones((size, self.n_envs), dtype=bool)
        for k in range(length):
            shifted = np.arange(size) + k
            present = (shifted < size)[:, None] & alive
            index = np.minimum(shifted, size - 1)
            returns += np.where(present, rewards[index], 0.0)
            valid |= present & terminated[index]
            if k == length - 1:
                valid |= present
            else:
                cut |= present & ends[index] & ~terminated[index]
            alive &= ~(present & ends[index])
        return returns, valid & ~cut


class PairDataset:
    """Every labelled pair so far: net inputs of both sides, label, and the sides' true returns."""

    def __init__(self) -> None:
        self.first: np.ndarray | None = None
        self.second: np.ndarray | None = None
        self.labels = np.zeros(0, dtype=np.float32)
        self.true_first = np.zeros(0, dtype=np.float64)
        self.true_second = np.zeros(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, first: np.ndarray, second: np.ndarray, labels: np.ndarray, true_first: np.ndarray, true_second: np.ndarray) -> None:
        self.first = first.copy() if self.first is None else np.concatenate([self.first, first])
        self.second = second.copy() if self.second is None else np.concatenate([self.second, second])
        self.labels = np.concatenate([self.labels, labels.astype(np.float32)])
        self.true_first = np.concatenate([self.true_first, true_first])
        self.true_second = np.concatenate([self.true_second, true_second])

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.first is None:
            return {}
        return {"first": self.first, "second": self.second, "labels": self.labels,
                "true_first": self.true_first, "true_second": self.true_second}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.__init__()
        if state:
            self.add(state["first"], state["second"], state["labels"], state["true_first"], state["true_second"])


@dataclass
class PreferenceRoundStats:
    """Running counters, read by :class:`PreferenceMetricsCallback` and saved in checkpoints.

    ``asked`` pairs went to the labeler; each ends as ``labelled`` (a finite label, ``ties``
    of them 0.5) or ``unlabelled`` (NaN). ``agree`` of ``compared`` decisive labelled pairs with
    different true returns prefer the side with the higher true return.
    """

    asked: int = 0
    labelled: int = 0
    ties: int = 0
    unlabelled: int = 0
    agree: int = 0
    compared: int = 0
    rounds: int = 0
    fits: int = 0
    label_seconds: float = 0.0
    fit_seconds: float = 0.0
    heldout_accuracy: float = math.nan
    train_accuracy: float = math.nan
    last_fit: FitResult | None = field(default=None, repr=False)

    @property
    def accuracy_vs_oracle(self) -> float:
        return self.agree / self.compared if self.compared else math.nan

    def counters(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "last_fit"}


class PreferenceRewardVecEnv(VecEnvWrapper):
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
        schedule: query and fit schedule.
        seed: seeds pair sampling and the fits.
    """

    def __init__(
        self,
        venv: VecEnv,
        labeler: Any,
        goal: str,
        reward_model: RewardModel,
        schedule: OnlinePreferenceConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(venv)
        self.labeler = labeler
        self.goal = goal
        self.reward_model = reward_model
        self.schedule = schedule or OnlinePreferenceConfig()
        if reward_model.config.kind != self.schedule.net.kind:
            raise ValueError(f"reward_model is a {reward_model.config.kind} but schedule.net.kind is {self.schedule.net.kind!r}")
        self.fit_seed = seed
        self.rng = np.random.default_rng(seed)
        self.labeler_reads_frames = bool(getattr(labeler, "needs_frames", True))
        self.ring = StepRing(self.schedule.frame_buffer, self.num_envs, self.schedule.label_frame_mb)
        self.pairs = PairDataset()
        self.stats = PreferenceRoundStats()
        self.vector_steps = 0
        self.next_round_at = self.schedule.first_round_at
        self.reward_offset = 0.0
        self.reward_scale = 1.0
        self.last_inputs: np.ndarray | None = None

    @property
    def env_steps(self) -> int:
        return self.vector_steps * self.num_envs

    @property
    def budget_left(self) -> int:
        return self.schedule.budget - self.stats.asked

    def reset(self):
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        observations, env_rewards, dones, infos = self.venv.step_wait()
        true_rewards = np.array([info.get("true_reward", r) for info, r in zip(infos, env_rewards)], dtype=np.float32)
        truncated = np.array([info.get("TimeLimit.truncated", False) for info in infos], dtype=bool)
        frames = self._frames(infos) if self.labeler_reads_frames or self.reward_model.config.kind == "cnn" else None
        inputs = self._net_inputs(observations, frames, dones, infos)
        self.ring.add(inputs, frames if self.labeler_reads_frames else None, true_rewards, dones.astype(bool), dones.astype(bool) & ~truncated)
        self.vector_steps += 1

        if self.budget_left > 0 and self.env_steps >= self.next_round_at:
            if self.query_round():
                self.next_round_at = max(self.next_round_at + self.schedule.round_every, self.env_steps + 1)
                self.refit()

        rewards = self.reward(inputs)
        self.last_inputs = inputs
        for info, true_reward, reward in zip(infos, true_rewards, rewards):
            info["true_reward"] = float(true_reward)
            info["learned_reward"] = float(reward)
        return observations, rewards, dones, infos

    # -- inputs ----------------------------------------------------------------------------------

    @staticmethod
    def _frames(infos: list[dict]) -> np.ndarray:
        try:
            return np.stack([info["frame"] for info in infos])
        except KeyError as error:
            raise RuntimeError("info has no 'frame': wrap each sub-env in FrameInInfo(capture_frames=True)") from error

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

    # -- rewards ---------------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self.stats.fits > 0

    def reward(self, inputs: np.ndarray) -> np.ndarray:
        """The agent's reward for net inputs (frames or observations): float32 ``[N]``; zeros before the first fit."""
        if not self.fitted:
            return np.zeros(len(inputs), dtype=np.float32)
        with _one_thread(len(inputs)):
            predicted = self.reward_model.predict(inputs)
        return ((predicted - self.reward_offset) / self.reward_scale).astype(np.float32)

    # -- query rounds ----------------------------------------------------------------------------

    def query_round(self) -> bool:
        """Sample up to ``pairs_per_round`` pairs (within the budget), label them, keep them.

        Returns False (and asks nothing) when the buffer holds fewer than two usable steps.
        """
        returns, valid = self.ring.segment_returns(self.schedule.segment_length)
        candidates = np.flatnonzero(valid.reshape(-1))
        if len(candidates) < 2:
            return False
        n = min(self.schedule.pairs_per_round, self.budget_left)
        first = self.rng.choice(candidates, size=n)
        second = self.rng.choice(candidates, size=n)
        while np.any(same := first == second):
            second[same] = self.rng.choice(candidates, size=int(same.sum()))

        order = self.ring.chronological_rows()
        flat_rows = order[:, None].repeat(self.num_envs, axis=1).reshape(-1)
        flat_envs = np.tile(np.arange(self.num_envs), len(order))

        def gather(array: np.ndarray | None, picks: np.ndarray) -> np.ndarray | None:
            return None if array is None else array[flat_rows[picks], flat_envs[picks]]

        r1, r2 = returns.reshape(-1)[first], returns.reshape(-1)[second]
        start = time.perf_counter()
        labels = np.asarray(
            self.labeler.compare(gather(self.ring.frames, first), gather(self.ring.frames, second), self.goal, true_rewards=(r1, r2)),
            dtype=np.float32,
        )
        self.stats.label_seconds += time.perf_counter() - start
        if labels.shape != (n,):
            raise RuntimeError(f"labeler returned labels of shape {labels.shape} for {n} pairs")
        self.pairs.add(gather(self.ring.inputs, first), gather(self.ring.inputs, second), labels, r1, r2)
        self._count(labels, r1, r2)
        return True

    def _count(self, labels: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> None:
        finite = np.isfinite(labels)
        ties = finite & (labels == 0.5)
        decisive = finite & ~ties & (r1 != r2)
        self.stats.asked += len(labels)
        self.stats.rounds += 1
        self.stats.labelled += int(finite.sum())
        self.stats.ties += int(ties.sum())
        self.stats.unlabelled += int((~finite).sum())
        self.stats.compared += int(decisive.sum())
        self.stats.agree += int(((labels > 0.5) == (r1 > r2))[decisive].sum())

    def refit(self) -> FitResult | None:
        """Refit the ensemble on all pairs so far (from its current weights); None without any label."""
        if self.stats.labelled == 0:
            return None
        start = time.perf_counter()
        result = fit_bradley_terry(
            self.reward_model,
            self.pairs.first,
            self.pairs.second,
            self.pairs.labels,
            epochs=self.schedule.fit.epochs,
            batch_size=self.schedule.fit.batch_size,
            lr=self.schedule.fit.lr,
            heldout_fraction=self.schedule.fit.heldout_fraction,
            seed=self.fit_seed + self.stats.fits,
        )
        self.stats.fits += 1
        self.stats.last_fit = result
        self.stats.heldout_accuracy = result.heldout_accuracy
        self.stats.train_accuracy = result.train_accuracy
        self._update_normalisation()
        self.stats.fit_seconds += time.perf_counter() - start
        return result

    def _update_normalisation(self) -> None:
        if self.schedule.reward_normalisation == "none":
            self.reward_offset, self.reward_scale = 0.0, 1.0
            return
        rows = self.ring.chronological_rows()
        # An evenly spaced subset keeps this cheap for a cnn over a 10k-step buffer.
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), NORMALISATION_ROWS)).astype(int)]
        buffered = self.ring.inputs[rows]
        predicted = self.reward_model.predict(buffered.reshape(-1, *buffered.shape[2:]))
        low, high = float(predicted.min()), float(predicted.max())
        self.reward_offset = low
        self.reward_scale = high - low if high - low > 1e-6 else 1.0

    def labeler_stats(self) -> dict[str, int]:
        """The labeler's own counters (asked/answered/unsure/... of a VLM labeler), or {}."""
        stats = getattr(self.labeler, "stats", None)
        return stats.as_dict() if hasattr(stats, "as_dict") else {}

    # -- checkpoints -----------------------------------------------------------------------------

    def save_state(self, directory: str | Path) -> None:
        """Write the pairs (npz), counters and schedule position (json) and the reward net to ``directory``.

        The ring buffer of recent steps is not saved: after a resume it refills before the next round.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / PAIRS_FILE, **self.pairs.state_dict())
        self.reward_model.save(directory / REWARD_NET_FILE)
        state = {
            "vector_steps": self.vector_steps,
            "next_round_at": self.next_round_at,
            "reward_offset": self.reward_offset,
            "reward_scale": self.reward_scale,
            "stats": self.stats.counters(),
            "rng": self.rng.bit_generator.state,
        }
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2))

    def load_state(self, directory: str | Path) -> None:
        """Restore what :meth:`save_state` wrote (the reward net is loaded onto the current device)."""
        directory = Path(directory)
        state = json.loads((directory / STATE_FILE).read_text())
        with np.load(directory / PAIRS_FILE) as data:
            self.pairs.load_state_dict({key: data[key] for key in data.files})
        self.reward_model = RewardModel.load(directory / REWARD_NET_FILE, device=str(self.reward_model.device))
        self.vector_steps = int(state["vector_steps"])
        self.next_round_at = int(state["next_round_at"])
        self.reward_offset = float(state["reward_offset"])
        self.reward_scale = float(state["reward_scale"])
        self.stats = PreferenceRoundStats(**state["stats"])
        self.rng.bit_generator.state = state["rng"]


class PreferenceMetricsCallback(BaseCallback):
    """Logs the preference counters and the true return at every rollout end.

    TensorBoard keys: ``labels/asked``, ``labels/answered`` (finite labels, ties included),
    ``labels/ties``, ``labels/unsure``, ``labels/failed`` (from a VLM labeler's own counters;
    for the teacher, unsure = its skipped pairs and failed = 0), ``labels/cached``,
    ``labels/accuracy_vs_oracle``, ``labels/rounds``, ``reward_model/heldout_accuracy``,
    ``reward_model/train_accuracy``, ``reward_model/fits``, ``reward/true_return``,
    ``reward/learned_return``, ``time/label_seconds``, ``time/fit_seconds``.
    """

    def __init__(self, preference_env: PreferenceRewardVecEnv) -> None:
        super().__init__()
        self.preference_env = preference_env
        self._episode_true: np.ndarray | None = None
        self._episode_learned: np.ndarray | None = None
        self._true_returns: list[float] = []
        self._learned_returns: list[float] = []

    def _on_training_start(self) -> None:
        n_envs = self.training_env.num_envs
        self._episode_true = np.zeros(n_envs)
        self._episode_learned = np.zeros(n_envs)

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        dones = np.asarray(self.locals["dones"], dtype=bool)
        self._episode_true += [info["true_reward"] for info in infos]
        self._episode_learned += [info["learned_reward"] for info in infos]
        for index in np.flatnonzero(dones):
            self._true_returns.append(float(self._episode_true[index]))
            self._learned_returns.append(float(self._episode_learned[index]))
            self._episode_true[index] = 0.0
            self._episode_learned[index] = 0.0
        return True

    def _on_rollout_end(self) -> None:
        stats = self.preference_env.stats
        labeler_stats = self.preference_env.labeler_stats()
        self.logger.record("labels/asked", stats.asked)
        self.logger.record("labels/answered", stats.labelled)
        self.logger.record("labels/ties", stats.ties)
        self.logger.record("labels/unsure", labeler_stats.get("unsure", stats.unlabelled))
        self.logger.record("labels/failed", labeler_stats.get("failed", 0))
        if "cached" in labeler_stats:
            self.logger.record("labels/cached", labeler_stats["cached"])
        self.logger.record("labels/rounds", stats.rounds)
        self.logger.record("reward_model/fits", stats.fits)
        if not math.isnan(stats.accuracy_vs_oracle):
            self.logger.record("labels/accuracy_vs_oracle", stats.accuracy_vs_oracle)
        if not math.isnan(stats.heldout_accuracy):
            self.logger.record("reward_model/heldout_accuracy", stats.heldout_accuracy)
        if not math.isnan(stats.train_accuracy):
            self.logger.record("reward_model/train_accuracy", stats.train_accuracy)
        if self._true_returns:
            self.logger.record("reward/true_return", float(np.mean(self._true_returns)))
            self.logger.record("reward/learned_return", float(np.mean(self._learned_returns)))
            self._true_returns, self._learned_returns = [], []
        self.logger.record("time/label_seconds", stats.label_seconds)
        self.logger.record("time/fit_seconds", stats.fit_seconds)


class SACReplayRelabelCallback(BaseCallback):
    """PEBBLE: after each reward-model refit, rewrite every reward in the off-policy replay buffer.

    A parallel ring ``[buffer_size, n_envs, ...]`` holds the wrapper's net input of each stored
    transition (the step's frame at the net's size, or its observation), written at the replay
    buffer's ``pos`` in ``_on_step``, which SB3 calls just before storing that transition.
    For a 64x64 cnn input that is 12 KiB per transition: size SAC's ``buffer_size`` accordingly.

    Args:
        preference_env: the wrapper whose reward the agent trains on.
    """

    def __init__(self, preference_env: PreferenceRewardVecEnv) -> None:
        super().__init__()
        self.preference_env = preference_env
        self.inputs: np.ndarray | None = None
        self.relabels = 0
        self._fits_seen = 0
        self._pending: np.ndarray | None = None

    def _on_training_start(self) -> None:
        buffer = getattr(self.model, "replay_buffer", None)
        if buffer is None:
            raise TypeError(f"{type(self.model).__name__} has no replay buffer to relabel (use SAC)")
        if self._pending is not None:
            self.inputs = self._allocate(self._pending.shape[2:], self._pending.dtype)
            self.inputs[: len(self._pending)] = self._pending
            self._pending = None
        self._fits_seen = self.preference_env.stats.fits

    def _allocate(self, item_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        buffer = self.model.replay_buffer
        # calloc'd: only rows the replay buffer reaches are committed to memory.
        return np.zeros((buffer.buffer_size, buffer.n_envs, *item_shape), dtype=dtype)

    def _on_step(self) -> bool:
        latest = self.preference_env.last_inputs
        if self.inputs is None:
            self.inputs = self._allocate(latest.shape[1:], latest.dtype)
        self.inputs[self.model.replay_buffer.pos] = latest
        if self.preference_env.stats.fits != self._fits_seen:
            self.relabel()
        return True

    @property
    def stored(self) -> int:
        buffer = self.model.replay_buffer
        return buffer.buffer_size if buffer.full else buffer.pos

    def relabel(self) -> None:
        """Rewards of all stored transitions <- the wrapper's current reward of their inputs."""
        size = self.stored
        if size and self.inputs is not None:
            items = self.inputs[:size]
            rewards = self.preference_env.reward(items.reshape(-1, *items.shape[2:]))
            self.model.replay_buffer.rewards[:size] = rewards.reshape(size, -1)
        self.relabels += 1
        self._fits_seen = self.preference_env.stats.fits

    def save(self, path: str | Path) -> None:
        """Write the stored part of the parallel ring (``np.savez``), for checkpoints."""
        items = self.inputs[: self.stored] if self.inputs is not None else np.zeros((0, 0))
        np.savez(path, inputs=items)

    def load(self, path: str | Path) -> None:
        """Restore :meth:`save`'s inputs; applied when training (re)starts with the loaded replay buffer."""
        with np.load(path) as data:
            items = data["inputs"]
        self._pending = items if items.ndim >= 3 and len(items) else None


def build_preference_env(
    venv: VecEnv,
    labeler: Any,
    goal: str,
    schedule: OnlinePreferenceConfig,
    algo: str,
    seed: int = 0,
    device: str = "auto",
    reward_model: RewardModel | None = None,
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

    Returns:
        (wrapper, callbacks): ``[PreferenceMetricsCallback]`` plus ``SACReplayRelabelCallback`` for SAC.
    """
    if reward_model is None:
        reward_model = make_preference_reward_model(schedule, venv.observation_space, device=device, seed=seed)
    wrapper = PreferenceRewardVecEnv(venv, labeler, goal, reward_model, schedule, seed=seed)
    callbacks: list[BaseCallback] = [PreferenceMetricsCallback(wrapper)]
    if algo == "sac":
        callbacks.append(SACReplayRelabelCallback(wrapper))
    return wrapper, callbacks


def save_preference_checkpoint(directory: str | Path, wrapper: PreferenceRewardVecEnv, callbacks: list[BaseCallback]) -> None:
    """Everything a ``--resume`` needs from the preference side (call beside ``model.save``)."""
    wrapper.save_state(directory)
    for callback in callbacks:
        if isinstance(callback, SACReplayRelabelCallback):
            callback.save(Path(directory) / REPLAY_INPUTS_FILE)


def restore_preference_checkpoint(directory: str | Path, wrapper: PreferenceRewardVecEnv, callbacks: list[BaseCallback]) -> None:
    """Undo :func:`save_preference_checkpoint` (call after loading the agent and its replay buffer)."""
    wrapper.load_state(directory)
    replay_inputs = Path(directory) / REPLAY_INPUTS_FILE
    for callback in callbacks:
        if isinstance(callback, SACReplayRelabelCallback) and replay_inputs.is_file():
            callback.load(replay_inputs)


__all__ = [
    "PairDataset",
    "PreferenceMetricsCallback",
    "PreferenceRewardVecEnv",
    "PreferenceRoundStats",
    "SACReplayRelabelCallback",
    "StepRing",
    "build_preference_env",
    "make_preference_reward_model",
    "preference_needs_frames",
    "restore_preference_checkpoint",
    "save_preference_checkpoint",
]

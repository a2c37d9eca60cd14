"""PEBBLE's unsupervised exploration: SAC on a k-NN state-entropy reward before the first query.

PEBBLE (Lee, Smith & Abbeel, ICML 2021) pre-trains SAC for ``unsupervised_steps`` env steps on
an intrinsic reward that grows with how far a state is from the states already collected, so
the first preference queries compare diverse behaviour rather than a random policy's few
states. Then the learned reward takes over and the replay buffer is relabelled with it (here by
:class:`~vlmrl.agents.preference_reward.SACReplayRelabelCallback`, after the first fit).

The reward, as B-Pref's code computes it (github.com/rll-research/BPref, ``agent/sac.py``:
``compute_state_entropy`` and ``update_critic_state_ent``; RL-VLM-F's code is a fork of it)::

    d_k(s)   = || s - s^(k) ||_2       s^(k): s's k-th nearest neighbour (k = 5) among the
                                       replay buffer's states, s itself not counted
    r_int(s) = d_k(s) / std(d_k)       std: running std of every d_k computed so far

``s`` is the transition's state ``s_t`` (the replay buffer's ``observations``), as in B-Pref.
The paper motivates the reward with the particle-based (k-NN) entropy estimate, in which a
state contributes ``log(c + d_k(s))``; B-Pref's training code rewards the distance itself,
divided by the running std (``normalize_state_entropy=True``). This module follows the code:
both grow with ``d_k``, and the code is what PEBBLE's and RL-VLM-F's results were produced with.

How it is computed here, and why:

- B-Pref computes ``r_int`` at every gradient step for the sampled batch against the whole
  buffer. SB3's SAC samples inside ``train()``, so :class:`StateEntropyExploration` instead
  writes ``r_int`` into the replay buffer's ``rewards``: the new transitions' at every rollout
  end (just before SAC's gradient steps), and every ``refresh_every`` env steps all of the
  window's again, because a state's neighbours get closer as the buffer fills (a reward frozen
  at collection time would keep paying for states that are no longer rare).
- The reference set is the newest ``max_states`` states (10,000 by default; PEBBLE's 9,000
  unsupervised steps in RL-VLM-F fit in it, so there it is the whole buffer). Distances are
  ``torch.cdist`` in chunks of ``chunk_size`` states (a full 10,000 x 10,000 refresh takes
  1-1.5 s on this project's shared 2-core CPU, about 1.5 ms per env step at the default
  ``refresh_every``; scoring one new state against 10,000 takes 0.3-2 ms). Transitions older
  than the window keep their last reward.
- The hand-over. Exploration is ``active`` while fewer than ``unsupervised_steps`` env steps
  were taken or, with ``learned_reward_ready`` given, until it returns True (wire it to the
  preference learner's first fit, so a slow or asynchronous first round never leaves the agent
  with a reward of 0). At the hand-over SAC's Q-networks are re-initialised
  (``reset_critic``), as B-Pref does after unsupervised exploration: the Q-values learned for
  the intrinsic reward mean nothing under the learned one. The actor is kept: its exploratory
  behaviour is the point. After the hand-over the callback never touches the buffer again.
- Resume. The states live in the replay buffer, which checkpoints already save; the callback's
  own state (running std, hand-over done, refresh schedule) is a small JSON file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.running_mean_std import RunningMeanStd

from vlmrl.agents.training_callbacks import CheckpointedCallback
from vlmrl.devices import one_thread_for_small_batches

STATE_FILE = "state_entropy_exploration.json"

# Smallest std the distances are divided by (all states identical so far).
MIN_STD = 1e-8


def knn_distances(
    states: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    k: int = 5,
    includes_self: bool = True,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Distance from each state to its k-th nearest neighbour in ``reference`` (Euclidean).

    Args:
        states: float ``[N, D]`` states to score.
        reference: float ``[R, D]`` states the neighbours are taken from.
        k: which neighbour (B-Pref: 5).
        includes_self: each state is itself one of ``reference``'s rows: one zero distance (its
            own) is skipped, i.e. the (k+1)-th smallest distance is taken, as B-Pref does.
        chunk_size: states per ``torch.cdist`` call (bounds memory to ``chunk_size * R`` floats).

    Returns:
        float32 ``[N]``. With fewer than ``k + includes_self`` reference states the farthest one
        is used (B-Pref likewise shrinks k); a state alone in ``reference`` gets 0.
    """
    states = torch.as_tensor(states, dtype=torch.float32).reshape(len(states), -1)
    reference = torch.as_tensor(reference, dtype=torch.float32).reshape(len(reference), -1)
    if len(states) == 0 or len(reference) == 0:
        return np.zeros(len(states), dtype=np.float32)
    # cdist's matrix-product path loses precision far from the origin: centre both first.
    centre = reference.mean(dim=0)
    states, reference = states - centre, reference - centre
    rank = min(k + int(includes_self), len(reference))
    out = []
    with torch.inference_mode(), one_thread_for_small_batches(len(states)):
        for start in range(0, len(states), chunk_size):
            distances = torch.cdist(states[start : start + chunk_size], reference)
            out.append(distances.topk(rank, dim=1, largest=False).values[:, -1])
    return torch.cat(out).numpy()


def reset_sac_critic(model) -> None:
    """Re-initialise SAC's Q-networks, copy them into the target networks and clear the critic
    optimiser's moments (B-Pref's ``reset_critic`` after unsupervised exploration).

    Only the Q-heads are reset: with ``share_features_extractor=True`` the features extractor
    belongs to the actor too.
    """
    critic = model.policy.critic
    for q_network in critic.q_networks:
        for module in q_network.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    model.policy.critic_target.load_state_dict(critic.state_dict())
    critic.optimizer.state.clear()


class StateEntropyExploration(CheckpointedCallback):
    """PEBBLE's unsupervised exploration for SB3 SAC: the replay buffer's rewards are the k-NN
    state-entropy reward while :attr:`active`, then left to the env's (learned) reward.

    Add it to ``model.learn``'s callbacks beside the preference callbacks; it needs an
    off-policy model with a replay buffer of flat Box observations.

    Args:
        unsupervised_steps: env steps (summed over envs) of exploration; 0 turns it off.
        k: the neighbour whose distance is the reward (B-Pref: 5).
        max_states: newest states the neighbours come from (and that refreshes rescore).
        refresh_every: env steps between rescoring every state of the window.
        learned_reward_ready: if given, exploration continues past ``unsupervised_steps`` until
            this returns True (e.g. ``lambda: preference_env.fitted``).
        reset_critic: re-initialise SAC's Q-networks at the hand-over (B-Pref does).
        chunk_size: states per distance batch.

    Attributes:
        finished: the hand-over happened (exploration never resumes).
        handover_step: ``num_timesteps`` at the hand-over, or None.
        distance_stats: running mean/var of every k-NN distance computed.
        refreshes: full rescorings of the window so far (this ``learn`` call and earlier ones).

    TensorBoard keys (recorded at every rollout end while active): ``exploration/knn_distance``
    (mean raw distance of the states scored), ``exploration/intrinsic_reward`` (their mean
    reward), ``exploration/active`` (1 while exploring, 0 from the hand-over on).
    """

    def __init__(
        self,
        unsupervised_steps: int,
        k: int = 5,
        max_states: int = 10_000,
        refresh_every: int = 1000,
        learned_reward_ready: Callable[[], bool] | None = None,
        reset_critic: bool = True,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        if unsupervised_steps < 0:
            raise ValueError(f"unsupervised_steps must be >= 0, got {unsupervised_steps}")
        for name, value in (("k", k), ("max_states", max_states), ("refresh_every", refresh_every), ("chunk_size", chunk_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.unsupervised_steps = unsupervised_steps
        self.k = k
        self.max_states = max_states
        self.refresh_every = refresh_every
        self.learned_reward_ready = learned_reward_ready
        self.reset_critic = reset_critic
        self.chunk_size = chunk_size
        self.distance_stats = RunningMeanStd(shape=())
        self.finished = unsupervised_steps == 0
        self.handover_step: int | None = None
        self.refreshes = 0
        self._next_refresh = refresh_every
        self._last_pos = 0

    @property
    def active(self) -> bool:
        """Whether the agent's reward is the exploration reward now."""
        if self.finished:
            return False
        model = getattr(self, "model", None)  # set by SB3 when training starts
        steps = model.num_timesteps if model is not None else 0
        if steps < self.unsupervised_steps:
            return True
        return self.learned_reward_ready is not None and not self.learned_reward_ready()

    def _on_training_start(self) -> None:
        buffer = getattr(self.model, "replay_buffer", None)
        if buffer is None:
            raise TypeError(f"{type(self.model).__name__} has no replay buffer: unsupervised exploration needs SAC")
        if not isinstance(self.model.observation_space, spaces.Box):
            raise TypeError(f"state-entropy exploration needs Box observations, got {self.model.observation_space}")
        # Everything stored before this call (a resumed run's buffer) was labelled already.
        self._last_pos = buffer.pos

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # Called after the rollout's transitions are stored and before SAC's gradient steps.
        if self.finished:
            return
        buffer = self.model.replay_buffer
        new_rows = (buffer.pos - self._last_pos) % buffer.buffer_size
        self._last_pos = buffer.pos
        if not self.active:
            self._hand_over()
            return
        stored_rows = buffer.buffer_size if buffer.full else buffer.pos
        window_rows = min(stored_rows, max(math.ceil(self.max_states / buffer.n_envs), new_rows))
        if self.model.num_timesteps >= self._next_refresh:
            scored_rows = window_rows
            self.refreshes += 1
            self._next_refresh = self.model.num_timesteps + self.refresh_every
        else:
            scored_rows = new_rows
        if scored_rows:
            self._score(buffer, scored_rows, window_rows)
        self.logger.record("exploration/active", 1.0)

    def _score(self, buffer, scored_rows: int, window_rows: int) -> None:
        """Write r_int of the newest ``scored_rows`` rows (all in the newest ``window_rows``)."""
        window = (buffer.pos - window_rows + np.arange(window_rows)) % buffer.buffer_size
        reference = buffer.observations[window].reshape(window_rows * buffer.n_envs, -1)
        # The scored rows are the window's last ones, so they are in the reference set themselves.
        states = reference[(window_rows - scored_rows) * buffer.n_envs :]
        distances = knn_distances(states, reference, k=self.k, includes_self=True, chunk_size=self.chunk_size)
        self.distance_stats.update(distances.astype(np.float64))
        rewards = distances / max(math.sqrt(float(self.distance_stats.var)), MIN_STD)
        buffer.rewards[window[window_rows - scored_rows :]] = rewards.reshape(scored_rows, buffer.n_envs)
        self.logger.record("exploration/knn_distance", float(distances.mean()))
        self.logger.record("exploration/intrinsic_reward", float(rewards.mean()))

    def _hand_over(self) -> None:
        self.finished = True
        self.handover_step = int(self.model.num_timesteps)
        if self.reset_critic:
            reset_sac_critic(self.model)
        self.logger.record("exploration/active", 0.0)

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Running distance statistics, hand-over and refresh schedule (JSON values)."""
        return {
            "finished": self.finished,
            "handover_step": self.handover_step,
            "refreshes": self.refreshes,
            "next_refresh": self._next_refresh,
            "distance_mean": float(self.distance_stats.mean),
            "distance_var": float(self.distance_stats.var),
            "distance_count": float(self.distance_stats.count),
        }

    def load_state_dict(self, state: dict) -> None:
        self.finished = bool(state["finished"])
        self.handover_step = state["handover_step"]
        self.refreshes = int(state["refreshes"])
        self._next_refresh = int(state["next_refresh"])
        self.distance_stats.mean = np.float64(state["distance_mean"])
        self.distance_stats.var = np.float64(state["distance_var"])
        self.distance_stats.count = float(state["distance_count"])

    def save(self, directory: str | Path) -> None:
        """Write :meth:`state_dict` to ``directory/STATE_FILE`` (the states are in the saved replay buffer)."""
        (Path(directory) / STATE_FILE).write_text(json.dumps(self.state_dict(), indent=2))

    def load(self, directory: str | Path) -> None:
        """Restore :meth:`save`'s state, if the checkpoint has it."""
        path = Path(directory) / STATE_FILE
        if path.is_file():
            self.load_state_dict(json.loads(path.read_text()))


__all__ = ["StateEntropyExploration", "knn_distances", "reset_sac_critic"]

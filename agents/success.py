"""Success rate of training episodes, for envs that report ``info["success"]`` (Meta-World).

:class:`SuccessTracker` counts, per finished episode, whether it succeeded: ``info["success"]``
of the episode's last step (``count="final"``, the default), or whether any step of it reported
success (``count="any"``, how RL-VLM-F and B-Pref score Meta-World episodes:
``episode_success = max(episode_success, info["success"])``). Episodes whose env never put
``"success"`` in its info are not counted at all, so envs without a notion of success
(CartPole, MountainCar, Humanoid) produce no rate rather than a rate of 0.

The rate logged to TensorBoard is over the last ``window`` counted episodes (100, like SB3's own
``rollout/success_rate`` and ``rollout/ep_rew_mean``): with SAC a rollout is one vector step,
so a rate over "the episodes of this rollout" would be a single episode's 0 or 1.
:class:`SuccessRateCallback` feeds a tracker from SB3's rollout loop, logs
``rollout/success_rate`` at every rollout end, and keeps the run's totals for ``summary.json``
(``success_rate`` over all counted training episodes, ``success_episodes``) across resumes.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlmrl.agents.training_callbacks import CheckpointedCallback

SUCCESS_KEY = "success"
STATE_FILE = "success_rate.json"


class SuccessTracker:
    """Successes of finished episodes, fed one vector step at a time.

    Args:
        window: episodes the recent rate is taken over.
        count: ``"final"``: the last step's ``info["success"]``; ``"any"``: any step's.

    Attributes:
        episodes: counted episodes so far (those whose env reported success).
        successes: how many of them succeeded.
        recent: 1.0 / 0.0 per counted episode, the newest ``window``.
    """

    def __init__(self, window: int = 100, count: Literal["final", "any"] = "final") -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if count not in ("final", "any"):
            raise ValueError(f"count must be 'final' or 'any', got {count!r}")
        self.count = count
        self.episodes = 0
        self.successes = 0
        self.recent: deque[float] = deque(maxlen=window)
        # Per sub-env, for count="any": succeeded so far / reported success at all in this episode.
        self._succeeded: np.ndarray | None = None
        self._reported: np.ndarray | None = None

    def update(self, infos: Sequence[dict[str, Any]], dones: Sequence[bool] | np.ndarray) -> None:
        """Take in one vector step: each sub-env's info and whether its episode ended here.

        For a sub-env whose episode ended, ``infos[i]`` is the episode's last step's info (SB3's
        vector envs reset afterwards and keep the last info; only the observation is replaced).
        """
        dones = np.asarray(dones, dtype=bool)
        if self.count == "any":
            self._update_any(infos, dones)
            return
        for index in np.flatnonzero(dones):
            if SUCCESS_KEY in infos[index]:
                self._add(bool(infos[index][SUCCESS_KEY]))

    def _update_any(self, infos: Sequence[dict[str, Any]], dones: np.ndarray) -> None:
        if self._succeeded is None or len(self._succeeded) != len(infos):
            self._succeeded = np.zeros(len(infos), dtype=bool)
            self._reported = np.zeros(len(infos), dtype=bool)
        for index, info in enumerate(infos):
            if SUCCESS_KEY in info:
                self._reported[index] = True
                self._succeeded[index] |= bool(info[SUCCESS_KEY])
        for index in np.flatnonzero(dones):
            if self._reported[index]:
                self._add(bool(self._succeeded[index]))
            self._succeeded[index] = self._reported[index] = False

    def _add(self, succeeded: bool) -> None:
        self.episodes += 1
        self.successes += int(succeeded)
        self.recent.append(float(succeeded))

    @property
    def recent_rate(self) -> float | None:
        """Mean success of the last ``window`` counted episodes; None before any was counted."""
        return float(np.mean(self.recent)) if self.recent else None

    @property
    def rate(self) -> float | None:
        """Mean success of every counted episode so far; None before any was counted."""
        return self.successes / self.episodes if self.episodes else None

    def summary(self) -> dict[str, Any]:
        """``{"success_rate", "success_episodes"}`` for ``summary.json``; {} when no env reported success."""
        if not self.episodes:
            return {}
        return {"success_rate": self.rate, "success_episodes": self.episodes}

    def state_dict(self) -> dict[str, Any]:
        """Totals and the recent window (JSON values); a running episode's progress is not kept."""
        return {"episodes": self.episodes, "successes": self.successes, "recent": list(self.recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes = int(state["episodes"])
        self.successes = int(state["successes"])
        self.recent.clear()
        self.recent.extend(float(x) for x in state["recent"])


class SuccessRateCallback(CheckpointedCallback):
    """Logs ``rollout/success_rate`` (last ``window`` episodes) at every rollout end, for envs that
    report ``info["success"]``; nothing for envs that never do.

    Works with PPO and SAC: both rollout loops expose ``infos`` and ``dones`` to callbacks.

    Args:
        window, count: see :class:`SuccessTracker`.

    Attributes:
        tracker: the :class:`SuccessTracker`; ``tracker.summary()`` goes into ``summary.json``.
    """

    metric = "rollout/success_rate"

    def __init__(self, window: int = 100, count: Literal["final", "any"] = "final") -> None:
        super().__init__()
        self.tracker = SuccessTracker(window=window, count=count)

    def _on_step(self) -> bool:
        self.tracker.update(self.locals["infos"], self.locals["dones"])
        return True

    def _on_rollout_end(self) -> None:
        rate = self.tracker.recent_rate
        if rate is not None:
            self.logger.record(self.metric, rate)

    def summary(self) -> dict[str, Any]:
        """``{"success_rate", "success_episodes"}`` over the run's training episodes, or {}."""
        return self.tracker.summary()

    def save(self, directory: str | Path) -> None:
        (Path(directory) / STATE_FILE).write_text(json.dumps(self.tracker.state_dict()))

    def load(self, directory: str | Path) -> None:
        path = Path(directory) / STATE_FILE
        if path.is_file():
            self.tracker.load_state_dict(json.loads(path.read_text()))


__all__ = ["SuccessRateCallback", "SuccessTracker"]

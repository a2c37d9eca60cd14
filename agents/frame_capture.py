"""A Gymnasium wrapper that hands each step's rendered frame to the vector env in ``info``."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np


class FrameInInfo(gym.Wrapper):
    """Renders after every ``step`` and stores the frame in ``info["frame"]``.

    Rendering inside the single env, before the vector env sees ``done``, is what keeps the
    frame of a terminal step: SB3's vector envs reset a finished sub-env in the same call, so a
    ``render()`` issued afterwards would show the next episode's first frame.

    Also guarantees ``info["true_reward"]`` (the env's own reward when the env does not set it).

    Args:
        env: an env created with ``render_mode="rgb_array"``.
        capture_frames: False skips rendering (labelers that read only the true reward).
    """

    def __init__(self, env: gym.Env, capture_frames: bool = True) -> None:
        super().__init__(env)
        if capture_frames and env.render_mode != "rgb_array":
            raise ValueError(f"FrameInInfo needs render_mode='rgb_array', got {env.render_mode!r}")
        self.capture_frames = capture_frames

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info.setdefault("true_reward", float(reward))
        if self.capture_frames:
            info["frame"] = np.asarray(self.env.render(), dtype=np.uint8)
        return observation, reward, terminated, truncated, info

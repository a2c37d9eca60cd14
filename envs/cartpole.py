"""CartPole variants: Gymnasium's CartPole-v1 with a configurable frame size, and VLM-RM's
fixed-length CartPole without termination.

Both put the ground-truth reward into ``info["true_reward"]`` on every step (a reward wrapper
later replaces the returned reward with a VLM reward and keeps this one for evaluation).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv as GymCartPoleEnv
from PIL import Image

from vlmrl.envs.validation import check_positive_ints, check_render_mode

# Gymnasium draws the cart and pole with fixed pixel sizes tuned for a 600x400 screen.
_NATIVE_WIDTH, _NATIVE_HEIGHT = 600, 400


def native_canvas_size(width: int, height: int) -> tuple[int, int]:
    """Canvas with the requested aspect ratio that just covers Gymnasium's 600x400 screen.

    Gymnasium's renderer uses fixed pixel sizes (a 50x30 px cart, the cart top 100 px above the
    bottom edge), so drawing straight at 224x224 would give a huge cart and a short pole.
    Drawing at this canvas and resizing keeps the proportions of the familiar picture.
    """
    k = max(_NATIVE_WIDTH / width, _NATIVE_HEIGHT / height)
    return max(int(round(width * k)), 1), max(int(round(height * k)), 1)


class CartPoleEnv(GymCartPoleEnv):
    """Gymnasium CartPole-v1 (same dynamics, reward and termination) with frames of any size.

    Truncation at 500 steps comes from the TimeLimit wrapper added by ``gymnasium.make``.

    :param render_mode: ``"rgb_array"`` or None.
    :param render_width: frame width in pixels.
    :param render_height: frame height in pixels.
    :param sutton_barto_reward: passed to Gymnasium's CartPole.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        render_mode: str | None = None,
        render_width: int = _NATIVE_WIDTH,
        render_height: int = _NATIVE_HEIGHT,
        sutton_barto_reward: bool = False,
    ) -> None:
        check_render_mode(render_mode, self.metadata["render_modes"])
        check_positive_ints(render_width=render_width, render_height=render_height)
        super().__init__(sutton_barto_reward=sutton_barto_reward, render_mode=render_mode)
        self.render_width, self.render_height = render_width, render_height
        self.screen_width, self.screen_height = native_canvas_size(render_width, render_height)

    def step(self, action: int):
        obs, reward, terminated, truncated, info = super().step(action)
        info["true_reward"] = float(reward)
        return obs, float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """Current frame, uint8 of shape (render_height, render_width, 3)."""
        frame = super().render()
        if frame is None or frame.shape[:2] == (self.render_height, self.render_width):
            return frame
        # BOX (area averaging) is the cheapest filter that anti-aliases a downscale; frames
        # larger than 600x400 in both axes are upscaled instead.
        shrinking = self.render_width < frame.shape[1]
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
        resized = Image.fromarray(frame).resize((self.render_width, self.render_height), resample)
        return np.asarray(resized).copy()


class CartPoleFixedLengthEnv(CartPoleEnv):
    """CartPole without termination and with a fixed episode length (VLM-RM's CartPole).

    The dynamics are Gymnasium's, so the pole keeps swinging after it falls. Two changes keep
    the state finite and the picture meaningful over long episodes:

    - the pole angle is wrapped to [-pi, pi) (the dynamics only use sin/cos of it);
    - the cart stops at the track ends: its position is clipped to [-2.4, 2.4] (the edges of
      the rendered track) and its velocity is zeroed when it hits an end.

    True reward: 1.0 while the pole is upright and the cart inside the track (CartPole's
    termination thresholds: |theta| < 12 degrees and |x| < 2.4; a cart resting against an end
    counts as outside), else 0.0.

    Observation: float32 ``[x, x_dot, theta, theta_dot]`` with theta in [-pi, pi].

    :param episode_length: steps until truncation.
    """

    def __init__(
        self,
        render_mode: str | None = None,
        episode_length: int = 200,
        render_width: int = _NATIVE_WIDTH,
        render_height: int = _NATIVE_HEIGHT,
    ) -> None:
        check_positive_ints(episode_length=episode_length)
        super().__init__(render_mode=render_mode, render_width=render_width, render_height=render_height)
        self.episode_length = episode_length
        high = np.array([self.x_threshold * 2, np.inf, math.pi, np.inf], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._steps = 0
        return super().reset(seed=seed, options=options)

    def step(self, action: int):
        super().step(action)
        # Gymnasium counts steps after termination to warn about them; termination is disabled
        # here, so that bookkeeping must not accumulate.
        self.steps_beyond_terminated = None
        x, x_dot, theta, theta_dot = (float(v) for v in self.state)
        theta = (theta + math.pi) % (2 * math.pi) - math.pi
        if abs(x) > self.x_threshold:
            x, x_dot = math.copysign(self.x_threshold, x), 0.0
        self.state = np.array((x, x_dot, theta, theta_dot), dtype=np.float64)

        upright = abs(theta) < self.theta_threshold_radians and abs(x) < self.x_threshold
        reward = 1.0 if upright else 0.0
        self._steps += 1
        truncated = self._steps >= self.episode_length
        info: dict[str, Any] = {"true_reward": reward}
        return np.array(self.state, dtype=np.float32), reward, False, truncated, info

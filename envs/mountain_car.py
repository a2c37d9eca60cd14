"""MountainCarContinuous with a textured renderer and an absorbing goal (VLM-RM's variant).

CLIP could not learn the untextured MountainCar in VLM-RM: a black polyline and a black box do
not look like "a car on a mountain". This env keeps Gymnasium's MountainCarContinuous-v0
dynamics and draws a scene with numpy/Pillow instead of pygame: a sky gradient with clouds,
distant hills, a grassy mountain with a soil texture, a car sprite tilted to the slope and a
yellow flag at the goal.

Episode structure differs from Gymnasium's in two ways, both needed for per-frame VLM rewards:

- The goal is absorbing. When the car first reaches ``position >= 0.45`` (with non-negative
  velocity, as in Gymnasium) it stops there: velocity becomes 0 and later actions are
  ignored, so the goal frame keeps being shown.
- Episodes never terminate; they are truncated after ``episode_length`` steps.

True reward (``info["true_reward"]``, also the returned reward): Gymnasium's reward up to and
including the step that reaches the goal (``-0.1 * action**2`` per step, ``+100`` on arrival),
then 0 per step while absorbed (the car cannot act, so it pays no control cost). An episode's
true return therefore equals the return of the same trajectory in MountainCarContinuous-v0, so
"reach the goal cheaply and fast" stays optimal, while a VLM reward keeps paying at the goal.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.continuous_mountain_car import Continuous_MountainCarEnv
from PIL import Image, ImageDraw

from vlmrl.envs import textures
from vlmrl.envs.validation import check_positive_ints, check_render_mode

_MIN_POSITION, _MAX_POSITION = -1.2, 0.6
_GOAL_POSITION = 0.45


def mountain_height(x: np.ndarray | float) -> np.ndarray | float:
    """Track height (world units) at position ``x``; Gymnasium's curve."""
    return np.sin(3 * x) * 0.45 + 0.55


class MountainSceneRenderer:
    """Draws MountainCar frames of a fixed size: a cached background plus a rotated car sprite.

    World-to-pixel scales match Gymnasium's renderer at 600x400 (333 px per world unit on both
    axes) and stretch with the frame size otherwise.

    :param width: frame width in pixels.
    :param height: frame height in pixels.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.px_per_x = width / (_MAX_POSITION - _MIN_POSITION)
        self.px_per_y = height * (600 / 1.8) / 400
        # The car is sized by the smaller scale so it never dwarfs the track in odd aspect ratios.
        car_length = max(int(round(0.2 * min(self.px_per_x, self.px_per_y))), 8)
        self._car = textures.car_sprite(car_length)
        self._background = self._draw_background()

    def to_pixels(self, x: float, y: float) -> tuple[float, float]:
        """World (position, height) -> image (column, row), row 0 at the top."""
        return (x - _MIN_POSITION) * self.px_per_x, self.height - y * self.px_per_y

    def _draw_background(self) -> Image.Image:
        h, w = self.height, self.width
        rng = np.random.default_rng(textures.TEXTURE_SEED)
        img = textures.vertical_gradient(h, w, top=(70, 130, 205), bottom=(200, 225, 245))
        clouds = textures.soft_clouds(h, w, rng)[..., None]
        img = img * (1 - clouds) + 250.0 * clouds

        rows = np.arange(h, dtype=np.float32)[:, None]
        cols = np.arange(w, dtype=np.float32)
        # Two layers of distant hills, lighter and bluer further away (aerial perspective).
        for base, amp, colour in ((0.45, 0.10, (150, 185, 170)), (0.58, 0.08, (105, 155, 110))):
            ridge_noise = textures.value_noise(1, w, cell_px=w / 5, rng=rng)[0]
            ridge = h * (base - amp * ridge_noise)
            cover = np.clip(rows - ridge[None, :] + 0.5, 0, 1)[..., None]
            img = img * (1 - cover) + np.asarray(colour, np.float32) * cover

        surface_row = self.height - mountain_height(
            _MIN_POSITION + cols / self.px_per_x
        ) * self.px_per_y
        depth = rows - surface_row[None, :]  # pixels below the mountain surface
        ground = np.clip(depth + 0.5, 0, 1)[..., None]
        fine = textures.value_noise(h, w, cell_px=max(w / 60, 2), rng=rng)[..., None]
        coarse = textures.value_noise(h, w, cell_px=max(w / 12, 2), rng=rng)[..., None]
        grass = np.asarray((70, 145, 55), np.float32) * (0.75 + 0.35 * fine) * (0.9 + 0.2 * coarse)
        soil = np.asarray((135, 100, 62), np.float32) * (0.7 + 0.45 * fine) * (0.85 + 0.3 * coarse)
        band = 0.07 * h  # grass thickness below the surface
        to_soil = np.clip((depth - band) / (0.03 * h), 0, 1)[..., None]
        terrain = grass * (1 - to_soil) + soil * to_soil
        img = img * (1 - ground) + terrain * ground
        # A darker rim marks the road surface the car drives on.
        rim = np.clip(1 - np.abs(depth - 1.0) / max(h / 200, 1.0), 0, 1)[..., None]
        img = img * (1 - rim) + np.asarray((45, 90, 35), np.float32) * rim

        background = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
        self._draw_flag(background)
        return background

    def _draw_flag(self, img: Image.Image) -> None:
        draw = ImageDraw.Draw(img)
        fx, fy = self.to_pixels(_GOAL_POSITION, float(mountain_height(_GOAL_POSITION)))
        scale = min(self.px_per_x, self.px_per_y) / 333.0
        pole_h, pole_w = 60 * scale, max(3 * scale, 1)
        top = fy - pole_h
        draw.rectangle((fx - pole_w / 2, top, fx + pole_w / 2, fy), fill=(70, 70, 70))
        draw.polygon(
            [(fx + pole_w / 2, top), (fx + 30 * scale, top + 9 * scale), (fx + pole_w / 2, top + 18 * scale)],
            fill=(235, 205, 20),
            outline=(150, 125, 0),
        )

    def render(self, position: float) -> np.ndarray:
        """Frame with the car at ``position`` (world units).

        :return: uint8 array of shape (height, width, 3).
        """
        frame = self._background.copy()
        slope_px = 1.35 * math.cos(3 * position) * self.px_per_y / self.px_per_x
        car = self._car.rotate(math.degrees(math.atan(slope_px)), resample=Image.Resampling.BICUBIC)
        cx, cy = self.to_pixels(position, float(mountain_height(position)))
        half = car.width // 2
        frame.paste(car, (int(round(cx)) - half, int(round(cy)) - half), mask=car)
        return np.array(frame)


class TexturedMountainCarEnv(Continuous_MountainCarEnv):
    """MountainCarContinuous-v0 dynamics, textured frames, absorbing goal, fixed episode length.

    Observation: float32 ``[position, velocity]``. Action: float32 ``[force]`` in [-1, 1].
    ``info`` on every step: ``true_reward`` (float) and ``at_goal`` (bool).

    :param render_mode: ``"rgb_array"`` or None.
    :param episode_length: steps until truncation (no termination).
    :param render_width: frame width in pixels.
    :param render_height: frame height in pixels.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        render_mode: str | None = None,
        episode_length: int = 999,
        render_width: int = 600,
        render_height: int = 400,
    ) -> None:
        check_render_mode(render_mode, self.metadata["render_modes"])
        check_positive_ints(
            episode_length=episode_length, render_width=render_width, render_height=render_height
        )
        super().__init__(render_mode=render_mode)
        self.episode_length = episode_length
        self.screen_width, self.screen_height = render_width, render_height
        self._scene: MountainSceneRenderer | None = None
        self._at_goal = False
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        self._at_goal = False
        self._steps = 0
        return obs, info

    def step(self, action: np.ndarray):
        if self.state is None:
            raise RuntimeError("Call reset() before step().")
        self._steps += 1
        if self._at_goal:
            reward = 0.0
        else:
            _, reward, reached, _, _ = super().step(action)
            if reached:
                self._at_goal = True
                self.state = np.array([self.state[0], 0.0], dtype=np.float32)
        truncated = self._steps >= self.episode_length
        info: dict[str, Any] = {"true_reward": float(reward), "at_goal": self._at_goal}
        return np.array(self.state, dtype=np.float32), float(reward), False, truncated, info

    def render(self) -> np.ndarray | None:
        """Current frame, uint8 of shape (render_height, render_width, 3)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'.")
            return None
        if self.state is None:
            raise RuntimeError("Call reset() before render().")
        if self._scene is None:
            self._scene = MountainSceneRenderer(self.screen_width, self.screen_height)
        return self._scene.render(float(self.state[0]))

    def close(self) -> None:
        self._scene = None


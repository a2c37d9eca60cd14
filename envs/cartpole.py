"""CartPole variants: Gymnasium's CartPole-v1 with a configurable frame size, and VLM-RM's
fixed-length CartPole without termination.

Both put the ground-truth reward into ``info["true_reward"]`` on every step (a reward wrapper
later replaces the returned reward with a VLM reward and keeps this one for evaluation).

Frames are drawn directly at the requested size by :func:`draw_cartpole` (numpy, no pygame):
Gymnasium's picture, laid out on its 600x400 canvas, with each frame pixel coloured by the
share of its area each shape covers, as area-averaging that canvas down would give. At 64x64
this is about 30x cheaper than drawing 600 px with pygame and resizing, which made rendering
the bottleneck of pixel-based training on a small CPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv as GymCartPoleEnv

from vlmrl.envs.validation import check_positive_ints, check_render_mode

# Gymnasium draws the cart and pole with fixed pixel sizes tuned for a 600x400 screen.
_NATIVE_WIDTH, _NATIVE_HEIGHT = 600, 400

# Gymnasium's picture, in canvas pixels with y measured up from the bottom edge.
CART_WIDTH, CART_HEIGHT = 50.0, 30.0
CART_Y = 100.0  # centre line of the cart; the 1-px track starts here
AXLE_Y = CART_Y + CART_HEIGHT / 4  # pivot of the pole
POLE_WIDTH = 10.0
TRACK_THICKNESS = 1.0
BACKGROUND = (255, 255, 255)
CART_COLOUR = (0, 0, 0)
POLE_COLOUR = (202, 152, 101)
AXLE_COLOUR = (129, 132, 203)
TRACK_COLOUR = (0, 0, 0)

Colour = tuple[int, int, int]


def native_canvas_size(width: int, height: int) -> tuple[int, int]:
    """Canvas with the requested aspect ratio that just covers Gymnasium's 600x400 screen.

    Gymnasium's renderer uses fixed pixel sizes (a 50x30 px cart, the cart top 100 px above the
    bottom edge), so drawing them unscaled at 224x224 would give a huge cart and a short pole.
    The picture is laid out on this canvas and scaled to the frame, keeping the proportions of
    the familiar picture.
    """
    k = max(_NATIVE_WIDTH / width, _NATIVE_HEIGHT / height)
    return max(int(round(width * k)), 1), max(int(round(height * k)), 1)


def _overlap(centres: np.ndarray, pixel: float, low: float, high: float) -> np.ndarray:
    """Share of each interval ``[c - pixel/2, c + pixel/2]`` that lies inside ``[low, high]``, in [0, 1]."""
    inside = np.minimum(centres + pixel / 2, high) - np.maximum(centres - pixel / 2, low)
    return np.clip(inside, 0.0, pixel) / pixel


class _Painter:
    """Paints shapes given in canvas pixels (y up) into a uint8 frame of another size.

    Each frame pixel takes a shape's colour in proportion to the share of its area the shape
    covers, which is what drawing on the canvas and area-averaging it down would give: exact
    for axis-aligned boxes; for the rotated pole, the product of the coverages across and along
    it; for the axle disc, a one-pixel ramp at its rim.
    """

    def __init__(self, frame: np.ndarray, canvas_width: int, canvas_height: int) -> None:
        self.frame = frame  # uint8 [H, W, 3], painted in place
        self.height, self.width = frame.shape[:2]
        self.canvas_height = canvas_height
        self.kx = canvas_width / self.width  # canvas pixels per frame pixel
        self.ky = canvas_height / self.height
        self.k = (self.kx + self.ky) / 2

    def _region(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        """Frame rows and columns the canvas box touches, and their pixel centres in canvas pixels."""
        j0 = max(math.floor(x0 / self.kx), 0)
        j1 = min(math.ceil(x1 / self.kx), self.width)
        i0 = max(math.floor((self.canvas_height - y1) / self.ky), 0)
        i1 = min(math.ceil((self.canvas_height - y0) / self.ky), self.height)
        if j0 >= j1 or i0 >= i1:
            return None
        x = (np.arange(j0, j1) + 0.5) * self.kx
        y = self.canvas_height - (np.arange(i0, i1) + 0.5) * self.ky
        return slice(i0, i1), slice(j0, j1), x, y

    def _blend(self, rows: slice, cols: slice, coverage: np.ndarray, colour: Colour) -> None:
        alpha = coverage[..., None]
        region = self.frame[rows, cols]
        region[:] = np.rint(region * (1.0 - alpha) + alpha * np.asarray(colour, dtype=np.float64))

    def box(self, x0: float, x1: float, y0: float, y1: float, colour: Colour) -> None:
        """Axis-aligned box [x0, x1] x [y0, y1]."""
        region = self._region(x0, x1, y0, y1)
        if region is not None:
            rows, cols, x, y = region
            coverage = np.outer(_overlap(y, self.ky, y0, y1), _overlap(x, self.kx, x0, x1))
            self._blend(rows, cols, coverage, colour)

    def bar(self, origin: tuple[float, float], angle: float, start: float, end: float, half_width: float, colour: Colour) -> None:
        """A bar ``2 * half_width`` wide from ``start`` to ``end`` along the direction ``angle``
        (radians clockwise from straight up) through ``origin``."""
        along = (math.sin(angle), math.cos(angle))
        across = (math.cos(angle), -math.sin(angle))
        corners = [
            (origin[0] + a * along[0] + w * across[0], origin[1] + a * along[1] + w * across[1])
            for a in (start, end)
            for w in (-half_width, half_width)
        ]
        xs, ys = zip(*corners)
        region = self._region(min(xs), max(xs), min(ys), max(ys))
        if region is not None:
            rows, cols, x, y = region
            dx, dy = x[None, :] - origin[0], y[:, None] - origin[1]
            coverage = _overlap(dx * along[0] + dy * along[1], self.k, start, end) * _overlap(
                dx * across[0] + dy * across[1], self.k, -half_width, half_width
            )
            self._blend(rows, cols, coverage, colour)

    def disc(self, centre: tuple[float, float], radius: float, colour: Colour) -> None:
        """A filled circle."""
        cx, cy = centre
        region = self._region(cx - radius, cx + radius, cy - radius, cy + radius)
        if region is not None:
            rows, cols, x, y = region
            distance = np.hypot(x[None, :] - cx, y[:, None] - cy)
            # A disc smaller than a pixel never covers one fully: cap at its area over a pixel's.
            peak = min(1.0, math.pi * radius**2 / (self.kx * self.ky))
            self._blend(rows, cols, np.clip((radius - distance) / self.k + 0.5, 0.0, peak), colour)


def draw_cartpole(
    x: float, theta: float, width: int, height: int, pole_half_length: float = 0.5, x_threshold: float = 2.4
) -> np.ndarray:
    """Gymnasium's CartPole picture drawn straight at ``width x height`` pixels.

    Args:
        x: cart position in metres (0 = centre of the track).
        theta: pole angle in radians (0 = upright, positive = tipped to the right).
        width, height: frame size in pixels; the picture keeps Gymnasium's proportions on a
            canvas of this aspect ratio covering 600x400 (:func:`native_canvas_size`).
        pole_half_length: half the pole's length in metres (CartPole's ``length``).
        x_threshold: half the drawn track in metres (the frame's width).

    Returns:
        uint8 ``[height, width, 3]``.
    """
    canvas_width, canvas_height = native_canvas_size(width, height)
    scale = canvas_width / (2 * x_threshold)  # canvas pixels per metre
    frame = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    paint = _Painter(frame, canvas_width, canvas_height)
    cart_x = x * scale + canvas_width / 2
    half = POLE_WIDTH / 2
    paint.box(cart_x - CART_WIDTH / 2, cart_x + CART_WIDTH / 2, CART_Y - CART_HEIGHT / 2, CART_Y + CART_HEIGHT / 2, CART_COLOUR)
    # As Gymnasium draws it: the pole starts POLE_WIDTH/2 below the axle and is 2 * length metres long.
    paint.bar((cart_x, AXLE_Y), theta, -half, scale * 2 * pole_half_length - half, half, POLE_COLOUR)
    paint.disc((cart_x, AXLE_Y), half, AXLE_COLOUR)
    # Gymnasium draws the track last, across the cart.
    paint.box(0.0, float(canvas_width), CART_Y, CART_Y + TRACK_THICKNESS, TRACK_COLOUR)
    return frame


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

    def step(self, action: int):
        obs, reward, terminated, truncated, info = super().step(action)
        info["true_reward"] = float(reward)
        return obs, float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """Current frame, uint8 of shape (render_height, render_width, 3), drawn by :func:`draw_cartpole`."""
        if self.render_mode is None or self.state is None:
            # Gymnasium's behaviour: warn without a render mode, nothing before the first reset.
            return super().render() if self.render_mode is None else None
        x, _, theta, _ = (float(v) for v in self.state)
        return draw_cartpole(x, theta, self.render_width, self.render_height, self.length, self.x_threshold)


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

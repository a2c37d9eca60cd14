"""Procedural images for the textured renderers: gradients, smooth noise and a car sprite.

Everything is drawn with numpy and Pillow from a fixed random seed, so the textures need no
image files and are identical in every process (same state -> same frame). Arrays are
``uint8`` or ``float32`` images in height-width-channel order; colours are RGB in 0..255.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Textures are part of the environment's look, not of an episode: a fixed seed keeps them
# independent of the env's seed so that seeding only affects the dynamics.
TEXTURE_SEED = 20240127

RGB = tuple[int, int, int]


def vertical_gradient(height: int, width: int, top: RGB, bottom: RGB) -> np.ndarray:
    """Linear top-to-bottom colour ramp.

    :return: float32 array of shape (height, width, 3) with values in 0..255.
    """
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    ramp = (1.0 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.broadcast_to(ramp, (height, width, 3)).copy()


def value_noise(
    height: int, width: int, cell_px: float, rng: np.random.Generator, octaves: int = 3
) -> np.ndarray:
    """Smooth fractal noise: random grids upsampled bicubically and summed over octaves.

    :param cell_px: feature size of the coarsest octave in pixels; each octave halves it.
    :return: float32 array of shape (height, width) with values in 0..1.
    """
    total = np.zeros((height, width), np.float32)
    weight_sum = 0.0
    for octave in range(octaves):
        cell = max(cell_px / 2**octave, 1.0)
        grid_h = max(int(np.ceil(height / cell)) + 1, 2)
        grid_w = max(int(np.ceil(width / cell)) + 1, 2)
        grid = Image.fromarray(rng.random((grid_h, grid_w), dtype=np.float32), mode="F")
        layer = np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC))
        weight = 0.5**octave
        total += weight * layer
        weight_sum += weight
    total /= weight_sum
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-6)


def soft_clouds(height: int, width: int, rng: np.random.Generator, count: int = 4) -> np.ndarray:
    """Alpha mask of a few blurred cumulus clouds in the upper part of the frame.

    :return: float32 array of shape (height, width) with values in 0..1 (1 = cloud).
    """
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(count):
        cx = rng.uniform(0.05, 0.95) * width
        cy = rng.uniform(0.08, 0.3) * height
        size = rng.uniform(0.05, 0.09) * width
        for _ in range(6):  # a cloud is a cluster of overlapping puffs
            px = cx + rng.uniform(-1.2, 1.2) * size
            py = cy + rng.uniform(-0.3, 0.3) * size
            r = size * rng.uniform(0.4, 0.8)
            draw.ellipse((px - r, py - 0.6 * r, px + r, py + 0.6 * r), fill=235)
    mask = mask.filter(ImageFilter.GaussianBlur(radius=max(width / 150, 1.0)))
    return np.asarray(mask, np.float32) / 255.0


def car_sprite(length_px: int, body: RGB = (200, 30, 35)) -> Image.Image:
    """A side view of a small car (body, cabin with windows, two wheels), facing right.

    The sprite sits on a transparent square canvas of side ``2 * length_px`` whose centre is
    the point midway between the wheels' ground contacts, so rotating the canvas about its
    centre tilts the car about where it touches the road.

    :param length_px: car length in pixels (bumper to bumper).
    :return: RGBA image of size (2 * length_px, 2 * length_px).
    """
    ss = 4  # draw supersampled, then downsample: cheap anti-aliasing
    L = length_px * ss
    canvas = Image.new("RGBA", (2 * L, 2 * L), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    cx, ground = L, L  # contact midpoint in canvas pixels
    wheel_r = 0.16 * L
    axle_y = ground - wheel_r
    body_bottom = axle_y + 0.02 * L
    body_top = axle_y - 0.24 * L
    left, right = cx - 0.5 * L, cx + 0.5 * L
    dark = tuple(int(c * 0.55) for c in body)

    # Cabin first so the body's top edge overlaps it cleanly.
    cabin = [
        (cx - 0.30 * L, body_top + 2),
        (cx - 0.20 * L, body_top - 0.22 * L),
        (cx + 0.14 * L, body_top - 0.22 * L),
        (cx + 0.28 * L, body_top + 2),
    ]
    draw.polygon(cabin, fill=body + (255,), outline=dark + (255,), width=ss)
    glass = (150, 200, 235, 255)
    draw.polygon(
        [
            (cx - 0.25 * L, body_top),
            (cx - 0.17 * L, body_top - 0.17 * L),
            (cx - 0.04 * L, body_top - 0.17 * L),
            (cx - 0.04 * L, body_top),
        ],
        fill=glass,
    )
    draw.polygon(
        [
            (cx + 0.01 * L, body_top),
            (cx + 0.01 * L, body_top - 0.17 * L),
            (cx + 0.12 * L, body_top - 0.17 * L),
            (cx + 0.22 * L, body_top),
        ],
        fill=glass,
    )
    draw.rounded_rectangle(
        (left, body_top, right, body_bottom),
        radius=0.08 * L,
        fill=body + (255,),
        outline=dark + (255,),
        width=ss,
    )
    # Headlight at the front (right), tail light at the back.
    lamp_top, lamp_bottom = body_top + 0.05 * L, body_top + 0.11 * L
    draw.ellipse((right - 0.07 * L, lamp_top, right - 0.01 * L, lamp_bottom), fill=(255, 240, 150, 255))
    draw.rectangle((left + 0.01 * L, lamp_top, left + 0.05 * L, lamp_bottom), fill=(120, 0, 0, 255))
    for wx in (cx - 0.3 * L, cx + 0.3 * L):
        draw.ellipse((wx - wheel_r, axle_y - wheel_r, wx + wheel_r, axle_y + wheel_r), fill=(25, 25, 25, 255))
        hub = 0.45 * wheel_r
        draw.ellipse((wx - hub, axle_y - hub, wx + hub, axle_y + hub), fill=(170, 170, 175, 255))
    return canvas.resize((2 * length_px, 2 * length_px), Image.Resampling.LANCZOS)

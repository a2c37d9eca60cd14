"""Headless rendering defaults, applied before any renderer is imported.

MuJoCo picks its OpenGL platform when it is first imported and pygame initialises a display
even in ``rgb_array`` mode, so both must be told to run without a screen beforehand:

- ``MUJOCO_GL=egl`` where an NVIDIA GPU is visible (hardware rendering), ``osmesa`` otherwise
  (software rendering; ``apt-get install libosmesa6``).
- ``SDL_VIDEODRIVER=dummy`` for the pygame-based classic-control renderers.

Values the user already set are never overridden.
"""

from __future__ import annotations

import os
from pathlib import Path


def gpu_visible() -> bool:
    """True when an NVIDIA device node exists (no CUDA import needed)."""
    return Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()


def configure_headless() -> None:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl" if gpu_visible() else "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

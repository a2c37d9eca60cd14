"""Headless rendering defaults, applied before any renderer is imported.

MuJoCo picks its OpenGL platform when it is first imported and pygame initialises a display
even in ``rgb_array`` mode, so both must be told to run without a screen beforehand:

- ``MUJOCO_GL=egl`` where an NVIDIA GPU is visible (hardware rendering), ``osmesa`` otherwise
  (software rendering; ``apt-get install libosmesa6``).
- ``SDL_VIDEODRIVER=dummy`` for the pygame-based classic-control renderers.

Values the user already set are never overridden.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


def gpu_visible() -> bool:
    """True when an NVIDIA device node exists (no CUDA import needed)."""
    return Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()


def configure_headless() -> None:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    # SDL (pygame, behind Gymnasium's classic-control renderers) otherwise turns SIGTERM and
    # SIGINT into quit events nobody reads: `kill` would not stop a vlmrl command.
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl" if gpu_visible() else "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


@functools.cache
def load_torch_compiler_before_software_gl() -> None:
    """Import ``torch._dynamo`` before ``import mujoco`` (once per process; MuJoCo env modules call it).

    Mesa's software renderer (llvmpipe, behind OSMesa and software EGL) and Triton (which
    ``torch._dynamo`` loads the first time a torch optimiser is built, e.g. by SB3's SAC) each
    bring their own LLVM. With mujoco (and so OSMesa) loaded first the process segfaults inside
    ``libtriton.so`` (measured here with mujoco 3.3.0, torch 2.14.1, Mesa OSMesa: a Humanoid or
    Meta-World env made, then ``SAC(...)``); with Triton loaded first, both work. Costs about a
    second, and only where software rendering is possible; without torch it does nothing.
    """
    if os.environ.get("MUJOCO_GL") not in ("osmesa", "egl"):
        return
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:
        pass

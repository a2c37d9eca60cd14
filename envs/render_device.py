"""A pass-through wrapper that records which EGL device its env renders on."""

from __future__ import annotations

import os

import gymnasium as gym

EGL_DEVICE_VAR = "MUJOCO_EGL_DEVICE_ID"


class RenderDevice(gym.Wrapper):
    """Records the EGL device (``MUJOCO_EGL_DEVICE_ID`` index) the wrapped env renders on.

    It changes nothing: MuJoCo reads ``MUJOCO_EGL_DEVICE_ID`` when it creates its EGL context,
    i.e. while the env is built or first renders, so whoever builds the env must set the
    variable in the env's process *before* ``gymnasium.make``. The wrapper only makes the
    choice visible from outside, e.g. ``SubprocVecEnv.get_attr("render_device")``.

    Args:
        env: the env, already built in the process it will render in.
        device: the EGL device index assigned to this env; None when nothing was assigned.
    """

    def __init__(self, env: gym.Env, device: int | None) -> None:
        super().__init__(env)
        self.render_device = device

    def environ_render_device(self) -> int | None:
        """``MUJOCO_EGL_DEVICE_ID`` as this env's process sees it now (None when unset).

        Differs from ``render_device`` when the assignment never reached the process (or when
        the user set the variable and nothing was assigned), so it is what tests check.
        """
        value = os.environ.get(EGL_DEVICE_VAR)
        return None if value is None else int(value)

"""The ``env:`` section, for ``vlmrl.factory.make_vec_env`` (this module imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class EnvConfig:
    """Which environment to train in and how to render it.

    ``render_width``/``render_height`` are the frame size in pixels handed to the labeler.
    ``kwargs`` go to ``gymnasium.make`` (e.g. ``episode_length``).

    ``render_devices`` picks the EGL device (GPU index, as ``MUJOCO_EGL_DEVICE_ID`` counts them)
    each ``subproc`` worker renders on, round robin: worker ``i`` uses
    ``devices[i % len(devices)]``, so ``n_envs`` need not be a multiple of the GPU count.

    - ``"auto"`` (default): every CUDA GPU (``0..n-1``) when ``MUJOCO_GL=egl`` and CUDA sees GPUs
      and ``MUJOCO_EGL_DEVICE_ID`` is not already set; otherwise no assignment.
    - ``"none"``: never assign (every worker renders where MuJoCo picks by default).
    - a non-empty list of indices >= 0, e.g. ``[0, 1]``: always assign those.

    Ignored with ``vec_env: dummy``: all envs share one process and thus one EGL context.
    """

    id: str
    n_envs: int = 4
    render_width: int = 224
    render_height: int = 224
    vec_env: Literal["dummy", "subproc"] = "dummy"
    render_devices: str | tuple[int, ...] = "auto"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("n_envs", self.n_envs)
        _positive("render_width", self.render_width)
        _positive("render_height", self.render_height)
        _check_render_devices(self)


_RENDER_DEVICES_ALLOWED = "'auto', 'none' or a non-empty list of GPU indices >= 0 (e.g. [0, 1])"


def _is_device_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_render_devices(config: EnvConfig) -> None:
    """Validate ``render_devices`` and store a list given from Python as a tuple (the config is frozen
    and compared by value, so ``[0, 1]`` and ``(0, 1)`` must end up equal)."""
    value = config.render_devices
    if isinstance(value, str):
        if value not in ("auto", "none"):
            raise ValueError(f"render_devices must be {_RENDER_DEVICES_ALLOWED}, got {value!r}")
        return
    if not isinstance(value, (list, tuple)) or not value or not all(_is_device_index(d) for d in value):
        raise ValueError(f"render_devices must be {_RENDER_DEVICES_ALLOWED}, got {value!r}")
    object.__setattr__(config, "render_devices", tuple(value))

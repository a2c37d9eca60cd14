"""One ``mujoco.Renderer`` per env, shared by the MuJoCo envs (Humanoid, Meta-World).

``render_quality="fast"`` turns off shadows and reflections (with multisampling off in the
model, about 10-15x faster with software rendering); ``"high"`` keeps MuJoCo's defaults.
"""

from __future__ import annotations

import weakref
from typing import Any


def make_renderer(model: Any, height: int, width: int, quality: str) -> Any:
    """A ``mujoco.Renderer`` of ``model`` at ``height`` x ``width`` pixels with ``quality``'s scene flags."""
    import mujoco  # loaded already by the env module, after its software-GL set-up

    renderer = mujoco.Renderer(model, height=height, width=width)
    if quality == "fast":
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    return renderer


def close_before_teardown(owner: object, renderer: Any) -> weakref.finalize:
    """Close ``renderer`` when ``owner`` is collected or at exit, whichever comes first; calling
    the returned finalizer closes it now (once; later calls do nothing).

    An env nobody closed would otherwise free its GL context during interpreter teardown, when
    OSMesa / PyOpenGL are half gone, and print a traceback at exit. The finalizer holds the
    renderer, not the owner.
    """
    return weakref.finalize(owner, renderer.close)


__all__ = ["close_before_teardown", "make_renderer"]

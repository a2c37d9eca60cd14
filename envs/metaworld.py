"""Meta-World v3 manipulation tasks rendered the way RL-VLM-F (Wang et al., 2024) rendered them.

One class, :class:`MetaWorldEnv`, serves every Meta-World v3 task (``vlmrl/MetaWorld<Task>-v0``,
registered in ``vlmrl.envs``). What it adds to Meta-World's own env:

- **Camera.** RL-VLM-F added fixed cameras to Meta-World's ``xyz_base.xml`` (compiler angles in
  radians); metaworld 3.x has none of them, so the camera is compiled from the same MJCF
  attributes at run time and its ``cam_pos``/``cam_quat``/``cam_fovy`` are copied into an
  existing world-fixed camera of the loaded model (``corner``). Tasks RL-VLM-F gave no camera
  use Meta-World's ``corner4`` camera (a wide view of the robot and the whole table).
- **Image pipeline.** RL-VLM-F rendered 480x480, flipped the rows (their cameras' up vectors point
  down, so the raw frame is upside down), cropped ``[100:400, 100:400]`` for drawer and sweep
  tasks (soccer keeps the whole view) and resized. Here the crop window is rendered directly:
  the projection frustum is narrowed to exactly that window, so a 300x300 frame (the default)
  has the same pixels as their crop, without drawing the 480x480 frame first (2.6x fewer
  pixels). Other sizes sample the same window; a non-square frame keeps the window's height
  and widens or narrows it horizontally (no stretching).
- **Scene edits** (RL-VLM-F's three tasks): goal sites hidden (alpha 0); the sweep-into cube is
  flat green RGB (0, 240, 0) instead of wood (their prompt says "the green cube").
- **Resets.** Object and goal positions are re-drawn at every reset from the env's own seeded
  generator (``reset(seed=s)`` twice gives the same first frame); Meta-World's benchmark classes
  freeze them per task instead.
- **Episodes** end by truncation after ``episode_length`` steps (Meta-World's
  ``max_path_length``, 500, by default); Meta-World never terminates.
- **Rendering** goes through ``mujoco.Renderer``: ``render_quality="fast"`` (default) turns off
  multisampling, shadows and reflections (about 15x faster with software rendering: 45-54 vs
  3 frames/s at 300x300 on a 2-core VM); ``"high"`` keeps MuJoCo's defaults.

Observation: Meta-World's 39-dim state (hand xyz, gripper opening, object poses, the previous
frame's 18 numbers, goal xyz), float64. With ``goal_observable=True`` (default, as in
Meta-World's MT1 benchmark and as its scripted experts need) the last three are the goal
position; ``goal_observable=False`` zeroes them, as RL-VLM-F's agents saw it. Action: 4 numbers
in [-1, 1] (hand displacement, at most 1 cm per step per axis, and gripper effort).

True reward (returned and in ``info["true_reward"]``): Meta-World's dense v2 reward, in
[0, 10]. ``info["success"]`` is Meta-World's success flag as a bool; Meta-World's other info
entries are kept.

One env per process is advisable for Meta-World in general (its Gymnasium renderer draws wrong
frames once a second env has rendered in the same process); this env owns its
``mujoco.Renderer``, which makes its GL context current on every call, so several envs in one
process render correctly too (the tests check both).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmrl.headless import load_torch_compiler_before_software_gl

load_torch_compiler_before_software_gl()  # before mujoco loads OSMesa: see its docstring

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

from vlmrl.envs import canonical_task  # noqa: E402
from vlmrl.envs.mujoco_rendering import close_before_teardown, make_renderer  # noqa: E402
from vlmrl.envs.validation import check_positive_ints, check_render_mode  # noqa: E402
from vlmrl.errors import ConfigError, UserError  # noqa: E402

if TYPE_CHECKING:
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

RENDER_QUALITIES = ("fast", "high")

# Frame size limits (pixels, each side). Below 64 px the small objects the goal texts name
# (the 4 cm cube, the 5 cm ball) cover only a few pixels of the crop; above 2048 px the
# offscreen buffer gets large for software rendering.
MIN_RENDER_SIZE = 64
MAX_RENDER_SIZE = 2048

# Goal texts RL-VLM-F gave its VLM (their prompt.py, ``goal_env_prompts``). door-open is in
# their code but not among the paper's Meta-World results.
RLVLMF_GOALS: dict[str, str] = {
    "drawer-open": "to open the drawer",
    "sweep-into": "to minimize the distance between the green cube and the hole",
    "soccer": "to move the soccer ball into the goal",
    "door-open": "to open the safe door",
}

# RL-VLM-F's frame size before cropping and the crop (rows, columns of the upright frame).
RLVLMF_FRAME_SIZE = 480
RLVLMF_CROP = (100, 400, 100, 400)

# The Meta-World camera whose pose is overwritten with a compiled RL-VLM-F camera. It is fixed
# to the world body in every v3 model, so a world-frame pose can be copied into it as is.
_CAMERA_SLOT = "corner"
DEFAULT_CAMERA = "corner4"

# The sweep-into cube colour from RL-VLM-F's scene, RGB 0-255.
SWEEP_INTO_CUBE_RGB = (0, 240, 0)


@dataclass(frozen=True)
class View:
    """Where a task is seen from and which part of the upright frame is kept.

    :param camera: MJCF attributes of a world-fixed camera (angles in radians, as RL-VLM-F's
        compiler had them), or None for Meta-World's ``corner4`` camera.
    :param crop: ``(row0, row1, col0, col1)`` of the upright ``RLVLMF_FRAME_SIZE`` square frame
        to keep, or None for the whole view.
    """

    camera: str | None
    crop: tuple[int, int, int, int] | None = None


# RL-VLM-F's cameras, from their xyz_base.xml; their code cropped tasks with "drawer" or "sweep"
# in the name. The three tasks of the paper first; the others had cameras in the same file.
_FRONT_LEFT = 'xyaxes="-1 1 0 -0.2 -0.2 -1"'
VIEWS: dict[str, View] = {
    "drawer-open": View(f'pos="-0.6 0.2 0.35" {_FRONT_LEFT}', RLVLMF_CROP),
    "sweep-into": View('fovy="45" pos="0 1.1 0.75" euler="-0.5 0 0"', RLVLMF_CROP),
    "soccer": View('fovy="45" pos="0.2 0.6 0.5" euler="3.5 2.7 1"'),
    "drawer-close": View(f'pos="-0.6 0.2 0.35" {_FRONT_LEFT}', RLVLMF_CROP),
    "button-press": View(f'pos="-0.6 0.2 0.4" {_FRONT_LEFT}'),
    "door-open": View('fovy="60" pos="0.7 0.35 0.6" euler="3.9 2.3 0.6"'),
    "door-close": View('fovy="60" pos="0.7 0.35 0.6" euler="3.9 2.3 0.6"'),
    "handle-press": View(f'pos="-0.47 0.3 0.3" {_FRONT_LEFT}'),
    "handle-pull": View(f'pos="-0.47 0.3 0.3" {_FRONT_LEFT}'),
    "lever-pull": View('fovy="60" pos="0.65 0.7 0.3" euler="4.0 1.7 0.7"'),
}
DEFAULT_VIEW = View(camera=None)

# RL-VLM-F's scene edits apply to the paper's three tasks. Elsewhere the goal site stays
# visible: in reach or push tasks it is the only picture of where the goal is.
HIDDEN_GOAL_TASKS = ("drawer-open", "sweep-into", "soccer")


class MetaWorldNotInstalledError(UserError, ImportError):
    """metaworld (or a mujoco it can run on) is missing; the message says how to install it."""


def metaworld_missing(error: ImportError) -> MetaWorldNotInstalledError:
    """The error to raise when importing metaworld failed with ``error``: says how to install it."""
    return MetaWorldNotInstalledError(
        f"Meta-World is not installed ({error}). vlmrl's default install includes it; add it to "
        "this environment with:  pip install 'metaworld==3.1.1' 'mujoco==3.3.0'  (if mujoco 4.x "
        "is installed, run  pip uninstall -y mujoco mujoco-core mujoco-studio  first: metaworld "
        "3.1.1 needs mujoco 3.3.0, and 4.x spreads the mujoco package over three distributions)"
    )


def import_metaworld_envs() -> dict[str, type[SawyerXYZEnv]]:
    """Meta-World's v3 env classes by task name (``"drawer-open"``), importing metaworld now.

    :raises MetaWorldNotInstalledError: metaworld cannot be imported, with the install command.
    """
    try:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    except ImportError as error:
        raise metaworld_missing(error) from error
    return {name.removesuffix("-v3"): cls for name, cls in ALL_V3_ENVIRONMENTS.items()}


def check_render_size(task: str, render_width: object, render_height: object) -> None:
    """Raise ConfigError unless both sides are integers in [MIN_RENDER_SIZE, MAX_RENDER_SIZE]."""
    check_positive_ints(render_width=render_width, render_height=render_height)
    for name, value in (("render_width", int(render_width)), ("render_height", int(render_height))):  # type: ignore[call-overload]
        if not MIN_RENDER_SIZE <= value <= MAX_RENDER_SIZE:
            raise ConfigError(
                f"{name}={value} is too {'small' if value < MIN_RENDER_SIZE else 'large'} for Meta-World "
                f"{task!r}'s view: allowed {MIN_RENDER_SIZE}..{MAX_RENDER_SIZE} pixels"
            )


def compile_camera(attributes: str) -> tuple[np.ndarray, np.ndarray, float]:
    """World-frame ``(pos, quat, fovy)`` of a camera given by MJCF attributes, angles in radians.

    MuJoCo's own compiler turns ``euler``/``xyaxes`` into the quaternion, so the conventions
    (intrinsic xyz Euler angles, the camera looking along its -z axis) are exactly MuJoCo's.
    """
    xml = f'<mujoco><compiler angle="radian"/><worldbody><camera {attributes}/></worldbody></mujoco>'
    model = mujoco.MjModel.from_xml_string(xml)
    return model.cam_pos[0].copy(), model.cam_quat[0].copy(), float(model.cam_fovy[0])


def crop_window(crop: tuple[int, int, int, int], frame_size: int) -> tuple[float, float, float, float]:
    """The crop as ``(bottom, top, left, right)`` in normalised device coordinates ([-1, 1], up
    is +1) of the raw (not yet flipped) render of a square ``frame_size`` frame.

    The crop is given in rows of the row-flipped frame, so rows ``[r0, r1)`` there are rows
    ``[frame_size - r1, frame_size - r0)`` of the raw render.
    """
    row0, row1, col0, col1 = crop
    return (
        2.0 * row0 / frame_size - 1.0,
        2.0 * row1 / frame_size - 1.0,
        2.0 * col0 / frame_size - 1.0,
        2.0 * col1 / frame_size - 1.0,
    )


class MetaWorldEnv(gym.Env[np.ndarray, np.ndarray]):
    """A Meta-World v3 task with RL-VLM-F's cameras, crops and scene edits.

    :param task: Meta-World task name, e.g. ``"drawer-open"`` (a ``-v3`` suffix is accepted).
    :param render_mode: ``"rgb_array"`` or None.
    :param render_width: frame width in pixels (MIN_RENDER_SIZE..MAX_RENDER_SIZE).
    :param render_height: frame height in pixels (MIN_RENDER_SIZE..MAX_RENDER_SIZE).
    :param episode_length: steps until truncation (Meta-World's ``max_path_length`` is 500).
    :param render_quality: ``"fast"`` (no multisampling, shadows or reflections) or ``"high"``.
    :param goal_observable: put the goal position in the last three observation entries (True)
        or zeros (False, RL-VLM-F's observation).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        render_mode: str | None = None,
        render_width: int = 300,
        render_height: int = 300,
        episode_length: int = 500,
        render_quality: str = "fast",
        goal_observable: bool = True,
    ) -> None:
        check_render_mode(render_mode, self.metadata["render_modes"])
        check_positive_ints(episode_length=episode_length)
        if render_quality not in RENDER_QUALITIES:
            raise ConfigError(f"render_quality must be one of {RENDER_QUALITIES}, got {render_quality!r}")
        classes = import_metaworld_envs()
        self.task = canonical_task(task, tuple(classes))
        check_render_size(self.task, render_width, render_height)

        self.render_mode = render_mode
        self.render_width, self.render_height = int(render_width), int(render_height)
        self.episode_length = int(episode_length)
        self.render_quality = render_quality
        self.goal_observable = bool(goal_observable)

        # Meta-World's own renderer is never used (render_mode None): this env renders itself.
        env = classes[self.task]()
        # What set_task would do, without freezing positions: draw them at every reset from
        # env.np_random (seeded_rand_vec), which reset() points at this env's generator.
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        if env._partially_observable != (not self.goal_observable):
            env._partially_observable = not self.goal_observable
            # A cached_property: drop it so the goal bounds are recomputed.
            del env.sawyer_observation_space
        # Meta-World refuses to step past max_path_length; make it agree with ours.
        env.max_path_length = self.episode_length
        self._env = env

        self.observation_space = env.sawyer_observation_space
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)

        model = env.model
        self.view = VIEWS.get(self.task, DEFAULT_VIEW)
        if self.view.camera is None:
            self._camera_id = model.camera(DEFAULT_CAMERA).id
        else:
            self._camera_id = model.camera(_CAMERA_SLOT).id
            pos, quat, fovy = compile_camera(self.view.camera)
            model.cam_pos[self._camera_id] = pos
            model.cam_quat[self._camera_id] = quat
            model.cam_fovy[self._camera_id] = fovy
        self._window = None if self.view.crop is None else crop_window(self.view.crop, RLVLMF_FRAME_SIZE)
        if self.task in HIDDEN_GOAL_TASKS:
            model.site_rgba[model.site("goal").id, 3] = 0.0
        if self.task == "sweep-into":
            cube = model.geom("objGeom").id
            model.geom_matid[cube] = -1  # the wood material's texture would override the colour
            model.geom_rgba[cube] = (*(c / 255.0 for c in SWEEP_INTO_CUBE_RGB), 1.0)

        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.render_width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.render_height)
        if render_quality == "fast":
            # Read when the rendering context is created, so it must be set before any render.
            model.vis.quality.offsamples = 0
        self._renderer: mujoco.Renderer | None = None
        self._renderer_finalizer: weakref.finalize | None = None
        self._steps = 0

    @property
    def goal_text(self) -> str | None:
        """RL-VLM-F's goal text for this task, or None where they gave none."""
        return RLVLMF_GOALS.get(self.task)

    @property
    def unwrapped_metaworld(self) -> SawyerXYZEnv:
        """The Meta-World env inside (for its object positions, ``_target_pos``, ...)."""
        return self._env

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # Meta-World ignores reset's seed; its positions come from env.np_random, so share ours.
        self._env.np_random = self.np_random
        obs, _ = self._env.reset()
        self._steps = 0
        # Meta-World clips observations to its space in step() but not in reset().
        return self._clip(obs), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, _, _, info = self._env.step(np.asarray(action, dtype=np.float32))
        self._steps += 1
        info = dict(info)
        info["true_reward"] = float(reward)
        info["success"] = bool(info["success"])
        truncated = self._steps >= self.episode_length
        return self._clip(obs), float(reward), False, truncated, info

    def _clip(self, obs: np.ndarray) -> np.ndarray:
        space = self.observation_space
        return np.clip(obs, space.low, space.high).astype(np.float64)

    def render(self) -> np.ndarray | None:
        """Current frame, uint8 of shape (render_height, render_width, 3), upright."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'.")
            return None
        if self._renderer is None:
            self._renderer = make_renderer(self._env.model, self.render_height, self.render_width, self.render_quality)
            self._renderer_finalizer = close_before_teardown(self, self._renderer)
        self._renderer.update_scene(self._env.data, camera=self._camera_id)
        if self._window is not None:
            self._narrow_frustum(*self._window)
        # RL-VLM-F's cameras (and Meta-World's corner cameras) have their up vector pointing
        # down; flipping the rows makes the picture upright, as RL-VLM-F did.
        return np.ascontiguousarray(self._renderer.render()[::-1])

    def _narrow_frustum(self, bottom: float, top: float, left: float, right: float) -> None:
        """Shrink the projection of the camera just placed in the scene to a window of its
        square view (NDC), so the viewport shows exactly that window: cropping by rendering.

        MuJoCo sets the frustum's left/right from ``frustum_center`` and the viewport's aspect
        ratio, so only the vertical extent and the horizontal centre are set here.
        """
        assert self._renderer is not None
        for camera in self._renderer.scene.camera:  # both eyes; mono rendering averages them
            half = camera.frustum_top  # the square view's half height (= half width) at near
            camera.frustum_bottom = bottom * half
            camera.frustum_top = top * half
            camera.frustum_center = 0.5 * (left + right) * half

    def close(self) -> None:
        if self._renderer_finalizer is not None:
            self._renderer_finalizer()  # closes the renderer once; later calls do nothing
        self._renderer = None
        self._renderer_finalizer = None
        self._env.close()
        super().close()


def full_view_frame(env: MetaWorldEnv, size: int = RLVLMF_FRAME_SIZE) -> np.ndarray:
    """The task camera's whole square view, row-flipped as RL-VLM-F did, without any crop:
    RL-VLM-F's frame before ``[100:400, 100:400]``. For checks against the cropped render."""
    renderer = make_renderer(env.unwrapped_metaworld.model, size, size, env.render_quality)
    try:
        renderer.update_scene(env.unwrapped_metaworld.data, camera=env._camera_id)
        return np.ascontiguousarray(renderer.render()[::-1])
    finally:
        renderer.close()


__all__ = [
    "DEFAULT_CAMERA",
    "MAX_RENDER_SIZE",
    "MIN_RENDER_SIZE",
    "MetaWorldEnv",
    "MetaWorldNotInstalledError",
    "RLVLMF_GOALS",
    "VIEWS",
    "compile_camera",
    "full_view_frame",
    "import_metaworld_envs",
    "metaworld_missing",
]

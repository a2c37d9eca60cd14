"""Gymnasium environments rendered for VLM rewards.

Importing this package registers the ids below; make them with
``gymnasium.make(id, render_mode="rgb_array", render_width=..., render_height=...)``.
Every env returns its ground-truth reward and also puts it in ``info["true_reward"]``.

| id | based on | episode end |
|---|---|---|
| ``vlmrl/CartPole-v1`` | CartPole-v1 | termination, truncation at 500 |
| ``vlmrl/CartPoleFixedLength-v1`` | CartPole-v1 | truncation at ``episode_length`` (200) |
| ``vlmrl/MountainCarContinuousTextured-v0`` | MountainCarContinuous-v0 | truncation at ``episode_length`` (999) |
| ``vlmrl/HumanoidTextured-v0`` | Humanoid-v5 | truncation at ``episode_length`` (100) |
| ``vlmrl/MetaWorld<Task>-v0`` | Meta-World v3 ``<task>-v3`` (all 50) | truncation at ``episode_length`` (500) |

The Meta-World ids (``METAWORLD_ENV_IDS``, e.g. ``vlmrl/MetaWorldDrawerOpen-v0``) use RL-VLM-F's
cameras, crops and scene edits where RL-VLM-F defined them (``envs/metaworld.py``).

Env modules are imported lazily by Gymnasium (string entry points), so importing this package
does not load MuJoCo, metaworld or pygame.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium

from vlmrl.errors import ConfigError
from vlmrl.headless import configure_headless

# MuJoCo picks its OpenGL backend at import and pygame opens a display: set headless defaults
# before either can be imported through an entry point.
configure_headless()

CARTPOLE_ID = "vlmrl/CartPole-v1"
CARTPOLE_FIXED_LENGTH_ID = "vlmrl/CartPoleFixedLength-v1"
MOUNTAIN_CAR_TEXTURED_ID = "vlmrl/MountainCarContinuousTextured-v0"
HUMANOID_TEXTURED_ID = "vlmrl/HumanoidTextured-v0"

ENV_IDS = (CARTPOLE_ID, CARTPOLE_FIXED_LENGTH_ID, MOUNTAIN_CAR_TEXTURED_ID, HUMANOID_TEXTURED_ID)

# Meta-World v3's task names without the "-v3" suffix, listed here so that registering them does
# not import metaworld (tests/test_metaworld.py checks the list against metaworld's own).
METAWORLD_TASKS = (
    "assembly", "basketball", "bin-picking", "box-close", "button-press-topdown",
    "button-press-topdown-wall", "button-press", "button-press-wall", "coffee-button",
    "coffee-pull", "coffee-push", "dial-turn", "disassemble", "door-close", "door-lock",
    "door-open", "door-unlock", "hand-insert", "drawer-close", "drawer-open", "faucet-open",
    "faucet-close", "hammer", "handle-press-side", "handle-press", "handle-pull-side",
    "handle-pull", "lever-pull", "pick-place-wall", "pick-out-of-hole", "pick-place",
    "plate-slide", "plate-slide-side", "plate-slide-back", "plate-slide-back-side",
    "peg-insert-side", "peg-unplug-side", "soccer", "stick-push", "stick-pull", "push",
    "push-wall", "push-back", "reach", "reach-wall", "shelf-place", "sweep-into", "sweep",
    "window-open", "window-close",
)  # fmt: skip

# task -> env id, e.g. "drawer-open" -> "vlmrl/MetaWorldDrawerOpen-v0".
METAWORLD_ENV_IDS: dict[str, str] = {
    task: "vlmrl/MetaWorld" + "".join(part.capitalize() for part in task.split("-")) + "-v0"
    for task in METAWORLD_TASKS
}


def canonical_task(task: str, available: Sequence[str] = METAWORLD_TASKS) -> str:
    """``task`` without a ``-v3`` suffix, checked against ``available``.

    :raises ConfigError: the task is unknown; the message lists the available ones.
    """
    name = task.removesuffix("-v3") if isinstance(task, str) else task
    if name not in available:
        raise ConfigError(f"unknown Meta-World task {task!r}; available: {', '.join(sorted(available))}")
    return name


def metaworld_env_id(task: str) -> str:
    """The vlmrl env id of a Meta-World task (``"drawer-open"`` or ``"drawer-open-v3"``).

    :raises ConfigError: unknown task; the message lists the available ones.
    """
    return METAWORLD_ENV_IDS[canonical_task(task)]


# max_episode_steps is set only where Gymnasium's TimeLimit should truncate; the fixed-length
# envs truncate themselves so that their ``episode_length`` kwarg is the single source of truth.
_REGISTRATIONS: dict[str, dict] = {
    CARTPOLE_ID: dict(
        entry_point="vlmrl.envs.cartpole:CartPoleEnv", max_episode_steps=500, reward_threshold=475.0
    ),
    CARTPOLE_FIXED_LENGTH_ID: dict(entry_point="vlmrl.envs.cartpole:CartPoleFixedLengthEnv"),
    MOUNTAIN_CAR_TEXTURED_ID: dict(entry_point="vlmrl.envs.mountain_car:TexturedMountainCarEnv"),
    HUMANOID_TEXTURED_ID: dict(entry_point="vlmrl.envs.humanoid:HumanoidTexturedEnv"),
}

# Truncation is the env's own (episode_length), as for the fixed-length envs above.
for _task, _env_id in METAWORLD_ENV_IDS.items():
    _REGISTRATIONS[_env_id] = dict(entry_point="vlmrl.envs.metaworld:MetaWorldEnv", kwargs={"task": _task})

for _env_id, _kwargs in _REGISTRATIONS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, **_kwargs)

__all__ = [
    "CARTPOLE_ID",
    "CARTPOLE_FIXED_LENGTH_ID",
    "ENV_IDS",
    "HUMANOID_TEXTURED_ID",
    "METAWORLD_ENV_IDS",
    "METAWORLD_TASKS",
    "MOUNTAIN_CAR_TEXTURED_ID",
    "canonical_task",
    "metaworld_env_id",
]

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

Env modules are imported lazily by Gymnasium (string entry points), so importing this package
does not load MuJoCo or pygame.
"""

from __future__ import annotations

import gymnasium

from vlmrl.headless import configure_headless

# MuJoCo picks its OpenGL backend at import and pygame opens a display: set headless defaults
# before either can be imported through an entry point.
configure_headless()

CARTPOLE_ID = "vlmrl/CartPole-v1"
CARTPOLE_FIXED_LENGTH_ID = "vlmrl/CartPoleFixedLength-v1"
MOUNTAIN_CAR_TEXTURED_ID = "vlmrl/MountainCarContinuousTextured-v0"
HUMANOID_TEXTURED_ID = "vlmrl/HumanoidTextured-v0"

ENV_IDS = (CARTPOLE_ID, CARTPOLE_FIXED_LENGTH_ID, MOUNTAIN_CAR_TEXTURED_ID, HUMANOID_TEXTURED_ID)

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

for _env_id, _kwargs in _REGISTRATIONS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, **_kwargs)

__all__ = [
    "CARTPOLE_ID",
    "CARTPOLE_FIXED_LENGTH_ID",
    "ENV_IDS",
    "HUMANOID_TEXTURED_ID",
    "MOUNTAIN_CAR_TEXTURED_ID",
]

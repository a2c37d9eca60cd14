"""Behaviour of the vlmrl environments: API conformance, frames, true rewards, episode rules."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from env_checks import check_env_warnings
from helpers import run_python

import vlmrl.envs as envs
from vlmrl.errors import ConfigError

# Warnings check_env raises for every standard env (unbounded velocity spaces) or for checking a
# wrapped env on purpose; anything else it reports is a defect.
BENIGN_WARNINGS = ("infinity", "different from the unwrapped version")

SMALL = dict(render_width=96, render_height=72)


def make(env_id: str, **kwargs) -> gym.Env:
    return gym.make(env_id, render_mode="rgb_array", **kwargs)


def rollout(env: gym.Env, seed: int, steps: int, render: bool = False):
    """Seeded rollout with seeded random actions; returns observations, rewards and frames."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, rewards, frames = [obs], [], []
    if render:
        frames.append(env.render())
    for _ in range(steps):
        obs, reward, _, _, _ = env.step(env.action_space.sample())
        observations.append(obs)
        rewards.append(reward)
        if render:
            frames.append(env.render())
    return np.array(observations), np.array(rewards), frames


def test_all_ids_registered():
    for env_id in envs.ENV_IDS:
        assert env_id in gym.registry


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_check_env_passes_without_warnings(env_id):
    assert check_env_warnings(make(env_id, **SMALL), BENIGN_WARNINGS) == []


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_frames_have_requested_size_and_content(env_id):
    env = make(env_id, render_width=100, render_height=60)
    env.reset(seed=0)
    frame = env.render()
    env.close()
    assert frame.shape == (60, 100, 3)
    assert frame.dtype == np.uint8
    assert frame.std() > 10  # not a blank image


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_true_reward_in_info_equals_returned_reward(env_id):
    env = make(env_id, **SMALL)
    env.reset(seed=1)
    env.action_space.seed(1)
    for _ in range(30):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert type(info["true_reward"]) is float
        assert info["true_reward"] == reward
        if terminated or truncated:
            env.reset()
    env.close()


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_same_seed_reproduces_observations_and_frames(env_id):
    runs = []
    for seed in (3, 3, 4):
        env = make(env_id, **SMALL)
        runs.append(rollout(env, seed=seed, steps=5, render=True))
        env.close()
    (obs_a, rew_a, frames_a), (obs_b, rew_b, frames_b), (obs_c, _, _) = runs
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    for fa, fb in zip(frames_a, frames_b, strict=True):
        np.testing.assert_array_equal(fa, fb)
    assert not np.array_equal(obs_a, obs_c)


@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        (envs.CARTPOLE_FIXED_LENGTH_ID, dict(episode_length=0)),
        (envs.MOUNTAIN_CAR_TEXTURED_ID, dict(render_width=-5)),
        (envs.HUMANOID_TEXTURED_ID, dict(render_quality="ultra")),
    ],
)
def test_bad_kwargs_raise_config_error(env_id, kwargs):
    with pytest.raises(ConfigError):
        make(env_id, **kwargs)


# --- CartPole ---------------------------------------------------------------------------------


def test_cartpole_keeps_gymnasium_episode_rules():
    env = make(envs.CARTPOLE_ID, **SMALL)
    assert env.spec.max_episode_steps == 500
    env.reset(seed=0)
    for step in range(1, 501):
        _, reward, terminated, truncated, _ = env.step(1)  # always push right: the pole falls
        if terminated:
            break
    assert terminated and not truncated and step < 100
    assert reward == 1.0  # Gymnasium pays 1 on the terminating step too
    env.close()


def test_cartpole_fixed_length_never_terminates_and_pays_zero_after_fall():
    env = make(envs.CARTPOLE_FIXED_LENGTH_ID, episode_length=300, **SMALL)
    env.reset(seed=0)
    upright_frame = env.render()
    rewards, truncations = [], []
    for _ in range(300):
        obs, reward, terminated, truncated, _ = env.step(1)
        assert not terminated
        assert np.all(np.isfinite(obs)) and env.observation_space.contains(obs)
        assert abs(obs[0]) <= 2.4
        rewards.append(reward)
        truncations.append(truncated)
    fallen_frame = env.render()
    env.close()
    assert truncations == [False] * 299 + [True]
    assert rewards[0] == 1.0
    first_zero = rewards.index(0.0)
    # Once fallen under a constant push, the pole never returns upright inside the track.
    assert set(rewards[first_zero:]) == {0.0}
    assert fallen_frame.std() > 10 and not np.array_equal(fallen_frame, upright_frame)


def test_cartpole_fixed_length_default_episode_is_200_steps():
    env = make(envs.CARTPOLE_FIXED_LENGTH_ID, **SMALL)
    env.reset(seed=0)
    truncated, steps = False, 0
    while not truncated:
        _, _, _, truncated, _ = env.step(steps % 2)
        steps += 1
    env.close()
    assert steps == 200


def test_cartpole_upright_pole_is_drawn_vertically():
    """The resized frame keeps Gymnasium's look: a tall pole above a cart near the bottom."""
    env = make(envs.CARTPOLE_ID, render_width=224, render_height=224)
    env.reset(seed=0, options={"low": 0.0, "high": 0.0})
    frame = env.render().astype(int)
    env.close()
    pole = (np.abs(frame - (202, 152, 101)).sum(-1) < 60)  # Gymnasium's pole colour
    rows, cols = np.nonzero(pole)
    assert rows.max() - rows.min() > 3 * (cols.max() - cols.min())
    assert abs(cols.mean() - 112) < 4  # cart centred at x = 0


def gymnasium_frame_resized(x: float, theta: float, width: int, height: int) -> np.ndarray:
    """What vlmrl drew before drawing directly: Gymnasium's pygame picture on the native canvas,
    area-averaged (or bicubic-upscaled) to the frame size."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv as GymCartPole
    from PIL import Image

    from vlmrl.envs.cartpole import native_canvas_size

    env = GymCartPole(render_mode="rgb_array")
    env.screen_width, env.screen_height = native_canvas_size(width, height)
    env.reset(seed=0)
    env.state = np.array([x, 0.0, theta, 0.0])
    frame = env.render()
    env.close()
    if frame.shape[:2] != (height, width):
        resample = Image.Resampling.BOX if width < frame.shape[1] else Image.Resampling.BICUBIC
        frame = np.asarray(Image.fromarray(frame).resize((width, height), resample))
    return frame


@pytest.mark.parametrize("width, height", [(64, 64), (96, 64), (224, 224), (600, 400), (1200, 800)])
def test_cartpole_drawn_directly_matches_gymnasium_picture_resized(width, height):
    """Frames drawn at the requested size look like Gymnasium's 600-px picture resized: same
    shapes, colours and places; only anti-aliasing at the edges differs."""
    from vlmrl.envs.cartpole import draw_cartpole

    rng = np.random.default_rng(width)
    for x, theta in [(0.0, 0.0), (2.0, 0.2), *zip(rng.uniform(-2.4, 2.4, 4), rng.uniform(-1.5, 1.5, 4))]:
        ours = draw_cartpole(float(x), float(theta), width, height).astype(int)
        reference = gymnasium_frame_resized(float(x), float(theta), width, height).astype(int)
        assert ours.shape == reference.shape == (height, width, 3)
        difference = np.abs(ours - reference).max(axis=-1)
        assert difference.mean() < 1.0, (x, theta)  # in 0-255 levels, averaged over the frame
        assert (difference > 64).mean() < 0.005, (x, theta)  # strong differences: edge pixels only


def test_cartpole_env_renders_its_state_without_pygame():
    code = (
        "import sys, numpy as np, gymnasium as gym, vlmrl\n"
        "from vlmrl.envs.cartpole import draw_cartpole\n"
        "env = gym.make('vlmrl/CartPole-v1', render_mode='rgb_array', render_width=80, render_height=60)\n"
        "env.reset(seed=0)\n"
        "x, _, theta, _ = env.unwrapped.state\n"
        "assert np.array_equal(env.render(), draw_cartpole(x, theta, 80, 60))\n"
        "print('pygame' in sys.modules)"
    )
    assert run_python(code).stdout.strip() == "False"


def test_import_vlmrl_alone_registers_the_env_ids_and_stays_light():
    """`import vlmrl` registers the ids (as `import ale_py` does for ALE) without loading torch,
    MuJoCo or pygame: the env modules load when an env is made."""
    code = (
        "import sys, gymnasium as gym, vlmrl\n"
        "env = gym.make('vlmrl/CartPole-v1'); env.reset(seed=0); env.close()\n"
        "print(sorted(m for m in ('torch', 'mujoco', 'pygame') if m in sys.modules))"
    )
    assert run_python(code).stdout.strip() == "[]"


# --- MountainCar ------------------------------------------------------------------------------


def pump_energy(obs: np.ndarray) -> np.ndarray:
    """Push in the direction of motion: reaches the goal in a couple of hundred steps."""
    return np.array([1.0 if obs[1] >= 0 else -1.0], dtype=np.float32)


def test_mountain_car_goal_is_absorbing_and_return_matches_gymnasium():
    env = make(envs.MOUNTAIN_CAR_TEXTURED_ID, episode_length=400, **SMALL)
    reference = gym.make("MountainCarContinuous-v0")
    obs, _ = env.reset(seed=5)
    ref_obs, _ = reference.reset(seed=5)
    np.testing.assert_array_equal(obs, ref_obs)
    start_frame = env.render()

    ours, theirs, arrival = [], [], None
    ref_done = False
    for step in range(1, 401):
        action = pump_energy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        assert not terminated
        assert truncated == (step == 400)
        ours.append(reward)
        if not ref_done:
            _, ref_reward, ref_done, _, _ = reference.step(action)
            theirs.append(ref_reward)
        if info["at_goal"] and arrival is None:
            arrival = step
            goal_obs, goal_frame = obs.copy(), env.render()
        if arrival is not None and step > arrival:
            # Absorbed: frozen state, zero reward, actions ignored.
            np.testing.assert_array_equal(obs, goal_obs)
            assert obs[1] == 0.0 and reward == 0.0
    env.close()
    reference.close()
    assert arrival is not None and arrival < 300
    assert ref_done and len(theirs) == arrival
    assert goal_obs[0] >= 0.45
    assert ours[arrival - 1] == pytest.approx(100.0 - 0.1)
    assert sum(ours) == pytest.approx(sum(theirs))
    np.testing.assert_array_equal(env.render(), goal_frame)
    assert not np.array_equal(goal_frame, start_frame)


def test_mountain_car_frame_changes_with_position():
    env = make(envs.MOUNTAIN_CAR_TEXTURED_ID, **SMALL)
    env.reset(seed=0, options={"low": -1.0, "high": -1.0})
    left = env.render()
    env.reset(seed=0, options={"low": 0.3, "high": 0.3})
    right = env.render()
    env.close()
    changed_cols = np.nonzero(np.any(left != right, axis=(0, 2)))[0]
    # The car moved from the left third to the right third of the frame.
    assert changed_cols.min() < 96 / 3 and changed_cols.max() > 2 * 96 / 3


# --- Humanoid ---------------------------------------------------------------------------------


def body_pixels(frame: np.ndarray) -> np.ndarray:
    """Mask of the white body: bright in every channel (the sky is blue, the floor grey)."""
    return np.all(frame > 200, axis=-1)


def test_humanoid_is_textured_and_camera_tracks_the_torso():
    env = make(envs.HUMANOID_TEXTURED_ID, render_width=120, render_height=120)
    env.reset(seed=0)
    home = env.render()
    base = env.unwrapped
    qpos, qvel = base.data.qpos.copy(), base.data.qvel.copy()
    qpos[:2] += (3.0, -2.0)  # carry the whole body 3.6 m away
    base.set_state(qpos, qvel)
    moved = env.render()
    env.close()

    sky = home[:10].reshape(-1, 3).mean(0)
    assert sky[2] > sky[0] + 40  # blue sky box, not the default dark gradient
    for frame in (home, moved):
        rows, cols = np.nonzero(body_pixels(frame))
        assert len(cols) > 100  # the white body is visible (Humanoid-v5's body is tan)
        assert abs(cols.mean() - 60) < 12  # and horizontally centred
        assert 20 < rows.mean() < 100


def test_humanoid_poses_give_different_frames_and_episode_is_fixed_length():
    env = make(envs.HUMANOID_TEXTURED_ID, render_width=64, render_height=64)
    env.reset(seed=0)
    first = env.render()
    env.action_space.seed(0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated  # falls over under random actions, but never terminates
        steps += 1
    last = env.render()
    assert steps == 100
    assert env.unwrapped.data.qpos[2] < 1.0  # it did fall (unhealthy in Humanoid-v5 terms)
    assert np.abs(first.astype(int) - last.astype(int)).mean() > 2
    env.close()


def test_humanoid_dynamics_and_reward_equal_humanoid_v5():
    """The texture changes touch only visuals: same seed and actions give Humanoid-v5's numbers."""
    ours = make(envs.HUMANOID_TEXTURED_ID, **SMALL)
    theirs = gym.make("Humanoid-v5", terminate_when_unhealthy=False)
    obs_a, _ = ours.reset(seed=7)
    obs_b, _ = theirs.reset(seed=7)
    np.testing.assert_array_equal(obs_a, obs_b)
    rng = np.random.default_rng(7)
    for _ in range(10):
        action = rng.uniform(-0.4, 0.4, size=17).astype(np.float32)
        obs_a, reward_a, _, _, _ = ours.step(action)
        obs_b, reward_b, _, _, _ = theirs.step(action)
        np.testing.assert_array_equal(obs_a, obs_b)
        assert reward_a == reward_b
    ours.close()
    theirs.close()


@pytest.mark.parametrize("keep_alive", ["in __main__", "on a module torn down late"])
def test_humanoid_left_open_exits_without_a_traceback(keep_alive):
    """An env nobody closed must not print an OSMesa/PyOpenGL traceback at interpreter exit
    (its renderer used to be freed during module teardown, when those modules are half gone)."""
    code = (
        "import gymnasium as gym, vlmrl\n"
        "env = gym.make('vlmrl/HumanoidTextured-v0', render_mode='rgb_array', render_width=48, render_height=48)\n"
        "env.reset(seed=0)\n"
        "assert env.render().shape == (48, 48, 3)\n"
    )
    if keep_alive != "in __main__":
        code += "import logging; logging.kept_env = env\n"  # outlives __main__'s globals at teardown
    result = run_python(code)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


@pytest.mark.parametrize("env_id", ["vlmrl/HumanoidTextured-v0", "vlmrl/MetaWorldDrawerOpen-v0"])
def test_sac_builds_after_a_software_rendered_mujoco_env(env_id):
    """MuJoCo's OSMesa loaded before Triton used to segfault the process when SAC built its
    optimiser (vlmrl.headless.load_torch_compiler_before_software_gl); a fresh process each."""
    script = (
        "import gymnasium as gym, vlmrl\n"
        f"env = gym.make({env_id!r}, render_mode='rgb_array', render_width=64, render_height=64)\n"
        "env.reset(seed=0); env.render()\n"
        "from stable_baselines3 import SAC\n"
        "SAC('MlpPolicy', env, buffer_size=100, device='cpu')\n"
        "env.close(); print('built')\n"
    )
    done = run_python(script, timeout=300)
    assert done.stdout.strip().endswith("built"), done.stderr[-2000:]

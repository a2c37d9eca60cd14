"""Meta-World envs with RL-VLM-F's views: API conformance, cameras and crops, scene edits,
seeding, info, scripted experts, several envs per process, and the error messages."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest

from env_checks import check_env_warnings
from helpers import run_python

import vlmrl.envs as envs
from vlmrl.envs.env_config import EnvConfig
from vlmrl.envs.metaworld import (
    RLVLMF_GOALS,
    VIEWS,
    MetaWorldEnv,
    MetaWorldNotInstalledError,
    compile_camera,
    full_view_frame,
)
from vlmrl.envs.metaworld_policies import scripted_policy
from vlmrl.errors import ConfigError
from vlmrl.factory import make_vec_env

RLVLMF_TASKS = ("drawer-open", "sweep-into", "soccer")
# check_env's warnings that Meta-World's own spaces cause: unbounded object entries, and goal
# bounds with a zero-width axis (e.g. soccer's goal height is always 0).
BENIGN_WARNINGS = ("infinity", "different from the unwrapped version", "maximum and minimum values are equal")


def make(task: str, **kwargs) -> gym.Env:
    return gym.make(envs.METAWORLD_ENV_IDS[task], render_mode="rgb_array", **kwargs)


def test_task_list_matches_metaworld_and_ids_are_registered():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert list(envs.METAWORLD_TASKS) == [name.removesuffix("-v3") for name in ALL_V3_ENVIRONMENTS]
    assert envs.METAWORLD_ENV_IDS["drawer-open"] == "vlmrl/MetaWorldDrawerOpen-v0"
    assert envs.metaworld_env_id("sweep-into-v3") == "vlmrl/MetaWorldSweepInto-v0"
    assert all(env_id in gym.registry for env_id in envs.METAWORLD_ENV_IDS.values())


def test_importing_the_env_package_loads_neither_metaworld_nor_mujoco():
    code = "import sys, vlmrl.envs; print(sorted(m for m in sys.modules if m.split('.')[0] in ('metaworld', 'mujoco')))"
    assert run_python(code).stdout.strip() == "[]"


def test_goal_texts_are_rlvlmf_s():
    assert RLVLMF_GOALS["drawer-open"] == "to open the drawer"
    assert RLVLMF_GOALS["sweep-into"] == "to minimize the distance between the green cube and the hole"
    assert RLVLMF_GOALS["soccer"] == "to move the soccer ball into the goal"
    env = make("soccer", render_width=64, render_height=64)
    assert env.unwrapped.goal_text == RLVLMF_GOALS["soccer"]
    env.close()


@pytest.mark.parametrize("task", RLVLMF_TASKS)
def test_check_env_passes(task):
    assert check_env_warnings(make(task, render_width=64, render_height=64), BENIGN_WARNINGS) == []


def test_frames_are_upright_uint8_of_the_requested_size():
    env = make("drawer-open")
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert obs.shape == (39,) and obs.dtype == np.float64
    assert frame.shape == (300, 300, 3) and frame.dtype == np.uint8  # RL-VLM-F's 300x300 default
    env.close()
    env = make("sweep-into", render_width=128, render_height=96)
    env.reset(seed=0)
    assert env.render().shape == (96, 128, 3)
    env.close()


@pytest.mark.parametrize("task", ["drawer-open", "sweep-into"])
def test_cropped_render_equals_rlvlmf_crop_of_the_480_frame(task):
    # RL-VLM-F: render 480x480, flip rows, keep [100:400, 100:400]. Here the narrowed frustum
    # renders that window directly; the pixels must match (rasterisation may differ by one level).
    env = make(task)
    env.reset(seed=1)
    frame = env.render()
    crop = full_view_frame(env.unwrapped)[100:400, 100:400]
    diff = np.abs(frame.astype(int) - crop.astype(int)).max(axis=-1)
    assert diff.max() <= 2
    assert (diff > 0).mean() < 0.005
    env.close()


def test_cameras_are_compiled_from_rlvlmf_s_mjcf_in_radians():
    # Meta-World's corner3 camera has soccer's orientation (euler 3.5 2.7 1, radians): compiling
    # the same attributes must give its quaternion, which pins the angle convention.
    env = make("soccer", render_width=64, render_height=64)
    model = env.unwrapped.unwrapped_metaworld.model
    corner3 = model.camera("corner3").id
    _, quat, fovy = compile_camera('fovy="45" pos="0.9 0 1.5" euler="3.5 2.7 1"')
    np.testing.assert_allclose(quat, model.cam_quat[corner3])
    camera = env.unwrapped._camera_id
    pos, quat, fovy = compile_camera(VIEWS["soccer"].camera)
    np.testing.assert_allclose(model.cam_pos[camera], [0.2, 0.6, 0.5])
    np.testing.assert_allclose(model.cam_quat[camera], quat)
    assert model.cam_fovy[camera] == 45.0 and model.cam_bodyid[camera] == 0
    env.close()


@pytest.mark.parametrize("task", RLVLMF_TASKS)
def test_same_seed_same_first_frame_and_other_seeds_move_the_objects(task):
    env = make(task, render_width=96, render_height=96)
    obs_a, _ = env.reset(seed=3)
    frame_a = env.render()
    for _ in range(5):
        env.step(env.action_space.sample())
    obs_again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs_again, obs_a)
    np.testing.assert_array_equal(env.render(), frame_a)
    other = make(task, render_width=96, render_height=96)  # a fresh env agrees too
    obs_other, _ = other.reset(seed=3)
    np.testing.assert_array_equal(other.render(), frame_a)
    # Object (obs[4:7]) and goal (obs[-3:]) positions are drawn at every reset from the seed.
    positions = {tuple(np.round(np.r_[obs_other[4:7], obs_other[-3:]], 6))}
    for seed in (4, 5):
        obs, _ = other.reset(seed=seed)
        positions.add(tuple(np.round(np.r_[obs[4:7], obs[-3:]], 6)))
        assert not np.array_equal(other.render(), frame_a)
    obs, _ = other.reset()  # unseeded resets continue the generator: new positions again
    positions.add(tuple(np.round(np.r_[obs[4:7], obs[-3:]], 6)))
    assert len(positions) == 4
    env.close()
    other.close()


@pytest.mark.parametrize("task", RLVLMF_TASKS)
def test_goal_site_is_hidden_and_only_it_disappears(task):
    env = make(task)
    env.reset(seed=0)
    model = env.unwrapped.unwrapped_metaworld.model
    goal = model.site("goal").id
    assert model.site_rgba[goal, 3] == 0.0
    # The camera's whole 480x480 view: the drawer crop can leave the goal out of the frame.
    hidden = full_view_frame(env.unwrapped)
    model.site_rgba[goal, 3] = 1.0  # Meta-World's alpha
    shown = full_view_frame(env.unwrapped)
    changed = (hidden != shown).any(axis=-1)
    assert 0 < changed.mean() < 0.01  # a 2 cm sphere appears, nothing else changes
    env.close()


def test_goal_site_stays_visible_where_rlvlmf_did_not_hide_it():
    env = make("reach", render_width=64, render_height=64)
    model = env.unwrapped.unwrapped_metaworld.model
    assert model.site_rgba[model.site("goal").id, 3] > 0  # the only picture of a reach goal
    env.close()


def test_sweep_into_cube_is_flat_green():
    env = make("sweep-into")
    env.reset(seed=0)
    model = env.unwrapped.unwrapped_metaworld.model
    cube = model.geom("objGeom").id
    assert model.geom_matid[cube] == -1
    np.testing.assert_allclose(model.geom_rgba[cube], [0, 240 / 255, 0, 1])
    frame = env.render().astype(int)
    green = (frame[..., 1] > 150) & (frame[..., 0] < 60) & (frame[..., 2] < 60)
    assert green.sum() > 200  # a 4 cm cube is ~20x20 px in the 300 px crop
    env.close()


@pytest.mark.parametrize("task", RLVLMF_TASKS)
def test_info_has_true_reward_and_success_and_episodes_truncate(task):
    env = make(task, render_width=64, render_height=64, episode_length=4)
    env.reset(seed=0)
    for step in range(1, 5):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert info["true_reward"] == reward and 0.0 <= reward <= 10.0
        assert isinstance(info["success"], bool)
        assert not terminated and truncated == (step == 4)
    env.close()


def test_goal_observable_false_zeroes_the_goal_like_rlvlmf():
    env = make("soccer", render_width=64, render_height=64, goal_observable=False)
    obs, _ = env.reset(seed=0)
    assert np.all(obs[-3:] == 0) and np.all(env.observation_space.high[-3:] == 0)
    env.close()
    env = make("soccer", render_width=64, render_height=64)
    obs, _ = env.reset(seed=0)
    assert obs[-3:].any()
    env.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scripted_expert_opens_the_drawer(seed):
    env = make("drawer-open", render_width=64, render_height=64)
    policy = scripted_policy("drawer-open")
    obs, _ = env.reset(seed=seed)
    succeeded = False
    for _ in range(env.unwrapped.episode_length):
        action = policy(obs)
        assert action.shape == (4,) and action.dtype == np.float32 and np.abs(action).max() <= 1
        obs, _, _, truncated, info = env.step(action)
        succeeded = info["success"]
        if succeeded or truncated:
            break
    assert succeeded
    env.close()


def test_scripted_policy_rejects_an_unknown_task():
    with pytest.raises(ConfigError, match="drawer-open"):
        scripted_policy("drawer-opne")


def rollout_frames(env: gym.Env, seed: int, steps: int = 4) -> list[np.ndarray]:
    env.reset(seed=seed)
    env.action_space.seed(seed)
    frames = [env.render()]
    for _ in range(steps):
        env.step(env.action_space.sample())
        frames.append(env.render())
    return frames


def test_two_envs_in_one_process_render_as_if_alone():
    alone = make("drawer-open", render_width=96, render_height=96)
    reference = rollout_frames(alone, seed=0)
    alone.close()
    # Interleave two envs (a different task, so a wrong context would show the wrong scene).
    first = make("drawer-open", render_width=96, render_height=96)
    second = make("soccer", render_width=96, render_height=96)
    first.reset(seed=0)
    first.action_space.seed(0)
    second.reset(seed=1)
    frames = [first.render()]
    second.render()
    for _ in range(4):
        first.step(first.action_space.sample())
        second.step(second.action_space.sample())
        second.render()
        frames.append(first.render())
    for got, expected in zip(frames, reference):
        np.testing.assert_array_equal(got, expected)
    first.close()
    second.close()


def test_metaworld_s_own_renderer_breaks_with_a_second_env_in_the_process():
    # Why MetaWorldEnv owns a mujoco.Renderer: Meta-World's Gymnasium renderer draws a wrong
    # frame once another env has rendered in the same process. If this ever starts failing,
    # Meta-World's renderer got fixed and the one-env-per-process advice can go.
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    def native(task: str) -> gym.Env:
        env = ALL_V3_ENVIRONMENTS[task](render_mode="rgb_array", camera_name="corner4", width=96, height=96)
        env._set_task_called, env._freeze_rand_vec, env.seeded_rand_vec = True, False, True
        env.seed(0)
        env.reset()
        return env

    first = native("drawer-open-v3")
    before = first.render().copy()
    second = native("soccer-v3")
    second.render()
    after = first.render()
    assert np.abs(before.astype(int) - after.astype(int)).mean() > 10
    first.close()
    second.close()


def test_subproc_workers_render_the_same_frames_as_one_process():
    config = dict(id=envs.METAWORLD_ENV_IDS["sweep-into"], n_envs=2, render_width=64, render_height=64)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(3, 2, 4)).astype(np.float32)
    frames = {}
    for vec_env in ("dummy", "subproc"):
        venv = make_vec_env(EnvConfig(vec_env=vec_env, **config), seed=7)
        venv.reset()
        frames[vec_env] = [np.stack([info["frame"] for info in venv.step(a)[3]]) for a in actions]
        venv.close()
    for dummy, subproc in zip(frames["dummy"], frames["subproc"]):
        np.testing.assert_array_equal(subproc, dummy)
    assert not np.array_equal(frames["dummy"][-1][0], frames["dummy"][-1][1])  # two seeds, two scenes


def test_unknown_task_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown Meta-World task 'drawer-opne'.*drawer-open.*sweep-into"):
        MetaWorldEnv(task="drawer-opne")
    with pytest.raises(ConfigError, match="available: .*soccer"):
        envs.metaworld_env_id("socer")


@pytest.mark.parametrize("size", [32, 4096])
def test_render_sizes_outside_the_allowed_range_are_refused(size):
    with pytest.raises(ConfigError, match=r"render_width=\d+ is too (small|large).*allowed 64\.\.2048"):
        make("drawer-open", render_width=size)


def test_bad_render_quality_is_refused():
    with pytest.raises(ConfigError, match="render_quality"):
        make("drawer-open", render_quality="ultra")


def test_a_missing_metaworld_install_says_how_to_add_it(monkeypatch):
    for name in [m for m in sys.modules if m == "metaworld" or m.startswith("metaworld.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None makes "import metaworld..." fail
    monkeypatch.setitem(sys.modules, "metaworld", None)
    with pytest.raises(MetaWorldNotInstalledError, match=r"pip install 'metaworld==3\.1\.1' 'mujoco==3\.3\.0'"):
        MetaWorldEnv(task="drawer-open")
    with pytest.raises(MetaWorldNotInstalledError, match="pip install"):
        scripted_policy("drawer-open")


def test_mujoco_is_the_version_metaworld_pins():
    import mujoco  # here, not at the top: vlmrl must set MUJOCO_GL before mujoco is imported

    assert mujoco.__version__ == "3.3.0"

"""env.render_devices: subproc workers get EGL devices round robin, set in their own process."""

import os

import pytest
import torch

from vlmrl.config import EnvConfig, load_config
from vlmrl.errors import ConfigError
from vlmrl.factory import make_vec_env, resolve_render_devices

CARTPOLE = "vlmrl/CartPole-v1"


def env_config(**kwargs) -> EnvConfig:
    return EnvConfig(id=CARTPOLE, render_width=32, render_height=32, **kwargs)


def worker_devices(config: EnvConfig) -> tuple[list, list]:
    """(recorded ``render_device`` per env, ``MUJOCO_EGL_DEVICE_ID`` each env's process holds)."""
    venv = make_vec_env(config, seed=0, capture_frames=False)
    try:
        return venv.get_attr("render_device"), venv.env_method("environ_render_device")
    finally:
        venv.close()


@pytest.fixture(scope="module")
def no_parent_egl_device():
    """Workers inherit the variable when nothing is assigned; these tests expect it unset."""
    if "MUJOCO_EGL_DEVICE_ID" in os.environ:
        pytest.skip("MUJOCO_EGL_DEVICE_ID is set in the test process")


def test_subproc_workers_take_devices_round_robin_in_their_own_process(no_parent_egl_device):
    # 3 envs over 2 devices: not divisible (VLM-RM would refuse), the third wraps to device 0.
    recorded, environ = worker_devices(env_config(n_envs=3, vec_env="subproc", render_devices=(0, 1)))
    assert recorded == [0, 1, 0]
    assert environ == [0, 1, 0]
    assert "MUJOCO_EGL_DEVICE_ID" not in os.environ  # set in the workers only


@pytest.mark.parametrize("setting", ["none", "auto"])
def test_none_and_auto_without_gpus_assign_nothing(setting, no_parent_egl_device):
    if setting == "auto" and os.environ.get("MUJOCO_GL") == "egl" and torch.cuda.device_count() > 0:
        pytest.skip("auto assigns devices on a machine with EGL and CUDA GPUs")
    recorded, environ = worker_devices(env_config(n_envs=2, vec_env="subproc", render_devices=setting))
    assert recorded == [None, None]
    assert environ == [None, None]


def test_auto_needs_egl_and_respects_a_user_set_device(monkeypatch):
    config = env_config(vec_env="subproc")
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert resolve_render_devices(config) is None
    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.delenv("MUJOCO_EGL_DEVICE_ID", raising=False)
    gpus = torch.cuda.device_count()
    assert resolve_render_devices(config) == (list(range(gpus)) if gpus else None)
    monkeypatch.setenv("MUJOCO_EGL_DEVICE_ID", "1")
    assert resolve_render_devices(config) is None
    assert resolve_render_devices(env_config(render_devices=(1,))) == [1]  # explicit always assigns


def test_dummy_vec_env_ignores_render_devices(no_parent_egl_device):
    recorded, environ = worker_devices(env_config(n_envs=2, vec_env="dummy", render_devices=(0, 1)))
    assert recorded == [None, None]
    assert environ == [None, None]
    assert "MUJOCO_EGL_DEVICE_ID" not in os.environ


BASE = """
task: t
env: {{id: vlmrl/CartPole-v1, render_devices: {devices}}}
labeler: {{kind: oracle}}
agent: {{algo: ppo, total_timesteps: 100}}
"""


def write(tmp_path, devices: str):
    path = tmp_path / "config.yaml"
    path.write_text(BASE.format(devices=devices))
    return path


def test_yaml_list_and_set_override_load_as_tuples(tmp_path):
    config = load_config(write(tmp_path, "[0, 1]"))
    assert config.env.render_devices == (0, 1)
    assert load_config(write(tmp_path, "auto"), ["env.render_devices=[1,0,1]"]).env.render_devices == (1, 0, 1)
    assert load_config(write(tmp_path, "none")).env.render_devices == "none"
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(config.to_yaml())
    assert load_config(resolved) == config


def test_default_is_auto_and_python_lists_become_tuples():
    assert env_config().render_devices == "auto"
    assert env_config(render_devices=[0, 1]) == env_config(render_devices=(0, 1))


@pytest.mark.parametrize("devices", ["gpu", "[]", "[-1]", "[0, gpu]", "[true]", "3"])
def test_bad_yaml_values_name_render_devices(tmp_path, devices):
    with pytest.raises(ConfigError, match=r"render_devices"):
        load_config(write(tmp_path, devices))


@pytest.mark.parametrize("devices", ["gpu", [], [-1], (0, 1.0), 0])
def test_bad_python_values_name_render_devices_and_allowed_values(devices):
    with pytest.raises(ValueError, match=r"render_devices must be 'auto', 'none' or a non-empty list"):
        env_config(render_devices=devices)

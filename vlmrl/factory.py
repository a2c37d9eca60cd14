"""Build envs and labelers from config sections (sits on top, beside the config)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

import vlmrl.envs  # noqa: F401  (registers the vlmrl/ env ids)
from vlmrl.agents.frame_capture import FrameInInfo
from vlmrl.config_loading import to_plain
from vlmrl.envs.render_device import EGL_DEVICE_VAR, RenderDevice
from vlmrl.envs.env_config import EnvConfig
from vlmrl.errors import ConfigError
from vlmrl.reward_labelers.registry import LabelerConfig


def make_env(config: EnvConfig, render_size: tuple[int, int] | None = None) -> gym.Env:
    """One env rendering ``rgb_array`` frames; our ``vlmrl/`` envs render at the configured size.

    ``render_size`` = (width, height) overrides the config's size (e.g. bigger frames for videos).
    """
    kwargs = to_plain(config.kwargs)
    if config.id.startswith("vlmrl/"):
        width, height = render_size or (config.render_width, config.render_height)
        kwargs.update(render_width=width, render_height=height)
    try:
        return gym.make(config.id, render_mode="rgb_array", **kwargs)
    except gym.error.Error as error:
        raise ConfigError(f"env.id {config.id!r}: {error}") from error
    except TypeError as error:
        raise ConfigError(f"env.kwargs for {config.id!r}: {error}") from error


def resolve_render_devices(config: EnvConfig) -> list[int] | None:
    """The EGL device indices ``subproc`` workers render on, or None for no assignment.

    Workers take them round robin (worker ``i`` gets ``devices[i % len(devices)]``) rather than
    in equal blocks as VLM-RM did: blocks need ``n_envs`` divisible by the GPU count, round robin
    spreads any ``n_envs`` with at most one env of difference between devices.

    ``"auto"`` uses CUDA's device count: MuJoCo orders EGL devices like CUDA (honouring
    ``CUDA_VISIBLE_DEVICES``) when the driver tells it which CUDA device backs each, so indices
    ``0..n-1`` are the GPUs this process may use. A ``MUJOCO_EGL_DEVICE_ID`` the user set wins
    over ``"auto"`` (it pins every worker to one device on purpose).
    """
    devices = config.render_devices
    if devices == "none":
        return None
    if devices == "auto":
        if os.environ.get("MUJOCO_GL") != "egl" or EGL_DEVICE_VAR in os.environ:
            return None
        import torch  # only here: "none", explicit lists and software rendering never need CUDA

        count = torch.cuda.device_count()  # asks NVML first, so CUDA usually stays uninitialised here
        return list(range(count)) if count > 0 else None
    return list(devices)


def _env_builder(config: EnvConfig, capture_frames: bool, render_device: int | None = None) -> Callable[[], gym.Env]:
    def build() -> gym.Env:
        import vlmrl.envs  # noqa: F401,F811  (subprocess workers register the ids too)

        if render_device is not None:
            # Runs inside the worker process, before its MuJoCo env (and EGL context) exists.
            os.environ[EGL_DEVICE_VAR] = str(render_device)
        env = FrameInInfo(Monitor(make_env(config)), capture_frames=capture_frames)
        return RenderDevice(env, render_device)

    return build


def make_vec_env(config: EnvConfig, seed: int, capture_frames: bool = True) -> VecEnv:
    """``config.n_envs`` monitored envs that put each step's frame in ``info["frame"]``.

    ``subproc`` workers use the forkserver start method: fork hangs once the parent holds an
    EGL context. Each worker renders on the EGL device :func:`resolve_render_devices` assigns
    it (``get_attr("render_device")`` lists them).
    """
    if config.vec_env == "subproc":
        devices = resolve_render_devices(config)
        assigned = [devices[i % len(devices)] if devices else None for i in range(config.n_envs)]
        builders = [_env_builder(config, capture_frames, device) for device in assigned]
        venv: VecEnv = SubprocVecEnv(builders, start_method="forkserver")
    else:
        # One process holds one EGL context for all its envs, so render_devices cannot apply.
        venv = DummyVecEnv([_env_builder(config, capture_frames) for _ in range(config.n_envs)])
    venv.seed(seed)
    return venv


def make_labeler(config: LabelerConfig, family: str, seed: int = 0, store: str | Path | None = None) -> Any:
    """The labeler ``config`` describes (loads weights), checked to be of ``family``.

    Args:
        config: any registered labeler config (``labeler:`` section).
        family: ``"frame"`` where a per-frame reward is needed, ``"pair"`` where preferences are.
        seed: seeds the labeler's own randomness.
        store: the label store a pairwise VLM labeler records its answers in.
    """
    if config.family != family:
        wanted = "a per-frame labeler (e.g. clip, oracle)" if family == "frame" else "a pairwise labeler (e.g. teacher, openai, hf)"
        raise ConfigError(f"labeler.kind {config.kind!r} is a {config.family} labeler, but this command needs {wanted}")
    return config.create(seed=seed, store=store)

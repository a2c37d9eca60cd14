"""The README's "Adding a labeler" example, end to end: a labeler defined in this file,
registered through the public registry, runs through ``vlmrl train`` and ``vlmrl relabel``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml

from helpers import run_python
from vlmrl.cli import main
from vlmrl.reward_labelers.base import FrameRewardLabeler, check_frames
from vlmrl.reward_labelers.registry import LabelerConfig, labeler_config_class, register_labeler, registered_kinds


class BrightnessLabeler(FrameRewardLabeler):
    """Reward = ``scale`` x mean pixel brightness of the frame, in [0, scale]."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def label(self, frames: np.ndarray, true_rewards: np.ndarray | None = None) -> np.ndarray:
        frames = check_frames(frames)
        return (self.scale * frames.reshape(len(frames), -1).mean(axis=1) / 255.0).astype(np.float32)


@register_labeler
@dataclass(frozen=True, kw_only=True)
class BrightnessConfig(LabelerConfig):
    kind: ClassVar[str] = "brightness"
    family: ClassVar[str] = "frame"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")

    def create(self, *, seed: int = 0, store=None) -> BrightnessLabeler:
        return BrightnessLabeler(self.scale)


def test_the_new_kind_is_registered_beside_the_built_in_ones() -> None:
    import vlmrl.config  # noqa: F401  (registers reward_model, which lives above the labelers)

    assert labeler_config_class("brightness") is BrightnessConfig
    assert {"brightness", "clip", "oracle", "teacher", "openai", "hf", "reward_model"} <= set(registered_kinds())


def test_vlmrl_labelers_names_modules_that_register_kinds(tmp_path: Path) -> None:
    """How a user's labeler module reaches the ``vlmrl`` command: ``VLMRL_LABELERS=module``."""
    import os
    import subprocess
    import sys

    script = "from vlmrl.reward_labelers.registry import labeler_config_class as c; print(c('brightness').__module__)"
    env = {**os.environ, "VLMRL_LABELERS": "test_adding_a_labeler", "PYTHONPATH": str(Path(__file__).parent)}
    assert run_python(script, env=env, timeout=60).stdout.strip() == "test_adding_a_labeler"
    env["VLMRL_LABELERS"] = "no_such_labeler_module"
    (tmp_path / "any.yaml").write_text("task: t\nenv: {id: vlmrl/CartPole-v1}\nlabeler: {kind: oracle}\n"
                                       "agent: {algo: ppo, total_timesteps: 10}\n")
    missing = subprocess.run([sys.executable, "-m", "vlmrl.cli", "train", str(tmp_path / "any.yaml")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "VLMRL_LABELERS" in missing.stderr and "no_such_labeler_module" in missing.stderr


def test_vlmrl_train_runs_the_registered_labeler(tmp_path: Path) -> None:
    config = tmp_path / "cartpole_brightness.yaml"
    config.write_text(yaml.safe_dump({
        "task": "cartpole",
        "env": {"id": "vlmrl/CartPole-v1", "n_envs": 2, "render_width": 64, "render_height": 48},
        "labeler": {"kind": "brightness", "scale": 2.0},
        "agent": {"algo": "ppo", "total_timesteps": 256, "hyperparams": {"n_steps": 64, "batch_size": 64, "n_epochs": 1}},
        "run": {"root": str(tmp_path / "runs"), "checkpoint_every": 128, "eval_episodes": 1, "video_episodes": 0,
                "torch_threads": 1},
    }))
    assert main(["train", str(config), "--no-progress", "--no-video"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("cartpole__brightness__0__")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 256 and summary["labelled_frames"] == 256
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["labeler"] == {"kind": "brightness", "device": "auto",
                                                                              "scale": 2.0}
    # A bad value of the new kind's own field is refused like any built-in one, naming the key.
    assert main(["train", str(config), "--set", "labeler.scale=-1"]) == 2


def test_vlmrl_relabel_runs_the_registered_labeler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmrl.datasets import open_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    assert main(["collect", "pendulum", "--episodes", "2", "--max-steps", "10", "--out", "pendulum/random-v0",
                 "--render-size", "32"]) == 0
    config = tmp_path / "brightness.yaml"
    config.write_text("labeler: {kind: brightness, scale: 3.0}\nchunk_size: 7\n")
    assert main(["relabel", "pendulum/random-v0", "--labeler", str(config), "--out", "pendulum/bright-v0",
                 "--no-progress"]) == 0
    source, relabelled = open_dataset("pendulum/random-v0"), open_dataset("pendulum/bright-v0")
    for i in range(2):
        frames = np.asarray(source.frames(i))[:-1]  # reward_frame: current (the frame each action was taken in)
        expected = 3.0 * frames.reshape(len(frames), -1).mean(axis=1) / 255.0
        np.testing.assert_allclose(relabelled.episode(i).rewards, expected, rtol=1e-6)
    assert relabelled.metadata["vlmrl"]["labeler"]["labeler"]["kind"] == "brightness"

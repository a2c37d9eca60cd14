"""The CLIP path as a user runs it: `vlmrl train` / `eval-reward` with a local checkpoint, and the
clear instruction when the weights are missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import set_args, train_cli_args
from tiny_clip import save_tiny_hf_clip, save_tiny_open_clip
from vlmrl.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    return save_tiny_open_clip(tmp_path_factory.mktemp("clip"))


def test_train_cartpole_clip_config_with_local_checkpoint(tiny_open_clip, tmp_path):
    config_path, checkpoint = tiny_open_clip
    settings = [
        f"labeler.model={config_path}",
        f"labeler.pretrained={checkpoint}",
        "labeler.device=cpu",
        "run.torch_threads=1",
        "agent.total_timesteps=512",
        "agent.hyperparams.n_epochs=2",
        "agent.hyperparams.batch_size=64",
        "env.n_envs=2",
        "env.render_width=64",
        "env.render_height=64",
        "reward.warmup_labels=128",
        "reward.retrain_every=256",
        "reward.net.input_size=48",
        f"run.root={tmp_path}",
        "run.eval_episodes=1",
        "run.checkpoint_every=512",
    ]
    assert main(train_cli_args("configs/cartpole_clip.yaml", settings)) == 0
    (run_dir,) = list(tmp_path.iterdir())
    assert run_dir.name.startswith("cartpole__clip__0__")
    summary = json.loads((run_dir / "summary.json").read_text())
    # label every 8th vector step once the net is fitted: far fewer CLIP frames than env steps
    assert summary["net_fits"] >= 1
    assert summary["labelled_frames"] < 0.6 * summary["env_steps"]
    assert len(summary["videos"]) == 1 and Path(summary["videos"][0]).stat().st_size > 0


def test_eval_reward_with_transformers_backend(tmp_path):
    model_dir = save_tiny_hf_clip(tmp_path / "hf")
    out = tmp_path / "eval"
    settings = [
        "labeler.backend=transformers",
        f"labeler.model={model_dir}",
        "labeler.pretrained=null",
        "env.render_width=64",
        "env.render_height=64",
        "env.kwargs.episode_length=40",
    ]
    args = ["eval-reward", str(REPO / "configs/cartpole_clip.yaml"), "--episodes", "2", "--out", str(out)]
    assert main([*args, *set_args(settings)]) == 0
    result = json.loads((out / "correlation.json").read_text())
    assert result["frames"] == 80
    # random weights: any correlation is possible, but it must be a number in [-1, 1]
    assert -1.0 <= result["pearson"] <= 1.0 and -1.0 <= result["spearman"] <= 1.0
    assert result["labeler_reward_std"] > 0


def test_missing_weights_fail_with_the_instruction_and_no_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-home"))
    result = subprocess.run(
        [sys.executable, "-m", "vlmrl.cli", "train", str(REPO / "configs/cartpole_clip.yaml"), "--set", f"run.root={tmp_path / 'runs'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "ViT-B-32" in result.stderr and "laion2b_s34b_b79k" in result.stderr
    assert "pretrained" in result.stderr  # says how to pass a local checkpoint instead

"""Slow learning checks: the pipeline must actually train an agent (CI runs these too)."""

import json

import pytest

from helpers import train_cli_args
from vlmrl.cli import main


@pytest.mark.slow
def test_ppo_through_the_labelled_reward_wrapper_solves_cartpole(tmp_path):
    """Standard CartPole-v1, the labeler replaced by the true reward (oracle), PPO: mean >= 400."""
    overrides = {
        "env.id": "vlmrl/CartPole-v1",
        "reward.distill": "false",
        "agent.total_timesteps": 100_000,
        "run.root": str(tmp_path),
        "run.eval_episodes": 10,
        "run.checkpoint_every": 50_000,
    }
    settings = [f"{key}={value}" for key, value in overrides.items()]
    assert main(train_cli_args("configs/cartpole_oracle.yaml", settings, "--no-video")) == 0
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labeler_calls"] == summary["env_steps"] // 8  # one batched call per vector step
    assert summary["eval"]["true_return_mean"] >= 400, summary["eval"]

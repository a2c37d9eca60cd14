"""The README's main job learns: rendered frames -> scripted-teacher preferences -> Bradley-Terry
CNN ensemble on pixels -> PPO on the learnt reward -> true return >= 450 on CartPole-v1.

Its speed (under 3 minutes on 2 cores) is measured by `vlmrl bench main`, never asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import set_args, train_cli_args
from vlmrl.cli import main
from vlmrl.config import load_config

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = REPO / "configs" / "cartpole_pixels_pref.yaml"


def test_main_job_config_is_the_pixel_preference_pipeline():
    config = load_config(MAIN_JOB)
    assert config.env.id == "vlmrl/CartPole-v1"
    assert config.labeler.kind == "teacher" and config.labeler.family == "pair"
    assert config.preference.net.kind == "cnn"  # a reward net on rendered frames, not on the state
    assert config.preference.segment_length > 1  # single CartPole-v1 frames would all tie
    assert config.agent.algo == "ppo"


@pytest.mark.slow
def test_main_job_reaches_a_true_return_of_450(tmp_path):
    assert main(train_cli_args(MAIN_JOB, [f"run.root={tmp_path}"], "--no-video")) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    config = load_config(MAIN_JOB)
    assert summary["pairs_asked"] == config.preference.budget
    assert summary["reward_fits"] >= 1 and summary["label_accuracy_vs_oracle"] == 1.0
    assert (run_dir / "reward_net.json").is_file()
    assert json.loads((run_dir / "reward_net.json").read_text())["config"]["kind"] == "cnn"
    assert summary["eval"]["true_return_mean"] >= 450, summary["eval"]


def test_bench_main_times_each_seed_in_a_fresh_process(tmp_path, capsys):
    """`vlmrl bench main` end to end on a shortened main job (functional: no speed is asserted)."""
    tiny = ["agent.total_timesteps=512", "preference.first_round_at=128", "preference.round_every=256",
            "preference.pairs_per_round=16", "preference.budget=32", "preference.fit.epochs=1",
            "preference.net.ensemble_size=1", "agent.hyperparams.n_steps=64", "agent.hyperparams.batch_size=64",
            "agent.hyperparams.n_epochs=1", "run.eval_episodes=1", "run.video_episodes=0"]  # fmt: skip
    args = ["bench", "main", "--seeds", "0,1", "--root", str(tmp_path), "--json"]
    assert main([*args, *set_args(tiny)]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [row["seed"] for row in rows] == [0, 1]
    for row in rows:
        assert row["wall_s"] > 0 and row["cpu_s"] > 0 and row["env_steps"] == 512 and row["env_steps_per_s"] > 0
        assert row["pairs"] == 32 and row["true_return"] > 0
        assert (Path(row["run_dir"]) / "summary.json").is_file()

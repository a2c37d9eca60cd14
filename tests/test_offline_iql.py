"""Offline training: IQL + baselines end to end (table, CSV, PNG, resume), and IQL beating BC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlmrl.cli import main

REPO = Path(__file__).resolve().parents[1]


def swing_up(observation: np.ndarray) -> np.ndarray:
    """Energy-pumping swing-up with a PD controller near the top (mean return about -130)."""
    cos, sin, speed = observation
    if cos > 0.9:
        return np.array([np.clip(-8 * np.arctan2(sin, cos) - 1.5 * speed, -2, 2)])
    energy = 0.5 * speed**2 + 15 * cos  # 15 = the energy at the top, at rest
    return np.array([np.clip(2.0 * np.sign(speed) * (15.5 - energy), -2, 2)])


@pytest.fixture()
def root(tmp_path, monkeypatch):
    path = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def write_config(path: Path, dataset: str, n_steps: int, per_epoch: int, seeds: list[int], episodes: int,
                 run_root: Path) -> Path:
    path.write_text(
        f"task: pendulum\ndataset: {{id: {dataset}}}\n"
        f"agent: {{algo: iql, n_steps: {n_steps}, n_steps_per_epoch: {per_epoch}, batch_size: 64, device: cpu:0}}\n"
        f"eval: {{episodes: {episodes}, env_id: Pendulum-v1}}\n"
        f"run: {{seeds: {seeds}, root: {run_root}, name: test}}\n"
    )
    return path


def test_offline_training_writes_table_csv_png_and_resumes(root, tmp_path, capsys):
    from vlmrl.offline_train import run_offline_training

    assert main(["collect", "pendulum", "--episodes", "2", "--max-steps", "30", "--out", "pendulum/random-v0",
                 "--render-size", "8"]) == 0
    config = write_config(tmp_path / "offline.yaml", "pendulum/random-v0", 20, 10, [0, 1], 1, tmp_path / "runs")
    run_dir = run_offline_training(str(config), [], baselines=["bc", "iql-gt"], seeds=None, show_progress=False)
    table = capsys.readouterr().out
    for method in ("iql", "bc", "iql-gt"):
        assert method in table
        for seed in (0, 1):
            result = json.loads((run_dir / method / f"seed_{seed}" / "result.json").read_text())
            assert len(result["returns"]) == 1 and result["mean_return"] < 0  # Pendulum rewards are <= 0
            assert (run_dir / method / f"seed_{seed}" / "checkpoint.d3").is_file()
            assert json.loads((run_dir / method / f"seed_{seed}" / "progress.json").read_text())["steps"] == 20
            assert any((run_dir / method / f"seed_{seed}" / "tensorboard").iterdir())
    rows = (run_dir / "results.csv").read_text().splitlines()
    assert rows[0] == "method,seed,mean_true_return" and len(rows) == 1 + 3 * 2
    assert (run_dir / "results.png").read_bytes()[:4] == b"\x89PNG"

    # Resume: a longer run continues from the checkpoints of an unfinished one.
    (run_dir / "iql" / "seed_0" / "result.json").unlink()
    mtime = (run_dir / "bc" / "seed_0" / "checkpoint.d3").stat().st_mtime
    run_offline_training(str(config), ["agent.n_steps=30"], baselines=["bc"], seeds=[0], show_progress=False)
    assert json.loads((run_dir / "iql" / "seed_0" / "progress.json").read_text())["steps"] == 30
    assert (run_dir / "bc" / "seed_0" / "checkpoint.d3").stat().st_mtime == mtime  # finished: not retrained


def test_unknown_baseline_is_a_config_error(root, tmp_path):
    from vlmrl.errors import ConfigError
    from vlmrl.offline_train import run_offline_training

    config = write_config(tmp_path / "offline.yaml", "pendulum/none-v0", 10, 10, [0], 1, tmp_path / "runs")
    with pytest.raises(ConfigError, match="gail"):
        run_offline_training(str(config), [], baselines=["gail"], seeds=[0])


@pytest.mark.slow
def test_iql_beats_bc_on_oracle_preference_relabelled_medium_random_data(root, tmp_path):
    """Half random, half noisy swing-up episodes; rewards from a Bradley-Terry net fitted to
    scripted-teacher preferences. BC imitates the mixture; IQL should prefer the good actions."""
    from vlmrl.collect import collect_dataset
    from vlmrl.offline_train import run_offline_training

    collect_dataset("Pendulum-v1", "pendulum/medium-random-v0", episodes=20, policy=swing_up, noise=0.5,
                    random_fraction=0.5, render_size=(8, 8), seed=0)
    labeler = tmp_path / "pref.yaml"
    labeler.write_text(
        "labeler: {kind: teacher, device: cpu}\nchunk_size: 4096\npreference:\n  goal: pendulum upright\n"
        "  budget: 1000\n  pairs_per_round: 100\n  net: {kind: mlp, hidden_size: 64, ensemble_size: 3}\n"
        "  fit: {epochs: 20}\n"
    )
    assert main(["relabel", "pendulum/medium-random-v0", "--labeler", str(labeler), "--out",
                 "pendulum/medium-random-pref-v0", "--no-progress"]) == 0
    config = write_config(tmp_path / "offline.yaml", "pendulum/medium-random-pref-v0", 3000, 1000, [0], 10,
                          tmp_path / "runs")
    run_dir = run_offline_training(str(config), [], baselines=["bc"], seeds=[0], show_progress=False)
    iql = json.loads((run_dir / "iql" / "seed_0" / "result.json").read_text())["mean_return"]
    bc = json.loads((run_dir / "bc" / "seed_0" / "result.json").read_text())["mean_return"]
    assert iql > bc + 100, (iql, bc)

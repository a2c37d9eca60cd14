"""``vlmrl bench pebble`` on a shrunk Meta-World drawer-open run with the scripted teacher: one row
per budget, with the success rate the env reports (the full-size runs are for a GPU machine)."""

from __future__ import annotations

from vlmrl.bench_pebble import run_pebble_bench

SHRUNK = [
    "env.render_width=64", "env.render_height=64", "env.kwargs.episode_length=100",
    "preference.unsupervised_steps=100", "preference.first_round_at=100", "preference.round_every=100",
    "preference.pairs_per_round=8", "preference.frame_buffer=400", "preference.fit.epochs=1",
    "preference.net.ensemble_size=1", "agent.hyperparams.buffer_size=1000", "agent.hyperparams.learning_starts=100",
    "agent.hyperparams.batch_size=64", "agent.hyperparams.policy_kwargs.net_arch=[32, 32]",
    "run.eval_episodes=1", "run.checkpoint_every=100000", "run.torch_threads=1",
]


def test_bench_pebble_reports_success_rate_per_budget(tmp_path) -> None:
    rows = run_pebble_bench("configs/metaworld_drawer_open_oracle_pref.yaml", [8, 16], [0], steps=300,
                            overrides=SHRUNK, root=str(tmp_path))
    assert [row["budget"] for row in rows] == [8, 16]
    for row in rows:
        assert row["pairs_asked"] == row["budget"]  # two rounds of 8 fit in 300 steps after 100 of exploration
        assert 0.0 <= row["success_rate"] <= 1.0  # Meta-World reports success: three 100-step episodes
        assert row["true_return"] is not None and row["env_steps_per_s"] > 0

"""`vlmrl train`, `--resume`, `vlmrl record` and `vlmrl eval-reward` as a user runs them."""

import json
import re
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import yaml

from helpers import train_cli_args
from vlmrl.cli import main
from vlmrl.runs import list_checkpoints, read_checkpoint_state

REPO = Path(__file__).resolve().parents[1]


def short_run_overrides(root: Path, steps: int) -> list[str]:
    return [
        f"agent.total_timesteps={steps}",
        f"run.root={root}",
        "run.checkpoint_every=512",
        "run.eval_episodes=2",
        "run.torch_threads=1",
        "env.render_width=64",
        "env.render_height=48",
        "env.n_envs=2",
        "agent.hyperparams.n_steps=128",
        "agent.hyperparams.batch_size=64",
        "reward.distill=true",
        "reward.label_every=4",
        "agent.hyperparams.n_epochs=2",
        "reward.warmup_labels=128",
        "reward.retrain_every=256",
        "reward.net.input_size=48",
        "reward.fit.epochs=1",
    ]


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((run_dir / "tb").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    code = main(train_cli_args("configs/cartpole_oracle.yaml", short_run_overrides(root, 1024)))
    assert code == 0
    return only_run_dir(root)


def test_train_writes_a_complete_run_directory(trained_run):
    assert trained_run.name.startswith("cartpole__oracle__0__")
    resolved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert resolved["agent"]["total_timesteps"] == 1024 and resolved["env"]["render_width"] == 64
    assert (trained_run / "model.zip").is_file()
    assert (trained_run / "reward_net.safetensors").is_file() and (trained_run / "reward_net.json").is_file()
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["env_steps"] == 1024
    assert summary["net_fits"] >= 1 and 0 < summary["labelled_frames"] < 1024
    assert summary["eval"]["episodes"] == 2 and summary["eval"]["true_return_mean"] > 0
    assert [p.name for p in list_checkpoints(trained_run)] == ["step_0000000512", "step_0000001024"]

    scalars = tensorboard_scalars(trained_run)
    for tag in ("reward/labeler_mean", "reward/true_return", "labeler/calls", "labeler/fraction", "time/env_steps_per_s"):
        assert tag in scalars, f"missing TensorBoard scalar {tag}"
    assert scalars["labeler/fraction"][-1][1] < 1.0  # distillation took over part of the labelling


def test_final_video_is_a_playable_mp4(trained_run):
    (video,) = (trained_run / "videos").glob("final-episode0.mp4")
    frames = imageio.mimread(video, memtest=False)
    assert len(frames) >= 8
    assert frames[0].shape == (48, 64, 3)
    assert np.std(np.stack(frames).astype(float)) > 1.0  # not a blank picture


def test_resume_continues_from_the_latest_checkpoint(trained_run, tmp_path):
    code = main(["train", "--resume", str(trained_run), "--no-progress", "--no-video", "--set", "agent.total_timesteps=1536"])
    assert code == 0
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["env_steps"] == 1536
    assert read_checkpoint_state(list_checkpoints(trained_run)[-1])["num_timesteps"] == 1536
    # the resumed run keeps its labeller counters and logs into the same TensorBoard run
    assert summary["labelled_frames"] > 0 and summary["net_fits"] >= 2
    assert len(list((trained_run / "tb").iterdir())) == 1


def test_record_writes_mp4_and_gif_with_reward_overlay(trained_run, tmp_path, capsys):
    out = tmp_path / "videos"
    code = main(["record", str(trained_run), "--episodes", "2", "--gif", "--overlay", "learned", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["true_returns"]) == 2
    mp4s, gifs = sorted(out.glob("*.mp4")), sorted(out.glob("*.gif"))
    assert len(mp4s) == 2 and len(gifs) == 2
    plain = imageio.mimread(mp4s[0], memtest=False)
    assert len(plain) == printed["true_returns"][0]  # CartPole pays 1 per step
    # the overlay draws white text on a black box in the top-left corner
    corner = np.asarray(plain[0])[4:12, 4:40]
    assert corner.max() > 200 and corner.min() < 60


def test_record_rejects_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["record", str(tmp_path)]) == 2
    assert "not a vlmrl run directory" in capsys.readouterr().err


def test_eval_reward_oracle_correlates_perfectly(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "eval-reward",
            str(REPO / "configs/cartpole_oracle.yaml"),
            "--episodes",
            "3",
            "--out",
            str(out),
            "--set",
            "env.id=vlmrl/CartPoleFixedLength-v1",
            "--set",
            "env.kwargs.episode_length=60",
            "--set",
            "env.render_width=64",
            "--set",
            "env.render_height=48",
        ]
    )
    assert code == 0
    result = json.loads((out / "correlation.json").read_text())
    assert result["frames"] == 180
    assert result["pearson"] == pytest.approx(1.0) and result["spearman"] == pytest.approx(1.0)
    assert (out / "scatter.png").stat().st_size > 1000


def test_unknown_hyperparameter_is_a_config_error(tmp_path, capsys):
    code = main(
        ["train", str(REPO / "configs/cartpole_oracle.yaml"), "--set", f"run.root={tmp_path}", "--set", "agent.hyperparams.learnig_rate=1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "learnig_rate" in err and "learning_rate" in err


def test_offline_only_options_on_an_online_config_are_refused_before_any_run(tmp_path, capsys):
    for option in (["--seeds", "0,1"], ["--baselines", "bc"]):
        assert main(train_cli_args("configs/cartpole_oracle.yaml", [f"run.root={tmp_path}"], *option)) == 2
        assert "offline configs" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_sac_run_checkpoints_its_replay_buffer_and_resumes(tmp_path):
    overrides = [
        "agent.total_timesteps=300",
        f"run.root={tmp_path}",
        "run.checkpoint_every=200",
        "run.eval_episodes=1",
        "run.video_episodes=0",
        "env.n_envs=1",
        "env.kwargs.episode_length=100",
        "agent.hyperparams.learning_starts=100",
        "agent.hyperparams.buffer_size=5000",
        "agent.hyperparams.batch_size=64",
        "agent.hyperparams.train_freq=1",
        "agent.hyperparams.gradient_steps=1",
    ]
    assert main(train_cli_args("configs/mountaincar_oracle.yaml", overrides)) == 0
    run_dir = only_run_dir(tmp_path)
    (checkpoint,) = list_checkpoints(run_dir)
    assert (checkpoint / "replay_buffer.pkl").is_file()
    assert main(["train", "--resume", str(run_dir), "--no-progress", "--set", "agent.total_timesteps=400"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 400


# -- VLM endpoints: fail fast, failure streaks, async labelling, labelling mode on resume ----------

VLM_SETTINGS = [
    "labeler.model=test-vlm", "labeler.max_retries=0", "labeler.timeout_s=30", "env.n_envs=2", "env.render_width=64",
    "env.render_height=64", "preference.first_round_at=64", "preference.round_every=128",
    "preference.pairs_per_round=8", "preference.fit.epochs=1", "preference.net.ensemble_size=1",
    "agent.hyperparams.n_steps=64", "agent.hyperparams.batch_size=64", "agent.hyperparams.n_epochs=1",
    "run.eval_episodes=1", "run.video_episodes=0", "run.torch_threads=1",
]


def vlm_train_args(root: Path, base_url: str, *settings: str) -> list[str]:
    return train_cli_args("configs/cartpole_vlm_pref.yaml",
                          [f"run.root={root}", f"labeler.base_url={base_url}", *VLM_SETTINGS, *settings])


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_endpoint_stops_train_at_once_naming_the_url(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    assert main(vlm_train_args(tmp_path, url, "agent.total_timesteps=512")) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the VLM endpoint at {url}" in err and "labeler.base_url" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no empty run directory left behind


def test_an_endpoint_that_refuses_the_key_stops_train_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from openai_test_server import OpenAITestServer

    with OpenAITestServer(model="test-vlm", api_key="sesame") as server:
        assert main(vlm_train_args(tmp_path, server.base_url, "agent.total_timesteps=512")) == 2
        assert server.count() == 0  # stopped before any pair was asked
    err = capsys.readouterr().err
    assert f"the VLM endpoint at {server.base_url} answered HTTP 401 (unauthorised)" in err and "OPENAI_API_KEY" in err


@pytest.mark.parametrize("labeling", ["sync", "async"])
def test_failing_queries_stop_train_after_a_checkpoint_instead_of_training_on_nothing(tmp_path, capsys, labeling):
    from openai_test_server import OpenAITestServer, Status

    with OpenAITestServer(model="test-vlm") as server:
        server.set_default("vision", Status(500))  # the model list answers, every question fails
        code = main(vlm_train_args(tmp_path, server.base_url, "agent.total_timesteps=100000",
                                   "preference.max_consecutive_failures=3", f"preference.labeling={labeling}"))
    assert code == 2
    err = capsys.readouterr().err
    run_dir = only_run_dir(tmp_path)
    (checkpoint,) = list_checkpoints(run_dir)
    # Queries already in flight (8 at a time) may end the streak past 3.
    streak = re.search(rf"the VLM endpoint at {re.escape(server.base_url)} keeps failing: (\d+) queries in a row failed "
                       r"\(last error: HTTP 500", err)
    assert streak and int(streak.group(1)) >= 3, err
    assert f"A checkpoint was written to {checkpoint}; once it works, continue with vlmrl train --resume {run_dir}" in err
    assert read_checkpoint_state(checkpoint)["num_timesteps"] < 1000


def test_async_vlm_run_reports_in_flight_dropped_and_lag_in_summary_and_tensorboard(tmp_path):
    from openai_test_server import OpenAITestServer

    with OpenAITestServer(model="test-vlm", latency_ms=50) as server:
        code = main(vlm_train_args(tmp_path, server.base_url, "agent.total_timesteps=768", "preference.labeling=async",
                                   "preference.queue_size=4", "preference.budget=32", "labeler.max_concurrency=1"))
    assert code == 0
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labeling"] == "async" and summary["pairs_asked"] > 0 and summary["pairs_dropped"] > 0
    assert summary["label_lag_steps_mean"] > 0 and summary["label_wait_seconds"] >= 0
    # The label store's report: every stored answer of the test server's "VLM" parses.
    labels = summary["labels"]
    assert labels["pairs"] > 0 and labels["parse_rate"] == 1.0 and sum(labels["kinds"].values()) == labels["pairs"]
    scalars = tensorboard_scalars(run_dir)
    for tag in ("labels/in_flight", "labels/dropped", "labels/lag_steps", "time/label_seconds"):
        assert tag in scalars, tag


def test_a_run_resumed_in_another_labelling_mode_says_so_and_continues(tmp_path, capsys):
    settings = ["agent.total_timesteps=512", f"run.root={tmp_path}", "run.checkpoint_every=256", "run.eval_episodes=1",
                "run.video_episodes=0", "env.n_envs=2", "preference.first_round_at=128", "preference.round_every=256",
                "preference.pairs_per_round=50", "agent.hyperparams.n_steps=64", "agent.hyperparams.batch_size=64",
                "agent.hyperparams.n_epochs=1"]
    assert main(train_cli_args("configs/cartpole_oracle_pref.yaml", settings)) == 0
    run_dir = only_run_dir(tmp_path)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--no-progress", "--set", "agent.total_timesteps=1024",
                 "--set", "preference.labeling=async"]) == 0
    out = capsys.readouterr().out
    assert ("note: the checkpoint was written with preference.labeling=sync; this run continues with "
            "preference.labeling=async") in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labeling"] == "async" and summary["env_steps"] == 1024 and summary["pairs_asked"] > 50
    assert main(["train", "--resume", str(run_dir), "--set", "preference.budget=5"]) == 2
    assert "with --resume only agent.total_timesteps, preference.labeling" in capsys.readouterr().err


def test_async_per_frame_labels_train_with_the_distilled_net_rewarding_every_step(tmp_path):
    overrides = [*short_run_overrides(tmp_path, 1024), "reward.labeling=async", "reward.queue_size=64"]
    assert main(train_cli_args("configs/cartpole_oracle.yaml", overrides, "--no-video")) == 0
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labeling"] == "async" and summary["net_frames"] == 1024 and summary["labelled_frames"] > 0
    assert summary["net_fits"] >= 1 and summary["labelled_frames"] + summary["frames_dropped"] + summary["frames_in_flight"] > 0
    scalars = tensorboard_scalars(run_dir)
    for tag in ("labeler/in_flight", "labeler/dropped", "labeler/lag_steps", "net/fits"):
        assert tag in scalars, tag


def test_online_fit_uses_the_answers_probabilities(tmp_path):
    """answer_mode: logprobs stores P(image 1), P(image 2) beside each label; the online learner
    keeps them with the pairs, and label_confidence: soft / min_confidence change what it fits."""
    from openai_test_server import OpenAITestServer

    with OpenAITestServer(model="test-vlm") as server:
        code = main(vlm_train_args(tmp_path, server.base_url, "agent.total_timesteps=768", "preference.budget=16",
                                   "labeler.answer_mode=logprobs", "preference.label_confidence=soft",
                                   "preference.min_confidence=0.6", "run.checkpoint_every=512"))
    assert code == 0
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labels"]["with_probabilities"] > 0
    from vlmrl.runs import latest_checkpoint

    with np.load(latest_checkpoint(run_dir) / "preference_pairs.npz") as pairs:
        p_first, p_second, labels = (pairs[f"learner.pairs.{name}"] for name in ("p_first", "p_second", "labels"))
    known = np.isfinite(p_first) & np.isfinite(labels)
    assert known.any()
    from vlmrl.reward_learning import preference_fit_labels

    fitted = preference_fit_labels(labels, p_first, p_second, mode="soft", min_confidence=0.6)
    confident = known & (np.maximum(p_first, p_second) >= 0.6)
    np.testing.assert_allclose(fitted[confident], (p_first / (p_first + p_second))[confident], rtol=1e-5)
    assert np.isnan(fitted[known & ~confident]).all()

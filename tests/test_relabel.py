"""``vlmrl relabel``: rewards checked independently, bad input rejected with nothing written,
and a relabel killed mid-run resumes to a byte-identical dataset without re-asking any label."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import openai_preference_yaml
from openai_test_server import OpenAITestServer

from vlmrl.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def root(tmp_path, monkeypatch):
    path = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def collect(dataset_id: str, episodes: int = 3, steps: int = 20, size: int = 48) -> None:
    assert main(["collect", "pendulum", "--episodes", str(episodes), "--max-steps", str(steps),
                 "--out", dataset_id, "--render-size", str(size)]) == 0


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tree_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def nothing_written(root: Path, out_id: str) -> bool:
    leftovers = [p.name for p in root.iterdir() if p.name.startswith((".relabel-", ".staging-"))] if root.exists() else []
    return not (root / out_id).exists() and not leftovers


def test_oracle_relabel_gives_the_true_rewards(root, tmp_path):
    from vlmrl.datasets import open_dataset

    collect("pendulum/random-v0")
    config = write_yaml(tmp_path / "oracle.yaml", "labeler: {kind: oracle, scale: 2.0}\nchunk_size: 16\n")
    assert main(["relabel", "pendulum/random-v0", "--labeler", str(config), "--out", "pendulum/oracle-v0",
                 "--no-progress"]) == 0
    source, relabelled = open_dataset("pendulum/random-v0"), open_dataset("pendulum/oracle-v0")
    assert relabelled.num_episodes == 3
    for i in range(3):
        before, after = source.episode(i), relabelled.episode(i)
        # Pendulum's reward, recomputed from the stored observations (before the step) and actions.
        theta = np.arctan2(before.observations[:-1, 1], before.observations[:-1, 0])
        speed = before.observations[:-1, 2]
        # theta_dot before the step is the observation's; reward = -(th^2 + .1 thdot^2 + .001 u^2)
        expected = -(theta**2 + 0.1 * speed**2 + 0.001 * before.actions[:, 0] ** 2)
        np.testing.assert_allclose(after.rewards, 2.0 * expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(after.observations, before.observations)
        np.testing.assert_array_equal(np.asarray(relabelled.frames(i)), np.asarray(source.frames(i)))
        np.testing.assert_allclose(relabelled.true_rewards(after), source.true_rewards(before))
    meta = relabelled.metadata["vlmrl"]
    assert meta["source_dataset"] == "pendulum/random-v0"
    assert meta["labeler"]["labeler"]["kind"] == "oracle" and meta["labeler"]["labeler"]["scale"] == 2.0
    assert relabelled.metadata["algorithm_name"] == "vlmrl relabel (oracle)"
    assert meta["counts"] == {"episodes": 3, "transitions": 60, "frames_labelled": 63}
    # The source is untouched and a second relabel to the same id is refused.
    assert main(["relabel", "pendulum/random-v0", "--labeler", str(config), "--out", "pendulum/oracle-v0"]) == 2


def test_reward_model_relabel_equals_the_model_on_each_frame(root, tmp_path):
    from vlmrl.datasets import open_dataset
    from vlmrl.reward_nets import RewardModel, RewardNetConfig

    collect("pendulum/random-v0", episodes=2, steps=10)
    model = RewardModel(RewardNetConfig(kind="cnn", input_size=48), ensemble_size=2, device="cpu", seed=3)
    model.save(tmp_path / "model")
    config = write_yaml(tmp_path / "net.yaml", f"labeler: {{kind: reward_model, device: cpu, path: {tmp_path / 'model'}}}\n"
                                               "reward_frame: next\nchunk_size: 7\n")
    assert main(["relabel", "pendulum/random-v0", "--labeler", str(config), "--out", "pendulum/net-v0",
                 "--no-progress"]) == 0
    relabelled = open_dataset("pendulum/net-v0")
    for i in range(2):
        frames = np.load(root / "pendulum/random-v0/frames" / f"episode_{i}.npy")
        expected = model.predict(frames[1:])  # reward_frame: next -> the frame after each action
        np.testing.assert_allclose(relabelled.episode(i).rewards, expected, rtol=1e-5, atol=1e-6)


def test_clip_relabel_scores_every_frame(root, tmp_path):
    from tiny_clip import save_tiny_open_clip

    from vlmrl.datasets import open_dataset
    from vlmrl.reward_labelers import ClipRewardLabeler

    collect("pendulum/random-v0", episodes=2, steps=8, size=64)
    weights = save_tiny_open_clip(tmp_path / "clip")
    config = write_yaml(tmp_path / "clip.yaml", (
        "chunk_size: 5\n"
        f"labeler: {{kind: clip, device: cpu, model: {weights[0] if isinstance(weights, tuple) else 'ViT-B-32'}, "
        f"pretrained: {weights[1] if isinstance(weights, tuple) else weights}, alpha: 0.5, "
        "goal_prompts: [pendulum upright], baseline_prompts: [pendulum]}\n"))
    assert main(["relabel", "pendulum/random-v0", "--labeler", str(config), "--out", "pendulum/clip-v0",
                 "--no-progress"]) == 0
    from vlmrl.config import load_relabel_config

    clip = load_relabel_config(config).labeler
    labeler = ClipRewardLabeler(model=clip.model, pretrained=clip.pretrained, goal_prompts=list(clip.goal_prompts),
                                baseline_prompts=list(clip.baseline_prompts), alpha=clip.alpha, device="cpu")
    relabelled = open_dataset("pendulum/clip-v0")
    for i in range(2):
        frames = np.load(root / "pendulum/random-v0/frames" / f"episode_{i}.npy")
        np.testing.assert_allclose(relabelled.episode(i).rewards, labeler.label(frames[:-1]), rtol=1e-4, atol=1e-5)


def test_data_collector_dataset_with_image_observations_relabels_through_the_cli(root, tmp_path):
    """A dataset recorded by minari's own DataCollector (dict observations with rendered pixels)."""
    import gymnasium as gym
    import minari
    from minari import DataCollector

    from vlmrl.datasets import open_dataset

    env = gym.make("Pendulum-v1", render_mode="rgb_array")
    env.unwrapped.screen_dim = 48  # Pendulum draws on a screen_dim x screen_dim canvas
    collector = DataCollector(gym.wrappers.AddRenderObservation(env, render_only=False))
    collector.reset(seed=5)
    for episode in range(2):
        for _ in range(10):
            collector.step(collector.action_space.sample())
        collector.reset(seed=6 + episode)
    collector.create_dataset("pendulum/pixels-v0", algorithm_name="random", author="vlmrl tests",
                             author_email="tests@vlmrl", code_permalink="tests/test_relabel.py",
                             description="random Pendulum with rendered pixels")
    collector.close()

    config = write_yaml(tmp_path / "oracle.yaml", "labeler: {kind: oracle}\nchunk_size: 4\n")
    assert main(["relabel", "pendulum/pixels-v0", "--labeler", str(config), "--out", "pendulum/pixels-oracle-v0",
                 "--frames-key", "pixels", "--no-progress"]) == 0
    source = minari.load_dataset("pendulum/pixels-v0")
    relabelled = open_dataset("pendulum/pixels-oracle-v0")
    assert relabelled.num_episodes == 2
    for i, episode in enumerate(source.iterate_episodes()):
        state = episode.observations["state"]
        # Pendulum's reward from the state before each step and the action, computed here.
        theta, speed = np.arctan2(state[:-1, 1], state[:-1, 0]), state[:-1, 2]
        expected = -(theta**2 + 0.1 * speed**2 + 0.001 * episode.actions[:, 0] ** 2)
        np.testing.assert_allclose(relabelled.episode(i).rewards, expected, rtol=1e-5, atol=1e-5)
        pixels = np.asarray(relabelled.frames(i, "pixels"))
        assert pixels.shape == (11, 48, 48, 3) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels, episode.observations["pixels"])


def _bad_input_cases(root: Path, tmp_path: Path) -> list[tuple[str, list[str], str]]:
    """(name, extra argv, expected message fragment); each case prepares its own source dataset."""
    from vlmrl.reward_nets import RewardModel, RewardNetConfig

    RewardModel(RewardNetConfig(kind="cnn", input_size=48), ensemble_size=1, device="cpu").save(tmp_path / "m")
    cases = []
    collect("bad/missing-frames-v0", episodes=2, steps=5)
    (root / "bad/missing-frames-v0/frames/episode_1.npy").unlink()
    cases.append(("bad/missing-frames-v0", "episode 1, field 'frames'"))
    collect("bad/count-v0", episodes=2, steps=5)
    frames = np.load(root / "bad/count-v0/frames/episode_1.npy")
    np.save(root / "bad/count-v0/frames/episode_1.npy", frames[:-2])
    cases.append(("bad/count-v0", "episode 1, field 'frames': 4 frames but 6 observations"))
    collect("bad/dtype-v0", episodes=2, steps=5)
    np.save(root / "bad/dtype-v0/frames/episode_0.npy", frames.astype(np.float32))
    cases.append(("bad/dtype-v0", "episode 0, field 'frames': frames must be uint8"))
    collect("bad/shape-v0", episodes=2, steps=5)
    np.save(root / "bad/shape-v0/frames/episode_1.npy", frames[..., 0])
    cases.append(("bad/shape-v0", "episode 1, field 'frames': frames must be uint8 [F, H, W, 3]"))
    nan_obs = np.zeros((10, 3), np.float32)
    nan_obs[7, 1] = np.nan
    np.savez(tmp_path / "nan.npz", observations=nan_obs, actions=np.zeros((10, 1)), rewards=np.zeros(10),
             terminals=np.zeros(10), timeouts=np.eye(1, 10, 4)[0], frames=np.zeros((10, 48, 48, 3), np.uint8))
    cases.append((str(tmp_path / "nan.npz"), "episode 1, field 'observations': contains NaN or inf"))
    cases.append(("bad/does-not-exist-v0", "dataset 'bad/does-not-exist-v0' not found"))
    return cases


def test_bad_input_is_rejected_with_nothing_written(root, tmp_path, capsys):
    cases = _bad_input_cases(root, tmp_path)
    config = write_yaml(tmp_path / "net.yaml", f"labeler: {{kind: reward_model, device: cpu, path: {tmp_path / 'm'}}}\n")
    for source, message in cases:
        capsys.readouterr()
        code = main(["relabel", source, "--labeler", str(config), "--out", "bad/output-v0", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, source
        assert message in err, (source, err)
        assert "Traceback" not in err
        assert nothing_written(root, "bad/output-v0"), source


def _relabel_process(config: Path, out_id: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vlmrl.cli", "relabel", "pendulum/random-v0", "--labeler", str(config),
         "--out", out_id, "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def test_killed_preference_relabel_resumes_byte_identical_without_reasking(root, tmp_path):
    from vlmrl.datasets import open_dataset
    from vlmrl.label_store import LabelStore

    collect("pendulum/random-v0", episodes=3, steps=15)
    store = tmp_path / "labels.sqlite"
    env = {**os.environ, "MINARI_DATASETS_PATH": str(root), "PYTHONPATH": str(REPO)}
    with OpenAITestServer(latency_ms=150) as server:
        config = write_yaml(tmp_path / "pref.yaml",
                            openai_preference_yaml(store, server.base_url, max_concurrency=1, pairs_per_round=4))
        process = _relabel_process(config, "pendulum/pref-v0", env)
        deadline = time.time() + 120
        while server.count("vision") < 8 and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (root / "pendulum/pref-v0").exists()
        with LabelStore(store) as labels:
            stored_after_kill = sum(labels.counts().values())
        assert 0 < stored_after_kill < 24
        before = server.count("vision")

        resumed = _relabel_process(config, "pendulum/pref-v0", env)
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err.decode()[-3000:]
        with LabelStore(store) as labels:
            stored_total = sum(labels.counts().values())
        asked_on_resume = server.count("vision") - before
        # Every pair labelled before the kill came from the store; only the others were asked.
        assert asked_on_resume == stored_total - stored_after_kill
        after_resume = server.count("vision")

        # An uninterrupted relabel (same store, so the same labels) gives the very same bytes.
        reference = _relabel_process(config, "pendulum/pref-ref-v0", env)
        _, err = reference.communicate(timeout=300)
        assert reference.returncode == 0, err.decode()[-3000:]
        assert server.count("vision") == after_resume  # everything cached by now
    resumed_bytes = tree_bytes(root / "pendulum/pref-v0")
    reference_bytes = tree_bytes(root / "pendulum/pref-ref-v0")
    meta = "data/metadata.json"
    assert resumed_bytes[meta].replace(b"pref-v0", b"pref-ref-v0") == reference_bytes[meta]
    del resumed_bytes[meta], reference_bytes[meta]
    assert resumed_bytes == reference_bytes
    relabelled = open_dataset("pendulum/pref-v0")
    counts = relabelled.metadata["vlmrl"]["counts"]
    assert counts["pairs_queried"] == 24 and counts["pairs_labelled"] + counts["pairs_discarded"] == 24
    assert relabelled.metadata["vlmrl"]["label_store"] == str(store.resolve())
    assert relabelled.metadata["vlmrl"]["labeler"]["labeler"]["kind"] == "openai"
    assert relabelled.metadata["algorithm_name"] == "vlmrl relabel (openai)"
    assert not any(p.name.startswith(".relabel-") for p in root.iterdir())
    shutil.rmtree(root / "pendulum/pref-ref-v0")

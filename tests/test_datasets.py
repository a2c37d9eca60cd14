"""Offline datasets: Minari on local disk (frames from stored files or image observations),
plain .npz files (memory-mapped), and export to d3rlpy."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from vlmrl.cli import main
from vlmrl.errors import UserError


@pytest.fixture()
def root(tmp_path, monkeypatch):
    path = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def test_collect_stores_one_lossless_frame_per_observation(root):
    from vlmrl.datasets import open_dataset, to_mdp_dataset

    assert main(["collect", "Pendulum-v1", "--episodes", "2", "--max-steps", "12", "--out", "pendulum/random-v0",
                 "--render-size", "40", "--seed", "3"]) == 0
    dataset = open_dataset("pendulum/random-v0")
    episode = dataset.episode(1)
    frames = dataset.frames(1)
    assert isinstance(frames, np.memmap) and frames.dtype == np.uint8 and frames.shape == (13, 40, 40, 3)
    assert len(episode.observations) == 13 and len(episode.rewards) == 12
    # The frame is the render of its observation: re-render the same seed and actions.
    env = gym.make("Pendulum-v1", render_mode="rgb_array")
    env.reset(seed=episode.seed)
    from vlmrl.collect import resize_frame

    np.testing.assert_array_equal(frames[0], resize_frame(env.render(), (40, 40)))
    env.step(episode.actions[0])
    np.testing.assert_array_equal(frames[1], resize_frame(env.render(), (40, 40)))
    env.close()
    mdp = to_mdp_dataset(dataset)
    assert mdp.size() == 2 and mdp.episodes[0].rewards.dtype == np.float32


def test_image_and_dict_observations_are_frames(root):
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from vlmrl.datasets import open_dataset, validate_dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 48, 48, 3), dtype=np.uint8)
    space = gym.spaces.Dict({"pixels": gym.spaces.Box(0, 255, (48, 48, 3), np.uint8),
                             "state": gym.spaces.Box(-1, 1, (2,), np.float32)})
    buffer = EpisodeBuffer(observations={"pixels": images, "state": np.zeros((6, 2), np.float32)},
                           actions=np.zeros((5, 1), np.float32), rewards=np.ones(5),
                           terminations=np.eye(1, 5, 4, dtype=bool)[0], truncations=np.zeros(5, bool))
    minari.create_dataset_from_buffers("dict/images-v0", [buffer], observation_space=space,
                                       action_space=gym.spaces.Box(-1, 1, (1,), np.float32), jpeg_encoding=False,
                                       algorithm_name="test", author="t", author_email="t", code_permalink="t",
                                       description="t")
    dataset = open_dataset("dict/images-v0")
    np.testing.assert_array_equal(dataset.frames(0, "pixels")[1:4], images[1:4])
    assert validate_dataset(dataset, "pixels") == (48, 48, 3)
    with pytest.raises(UserError, match="episode 0, field 'state'.*not uint8"):
        validate_dataset(dataset, "state")


def test_npz_episodes_memmapped_frames_and_mdp_export(tmp_path):
    from vlmrl.datasets import open_dataset, to_mdp_dataset

    n = 9
    frames = np.arange(n * 4 * 4 * 3, dtype=np.uint8).reshape(n, 4, 4, 3)
    np.savez(tmp_path / "d.npz", observations=np.arange(n * 2, dtype=np.float64).reshape(n, 2),
             actions=np.zeros(n), rewards=np.arange(n, dtype=np.float64), terminals=np.eye(1, n, 3)[0],
             timeouts=np.zeros(n), frames=frames)
    dataset = open_dataset(tmp_path / "d.npz")
    assert dataset.num_episodes == 2  # ends at the terminal (index 3) and at the last row
    assert [dataset.episode(i).num_transitions for i in range(2)] == [4, 5]
    second = dataset.frames(1)
    assert isinstance(second.base, np.memmap) or isinstance(second, np.memmap)
    np.testing.assert_array_equal(second, frames[4:])
    mdp = to_mdp_dataset(dataset)
    assert mdp.size() == 2
    np.testing.assert_array_equal(mdp.episodes[1].rewards[:, 0], np.arange(4, 9, dtype=np.float32))
    assert mdp.episodes[0].terminated and not mdp.episodes[1].terminated


def test_missing_dataset_id_names_the_root(root):
    from vlmrl.datasets import open_dataset

    with pytest.raises(UserError, match="not found under .*nothing is downloaded"):
        open_dataset("nothing/here-v0")


@pytest.mark.parametrize("task", ["mountaincar", "humanoid"])
def test_collect_renders_vlmrl_tasks_at_the_requested_size(root, task):
    from vlmrl.datasets import open_dataset

    out = f"{task}/random-v0"
    assert main(["collect", task, "--episodes", "1", "--max-steps", "5", "--out", out, "--render-size", "32"]) == 0
    frames = open_dataset(out).frames(0)
    assert frames.shape == (6, 32, 32, 3) and frames.dtype == np.uint8
    assert frames.std() > 1.0  # a real picture, not a blank canvas

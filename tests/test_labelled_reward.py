"""The frame-capture wrapper, the reward-wrapper base and the labelled-reward VecEnv, on real CartPole envs."""

import json

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

import vlmrl.envs  # noqa: F401
from vlmrl.agents.distill_config import DistillConfig
from vlmrl.agents.frame_capture import FrameInInfo
from vlmrl.agents.labelled_reward import LabelledRewardVecEnv
from vlmrl.agents.reward_wrapper import RewardVecEnvWrapper
from vlmrl.reward_labelers import OracleRewardLabeler
from vlmrl.reward_labelers.base import FrameRewardLabeler
from vlmrl.reward_learning_config import FitConfig
from vlmrl.reward_net_config import RewardEnsembleConfig
from vlmrl.reward_nets import RewardModel, RewardNetConfig

SIZE = dict(render_width=96, render_height=64)


def cartpole_vec_env(n_envs=2, env_id="vlmrl/CartPole-v1", capture=True, **kwargs):
    def build():
        return FrameInInfo(gym.make(env_id, render_mode="rgb_array", **SIZE, **kwargs), capture_frames=capture)

    venv = DummyVecEnv([build] * n_envs)
    venv.seed(0)
    return venv


def distill_config(**changes):
    settings = dict(distill=True, label_every=4, warmup_labels=64, retrain_every=256, buffer_size=512,
                    net=RewardEnsembleConfig(kind="cnn", input_size=48), fit=FitConfig(epochs=1, batch_size=256, lr=3e-4))
    return DistillConfig(**{**settings, **changes})


class BrightnessLabeler(FrameRewardLabeler):
    """Reward = mean pixel value; counts how many frames it was asked about."""

    def __init__(self):
        self.frames_seen = 0

    def label(self, frames, true_rewards=None):
        self.frames_seen += len(frames)
        return frames.reshape(len(frames), -1).mean(axis=1).astype(np.float32) / 255.0


def test_terminal_frame_is_captured_before_auto_reset():
    venv = cartpole_vec_env(n_envs=1)
    reference = gym.make("vlmrl/CartPole-v1", render_mode="rgb_array", **SIZE)
    reference.reset(seed=0)
    venv.reset()
    for _ in range(500):
        _, _, dones, infos = venv.step(np.array([1]))  # always push right: falls within ~10 steps
        if dones[0]:
            break
    assert dones[0]
    terminal_state = infos[0]["terminal_observation"]
    reference.unwrapped.state = terminal_state.astype(np.float64)
    expected = reference.render()
    np.testing.assert_array_equal(infos[0]["frame"], expected)
    # and it is not the frame of the freshly reset episode
    reference.unwrapped.state = venv.envs[0].unwrapped.state
    assert not np.array_equal(infos[0]["frame"], reference.render())
    venv.close()
    reference.close()


def test_oracle_rewards_replace_env_reward_and_true_reward_is_kept():
    venv = LabelledRewardVecEnv(
        cartpole_vec_env(env_id="vlmrl/CartPoleFixedLength-v1", capture=False), OracleRewardLabeler(scale=2.0)
    )
    venv.reset()
    seen = []
    for _ in range(60):
        _, rewards, _, infos = venv.step(np.array([1, 0]))
        true = np.array([info["true_reward"] for info in infos])
        np.testing.assert_allclose(rewards, 2.0 * true)
        assert "frame" not in infos[0]  # the oracle needs no rendering
        seen.extend(true)
    assert set(np.unique(seen)) == {0.0, 1.0}  # the pole falls under a constant push
    venv.close()


def test_frame_labeler_sees_every_frame_in_one_batch_per_step():
    labeler = BrightnessLabeler()
    venv = LabelledRewardVecEnv(cartpole_vec_env(n_envs=3), labeler)
    venv.reset()
    for _ in range(5):
        _, rewards, _, infos = venv.step(np.array([0, 1, 0]))
        expected = [info["frame"].mean() / 255.0 for info in infos]
        np.testing.assert_allclose(rewards, expected, rtol=1e-5)
    assert labeler.frames_seen == 15 and venv.stats.labeler_calls == 5
    venv.close()


def test_distillation_labels_only_every_kth_step_after_warmup():
    labeler = BrightnessLabeler()
    model = RewardModel(RewardNetConfig(kind="cnn", input_size=48), seed=0)
    venv = LabelledRewardVecEnv(cartpole_vec_env(n_envs=2), labeler, model, distill_config(), seed=0)
    venv.reset()
    rng = np.random.default_rng(0)
    labelled_steps, net_steps = 0, 0
    for _ in range(200):
        _, rewards, _, infos = venv.step(rng.integers(0, 2, size=2))
        assert rewards.dtype == np.float32 and np.isfinite(rewards).all()
        if "labeler_reward" in infos[0]:
            labelled_steps += 1
        else:
            assert "net_reward" in infos[0]
            net_steps += 1
    # 32 warm-up vector steps label everything, then 1 in 4 of the remaining 168
    assert venv.stats.net_fits >= 2
    assert labelled_steps == 32 + 168 // 4
    assert net_steps == 200 - labelled_steps
    assert labeler.frames_seen == 2 * labelled_steps
    venv.close()


class HalfTrueReward(RewardVecEnvWrapper):
    """The smallest reward wrapper: half the true reward, plus the frame's mean pixel when it reads frames."""

    reward_info_key = "half_reward"
    given_return_metric = "reward/half_return"

    def __init__(self, venv, read_frames):
        super().__init__(venv)
        self.read_frames = read_frames
        self.reward_model = None
        self.frames_seen = 0
        self.bias = np.zeros(3, dtype=np.float32)

    @property
    def needs_frames(self):
        return self.read_frames

    def _rewards(self, observations, frames, true_rewards, dones, infos):
        assert observations.shape == (self.num_envs, 4) and len(infos) == self.num_envs
        if self.read_frames:
            assert frames.shape == (self.num_envs, 64, 96, 3)
            self.frames_seen += len(frames)
        else:
            assert frames is None
        return 0.5 * true_rewards + self.bias[: self.num_envs]

    def state_dict(self):
        return {**super().state_dict(), "frames_seen": self.frames_seen, "extra": {"bias": self.bias.copy(), "tag": "x"}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.frames_seen = state["frames_seen"]
        self.bias = state["extra"]["bias"]
        assert state["extra"]["tag"] == "x"


@pytest.mark.parametrize("read_frames", [False, True])
def test_reward_wrapper_base_runs_the_step_skeleton_and_reports_episode_returns(read_frames):
    fixed_length = cartpole_vec_env(n_envs=2, env_id="vlmrl/CartPoleFixedLength-v1", capture=read_frames, episode_length=20)
    venv = HalfTrueReward(fixed_length, read_frames)
    venv.reset()
    rng = np.random.default_rng(0)
    true_total, given_total = 0.0, 0.0
    for step in range(1, 41):
        _, rewards, dones, infos = venv.step(rng.integers(0, 2, size=2))
        true = np.array([info["true_reward"] for info in infos])
        assert rewards.dtype == np.float32
        np.testing.assert_allclose(rewards, 0.5 * true)
        assert [info["half_reward"] for info in infos] == rewards.tolist()
        assert venv.vector_steps == step and venv.env_steps == 2 * step
        true_total += true.sum()
        given_total += rewards.sum()
    assert venv.frames_seen == (80 if read_frames else 0)
    # Two fixed-length episodes per sub-env finished: the metrics are their mean returns, once.
    metrics = venv.metrics()
    assert set(metrics) == {"reward/true_return", "reward/half_return"}
    assert metrics["reward/true_return"] == pytest.approx(true_total / 4)
    assert metrics["reward/half_return"] == pytest.approx(given_total / 4)
    assert venv.metrics() == {}
    assert venv.summary() == {} and venv.video_scorer() == (None, "reward")
    venv.close()


def test_reward_wrapper_base_checkpoint_splits_arrays_from_json(tmp_path):
    venv = HalfTrueReward(cartpole_vec_env(n_envs=2, capture=False), read_frames=False)
    venv.reset()
    for _ in range(7):
        venv.step(np.array([0, 1]))
    venv.bias = np.array([0.25, -0.5, 1.0], dtype=np.float32)
    venv.frames_seen = 11
    venv.save(tmp_path)
    saved = json.loads((tmp_path / "reward_state.json").read_text())
    assert saved == {"vector_steps": 7, "frames_seen": 11, "extra": {"tag": "x"}}
    with np.load(tmp_path / "reward_arrays.npz") as data:
        assert data.files == ["extra.bias"]

    restored = HalfTrueReward(cartpole_vec_env(n_envs=2, capture=False), read_frames=False)
    restored.load(tmp_path)
    assert restored.vector_steps == 7 and restored.frames_seen == 11
    np.testing.assert_array_equal(restored.bias, venv.bias)
    venv.close()
    restored.close()


def test_labelled_checkpoint_round_trip_restores_net_buffer_and_counters(tmp_path):
    model = RewardModel(RewardNetConfig(kind="cnn", input_size=48), seed=0)
    venv = LabelledRewardVecEnv(cartpole_vec_env(n_envs=2), BrightnessLabeler(), model, distill_config(), seed=0)
    venv.reset()
    rng = np.random.default_rng(1)
    for _ in range(80):
        venv.step(rng.integers(0, 2, size=2))
    assert venv.stats.net_fits >= 1
    venv.save(tmp_path)
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"reward_net.safetensors", "reward_net.json", "label_buffer.npz", "label_state.json"}

    fresh = RewardModel(RewardNetConfig(kind="cnn", input_size=48), seed=1)
    restored = LabelledRewardVecEnv(cartpole_vec_env(n_envs=2), BrightnessLabeler(), fresh, distill_config(), seed=0)
    restored.load(tmp_path)
    assert restored.summary() == venv.summary() and restored.summary()["net_fits"] == venv.stats.net_fits
    assert restored.vector_steps == 80 and restored.env_steps_at_last_fit == venv.env_steps_at_last_fit
    assert restored.buffer.total_added == venv.buffer.total_added
    np.testing.assert_array_equal(restored.buffer.contents()[0], venv.buffer.contents()[0])
    frames = np.random.default_rng(2).integers(0, 256, size=(4, 64, 96, 3), dtype=np.uint8)
    np.testing.assert_allclose(restored.reward_model.predict(frames), venv.reward_model.predict(frames), rtol=1e-6)
    venv.close()
    restored.close()


def test_labelled_metrics_keep_the_tensorboard_keys():
    model = RewardModel(RewardNetConfig(kind="cnn", input_size=48), seed=0)
    venv = LabelledRewardVecEnv(cartpole_vec_env(n_envs=2, env_id="vlmrl/CartPoleFixedLength-v1", episode_length=30),
                                BrightnessLabeler(), model, distill_config(), seed=0)
    venv.reset()
    for _ in range(60):
        venv.step(np.array([0, 1]))
    metrics = venv.metrics()
    for key in ("reward/labeler_mean", "reward/net_mean", "reward/true_return", "reward/labelled_return",
                "labeler/calls", "labeler/frames", "labeler/fraction", "net/fits", "net/train_loss"):
        assert key in metrics, key
    assert 0 < metrics["labeler/fraction"] < 1
    assert "reward/labeler_mean" not in venv.metrics()  # window values are drained
    assert venv.video_scorer()[1] == "learned"
    venv.close()

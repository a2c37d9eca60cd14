"""The frame-capture wrapper and the labelled-reward VecEnv, on real CartPole envs."""

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

import vlmrl.envs  # noqa: F401
from vlmrl.agents.frame_capture import FrameInInfo
from vlmrl.agents.labelled_reward import DistillSchedule, LabelledRewardVecEnv
from vlmrl.reward_labelers import OracleRewardLabeler
from vlmrl.reward_labelers.base import FrameRewardLabeler
from vlmrl.reward_nets import RewardModel, RewardNetConfig

SIZE = dict(render_width=96, render_height=64)


def cartpole_vec_env(n_envs=2, env_id="vlmrl/CartPole-v1", capture=True, **kwargs):
    def build():
        return FrameInInfo(gym.make(env_id, render_mode="rgb_array", **SIZE, **kwargs), capture_frames=capture)

    venv = DummyVecEnv([build] * n_envs)
    venv.seed(0)
    return venv


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
    schedule = DistillSchedule(label_every=4, warmup_labels=64, retrain_every=256, buffer_size=512, epochs=1)
    venv = LabelledRewardVecEnv(cartpole_vec_env(n_envs=2), labeler, model, schedule, seed=0)
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

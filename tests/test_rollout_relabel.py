"""PPO rollout relabelling at update time: real SB3 PPO on a real env whose episodes are truncated
(so SB3's time-limit bootstrap is in play), a reward that changes mid-rollout, and the buffer
checked against SB3's own numbers and against a from-scratch GAE."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import vlmrl.envs  # noqa: F401
from vlmrl.agents.frame_capture import FrameInInfo
from vlmrl.agents.reward_wrapper import RewardVecEnvWrapper
from vlmrl.agents.rollout_relabel import PPORolloutRelabelCallback

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GAMMA, LAMBDA = 0.9, 0.8


class LinearStateReward(RewardVecEnvWrapper):
    """reward = scale * tanh(state) . weights of the step's own state; ``reward_version`` counts scale changes."""

    reward_model = None

    def __init__(self, venv):
        super().__init__(venv)
        self.scale = 1.0
        self.version = 0
        self.weights = np.array([0.3, -0.2, 1.0, 0.5], dtype=np.float32)

    @property
    def needs_frames(self):
        return False

    @property
    def reward_version(self):
        return self.version

    def change_scale(self, scale):
        self.scale = scale
        self.version += 1

    def reward(self, inputs):
        return (self.scale * np.tanh(inputs) @ self.weights).astype(np.float32)

    def _rewards(self, observations, frames, true_rewards, dones, infos):
        inputs = np.array(observations, dtype=np.float32)
        for i in np.flatnonzero(dones):
            inputs[i] = infos[i]["terminal_observation"]
        self.last_inputs = inputs
        return self.reward(inputs)


def make_env(n_envs=2, episode_length=13):
    def build():
        return FrameInInfo(Monitor(gym.make("vlmrl/CartPoleFixedLength-v1", episode_length=episode_length)),
                           capture_frames=False)

    venv = DummyVecEnv([build] * n_envs)
    venv.seed(0)
    return LinearStateReward(venv)


def make_ppo(env):
    return PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, gamma=GAMMA, gae_lambda=LAMBDA, seed=0, device="cpu")


class Snapshot(BaseCallback):
    """At each rollout end (after the relabel callback), keeps the rollout buffer's arrays and,
    with ``then``, runs it on them."""

    def __init__(self, then=None):
        super().__init__()
        self.then = then
        self.snapshots = []

    def _on_step(self):
        return True

    def _on_rollout_end(self):
        buffer = self.model.rollout_buffer
        snapshot = {name: getattr(buffer, name).copy() for name in ("rewards", "returns", "advantages", "values")}
        self.snapshots.append(snapshot)
        if self.then is not None:
            self.then(self, snapshot)


def test_with_an_unchanged_reward_the_relabelled_buffer_is_bit_identical_to_sb3s_own():
    env = make_env()
    relabel = PPORolloutRelabelCallback(env)
    truncations = []

    def relabel_again(callback, sb3):
        truncations.append(len(relabel.truncated))
        relabel.relabel()  # forced: the reward never changed, so SB3's numbers must come back exactly
        buffer = callback.model.rollout_buffer
        for name in ("rewards", "returns", "advantages"):
            assert np.array_equal(getattr(buffer, name), sb3[name]), name

    model = make_ppo(env)
    model.learn(32 * 2 * 4, callback=[relabel, Snapshot(then=relabel_again)])
    assert relabel.relabels == 4 and sum(truncations) >= 4  # the time-limit bootstrap was exercised
    env.close()


def from_scratch(inputs, truncated, scale, env, model, values, episode_starts, last_values, last_dones):
    """Rewards, returns and advantages of a rollout computed directly (float64 GAE)."""
    rewards = scale * np.tanh(inputs.astype(np.float64)) @ env.weights.astype(np.float64)
    for row, index, terminal in truncated:
        with torch.no_grad():
            value = model.policy.predict_values(model.policy.obs_to_tensor(terminal)[0])[0].item()
        rewards[row, index] += GAMMA * value
    n_steps = len(rewards)
    advantages = np.zeros_like(rewards)
    last_gae = 0.0
    for step in reversed(range(n_steps)):
        if step == n_steps - 1:
            next_non_terminal, next_values = 1.0 - last_dones.astype(np.float64), last_values
        else:
            next_non_terminal, next_values = 1.0 - episode_starts[step + 1], values[step + 1]
        delta = rewards[step] + GAMMA * next_values * next_non_terminal - values[step]
        last_gae = delta + GAMMA * LAMBDA * next_non_terminal * last_gae
        advantages[step] = last_gae
    return rewards, advantages + values, advantages


class ChangeRewardMidRollout(BaseCallback):
    """Triples the reward at step 10 of the second rollout; records the inputs and truncations independently."""

    def __init__(self, env):
        super().__init__()
        self.env = env
        self.inputs, self.truncated, self.rollouts = [], [], 0

    def _on_rollout_start(self):
        self.rollouts += 1
        self.inputs, self.truncated = [], []

    def _on_step(self):
        row = len(self.inputs)
        self.inputs.append(self.env.last_inputs.copy())
        for index, (done, info) in enumerate(zip(self.locals["dones"], self.locals["infos"])):
            if done and info.get("TimeLimit.truncated", False):
                self.truncated.append((row, index, info["terminal_observation"]))
        if self.rollouts == 2 and row == 10:
            self.env.change_scale(3.0)
        return True


def test_a_reward_that_changed_during_the_rollout_is_recomputed_with_returns_and_advantages_from_scratch():
    env = make_env()
    relabel = PPORolloutRelabelCallback(env)
    change = ChangeRewardMidRollout(env)
    checked = []

    def compare(callback, relabelled):
        if change.rollouts != 2:
            return
        model = callback.model
        buffer = model.rollout_buffer
        with torch.no_grad():
            last_values = model.policy.predict_values(model.policy.obs_to_tensor(model._last_obs)[0]).numpy().ravel()
        rewards, returns, advantages = from_scratch(
            np.stack(change.inputs), change.truncated, 3.0, env, model, buffer.values.astype(np.float64),
            buffer.episode_starts.astype(np.float64), last_values.astype(np.float64), model._last_episode_starts,
        )
        assert change.truncated, "no truncated step in the rollout: the bootstrap went untested"
        np.testing.assert_allclose(relabelled["rewards"], rewards, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(relabelled["returns"], returns, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(relabelled["advantages"], advantages, rtol=1e-5, atol=1e-4)
        checked.append(True)

    model = make_ppo(env)
    # Order as in vlmrl train: the relabel callback runs before anything reads the buffer.
    model.learn(32 * 2 * 3, callback=[change, relabel, Snapshot(then=compare)])
    assert checked == [True]
    assert relabel.relabels == 1  # only the rollout whose reward changed was relabelled
    env.close()


def test_rollouts_collected_under_one_reward_are_left_as_sb3_stored_them():
    env = make_env()
    relabel = PPORolloutRelabelCallback(env)
    model = make_ppo(env)
    model.learn(32 * 2 * 2, callback=[relabel])
    assert relabel.relabels == 0
    env.close()


def test_an_off_policy_learner_is_refused():
    from stable_baselines3 import SAC

    callback = PPORolloutRelabelCallback(make_env())
    callback.init_callback(SAC("MlpPolicy", gym.make("Pendulum-v1"), device="cpu"))
    with pytest.raises(TypeError, match="no rollout buffer"):
        callback.on_training_start({}, {})

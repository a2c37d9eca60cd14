"""PEBBLE's unsupervised exploration (agents/pebble.py) with real SB3 SAC on a real vlmrl env."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import vlmrl.envs  # noqa: F401
from vlmrl.agents.frame_capture import FrameInInfo
from vlmrl.agents.pebble import STATE_FILE, StateEntropyExploration, knn_distances, reset_sac_critic
from vlmrl.agents.preference_config import OnlinePreferenceConfig
from vlmrl.agents.preference_reward import build_preference_env
from vlmrl.reward_labelers.oracle_teacher import OracleTeacher
from vlmrl.reward_learning_config import FitConfig
from vlmrl.reward_net_config import RewardEnsembleConfig

MOUNTAIN_CAR = "vlmrl/MountainCarContinuousTextured-v0"
ENV_REWARD = 7.0  # a constant the env gives, so any other value in the replay buffer came from exploration

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mountain_car(n_envs: int = 1, reward: float = ENV_REWARD, episode_length: int = 100) -> DummyVecEnv:
    """MountainCar (no rendering) whose every reward is ``reward``."""

    def make() -> gym.Env:
        return gym.wrappers.TransformReward(gym.make(MOUNTAIN_CAR, episode_length=episode_length), lambda r: reward)

    return DummyVecEnv([make] * n_envs)


def small_sac(env: DummyVecEnv, seed: int = 0, **kwargs) -> SAC:
    defaults = dict(learning_starts=50, batch_size=32, policy_kwargs=dict(net_arch=[32, 32]), device="cpu", seed=seed)
    return SAC("MlpPolicy", env, **{**defaults, **kwargs})


# -- the k-NN distance --------------------------------------------------------------------------


def test_states_far_from_the_buffer_get_a_larger_distance() -> None:
    rng = np.random.default_rng(0)
    buffer = rng.normal(scale=0.1, size=(500, 3))
    near, far = np.array([[0.05, 0.0, 0.0]]), np.array([[3.0, 0.0, 0.0]])

    d_near = knn_distances(near, buffer, k=5, includes_self=False)[0]
    d_far = knn_distances(far, buffer, k=5, includes_self=False)[0]

    assert d_far > 2.5 > 0.2 > d_near


@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_knn_distance_matches_brute_force_and_skips_the_state_itself(chunk_size: int) -> None:
    rng = np.random.default_rng(1)
    states = rng.normal(size=(300, 4)) + 50.0  # far from the origin: the centring keeps precision

    distances = knn_distances(states, states, k=5, includes_self=True, chunk_size=chunk_size)

    pairwise = np.linalg.norm(states[:, None] - states[None], axis=-1)
    expected = np.sort(pairwise, axis=1)[:, 5]  # column 0 is the state itself
    np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)


def test_knn_distance_with_fewer_states_than_k() -> None:
    assert knn_distances(np.zeros((1, 2)), np.zeros((1, 2)), k=5)[0] == 0.0
    three = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    np.testing.assert_allclose(knn_distances(three, three, k=5), [3.0, 2.0, 3.0])


# -- the callback on real SAC -------------------------------------------------------------------


@pytest.mark.parametrize("n_envs", [1, 2])
def test_exploration_rewards_until_unsupervised_steps_then_the_env_reward(n_envs: int) -> None:
    env = mountain_car(n_envs)
    model = small_sac(env)
    exploration = StateEntropyExploration(unsupervised_steps=160, refresh_every=50)

    model.learn(240, callback=exploration)

    rewards = model.replay_buffer.rewards[: 240 // n_envs]
    explored = 160 // n_envs - 1  # the step that reaches unsupervised_steps is the learned reward's
    assert exploration.handover_step == 160 and exploration.finished and not exploration.active
    assert np.all(rewards[:explored] != ENV_REWARD)
    assert np.all(np.isfinite(rewards[:explored])) and np.all(rewards[:explored] >= 0)
    assert rewards[:explored].std() > 0
    np.testing.assert_array_equal(rewards[explored:], ENV_REWARD)
    assert exploration.refreshes >= 2


def test_the_newest_states_reward_is_its_distance_over_the_running_std() -> None:
    """Stopped mid-exploration: the newest transition's reward is r_int = d_k(s) / std."""
    env = mountain_car()
    model = small_sac(env)
    exploration = StateEntropyExploration(unsupervised_steps=1000, refresh_every=10_000)

    model.learn(120, callback=exploration)

    buffer = model.replay_buffer
    states = buffer.observations[:120, 0]
    d_last = knn_distances(states[-1:], states, k=5, includes_self=True)[0]
    assert buffer.rewards[119, 0] == pytest.approx(d_last / np.sqrt(exploration.distance_stats.var), rel=1e-4)
    assert exploration.active and exploration.handover_step is None


def test_a_wrapped_replay_buffer_takes_neighbours_from_the_newest_states() -> None:
    """A 64-row replay buffer that wrapped around, neighbours from the newest 32 states only."""
    env = mountain_car()
    model = small_sac(env, buffer_size=64)
    exploration = StateEntropyExploration(unsupervised_steps=1000, max_states=32, refresh_every=10_000)

    model.learn(150, callback=exploration)

    buffer = model.replay_buffer
    assert buffer.full and buffer.pos == 150 % 64
    newest = (buffer.pos - 32 + np.arange(32)) % 64
    states = buffer.observations[newest, 0]
    d_last = knn_distances(states[-1:], states, k=5, includes_self=True)[0]
    assert buffer.rewards[newest[-1], 0] == pytest.approx(d_last / np.sqrt(exploration.distance_stats.var), rel=1e-4)
    assert np.all(buffer.rewards != ENV_REWARD)


class FlipAt(BaseCallback):
    """Sets ``ready`` once ``num_timesteps`` reaches ``step`` (stands in for the first reward fit)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.ready = step, False

    def _on_step(self) -> bool:
        self.ready = self.ready or self.num_timesteps >= self.step
        return True


def test_exploration_lasts_until_the_learned_reward_is_ready() -> None:
    env = mountain_car()
    model = small_sac(env)
    flip = FlipAt(150)
    exploration = StateEntropyExploration(unsupervised_steps=60, learned_reward_ready=lambda: flip.ready)

    model.learn(200, callback=[flip, exploration])

    assert exploration.handover_step == 150
    rewards = model.replay_buffer.rewards[:200, 0]
    assert np.all(rewards[:149] != ENV_REWARD)
    np.testing.assert_array_equal(rewards[149:], ENV_REWARD)


def test_pebble_hands_over_to_the_learned_reward_at_the_first_fit() -> None:
    """The whole PEBBLE loop: exploration until the first preference round (first_round_at =
    unsupervised_steps, as the learner will schedule it), then the preference wrapper's learned
    reward, with the replay buffer relabelled by SACReplayRelabelCallback."""
    venv = DummyVecEnv([lambda: FrameInInfo(Monitor(gym.make(MOUNTAIN_CAR, episode_length=100)), capture_frames=False)])
    schedule = OnlinePreferenceConfig(pairs_per_round=40, budget=80, first_round_at=200, round_every=100, frame_buffer=1000,
                                      net=RewardEnsembleConfig(kind="mlp", ensemble_size=2), fit=FitConfig(epochs=3))
    env, callbacks = build_preference_env(venv, OracleTeacher(), "reach the flag", schedule, "sac", device="cpu")
    exploration = StateEntropyExploration(unsupervised_steps=200, learned_reward_ready=lambda: env.fitted)
    model = small_sac(env, buffer_size=1000)

    model.learn(300, callback=[*callbacks, exploration])

    assert env.stats.fits == 2 and exploration.handover_step == 200
    buffer = model.replay_buffer
    expected = env.reward(buffer.next_observations[: buffer.pos, 0])
    np.testing.assert_allclose(buffer.rewards[: buffer.pos, 0], expected, rtol=1e-5, atol=1e-6)


def test_zero_unsupervised_steps_leaves_everything_alone() -> None:
    env = mountain_car()
    model = small_sac(env)
    exploration = StateEntropyExploration(unsupervised_steps=0)
    critic_before = [p.detach().clone() for p in model.policy.critic.parameters()]

    model.learn(100, callback=exploration)

    np.testing.assert_array_equal(model.replay_buffer.rewards[:100], ENV_REWARD)
    assert exploration.finished and exploration.handover_step is None
    # No reset: with learning_starts=50 the critic trained, and it is what SAC made of it.
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, model.policy.critic.parameters()))


def test_reset_sac_critic_reinitialises_q_and_keeps_the_actor() -> None:
    model = small_sac(mountain_car())
    model.learn(150)
    actor = [p.detach().clone() for p in model.policy.actor.parameters()]
    critic = [p.detach().clone() for p in model.policy.critic.parameters()]
    assert model.policy.critic.optimizer.state

    reset_sac_critic(model)

    assert all(not torch.equal(a, b) for a, b in zip(critic, model.policy.critic.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(actor, model.policy.actor.parameters()))
    for a, b in zip(model.policy.critic.parameters(), model.policy.critic_target.parameters()):
        assert torch.equal(a, b)
    assert not model.policy.critic.optimizer.state
    model.learn(20, reset_num_timesteps=False)  # and SAC keeps training with it


def test_checkpoint_round_trip(tmp_path) -> None:
    model = small_sac(mountain_car())
    exploration = StateEntropyExploration(unsupervised_steps=100, refresh_every=40)
    model.learn(150, callback=exploration)

    exploration.save(tmp_path)
    restored = StateEntropyExploration(unsupervised_steps=100, refresh_every=40)
    restored.load(tmp_path)

    assert restored.state_dict() == exploration.state_dict()
    assert json.loads((tmp_path / STATE_FILE).read_text())["finished"] is True
    StateEntropyExploration(unsupervised_steps=100).load(tmp_path / "missing")  # no file: nothing to restore


def test_needs_an_off_policy_model() -> None:
    model = PPO("MlpPolicy", mountain_car(), n_steps=16, batch_size=16, device="cpu")
    with pytest.raises(TypeError, match="needs SAC"):
        model.learn(16, callback=StateEntropyExploration(unsupervised_steps=10))


def test_exploration_visits_a_wider_range_of_positions_than_zero_reward() -> None:
    """SAC on MountainCar with every env reward 0: the state-entropy reward makes it swing the
    car further than the max-entropy-only agent that a zero reward leaves (measured over 3 seeds
    on a 2-core CPU: position std 0.19-0.21 with exploration, 0.085-0.105 without; ~10 s a run)."""
    steps = 3000
    position_std = {}
    for explore in (True, False):
        model = small_sac(
            mountain_car(reward=0.0, episode_length=200), learning_starts=200, batch_size=64, learning_rate=3e-3,
            ent_coef=0.02, train_freq=8, gradient_steps=2, policy_kwargs=dict(net_arch=[64, 64]),
        )
        callback = [StateEntropyExploration(unsupervised_steps=steps, refresh_every=250)] if explore else []
        model.learn(steps, callback=callback)
        position_std[explore] = float(model.replay_buffer.observations[:steps, 0, 0].std())

    assert position_std[True] > 1.4 * position_std[False], position_std


def test_the_preference_config_turns_pebble_on() -> None:
    """``preference.unsupervised_steps`` adds the exploration to SAC's callbacks and delays the
    first query until it ends; ``sampling`` reaches the learner; PPO is refused."""
    from vlmrl.errors import ConfigError

    venv = DummyVecEnv([lambda: FrameInInfo(Monitor(gym.make(MOUNTAIN_CAR, episode_length=100)), capture_frames=False)])
    schedule = OnlinePreferenceConfig(pairs_per_round=40, budget=80, first_round_at=50, round_every=100,
                                      frame_buffer=1000, unsupervised_steps=200, sampling="disagreement",
                                      net=RewardEnsembleConfig(kind="mlp", ensemble_size=2), fit=FitConfig(epochs=3))
    env, callbacks = build_preference_env(venv, OracleTeacher(), "reach the flag", schedule, "sac", device="cpu")
    (exploration,) = [c for c in callbacks if isinstance(c, StateEntropyExploration)]
    assert exploration.unsupervised_steps == 200 and env.learner.next_round_at == 200
    model = small_sac(env, buffer_size=1000)
    model.learn(400, callback=callbacks)
    assert exploration.handover_step is not None and exploration.handover_step >= 200 and env.stats.fits >= 1
    with pytest.raises(ConfigError, match="needs agent.algo: sac"):
        build_preference_env(venv, OracleTeacher(), "reach the flag", schedule, "ppo", device="cpu")

"""Success rate of training episodes (agents/success.py), fed by hand and by real SB3 PPO."""

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import DummyVecEnv

import vlmrl.envs  # noqa: F401
from vlmrl.agents.success import STATE_FILE, SuccessRateCallback, SuccessTracker

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_final_step_success_of_finished_episodes() -> None:
    tracker = SuccessTracker()
    # Two sub-envs; success at a step that does not end the episode is not counted.
    tracker.update([{"success": True}, {"success": False}], [False, False])
    tracker.update([{"success": False}, {"success": True}], [True, True])
    tracker.update([{"success": True}, {"success": True}], [True, False])

    assert tracker.episodes == 3 and tracker.successes == 2
    assert tracker.rate == pytest.approx(2 / 3)
    assert tracker.summary() == {"success_rate": pytest.approx(2 / 3), "success_episodes": 3}


def test_any_step_success() -> None:
    """RL-VLM-F's count: an episode succeeded if any of its steps did."""
    tracker = SuccessTracker(count="any")
    tracker.update([{"success": True}, {"success": False}], [False, False])
    tracker.update([{"success": False}, {"success": False}], [True, True])  # env 0 succeeded earlier
    tracker.update([{"success": False}, {"success": False}], [True, False])  # a fresh episode of env 0

    assert (tracker.episodes, tracker.successes) == (3, 1)


@pytest.mark.parametrize("count", ["final", "any"])
def test_envs_that_never_report_success_are_ignored(count: str) -> None:
    tracker = SuccessTracker(count=count)
    for _ in range(5):
        tracker.update([{"true_reward": 1.0}, {"success": True}], [True, True])

    assert tracker.episodes == 5 and tracker.rate == 1.0  # only the second sub-env counts

    silent = SuccessTracker(count=count)
    silent.update([{"true_reward": 1.0}], [True])
    assert silent.rate is None and silent.recent_rate is None and silent.summary() == {}


def test_recent_rate_is_over_the_last_window_episodes() -> None:
    tracker = SuccessTracker(window=4)
    for succeeded in [True] * 6 + [False] * 3:
        tracker.update([{"success": succeeded}], [True])

    assert tracker.recent_rate == pytest.approx(1 / 4)
    assert tracker.rate == pytest.approx(6 / 9)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window"):
        SuccessTracker(window=0)
    with pytest.raises(ValueError, match="count"):
        SuccessTracker(count="max")  # type: ignore[arg-type]


# -- the callback in a real training loop -------------------------------------------------------


class CartRightOfCentre(gym.Wrapper):
    """CartPole that reports success = the cart is right of the centre, and remembers the
    final-step success of every episode (what the callback should count)."""

    finals: list[bool] = []

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["success"] = bool(obs[0] > 0.0)
        if terminated or truncated:
            CartRightOfCentre.finals.append(info["success"])
        return obs, reward, terminated, truncated, info


class Records(KVWriter):
    def __init__(self) -> None:
        self.values: list[dict] = []

    def write(self, key_values, key_excluded, step=0) -> None:
        self.values.append(dict(key_values))


def train_ppo(wrap: bool, callback: SuccessRateCallback, steps: int = 512) -> Records:
    def make() -> gym.Env:
        env = gym.make("vlmrl/CartPole-v1")
        return CartRightOfCentre(env) if wrap else env

    model = PPO("MlpPolicy", DummyVecEnv([make, make]), n_steps=64, batch_size=64, n_epochs=1, device="cpu", seed=0)
    records = Records()
    model.set_logger(Logger(folder=None, output_formats=[records]))
    model.learn(steps, callback=callback)
    return records


def test_callback_logs_and_summarises_the_success_rate() -> None:
    CartRightOfCentre.finals = []
    callback = SuccessRateCallback()

    records = train_ppo(wrap=True, callback=callback)

    finals = CartRightOfCentre.finals
    assert len(finals) > 10  # random CartPole episodes last ~20 steps
    assert callback.tracker.episodes == len(finals)
    assert callback.summary() == {"success_rate": pytest.approx(np.mean(finals)), "success_episodes": len(finals)}
    logged = [r[SuccessRateCallback.metric] for r in records.values if SuccessRateCallback.metric in r]
    assert len(logged) == len(records.values)  # an episode ended in every 128-step rollout
    assert logged[-1] == pytest.approx(np.mean(finals[-100:]))


def test_callback_logs_nothing_for_an_env_without_success() -> None:
    callback = SuccessRateCallback()

    records = train_ppo(wrap=False, callback=callback, steps=256)

    assert records.values and all(SuccessRateCallback.metric not in r for r in records.values)
    assert callback.summary() == {}


def test_callback_checkpoint_round_trip(tmp_path) -> None:
    callback = SuccessRateCallback(window=3)
    for succeeded in (True, False, True, True):
        callback.tracker.update([{"success": succeeded}], [True])

    callback.save(tmp_path)
    restored = SuccessRateCallback(window=3)
    restored.load(tmp_path)

    assert (tmp_path / STATE_FILE).is_file()
    assert restored.tracker.state_dict() == callback.tracker.state_dict() == {
        "episodes": 4, "successes": 3, "recent": [0.0, 1.0, 1.0],
    }
    SuccessRateCallback().load(tmp_path / "missing")  # no file: nothing to restore

"""Online preference-based RL (RL-VLM-F / PEBBLE) on real envs, real learners and a real HTTP VLM server."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import vlmrl.envs  # noqa: F401
from vlmrl.agents.frame_capture import FrameInInfo
from vlmrl.agents.preference_reward import (
    PreferenceSchedule,
    SACReplayRelabelCallback,
    StepRing,
    build_preference_env,
    preference_needs_frames,
    restore_preference_checkpoint,
    save_preference_checkpoint,
)
from vlmrl.config import load_config
from vlmrl.evaluation import true_returns
from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler
from vlmrl.reward_labelers.oracle_teacher import OracleTeacher
from vlmrl.reward_nets import downsample_frames

from openai_test_server import OpenAITestServer

ROOT = Path(__file__).resolve().parents[1]
FIXED = "vlmrl/CartPoleFixedLength-v1"
GOAL = "to balance the brown pole on the black cart to be upright"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def vec_env(env_id=FIXED, n_envs=2, capture=True, width=96, height=64, seed=0, **kwargs):
    def build():
        env = gym.make(env_id, render_mode="rgb_array", render_width=width, render_height=height, **kwargs)
        return FrameInInfo(Monitor(env), capture_frames=capture)

    venv = DummyVecEnv([build] * n_envs)
    venv.seed(seed)
    return venv


def run_random(env, vector_steps, seed=0):
    """Random actions from a seeded generator; returns the per-step infos."""
    rng = np.random.default_rng(seed)
    env.reset()
    seen = []
    for _ in range(vector_steps):
        _, rewards, _, infos = env.step(rng.integers(0, 2, size=env.num_envs))
        seen.append((rewards, infos))
    return seen


def test_budget_is_respected_exactly_counting_nan_and_ties_and_perfect_teacher_agrees():
    # Skip when both frames are fallen (NaN), tie when both are upright (0.5): both still cost budget.
    teacher = OracleTeacher(eps_skip=0.5, return_scale=1.0)
    schedule = PreferenceSchedule(pairs_per_round=50, round_every=100, first_round_at=100, budget=130,
                                  frame_buffer=400, net="cnn", epochs=2, ensemble_size=2)
    env, _ = build_preference_env(vec_env(episode_length=40), teacher, GOAL, schedule, "ppo", device="cpu")
    steps = run_random(env, 300)

    stats = env.stats
    assert stats.asked == 130 == len(env.pairs)
    assert stats.rounds == 3 and stats.fits == 3
    assert stats.unlabelled > 0 and stats.ties > 0
    assert stats.labelled + stats.unlabelled == 130
    assert np.isnan(env.pairs.labels).sum() == stats.unlabelled
    assert stats.compared > 0 and stats.accuracy_vs_oracle == 1.0
    # No reward before the first round (env step 100 = vector step 50), learned rewards after.
    assert all(r == 0.0 for rewards, _ in steps[:49] for r in rewards)
    later = np.concatenate([rewards for rewards, _ in steps[60:]])
    assert np.std(later) > 0
    _, infos = steps[-1]
    assert all("true_reward" in info and info["learned_reward"] == r for info, r in zip(infos, steps[-1][0]))
    env.close()


def test_noisy_teacher_lowers_accuracy_vs_oracle():
    teacher = OracleTeacher(eps_mistake=0.4, seed=1)
    schedule = PreferenceSchedule(pairs_per_round=100, round_every=200, first_round_at=200, budget=200,
                                  frame_buffer=400, net="mlp", epochs=1, ensemble_size=1)
    env, _ = build_preference_env(vec_env(capture=False, episode_length=40), teacher, GOAL, schedule, "ppo", device="cpu")
    run_random(env, 100)
    assert env.stats.asked == 100 and env.stats.compared > 20
    assert 0.3 < env.stats.accuracy_vs_oracle < 0.85
    env.close()


def test_segment_returns_stop_at_termination_and_skip_truncated_segments():
    ring = StepRing(frame_buffer=12, n_envs=2, label_frame_mb=1)
    # env 0: terminates at step 2 (reward 1 on each step); env 1: truncated at step 1.
    ends = [(False, False), (False, True), (True, False), (False, False), (False, False), (False, False)]
    terminated = [(False, False), (False, False), (True, False), (False, False), (False, False), (False, False)]
    for step in range(6):
        ring.add(np.zeros((2, 4), np.float32), None, np.ones(2, np.float32), np.array(ends[step]), np.array(terminated[step]))
    returns, valid = ring.segment_returns(3)
    # env 0: steps 0..2 end in termination -> returns 3, 2, 1 and valid; steps 3 complete; 4, 5 incomplete.
    np.testing.assert_array_equal(returns[:, 0], [3, 2, 1, 3, 2, 1])
    np.testing.assert_array_equal(valid[:, 0], [True, True, True, True, False, False])
    # env 1: steps 0, 1 are cut by the truncation at step 1; step 2 starts a complete segment.
    np.testing.assert_array_equal(valid[:, 1], [False, False, True, True, False, False])
    single, all_valid = ring.segment_returns(1)
    assert all_valid.all() and (single == 1).all()


def test_frames_for_the_vlm_are_kept_at_render_size_unless_memory_is_short():
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 400, 600, 3), dtype=np.uint8)
    args = (np.zeros((2, 4), np.float32), frames, np.ones(2, np.float32), np.zeros(2, bool), np.zeros(2, bool))
    roomy = StepRing(frame_buffer=10, n_envs=2, label_frame_mb=64)
    roomy.add(*args)
    assert roomy.frames.shape[2:] == (400, 600, 3)
    np.testing.assert_array_equal(roomy.frames[0], frames)
    tight = StepRing(frame_buffer=1000, n_envs=2, label_frame_mb=64)  # 1000 x 720 kB would need 687 MiB
    tight.add(*args)
    height, width = tight.frames.shape[2:4]
    assert tight.frames.nbytes <= 64 * 2**20 and abs(width / height - 1.5) < 0.02


def test_learned_reward_ranks_upright_frames_above_fallen_ones():
    teacher = OracleTeacher(seed=0)
    schedule = PreferenceSchedule(pairs_per_round=200, round_every=600, first_round_at=600, budget=400,
                                  frame_buffer=1200, net="cnn", epochs=8, lr=1e-3, batch_size=64, ensemble_size=2)
    env, _ = build_preference_env(vec_env(n_envs=4, episode_length=30), teacher, GOAL, schedule, "ppo", device="cpu")
    run_random(env, 300)
    assert env.stats.asked == 400 and env.stats.heldout_accuracy > 0.8

    # Fresh frames from another seed: the learned reward must separate upright from fallen.
    probe = vec_env(n_envs=4, episode_length=30, seed=123)
    probe.reset()
    rng = np.random.default_rng(5)
    frames, truth = [], []
    for _ in range(60):
        _, _, _, infos = probe.step(rng.integers(0, 2, size=4))
        frames += [info["frame"] for info in infos]
        truth += [info["true_reward"] for info in infos]
    learned = env.reward(downsample_frames(np.stack(frames), 64))
    truth = np.array(truth)
    assert 0.2 < truth.mean() < 0.8
    upright, fallen = learned[truth == 1], learned[truth == 0]
    auc = (upright[:, None] > fallen[None, :]).mean()
    assert auc > 0.9, auc
    assert np.corrcoef(learned, truth)[0, 1] > 0.6
    env.close()
    probe.close()


def test_vlm_labels_are_stored_and_a_rerun_with_the_same_store_asks_nothing(tmp_path):
    store = tmp_path / "labels.sqlite"
    schedule = PreferenceSchedule(pairs_per_round=8, round_every=40, first_round_at=40, budget=16,
                                  frame_buffer=200, net="cnn", epochs=1, ensemble_size=1)

    def one_run(server):
        labeler = OpenAIPreferenceLabeler(server.base_url, model="test-vlm", store=store, max_retries=0, timeout_s=10)
        assert preference_needs_frames(labeler, schedule)
        env, _ = build_preference_env(vec_env(episode_length=30), labeler, GOAL, schedule, "ppo", seed=3, device="cpu")
        run_random(env, 60, seed=4)
        env.close()
        return env, labeler

    with OpenAITestServer(model="test-vlm") as server:
        first, first_labeler = one_run(server)
        assert first.stats.asked == 16 and first.stats.rounds == 2
        asked_pairs = first_labeler.stats.asked
        assert asked_pairs > 0 and server.count() >= 2 * asked_pairs  # analysis + labelling turn each
        assert not server.protocol_errors
        # The VLM saw the frames at render size (kept: far below the memory cap).
        assert first.ring.frames.shape[2:4] == (64, 96)

        server.reset_counts()
        second, second_labeler = one_run(server)
        assert server.count() == 0
        assert second_labeler.stats.asked == 0 and second_labeler.stats.cached == asked_pairs
        np.testing.assert_array_equal(second.pairs.labels, first.pairs.labels)
        assert second.stats.asked == 16  # cached answers still count against the budget


def test_checkpoint_round_trip_restores_pairs_counters_and_reward(tmp_path):
    schedule = PreferenceSchedule(pairs_per_round=40, round_every=100, first_round_at=100, budget=80,
                                  frame_buffer=400, net="mlp", epochs=2)
    env, callbacks = build_preference_env(vec_env(capture=False, episode_length=40), OracleTeacher(), GOAL, schedule, "ppo", device="cpu")
    run_random(env, 120)
    save_preference_checkpoint(tmp_path, env, callbacks)

    restored, restored_callbacks = build_preference_env(
        vec_env(capture=False, episode_length=40), OracleTeacher(), GOAL, schedule, "ppo", device="cpu"
    )
    assert not restored.fitted
    restore_preference_checkpoint(tmp_path, restored, restored_callbacks)
    assert restored.stats.counters() == env.stats.counters()
    assert restored.next_round_at == env.next_round_at and restored.vector_steps == env.vector_steps
    np.testing.assert_array_equal(restored.pairs.first, env.pairs.first)
    np.testing.assert_array_equal(restored.pairs.labels, env.pairs.labels)
    states = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    np.testing.assert_allclose(restored.reward(states), env.reward(states), rtol=1e-6)
    # The budget is spent: more steps ask nothing more.
    run_random(restored, 100)
    assert restored.stats.asked == 80
    env.close()
    restored.close()


def test_sac_replay_buffer_is_relabelled_with_the_new_reward_model(tmp_path):
    def build():
        return FrameInInfo(Monitor(gym.make("Pendulum-v1")), capture_frames=False)

    venv = DummyVecEnv([build])
    venv.seed(0)
    schedule = PreferenceSchedule(pairs_per_round=40, round_every=120, first_round_at=120, budget=120,
                                  frame_buffer=1000, net="mlp", epochs=3, ensemble_size=2)
    env, callbacks = build_preference_env(venv, OracleTeacher(), "swing the pendulum up", schedule, "sac", device="cpu")
    relabel = next(c for c in callbacks if isinstance(c, SACReplayRelabelCallback))

    class EarlyRewards(BaseCallback):
        """Copies the replay buffer's first 100 rewards just before the first relabel."""

        def __init__(self):
            super().__init__()
            self.before = None

        def _on_step(self):
            if self.before is None and env.stats.fits == 1:
                self.before = self.model.replay_buffer.rewards[:100, 0].copy()
            return True

    early = EarlyRewards()
    model = SAC("MlpPolicy", env, buffer_size=1000, learning_starts=50, batch_size=32, seed=0, device="cpu",
                policy_kwargs={"net_arch": [32, 32]})
    model.learn(400, callback=[early, *callbacks])

    buffer = model.replay_buffer
    assert env.stats.fits == 3 and relabel.relabels == 3
    assert np.all(early.before == 0.0)  # stored before any fit: the wrapper gave 0
    # Every stored reward is the current model's reward of the stored transition's next state.
    expected = env.reward(buffer.next_observations[: buffer.pos, 0])
    np.testing.assert_allclose(buffer.rewards[: buffer.pos, 0], expected, rtol=1e-5, atol=1e-6)
    assert np.std(buffer.rewards[:100, 0]) > 0

    # Checkpoint: the parallel input ring is saved and brought back for a resumed SAC.
    save_preference_checkpoint(tmp_path, env, callbacks)
    model.save_replay_buffer(tmp_path / "replay.pkl")
    resumed = SAC("MlpPolicy", env, buffer_size=1000, learning_starts=0, seed=0, device="cpu", policy_kwargs={"net_arch": [32, 32]})
    resumed.load_replay_buffer(tmp_path / "replay.pkl")
    env2, callbacks2 = build_preference_env(env.venv, OracleTeacher(), "swing the pendulum up", schedule, "sac", device="cpu")
    restore_preference_checkpoint(tmp_path, env2, callbacks2)
    relabel2 = next(c for c in callbacks2 if isinstance(c, SACReplayRelabelCallback))
    relabel2.init_callback(resumed)
    relabel2.on_training_start({}, {})
    np.testing.assert_array_equal(relabel2.inputs[: buffer.pos], relabel.inputs[: buffer.pos])
    env.close()


def test_preference_configs_load():
    vlm = load_config(ROOT / "configs/cartpole_vlm_pref.yaml")
    assert vlm.env.id == FIXED and vlm.labeler.preference.backend == "openai"
    assert vlm.labeler.preference.openai.base_url == "http://127.0.0.1:8000/v1"
    assert vlm.reward.preference.pairs_per_round == 50
    mountaincar = load_config(ROOT / "configs/mountaincar_vlm_pref.yaml")
    assert mountaincar.agent.algo == "sac" and mountaincar.labeler.kind == "preference"
    oracle = load_config(ROOT / "configs/cartpole_oracle_pref.yaml")
    assert oracle.env.id == "vlmrl/CartPole-v1" and oracle.labeler.preference.backend == "oracle"
    assert oracle.reward.preference.budget <= 2000
    schedule = PreferenceSchedule.from_config(oracle.reward.preference)
    assert schedule.segment_length > 1 and schedule.net == "mlp"


class StopAtReturn(BaseCallback):
    """Stops training once the last 20 episodes' mean true return reaches ``target``."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.returns = []
        self._current = None

    def _on_step(self):
        infos = self.locals["infos"]
        if self._current is None:
            self._current = np.zeros(len(infos))
        self._current += [info["true_reward"] for info in infos]
        for i in np.flatnonzero(self.locals["dones"]):
            self.returns.append(self._current[i])
            self._current[i] = 0.0
        return not (len(self.returns) >= 20 and np.mean(self.returns[-20:]) >= self.target)


@pytest.mark.slow
def test_preference_ppo_with_the_scripted_teacher_balances_cartpole():
    # Standard CartPole-v1 (+1 per step): the teacher compares 25-step segment returns, which
    # are lower for segments that run into the pole falling. Measured: about 30k env steps.
    schedule = PreferenceSchedule(pairs_per_round=400, round_every=4000, first_round_at=2000, budget=2000,
                                  frame_buffer=4000, net="mlp", epochs=10, batch_size=64, lr=1e-3, segment_length=25)
    venv = vec_env("vlmrl/CartPole-v1", n_envs=4, capture=False)
    env, callbacks = build_preference_env(venv, OracleTeacher(), GOAL, schedule, "ppo", device="cpu")
    model = PPO("MlpPolicy", env, n_steps=256, batch_size=256, n_epochs=10, learning_rate=1e-3, gae_lambda=0.95,
                gamma=0.98, ent_coef=0.0, seed=0, device="cpu")
    model.learn(60_000, callback=[*callbacks, StopAtReturn(475)])
    assert env.stats.asked <= 2000
    assert env.stats.accuracy_vs_oracle == 1.0
    eval_env = gym.make("vlmrl/CartPole-v1")
    returns = true_returns(eval_env, lambda obs: model.predict(obs, deterministic=True)[0], 10, seed=99)
    assert np.mean(returns) >= 400, returns
    env.close()

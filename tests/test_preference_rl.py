"""Online preference-based RL (RL-VLM-F / PEBBLE) on real envs, real learners and a real HTTP VLM server."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import vlmrl.envs  # noqa: F401
from vlmrl.agents.frame_capture import FrameInInfo
from vlmrl.agents.preference_config import OnlinePreferenceConfig
from vlmrl.agents.preference_reward import build_preference_env, make_preference_reward_model, preference_needs_frames
from vlmrl.agents.preference_rounds import PreferenceLearner, StepRing, SynchronousAnswers
from vlmrl.agents.rollout_relabel import SACReplayRelabelCallback
from vlmrl.agents.training_callbacks import RewardMetricsCallback
from vlmrl.config import load_config
from vlmrl.evaluation import true_returns
from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler
from vlmrl.reward_labelers.oracle_teacher import OracleTeacher
from vlmrl.reward_learning_config import FitConfig
from vlmrl.reward_net_config import RewardEnsembleConfig
from vlmrl.reward_nets import RewardModel, downsample_frames

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
    schedule = OnlinePreferenceConfig(pairs_per_round=50, round_every=100, first_round_at=100, budget=130, frame_buffer=400,
                                      net=RewardEnsembleConfig(kind="cnn", ensemble_size=2), fit=FitConfig(epochs=2))
    env, _ = build_preference_env(vec_env(episode_length=40), teacher, GOAL, schedule, "ppo", device="cpu")
    steps = run_random(env, 300)

    stats = env.stats
    assert stats.asked == 130 == len(env.learner.pairs)
    assert stats.rounds == 3 and stats.fits == 3
    assert stats.unlabelled > 0 and stats.ties > 0
    assert stats.labelled + stats.unlabelled == 130
    assert np.isnan(env.learner.pairs.labels).sum() == stats.unlabelled
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
    schedule = OnlinePreferenceConfig(pairs_per_round=100, round_every=200, first_round_at=200, budget=200, frame_buffer=400,
                                      net=RewardEnsembleConfig(kind="mlp", ensemble_size=1), fit=FitConfig(epochs=1))
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
    schedule = OnlinePreferenceConfig(pairs_per_round=200, round_every=600, first_round_at=600, budget=400, frame_buffer=1200,
                                      net=RewardEnsembleConfig(kind="cnn", ensemble_size=2),
                                      fit=FitConfig(epochs=8, batch_size=64, lr=1e-3))
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
    schedule = OnlinePreferenceConfig(pairs_per_round=8, round_every=40, first_round_at=40, budget=16, frame_buffer=200,
                                      net=RewardEnsembleConfig(kind="cnn", ensemble_size=1), fit=FitConfig(epochs=1))

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
        assert first.learner.ring.frames.shape[2:4] == (64, 96)

        server.reset_counts()
        second, second_labeler = one_run(server)
        assert server.count() == 0
        assert second_labeler.stats.asked == 0 and second_labeler.stats.cached == asked_pairs
        np.testing.assert_array_equal(second.learner.pairs.labels, first.learner.pairs.labels)
        assert second.stats.asked == 16  # cached answers still count against the budget


def test_checkpoint_round_trip_restores_pairs_counters_and_reward(tmp_path):
    schedule = OnlinePreferenceConfig(pairs_per_round=40, round_every=100, first_round_at=100, budget=80, frame_buffer=400,
                                      net=RewardEnsembleConfig(kind="mlp", ensemble_size=3), fit=FitConfig(epochs=2))
    env, _ = build_preference_env(vec_env(capture=False, episode_length=40), OracleTeacher(), GOAL, schedule, "ppo", device="cpu")
    run_random(env, 120)
    env.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "preference_reward_net.safetensors", "preference_reward_net.json", "preference_pairs.npz", "preference_state.json"}

    restored, _ = build_preference_env(vec_env(capture=False, episode_length=40), OracleTeacher(), GOAL, schedule, "ppo", device="cpu")
    assert not restored.fitted
    restored.load(tmp_path)
    assert restored.stats.counters() == env.stats.counters()
    assert restored.learner.next_round_at == env.learner.next_round_at and restored.vector_steps == env.vector_steps
    np.testing.assert_array_equal(restored.learner.pairs.first, env.learner.pairs.first)
    np.testing.assert_array_equal(restored.learner.pairs.labels, env.learner.pairs.labels)
    assert restored.summary() == env.summary()
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
    schedule = OnlinePreferenceConfig(pairs_per_round=40, round_every=120, first_round_at=120, budget=120, frame_buffer=1000,
                                      net=RewardEnsembleConfig(kind="mlp", ensemble_size=2), fit=FitConfig(epochs=3))
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
    env.save(tmp_path)
    relabel.save(tmp_path)
    model.save_replay_buffer(tmp_path / "replay.pkl")
    resumed = SAC("MlpPolicy", env, buffer_size=1000, learning_starts=0, seed=0, device="cpu", policy_kwargs={"net_arch": [32, 32]})
    resumed.load_replay_buffer(tmp_path / "replay.pkl")
    env2, callbacks2 = build_preference_env(env.venv, OracleTeacher(), "swing the pendulum up", schedule, "sac", device="cpu")
    env2.load(tmp_path)
    relabel2 = next(c for c in callbacks2 if isinstance(c, SACReplayRelabelCallback))
    relabel2.load(tmp_path)
    relabel2.init_callback(resumed)
    relabel2.on_training_start({}, {})
    np.testing.assert_array_equal(relabel2.inputs[: buffer.pos], relabel.inputs[: buffer.pos])
    env.close()


def test_preference_configs_load():
    vlm = load_config(ROOT / "configs/cartpole_vlm_pref.yaml")
    assert vlm.env.id == FIXED and vlm.labeler.kind == "openai"
    assert vlm.labeler.base_url == "http://127.0.0.1:8000/v1"
    assert vlm.preference.pairs_per_round == 50 and vlm.preference.net.kind == "cnn"
    mountaincar = load_config(ROOT / "configs/mountaincar_vlm_pref.yaml")
    assert mountaincar.agent.algo == "sac" and mountaincar.labeler.family == "pair"
    oracle = load_config(ROOT / "configs/cartpole_oracle_pref.yaml")
    assert oracle.env.id == "vlmrl/CartPole-v1" and oracle.labeler.kind == "teacher"
    assert oracle.preference.budget <= 2000
    assert oracle.preference.segment_length > 1 and oracle.preference.net.kind == "mlp"


def synthetic_steps(n_steps, n_envs=2, seed=0):
    """(states float32 [n_envs, 3], true rewards = first state coordinate, ends every 9th step) per vector step."""
    rng = np.random.default_rng(seed)
    for step in range(n_steps):
        states = rng.normal(size=(n_envs, 3)).astype(np.float32)
        ends = np.full(n_envs, step % 9 == 8)
        yield states, states[:, 0].copy(), ends


def make_learner(answers=None, seed=0, **schedule):
    config = OnlinePreferenceConfig(**{**dict(pairs_per_round=20, round_every=40, first_round_at=30, budget=60, frame_buffer=100),
                                       **schedule},
                                    net=RewardEnsembleConfig(kind="mlp", ensemble_size=2), fit=FitConfig(epochs=2))
    model = make_preference_reward_model(config, gym.spaces.Box(-np.inf, np.inf, (3,)), device="cpu", seed=seed)
    return PreferenceLearner(config, model, n_envs=2, answers=answers or SynchronousAnswers(OracleTeacher(), GOAL), seed=seed)


def feed(learner, steps, first_vector_step=0):
    """Add each step and update the schedule; returns the vector steps at which the model was refitted."""
    refits = []
    for offset, (states, rewards, ends) in enumerate(steps):
        vector_step = first_vector_step + offset + 1
        learner.add_step(states, None, rewards, ends, ends)
        if learner.update(vector_step * 2):
            refits.append(vector_step)
    return refits


def test_round_component_state_round_trip_continues_identically(tmp_path):
    steps = list(synthetic_steps(60))
    learner = make_learner()
    assert feed(learner, steps[:30]) == [15]  # first_round_at 30 env steps = vector step 15
    state = learner.state_dict()
    # JSON-able apart from the pairs' arrays.
    assert set(state["pairs"]) == {"first", "second", "labels", "true_first", "true_second", "p_first", "p_second"}
    json.dumps({key: value for key, value in state.items() if key != "pairs"})

    learner.reward_model.save(tmp_path / "net")  # the wrapper saves the net beside the state
    restored = make_learner(seed=1)  # another seed: everything that matters comes from the state and the net
    restored.reward_model = RewardModel.load(tmp_path / "net", device="cpu")
    restored.load_state_dict(json.loads(json.dumps({**state, "pairs": {}})) | {"pairs": state["pairs"]})
    assert restored.stats.counters() == learner.stats.counters()
    assert restored.next_round_at == learner.next_round_at == 70
    probe = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32)
    np.testing.assert_array_equal(restored.reward(probe), learner.reward(probe))

    # The ring buffer is not saved: refill both with the same steps, then both draw the same rounds.
    restored.fit_seed = learner.fit_seed
    assert feed(restored, steps[:30]) == []  # the schedule position came back: nothing is due again
    assert feed(learner, steps[30:], 30) == feed(restored, steps[30:], 30) == [35, 55]
    assert restored.stats.asked == learner.stats.asked == 60
    np.testing.assert_array_equal(restored.pairs.first, learner.pairs.first)
    np.testing.assert_array_equal(restored.pairs.labels, learner.pairs.labels)
    assert restored.rng.bit_generator.state == learner.rng.bit_generator.state


class LateAnswers:
    """An asynchronous stand-in: the teacher's labels arrive ``delay`` polls after a round is submitted."""

    def __init__(self, delay):
        self.delay = delay
        self.teacher = OracleTeacher()
        self.submitted = []
        self._waiting = None

    def submit(self, query):
        self.submitted.append(len(query))
        self._waiting = [self.delay, query]

    def poll(self):
        if self._waiting is None:
            return None
        if self._waiting[0] > 0:
            self._waiting[0] -= 1
            return None
        query, self._waiting = self._waiting[1], None
        return self.teacher.compare(None, None, GOAL, true_rewards=(query.true_first, query.true_second))


def test_an_asynchronous_labeler_keeps_the_agent_stepping_until_answers_arrive():
    answers = LateAnswers(delay=5)
    learner = make_learner(answers=answers, budget=30)
    steps = list(synthetic_steps(60))
    refits = feed(learner, steps[:17])
    # Drawn at vector step 15 and submitted at once; no answers yet, so no reward, and the
    # round in flight counts against the budget.
    assert refits == [] and answers.submitted == [20] and learner.pending is not None
    assert learner.stats.asked == 0 and learner.budget_left == 10 and not learner.fitted
    # A checkpoint now is that of before the draw: a resumed run draws the round again.
    state = learner.state_dict()
    assert state["next_round_at"] == 30 and state["stats"]["asked"] == 0 and "first" not in state["pairs"]
    # The labels arrive 5 polls later (vector step 20); the next round (due at env step 70) spends the rest.
    assert feed(learner, steps[17:], 17) == [20, 40]
    assert answers.submitted == [20, 10] and learner.stats.asked == 30 == len(learner.pairs) and learner.pending is None


def test_preference_metrics_reach_the_logger_under_the_existing_keys():
    captured = {}

    class Capture(KVWriter):
        def write(self, key_values, key_excluded, step=0):
            captured.update(key_values)

    schedule = OnlinePreferenceConfig(pairs_per_round=20, round_every=100, first_round_at=64, budget=40, frame_buffer=200,
                                      segment_length=5,
                                      net=RewardEnsembleConfig(kind="mlp", ensemble_size=1), fit=FitConfig(epochs=1))
    venv = vec_env(capture=False, episode_length=20)
    env, callbacks = build_preference_env(venv, OracleTeacher(), GOAL, schedule, "ppo", device="cpu")
    assert [type(c) for c in callbacks] == [RewardMetricsCallback]
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.set_logger(Logger(folder=None, output_formats=[Capture()]))
    model.learn(256, callback=callbacks)
    for key in ("labels/asked", "labels/answered", "labels/ties", "labels/unsure", "labels/failed", "labels/rounds",
                "labels/accuracy_vs_oracle", "reward_model/fits", "reward_model/heldout_accuracy",
                "reward_model/train_accuracy", "reward/true_return", "reward/learned_return", "time/label_seconds",
                "time/fit_seconds", "time/env_steps_per_s"):
        assert key in captured, key
    assert captured["labels/asked"] == 40 and captured["reward/true_return"] > 0
    assert env.summary()["pairs_asked"] == 40 and env.video_scorer() == (None, "reward")
    env.close()


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
    schedule = OnlinePreferenceConfig(pairs_per_round=400, round_every=4000, first_round_at=2000, budget=2000,
                                      frame_buffer=4000, segment_length=25,
                                      net=RewardEnsembleConfig(kind="mlp", ensemble_size=3),
                                      fit=FitConfig(epochs=10, batch_size=64, lr=1e-3))
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

"""Asynchronous labelling (``labeling: async``): a bounded queue to a labelling worker (threads, or a
process built from the labeler's config), answers polled without blocking and attached by pair
id, failures counted, checkpoints and shutdown. Real HTTP server, real SQLite store, real SB3 PPO."""

from __future__ import annotations

import threading
import time

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import vlmrl.envs  # noqa: F401
from vlmrl.agents.async_labelling import (
    BackgroundFrameLabels,
    FailureStreak,
    ProcessPairAnswers,
    ThreadedPairAnswers,
)
from vlmrl.agents.distill_config import DistillConfig
from vlmrl.agents.frame_capture import FrameInInfo
from vlmrl.agents.labelled_reward import LabelledRewardVecEnv
from vlmrl.agents.preference_config import OnlinePreferenceConfig
from vlmrl.agents.preference_reward import build_preference_env, make_preference_reward_model
from vlmrl.agents.preference_rounds import AnsweredPairs, PairQuery, PreferenceLearner
from vlmrl.agents.rollout_relabel import PPORolloutRelabelCallback
from vlmrl.config_loading import build_dataclass
from vlmrl.errors import ConfigError
from vlmrl.label_store import FAILED, LabelStore
from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler
from vlmrl.reward_labelers.oracle_teacher import OracleTeacher
from vlmrl.reward_labelers.preference import PairOutcome
from vlmrl.reward_labelers.vlm_config import OpenAIConfig
from vlmrl.reward_learning_config import FitConfig
from vlmrl.reward_net_config import RewardEnsembleConfig
from vlmrl.reward_nets import RewardModel

from openai_test_server import Hang, OpenAITestServer, Status

GOAL = "to be bright"
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- helpers -------------------------------------------------------------------------------------


def gray_frames(levels) -> np.ndarray:
    """uint8 [N, 8, 8, 3] frames, frame i uniformly of brightness levels[i]."""
    return np.repeat(np.asarray(levels, dtype=np.uint8)[:, None, None, None], 8, axis=1).repeat(8, axis=2).repeat(3, axis=3)


def brightness_query(first_levels, second_levels, first_id=0) -> PairQuery:
    """A round whose pairs the test server's brightness VLM answers by their levels."""
    first, second = gray_frames(first_levels), gray_frames(second_levels)
    n = len(first)
    query = PairQuery(first, second, first[:, :1, 0, 0].astype(np.float32), second[:, :1, 0, 0].astype(np.float32),
                      np.asarray(first_levels, np.float64), np.asarray(second_levels, np.float64), 0, {})
    query.ids = np.arange(first_id, first_id + n, dtype=np.int64)
    return query


def expected_brightness_label(b1: float, b2: float) -> float:
    return 1.0 if b1 > b2 else 0.0  # the server's default VLM: image 1 brighter -> "0" -> label 1.0


def collect(answers, expected: int, polls: int = 600) -> AnsweredPairs:
    """Poll (non-blocking) until ``expected`` labels came in."""
    ids, labels = [], []
    event = threading.Event()
    for _ in range(polls):
        answered = answers.poll()
        if answered is not None:
            ids.append(answered.ids)
            labels.append(answered.labels)
        if sum(len(i) for i in ids) >= expected:
            break
        event.wait(0.05)
    return AnsweredPairs(np.concatenate(ids) if ids else np.zeros(0, np.int64),
                         np.concatenate(labels) if labels else np.zeros(0, np.float32))


def synthetic_steps(n_steps, n_envs=2, seed=0):
    """(states float32 [n_envs, 3], true rewards = first coordinate, no episode ends) per vector step."""
    rng = np.random.default_rng(seed)
    for _ in range(n_steps):
        states = rng.normal(size=(n_envs, 3)).astype(np.float32)
        yield states, states[:, 0].copy(), np.zeros(n_envs, dtype=bool)


def make_learner(answers, seed=0, **schedule):
    config = OnlinePreferenceConfig(**{**dict(pairs_per_round=20, round_every=20, first_round_at=20, budget=200,
                                              frame_buffer=100), **schedule},
                                    net=RewardEnsembleConfig(kind="mlp", ensemble_size=1), fit=FitConfig(epochs=1))
    model = make_preference_reward_model(config, gym.spaces.Box(-np.inf, np.inf, (3,)), device="cpu", seed=seed)
    return PreferenceLearner(config, model, n_envs=2, answers=answers, seed=seed)


class ShuffledAnswers:
    """Answers pairs of any rounds in flight, a random subset per poll, in a random order, with
    the perfect teacher's labels of exactly those pairs (by their true returns)."""

    rounds_overlap = True

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.waiting: dict[int, tuple[float, float]] = {}

    def submit(self, query):
        for pair_id, r1, r2 in zip(query.ids, query.true_first, query.true_second):
            self.waiting[int(pair_id)] = (r1, r2)
        return None

    def poll(self):
        if not self.waiting:
            return None
        ids = self.rng.permutation(list(self.waiting))[: self.rng.integers(1, 8)]
        returns = np.array([self.waiting.pop(int(i)) for i in ids])
        labels = np.where(returns[:, 0] > returns[:, 1], 1.0, 0.0).astype(np.float32)
        return AnsweredPairs(ids, labels)


# -- labels attach to the pairs asked -----------------------------------------------------------


def test_labels_attach_to_the_pairs_asked_when_answers_come_back_shuffled_across_overlapping_rounds():
    learner = make_learner(ShuffledAnswers(seed=3), budget=120)
    for vector_step, (states, rewards, ends) in enumerate(synthetic_steps(200), start=1):
        learner.add_step(states, None, rewards, ends, ends)
        learner.update(vector_step * 2)
    pairs = learner.pairs
    assert len(pairs) == learner.stats.asked == 120 and learner.pairs_in_flight == 0
    # Each stored pair's net inputs, true returns and label belong together: the state's first
    # coordinate is the true reward, and the perfect teacher prefers the larger one.
    np.testing.assert_array_equal(pairs.first[:, 0], pairs.true_first.astype(np.float32))
    np.testing.assert_array_equal(pairs.second[:, 0], pairs.true_second.astype(np.float32))
    np.testing.assert_array_equal(pairs.labels, (pairs.true_first > pairs.true_second).astype(np.float32))
    assert learner.stats.accuracy_vs_oracle == 1.0 and learner.stats.rounds == 6
    assert learner.stats.lag_steps_max > 0 and learner.stats.fits >= 6


def test_an_answer_for_a_pair_that_is_not_in_flight_is_an_error():
    class Twice(ShuffledAnswers):
        def poll(self):
            return AnsweredPairs(np.array([0, 0]), np.array([1.0, 1.0], np.float32))

    learner = make_learner(Twice())
    with pytest.raises(RuntimeError, match="not in flight"):
        for vector_step, (states, rewards, ends) in enumerate(synthetic_steps(20), start=1):
            learner.add_step(states, None, rewards, ends, ends)
            learner.update(vector_step * 2)


def test_threaded_answers_label_each_pair_by_its_own_frames_and_the_polling_thread_writes_the_store(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    writers = set()
    put = store.put

    def spy_put(*args, **kwargs):  # the real put, plus which thread called it
        writers.add(threading.get_ident())
        return put(*args, **kwargs)

    store.put = spy_put
    rng = np.random.default_rng(0)
    with OpenAITestServer(model="m", latency_ms=20) as server:
        # Some requests fail once and are retried: answers arrive out of submit order.
        server.enqueue("vision", Status(503), Status(503), Status(503))
        labeler = OpenAIPreferenceLabeler(server.base_url, model="m", store=store, max_concurrency=4, max_retries=2,
                                          backoff_base_s=0.05, timeout_s=10)
        answers = ThreadedPairAnswers(labeler, GOAL, queue_size=100)
        queries = []
        for r in range(3):
            levels = rng.choice(np.arange(0, 250, 3), size=(2, 10), replace=False)
            queries.append(brightness_query(levels[0], levels[1], first_id=10 * r))
            assert answers.submit(queries[-1]).all()
        answered = collect(answers, 30)
        answers.close()
    assert sorted(answered.ids.tolist()) == list(range(30))
    by_id = dict(zip(answered.ids.tolist(), answered.labels.tolist()))
    for query in queries:
        for pair_id, b1, b2 in zip(query.ids, query.true_first, query.true_second):
            assert by_id[int(pair_id)] == expected_brightness_label(b1, b2), (pair_id, b1, b2)
    assert writers == {threading.get_ident()}  # only the polling (this) thread wrote the store
    assert store.counts()["answered"] == 30 and labeler.stats.asked == 30
    assert not any(thread.is_alive() for thread in answers.worker.threads)


def test_pairs_that_do_not_fit_in_the_queue_are_dropped_and_counted_not_charged_to_the_budget():
    with OpenAITestServer(model="m") as server:
        server.set_default("vision", Hang(30))  # nothing is ever answered: the queue stays full
        labeler = OpenAIPreferenceLabeler(server.base_url, model="m", max_concurrency=1, max_retries=0, timeout_s=30)
        answers = ThreadedPairAnswers(labeler, GOAL, queue_size=3)
        learner = make_learner(answers, pairs_per_round=10, budget=100)
        for vector_step, (states, rewards, ends) in enumerate(synthetic_steps(30), start=1):
            learner.add_step(states, gray_frames([2 * vector_step, 2 * vector_step + 1]), rewards, ends, ends)
            learner.update(vector_step * 2)
            while vector_step == 10 and server.count("vision") == 0:  # the worker holds its first pair
                threading.Event().wait(0.01)
        # Rounds at env steps 20, 40, 60: the worker holds 1 pair, the queue 3; every other pair was dropped.
        assert learner.pairs_in_flight == 4 and learner.stats.dropped == 26 and learner.stats.asked == 0
        assert learner.budget_left == 96
        answers.close()


def test_process_worker_builds_the_labeler_from_its_config_and_the_training_process_records(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    with OpenAITestServer(model="m") as server:
        config = OpenAIConfig(base_url=server.base_url, model="m", max_concurrency=2, max_retries=0)
        ledger = config.create(store=store)  # plans and records here; the worker process asks
        answers = ProcessPairAnswers(config, ledger, GOAL, queue_size=50, seed=0)
        query = brightness_query([10, 200, 90, 30], [100, 20, 91, 250])
        assert answers.submit(query).all()
        answered = collect(answers, 4, polls=1200)  # includes the child's start-up (spawn, imports)
        process = answers.worker.process
        answers.close()
    assert dict(zip(answered.ids.tolist(), answered.labels.tolist())) == {0: 0.0, 1: 1.0, 2: 0.0, 3: 0.0}
    assert store.counts()["answered"] == 4 and ledger.stats.answered == 4
    assert not process.is_alive() and process.exitcode is not None


def test_failure_streak_counts_failed_queries_in_a_row_and_answers_end_it():
    streak = FailureStreak(limit=3)
    for status in (FAILED, FAILED, "answered", FAILED, FAILED):
        streak.add(PairOutcome(status, error="boom" if status == FAILED else None))
    assert streak.consecutive == 2 and not streak.tripped and streak.failed == 4
    streak.add(PairOutcome(FAILED, error="connection refused"))
    assert streak.tripped and streak.describe() == "3 queries in a row failed (last error: connection refused)"
    assert not FailureStreak(limit=0).tripped


@pytest.mark.parametrize("labeling", ["sync", "async"])
def test_a_dead_endpoint_trips_the_failure_streak_and_a_sync_round_stops_waiting(labeling):
    schedule = OnlinePreferenceConfig(pairs_per_round=12, round_every=20, first_round_at=20, budget=100, frame_buffer=100,
                                      labeling=labeling, max_consecutive_failures=3,
                                      net=RewardEnsembleConfig(kind="cnn", ensemble_size=1), fit=FitConfig(epochs=1))
    with OpenAITestServer(model="m", latency_ms=100) as server:  # each failure takes a while, as real ones do
        server.set_default("vision", Status(500))
        labeler = OpenAIPreferenceLabeler(server.base_url, model="m", max_concurrency=1, max_retries=0, timeout_s=10)
        env, _ = build_preference_env(vec_env(), labeler, GOAL, schedule, "ppo", device="cpu")
        env.reset()
        deadline = time.monotonic() + 60
        while not env.labelling_failure() and time.monotonic() < deadline:  # async: step until 3 answers came back
            env.step(np.zeros(2, dtype=int))
        assert env.labelling_failure().startswith("3 queries in a row failed (last error: HTTP 500")
        # The sync round was cut short after 3 of its 12 pairs instead of asking them all.
        assert labeler.stats.failed < 12
        env.close()


# -- the env wrapper, PPO and checkpoints ----------------------------------------------------------


def vec_env(n_envs=2, episode_length=40):
    def build():
        env = gym.make("vlmrl/CartPoleFixedLength-v1", render_mode="rgb_array", render_width=64, render_height=64,
                       episode_length=episode_length)
        return FrameInInfo(Monitor(env), capture_frames=True)

    venv = DummyVecEnv([build] * n_envs)
    venv.seed(0)
    return venv


def test_async_step_wait_keeps_stepping_while_the_endpoint_hangs_and_close_abandons_it():
    schedule = OnlinePreferenceConfig(pairs_per_round=6, round_every=40, first_round_at=20, budget=100, frame_buffer=200,
                                      labeling="async", queue_size=8,
                                      net=RewardEnsembleConfig(kind="cnn", ensemble_size=1), fit=FitConfig(epochs=1))
    with OpenAITestServer(model="m") as server:
        server.set_default("vision", Hang(60))
        labeler = OpenAIPreferenceLabeler(server.base_url, model="m", max_concurrency=2, max_retries=0, timeout_s=60)
        env, _ = build_preference_env(vec_env(), labeler, GOAL, schedule, "ppo", device="cpu")
        env.reset()
        for _ in range(100):  # 200 env steps: 5 rounds drawn while no answer ever comes
            env.step(np.zeros(2, dtype=int))
        # 2 pairs with the hanging workers, 8 in the queue; (near-)identical pairs are answered
        # at once (NaN, no query); every other pair was dropped.
        stats = env.stats
        assert stats.labelled == 0 and env.learner.pairs_in_flight == 10
        assert stats.dropped == 30 - 10 - stats.asked and stats.dropped >= 15
        assert server.count("vision") >= 1
        summary = env.summary()
        assert summary["labeling"] == "async" and summary["pairs_in_flight"] == 10
        assert summary["pairs_dropped"] == stats.dropped
        workers = env.learner.answers.worker.threads
        env.close()  # returns although two requests hang: their daemon threads are abandoned
        assert env.learner.answers.worker.stop.is_set() and len(workers) == 2


def test_async_preference_ppo_against_the_test_server_learns_from_late_labels_and_relabels_rollouts(tmp_path):
    schedule = OnlinePreferenceConfig(pairs_per_round=8, round_every=128, first_round_at=64, budget=40, frame_buffer=512,
                                      labeling="async", queue_size=16,
                                      net=RewardEnsembleConfig(kind="cnn", ensemble_size=1), fit=FitConfig(epochs=1))
    with OpenAITestServer(model="m", latency_ms=30, tie_tolerance=0.001) as server:
        labeler = OpenAIPreferenceLabeler(server.base_url, model="m", store=tmp_path / "labels.sqlite", max_retries=0,
                                          timeout_s=10)
        env, callbacks = build_preference_env(vec_env(), labeler, GOAL, schedule, "ppo", device="cpu")
        relabel = next(c for c in callbacks if isinstance(c, PPORolloutRelabelCallback))
        model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
        model.learn(1024, callback=callbacks)
        env.close()
    stats = env.stats
    assert stats.asked + env.learner.pairs_in_flight == 40 and stats.asked >= 16  # no drops: the queue keeps up
    assert stats.fits >= 1 and relabel.relabels >= 1
    assert stats.lag_steps_max > 0 and env.summary()["label_lag_steps_mean"] > 0
    assert sum(LabelStore(tmp_path / "labels.sqlite").counts().values()) == labeler.stats.asked > 0


def test_async_checkpoint_keeps_answered_pairs_and_resamples_the_pairs_in_flight(tmp_path):
    class HoldSome(ShuffledAnswers):
        """Answers every pair but the last 5 of each round."""

        def poll(self):
            held = sorted(self.waiting)[-5:]
            ids = np.array([i for i in self.waiting if i not in held][:50], dtype=np.int64)
            if not len(ids):
                return None
            returns = np.array([self.waiting.pop(int(i)) for i in ids])
            return AnsweredPairs(ids, (returns[:, 0] > returns[:, 1]).astype(np.float32))

    learner = make_learner(HoldSome(), budget=100)
    steps = list(synthetic_steps(15))
    for vector_step, (states, rewards, ends) in enumerate(steps, start=1):
        learner.add_step(states, None, rewards, ends, ends)
        learner.update(vector_step * 2)
    assert learner.pairs_in_flight == 5 and learner.stats.asked == 15
    state = learner.state_dict()
    # Answered pairs are kept; the 5 in flight are not, and the schedule goes on (rounds overlap).
    assert len(state["pairs"]["labels"]) == 15 and state["resample"] == 5 and state["next_round_at"] == 40

    restored = make_learner(HoldSome(), seed=1, budget=100)
    restored.load_state_dict(state)
    assert restored.budget_left == 85 and restored.pairs_in_flight == 0
    for vector_step, (states, rewards, ends) in enumerate(synthetic_steps(10, seed=1), start=16):
        restored.add_step(states, None, rewards, ends, ends)
        restored.update(vector_step * 2)
    # The first round after the resume drew its 20 pairs plus the 5 to re-sample.
    assert restored.stats.asked + restored.pairs_in_flight == 15 + 25 and restored.resample == 0


def test_config_rejects_a_queue_of_no_pairs_and_async_distillation_without_a_net():
    for value in (0, -3):
        with pytest.raises(ConfigError, match="preference: queue_size must be > 0"):
            build_dataclass(OnlinePreferenceConfig, {"queue_size": value}, "cfg.yaml", prefix="preference.")
        with pytest.raises(ConfigError, match="reward: queue_size must be > 0"):
            build_dataclass(DistillConfig, {"queue_size": value, "distill": True}, "cfg.yaml", prefix="reward.")
    with pytest.raises(ConfigError, match="labeling: async needs distill: true"):
        build_dataclass(DistillConfig, {"labeling": "async"}, "cfg.yaml", prefix="reward.")
    with pytest.raises(ConfigError, match="max_consecutive_failures"):
        build_dataclass(OnlinePreferenceConfig, {"max_consecutive_failures": -1}, "cfg.yaml", prefix="preference.")
    with pytest.raises(ConfigError, match="labeling"):
        build_dataclass(OnlinePreferenceConfig, {"labeling": "later"}, "cfg.yaml", prefix="preference.")


def test_async_with_the_scripted_teacher_is_allowed_and_labels_every_pair():
    schedule = OnlinePreferenceConfig(pairs_per_round=10, round_every=40, first_round_at=20, budget=30, frame_buffer=200,
                                      labeling="async", net=RewardEnsembleConfig(kind="mlp", ensemble_size=1),
                                      fit=FitConfig(epochs=1))
    venv = DummyVecEnv([lambda: FrameInInfo(Monitor(gym.make("vlmrl/CartPoleFixedLength-v1", episode_length=30)),
                                            capture_frames=False)] * 2)
    env, callbacks = build_preference_env(venv, OracleTeacher(), GOAL, schedule, "ppo", device="cpu")
    assert any(isinstance(c, PPORolloutRelabelCallback) for c in callbacks)
    env.reset()
    # The teacher answers on a worker thread: step until its answers are in (bounded in time, not
    # in steps, so a busy machine slows the test instead of failing it).
    deadline = time.monotonic() + 60
    while env.stats.asked < 30 and time.monotonic() < deadline:
        env.step(np.zeros(2, dtype=int))
    assert env.stats.asked == 30 and env.stats.fits >= 1
    env.close()


# -- per-frame labels ----------------------------------------------------------------------------


class GrayEnv(gym.Env):
    """Renders uniform gray frames whose level changes every step (an id to check labels by)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, offset=0, render_mode="rgb_array"):
        self.offset, self.render_mode, self.t = offset, render_mode, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 1.0, False, self.t >= 50, {}

    def render(self):
        return np.full((48, 48, 3), (self.offset + 7 * self.t) % 256, dtype=np.uint8)


class Brightness:
    needs_frames = True

    def label(self, frames, true_rewards=None):
        return frames.reshape(len(frames), -1).mean(axis=1).astype(np.float32)


def test_async_frame_labels_attach_to_their_frames_and_the_net_rewards_every_step():
    net = RewardEnsembleConfig(kind="cnn", input_size=48, ensemble_size=1)
    schedule = DistillConfig(distill=True, labeling="async", queue_size=16, label_every=2, warmup_labels=32,
                             retrain_every=64, buffer_size=1000, net=net, fit=FitConfig(epochs=1, batch_size=32))
    venv = DummyVecEnv([lambda i=i: FrameInInfo(Monitor(GrayEnv(offset=40 * i)), capture_frames=True) for i in range(4)])
    model = RewardModel(net.net_config(), ensemble_size=1, device="cpu", seed=0)
    env = LabelledRewardVecEnv(venv, Brightness(), model, schedule, seed=0)
    assert isinstance(env.background, BackgroundFrameLabels)
    env.reset()
    for _ in range(200):
        _, rewards, _, infos = env.step(np.zeros(4, dtype=int))
        assert all("net_reward" in info for info in infos)
    stats = env.stats
    assert stats.net_frames == 800 and stats.net_fits >= 2 and stats.labelled_frames > 32
    frames, labels = env.buffer.contents()
    # Uniform frames survive downsampling exactly: each stored label is its own frame's brightness.
    np.testing.assert_allclose(labels, frames.reshape(len(frames), -1).mean(axis=1), rtol=1e-6)
    summary = env.summary()
    assert summary["labeling"] == "async" and summary["frames_dropped"] == stats.frames_dropped
    assert stats.labelled_frames + stats.frames_dropped + env.frames_in_flight == env.submitted_frames
    env.close()
    assert env.background.worker.stop.is_set()


def test_vlmrl_train_with_an_async_local_vlm_labels_in_a_worker_process(tmp_path):
    """``labeler.kind: hf`` + ``labeling: async``: the tiny Qwen2-VL (scripted to answer "0") loads
    in the worker process only; the training process records its answers in the run's store."""
    import yaml

    from tiny_vlm import build_tiny_qwen2_vl
    from vlmrl.cli import main
    from vlmrl.config import load_config

    model = build_tiny_qwen2_vl(tmp_path / "tiny-qwen2-vl", scripted_reply="0")
    config = yaml.safe_load((REPO / "configs/cartpole_vlm_pref.yaml").read_text())
    config["labeler"] = {"kind": "hf", "model": str(model), "device": "cpu", "two_stage": False, "batch_size": 4,
                         "max_new_tokens": 4}
    config["env"].update(n_envs=2, render_width=48, render_height=48)
    config["preference"].update(labeling="async", pairs_per_round=6, round_every=128, first_round_at=64, budget=18,
                                queue_size=50, net={"kind": "cnn", "input_size": 48, "ensemble_size": 1}, fit={"epochs": 1})
    config["agent"].update(total_timesteps=1536)
    config["agent"]["hyperparams"].update(n_steps=64, batch_size=64, n_epochs=1)
    config["run"].update(root=str(tmp_path / "runs"), eval_episodes=1, video_episodes=0, torch_threads=1)
    path = tmp_path / "hf_async.yaml"
    path.write_text(yaml.safe_dump(config))
    assert load_config(path).preference.labeling == "async"

    assert main(["train", str(path), "--no-progress"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = __import__("json").loads((run_dir / "summary.json").read_text())
    assert summary["labeling"] == "async" and summary["pairs_labelled"] > 0
    rows = list(LabelStore(run_dir / "labels.sqlite").iter_rows())
    assert rows and all(row.answer == "0" and row.label == 1.0 for row in rows)


def test_a_worker_process_whose_model_cannot_load_stops_at_start_up_with_the_labelers_message(tmp_path):
    from vlmrl.errors import UserError
    from vlmrl.reward_labelers.preference import StoreLedger
    from vlmrl.reward_labelers.vlm_config import HFConfig

    config = HFConfig(model=str(tmp_path / "no-such-model"), device="cpu")
    ledger = StoreLedger(config.store_key_config(), tmp_path / "labels.sqlite")
    with pytest.raises(UserError, match="no-such-model"):
        ProcessPairAnswers(config, ledger, GOAL, queue_size=10)


def test_the_async_bench_runs_every_mode_against_the_test_server():
    from vlmrl.bench_async import format_table, run_async_bench

    rows = run_async_bench(latencies_ms=[20.0], steps=512, n_envs=2, frame_size=48, pairs_per_round=6, round_every=128,
                           queue_size=4, max_concurrency=2)
    assert [(row["mode"], row["latency_ms"]) for row in rows] == [("teacher", None), ("sync", 20.0), ("async", 20.0)]
    assert all(row["env_steps"] >= 512 and row["env_steps_per_s"] > 0 for row in rows)
    assert rows[0]["pairs_answered"] > 0 and rows[1]["pairs_answered"] > 0 and rows[1]["pairs_dropped"] == 0
    assert rows[2]["vs_sync"] is not None and rows[2]["vs_teacher"] is not None
    assert "env_steps_per_s" in format_table(rows).splitlines()[0]

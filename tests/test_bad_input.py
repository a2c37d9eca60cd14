"""Bad input to ``collect``, ``relabel`` and offline ``train``, made with real files: every case
exits with 2 and one message naming the file, episode or field (no traceback unless ``--debug``
or ``VLMRL_DEBUG=1``), is caught before any labelling, and leaves nothing behind. Also: two
relabels of one output, a killed relabel's stale lock, and 0- and 1-step episodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spy_labeler import LABEL_CALLS  # registers `kind: spy`
from test_locks import read_only
from vlmrl.cli import main
from vlmrl.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# The labeler plugin tests/spy_labeler.py (`kind: spy`): the true reward, a note of every call in
# LABEL_CALLS (to prove bad input is caught before any labelling) and an optional delay per call.
SPY_PLUGIN = "spy_labeler"


@pytest.fixture()
def root(tmp_path, monkeypatch):
    path = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    monkeypatch.delenv("VLMRL_DEBUG", raising=False)
    LABEL_CALLS.clear()
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def collect(dataset_id: str, episodes: int = 2, steps: int = 6, size: int = 16) -> None:
    assert main(["collect", "pendulum", "--episodes", str(episodes), "--max-steps", str(steps),
                 "--out", dataset_id, "--render-size", str(size)]) == 0


def record_with_data_collector(dataset_id: str, episodes: int = 2, steps: int = 5) -> None:
    """A dataset as a new user makes it: minari's own DataCollector, rendered pixels in a dict obs."""
    import gymnasium as gym
    from minari import DataCollector

    env = gym.make("Pendulum-v1", render_mode="rgb_array")
    env.unwrapped.screen_dim = 16
    collector = DataCollector(gym.wrappers.AddRenderObservation(env, render_only=False))
    collector.reset(seed=1)
    for episode in range(episodes):
        for _ in range(steps):
            collector.step(collector.action_space.sample())
        collector.reset(seed=2 + episode)
    with pytest.warns(UserWarning):  # minari: no eval_env given
        collector.create_dataset(dataset_id, algorithm_name="random", author="t", author_email="t@t",
                                 code_permalink="tests/test_bad_input.py", description="bad-input tests")
    collector.close()


def empty_episode(hdf5: Path, episode: int) -> None:
    """Cut one episode of a real Minari HDF5 file down to 0 steps (its reset observation only)."""
    import h5py

    def cut(group: h5py.Group, rows_of) -> None:
        """Keep the first ``rows_of(key)`` rows of each member of ``group`` (all through a subgroup)."""
        for key in list(group):
            rows = rows_of(key)
            if isinstance(group[key], h5py.Group):
                cut(group[key], lambda _: rows)
            else:
                data = group[key][:rows]
                del group[key]
                group.create_dataset(key, data=data)

    with h5py.File(hdf5, "a") as file:
        group = file[f"episode_{episode}"]
        cut(group, lambda key: 1 if key in ("observations", "infos") else 0)
        group.attrs["total_steps"] = 0


def leftovers(root: Path) -> list[str]:
    """Work, staging and lock files under the datasets root (there should be none)."""
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".relabel-", ".staging-", ".collect-")))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def assert_one_message(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("vlmrl ") and ": error: " in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def relabel_argv(source: str, config: Path, out: str, *extra: str) -> list[str]:
    return ["relabel", source, "--labeler", str(config), "--out", out, "--no-progress", *extra]


# -- relabel: unreadable and empty datasets ------------------------------------------------------


def test_truncated_hdf5_is_named_and_nothing_is_written(root, tmp_path, capsys):
    record_with_data_collector("pendulum/pixels-v0")
    hdf5 = root / "pendulum/pixels-v0/data/main_data.hdf5"
    os.truncate(hdf5, hdf5.stat().st_size // 3)
    config = write(tmp_path / "spy.yaml", "labeler: {kind: spy}\n")
    code, err = run_cli(relabel_argv("pendulum/pixels-v0", config, "pendulum/out-v0"), capsys)
    assert_one_message(code, err, f"file {hdf5}", "truncated or corrupt", "truncated file")
    assert not (root / "pendulum/out-v0").exists() and leftovers(root) == [] and LABEL_CALLS == []


def test_corrupt_metadata_json_is_named_with_its_line(root, tmp_path, capsys):
    record_with_data_collector("pendulum/pixels-v0")
    metadata = root / "pendulum/pixels-v0/data/metadata.json"
    metadata.write_text(metadata.read_text()[:200])  # cut mid-way, as by a full disk
    config = write(tmp_path / "spy.yaml", "labeler: {kind: spy}\n")
    code, err = run_cli(relabel_argv("pendulum/pixels-v0", config, "pendulum/out-v0"), capsys)
    assert_one_message(code, err, f"file {metadata}: corrupt JSON at line 1")
    assert leftovers(root) == []

    metadata.write_text(json.dumps({"total_episodes": "two"}))
    code, err = run_cli(relabel_argv("pendulum/pixels-v0", config, "pendulum/out-v0"), capsys)
    assert_one_message(code, err, "metadata.json, field 'total_episodes': expected a count >= 0, got 'two'")


def test_missing_episode_in_hdf5_is_named(root, tmp_path, capsys):
    record_with_data_collector("pendulum/pixels-v0")
    metadata = root / "pendulum/pixels-v0/data/metadata.json"
    meta = json.loads(metadata.read_text())
    metadata.write_text(json.dumps({**meta, "total_episodes": 3}))
    config = write(tmp_path / "spy.yaml", "labeler: {kind: spy}\n")
    code, err = run_cli(relabel_argv("pendulum/pixels-v0", config, "pendulum/out-v0"), capsys)
    assert_one_message(code, err, "metadata.json says 3 episodes but episode 2 is missing")


def test_empty_npz_is_refused(root, tmp_path, capsys):
    np.savez(tmp_path / "empty.npz", observations=np.zeros((0, 3), np.float32), actions=np.zeros((0, 1), np.float32),
             rewards=np.zeros(0, np.float32), terminals=np.zeros(0, bool))
    config = write(tmp_path / "spy.yaml", "labeler: {kind: spy}\n")
    code, err = run_cli(relabel_argv(str(tmp_path / "empty.npz"), config, "pendulum/out-v0"), capsys)
    assert_one_message(code, err, f"{tmp_path / 'empty.npz'}: field 'rewards' has 0 rows")
    assert leftovers(root) == []


def test_truncated_npz_is_refused(root, tmp_path, capsys):
    path = tmp_path / "cut.npz"
    np.savez(path, observations=np.zeros((10, 3), np.float32), actions=np.zeros((10, 1), np.float32),
             rewards=np.zeros(10, np.float32), terminals=np.zeros(10, bool))
    os.truncate(path, path.stat().st_size // 2)
    config = write(tmp_path / "spy.yaml", "labeler: {kind: spy}\n")
    code, err = run_cli(relabel_argv(str(path), config, "pendulum/out-v0"), capsys)
    assert_one_message(code, err, f"{path} is not a readable .npz file")


def test_zero_step_episode_is_refused_before_labelling_with_nothing_left(root, tmp_path, capsys):
    record_with_data_collector("pendulum/pixels-v0", episodes=3)
    empty_episode(root / "pendulum/pixels-v0/data/main_data.hdf5", 1)
    config = write(tmp_path / "spy.yaml", "labeler: {kind: spy}\nchunk_size: 2\n")
    code, err = run_cli(relabel_argv("pendulum/pixels-v0", config, "pendulum/out-v0"), capsys)
    assert_one_message(code, err, "dataset 'pendulum/pixels-v0', episode 1: 0 steps", "at least 1 step")
    assert LABEL_CALLS == [] and leftovers(root) == [] and not (root / "pendulum/out-v0").exists()


# -- relabel: outputs that cannot be written -------------------------------------------------------


def test_output_under_a_file_is_refused_before_labelling(root, tmp_path, capsys):
    collect("pendulum/random-v0")
    (root / "blocked").write_text("a file where the namespace folder should be")
    config = write(tmp_path / "spy.yaml", "labeler: {kind: spy}\n")
    code, err = run_cli(relabel_argv("pendulum/random-v0", config, "blocked/out-v0"), capsys)
    assert_one_message(code, err, "cannot write dataset 'blocked/out-v0'", f"{root / 'blocked'} is a file, not a folder")
    assert LABEL_CALLS == [] and leftovers(root) == []


def test_read_only_output_folder_is_refused_before_labelling(root, tmp_path, capsys):
    """The namespace folder of --out is read-only (chattr +i as root, chmod otherwise): the run
    stops before the first frame is labelled, not at publish time."""
    collect("pendulum/random-v0")
    config = write(tmp_path / "spy.yaml", "labeler: {kind: spy}\n")
    with read_only(root / "pendulum"):
        code, err = run_cli(relabel_argv("pendulum/random-v0", config, "pendulum/out-v0"), capsys)
    assert_one_message(code, err, "cannot write dataset 'pendulum/out-v0'", str(root / "pendulum"))
    assert LABEL_CALLS == [] and leftovers(root) == []
    with read_only(root):  # the datasets root itself: no work folder can be made
        code, err = run_cli(relabel_argv("pendulum/random-v0", config, "other/out-v0"), capsys)
    assert_one_message(code, err, "cannot write dataset 'other/out-v0' (staging folder)", str(root))
    assert LABEL_CALLS == [] and leftovers(root) == []


# -- relabel: labeler config and weights ------------------------------------------------------------


def test_mistyped_clip_checkpoint_leaves_no_work_folder(root, tmp_path, capsys):
    collect("pendulum/random-v0")
    config = write(tmp_path / "clip.yaml", (
        f"labeler: {{kind: clip, device: cpu, model: ViT-B-32, pretrained: {tmp_path / 'vit-b-32.safetnesors'}, "
        "goal_prompts: [pendulum upright], baseline_prompts: [pendulum]}\n"))
    code, err = run_cli(relabel_argv("pendulum/random-v0", config, "pendulum/clip-v0"), capsys)
    assert_one_message(code, err, f"checkpoint file not found: {tmp_path / 'vit-b-32.safetnesors'}")
    assert leftovers(root) == []


def test_missing_reward_model_weights_are_named(root, tmp_path, capsys):
    from vlmrl.reward_nets import RewardModel, RewardNetConfig

    collect("pendulum/random-v0")
    RewardModel(RewardNetConfig(kind="cnn", input_size=48), ensemble_size=1, device="cpu").save(tmp_path / "m")
    (tmp_path / "m.safetensors").unlink()
    config = write(tmp_path / "net.yaml", f"labeler: {{kind: reward_model, device: cpu, path: {tmp_path / 'm'}}}\n")
    code, err = run_cli(relabel_argv("pendulum/random-v0", config, "pendulum/net-v0"), capsys)
    assert_one_message(code, err, f"labeler.path: cannot read reward model file {tmp_path / 'm.safetensors'}")
    assert leftovers(root) == []


@pytest.mark.parametrize("content", [b"", b"this is not a database, it is a text file\n"])
def test_label_store_that_is_not_sqlite_is_refused_and_untouched(root, tmp_path, capsys, content):
    collect("pendulum/random-v0")
    store = tmp_path / "labels.sqlite"
    config = write(tmp_path / "pref.yaml", (
        "labeler: {kind: teacher}\n"
        f"preference: {{goal: swing up, label_store: {store}, budget: 8, pairs_per_round: 4, net: {{kind: mlp}}}}\n"))
    if content:
        store.write_bytes(content)
        code, err = run_cli(relabel_argv("pendulum/random-v0", config, "pendulum/pref-v0"), capsys)
        assert_one_message(code, err, f"preference.label_store: {store} is not a SQLite label store")
        assert store.read_bytes() == content and leftovers(root) == []
    else:  # a folder where the store file should be
        store.mkdir()
        code, err = run_cli(relabel_argv("pendulum/random-v0", config, "pendulum/pref-v0"), capsys)
        assert_one_message(code, err, f"preference.label_store: {store} is a folder")


def test_bad_dataset_for_a_pairwise_relabel_leaves_no_label_store(root, tmp_path, capsys):
    record_with_data_collector("pendulum/pixels-v0", episodes=2)
    empty_episode(root / "pendulum/pixels-v0/data/main_data.hdf5", 0)
    store = tmp_path / "stores" / "labels.sqlite"
    config = write(tmp_path / "pref.yaml", (
        "labeler: {kind: teacher}\n"
        f"preference: {{goal: swing up, label_store: {store}, budget: 8, pairs_per_round: 4, net: {{kind: mlp}}}}\n"))
    code, err = run_cli(relabel_argv("pendulum/pixels-v0", config, "pendulum/pref-v0"), capsys)
    assert_one_message(code, err, "episode 0: 0 steps")
    assert not store.exists() and not store.parent.exists() and leftovers(root) == []


def test_unreachable_vlm_endpoint_is_refused_before_asking_with_no_label_store(root, tmp_path, capsys, monkeypatch):
    import socket

    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    with socket.socket() as probe:  # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    collect("pendulum/random-v0")
    store = tmp_path / "stores" / "labels.sqlite"
    config = write(tmp_path / "vlm.yaml", (
        f"labeler: {{kind: openai, device: cpu, base_url: 'http://127.0.0.1:{port}/v1', model: m, max_retries: 0}}\n"
        f"preference: {{goal: swing up, label_store: {store}, budget: 8, pairs_per_round: 4, net: {{kind: mlp}}}}\n"))
    code, err = run_cli(relabel_argv("pendulum/random-v0", config, "pendulum/vlm-v0"), capsys)
    assert_one_message(code, err, f"cannot reach the VLM endpoint at http://127.0.0.1:{port}/v1")
    assert not store.parent.exists() and leftovers(root) == []


# -- --debug / VLMRL_DEBUG -------------------------------------------------------------------------


def test_debug_flag_and_variable_show_the_traceback(root, tmp_path, monkeypatch):
    config = write(tmp_path / "spy.yaml", "labeler: {kind: spy}\n")
    argv = relabel_argv("pendulum/missing-v0", config, "pendulum/out-v0")
    with pytest.raises(UserError, match="not found"):
        main([*argv, "--debug"])
    with pytest.raises(UserError, match="not found"):
        main(["--debug", *argv])
    monkeypatch.setenv("VLMRL_DEBUG", "1")
    with pytest.raises(UserError, match="not found"):
        main(argv)
    monkeypatch.setenv("VLMRL_DEBUG", "0")
    assert main(argv) == 2


def test_vlmrl_debug_in_a_real_process_prints_the_traceback(root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MINARI_DATASETS_PATH": str(root)}
    argv = [sys.executable, "-m", "vlmrl.cli", "collect", "pendulum", "--episodes", "1", "--max-steps", "0",
            "--out", "pendulum/x-v0"]
    quiet = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert quiet.returncode == 2 and quiet.stderr.strip().splitlines() == [
        "vlmrl collect: error: --max-steps must be >= 1 (an episode needs at least one step), got 0"]
    loud = subprocess.run(argv, cwd=REPO, env={**env, "VLMRL_DEBUG": "1"}, capture_output=True, text=True)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "UserError: --max-steps" in loud.stderr


# -- two relabels of one output; killed and interrupted relabels ---------------------------------


def relabel_process(root: Path, tmp_path: Path, out_id: str, delay: float = 0.25) -> subprocess.Popen:
    """A relabel in its own process, labelling with the spy plugin slowed to ``delay`` s a call."""
    config = write(tmp_path / "slow.yaml", f"labeler: {{kind: spy, delay: {delay}}}\nchunk_size: 2\n")
    env = {**os.environ, "MINARI_DATASETS_PATH": str(root), "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}",
           "VLMRL_LABELERS": SPY_PLUGIN}
    env.pop("VLMRL_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "vlmrl.cli", *relabel_argv("pendulum/random-v0", config, out_id)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_chunks(work: Path, process: subprocess.Popen, n: int = 2) -> None:
    deadline = time.time() + 120
    while len(list(work.glob("chunks/chunk_*.npy"))) < n:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.05)


def test_second_relabel_of_the_same_output_exits_at_once_and_a_killed_ones_lock_is_taken_over(root, tmp_path):
    collect("pendulum/random-v0", episodes=3, steps=8)  # 27 frames: 14 chunks of 0.25 s
    work = root / ".relabel-pendulum__slow-v0"
    first = relabel_process(root, tmp_path, "pendulum/slow-v0")
    wait_for_chunks(work, first)

    second = relabel_process(root, tmp_path, "pendulum/slow-v0")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and "Traceback" not in err
    assert f"another relabel (pid {first.pid}) is writing pendulum/slow-v0" in err
    assert first.poll() is None  # the first one is not disturbed

    first.send_signal(signal.SIGKILL)
    first.wait()
    assert json.loads((work / "lock").read_text())["pid"] == first.pid  # a stale lock, left behind
    saved = len(list(work.glob("chunks/chunk_*.npy")))

    third = relabel_process(root, tmp_path, "pendulum/slow-v0")  # same config: it resumes
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert f"from relabel pid {first.pid}, which is no longer running" in err
    assert f"resuming from {work} ({saved} chunk(s) already labelled)" in err
    assert leftovers(root) == []
    from vlmrl.datasets import open_dataset

    source, relabelled = open_dataset("pendulum/random-v0"), open_dataset("pendulum/slow-v0")
    for i in range(3):
        np.testing.assert_allclose(relabelled.episode(i).rewards, source.true_rewards(source.episode(i)), rtol=1e-6)


def test_interrupted_relabel_keeps_its_work_and_says_how_to_resume_or_discard(root, tmp_path):
    collect("pendulum/random-v0", episodes=3, steps=8)
    work = root / ".relabel-pendulum__slow-v0"
    process = relabel_process(root, tmp_path, "pendulum/slow-v0")
    wait_for_chunks(work, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert f"the work done so far is kept in {work}: run the same command again to resume, or delete that folder" in err
    assert any(work.glob("chunks/chunk_*.npy")) and not (work / "lock").exists()


# -- collect -----------------------------------------------------------------------------------------


def test_collect_refuses_bad_values_and_unwritable_outputs_before_rendering(root, tmp_path, capsys):
    code, err = run_cli(["collect", "pendulum", "--episodes", "2", "--max-steps", "0", "--out", "blocked/out-v0"], capsys)
    assert_one_message(code, err, "--max-steps must be >= 1")
    code, err = run_cli(["collect", "pendulum", "--episodes", "2", "--render-size", "0", "--out", "blocked/out-v0"], capsys)
    assert_one_message(code, err, "--render-size must be > 0")
    root.mkdir(parents=True)
    (root / "blocked").write_text("")
    code, err = run_cli(["collect", "pendulum", "--episodes", "2", "--out", "blocked/out-v0"], capsys)
    assert_one_message(code, err, f"cannot write dataset 'blocked/out-v0' to {root / 'blocked' / 'out-v0'}: {root / 'blocked'} is a file")
    with read_only(root):
        code, err = run_cli(["collect", "pendulum", "--episodes", "2", "--out", "other/out-v0"], capsys)
    assert_one_message(code, err, "cannot write dataset 'other/out-v0' (staging folder)")
    assert leftovers(root) == [] and sorted(p.name for p in root.iterdir()) == ["blocked"]


def test_collect_refuses_a_corrupt_policy_file(root, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.zip").write_bytes(b"PK\x03\x04 truncated")
    code, err = run_cli(["collect", "pendulum", "--policy", str(tmp_path / "run"), "--episodes", "1",
                         "--out", "blocked/out-v0"], capsys)
    assert_one_message(code, err, f"--policy {tmp_path / 'run' / 'model.zip'}: not a readable SB3 model file")
    assert leftovers(root) == []


# -- one-step and zero-step episodes through collect, relabel and offline training ----------------


def test_one_step_episodes_are_collected_relabelled_and_exported(root, tmp_path):
    from vlmrl.datasets import open_dataset, to_mdp_dataset

    collect("pendulum/one-v0", episodes=3, steps=1)
    source = open_dataset("pendulum/one-v0")
    assert [source.episode(i).num_transitions for i in range(3)] == [1, 1, 1]
    for reward_frame in ("current", "next"):
        config = write(tmp_path / "oracle.yaml", f"labeler: {{kind: oracle}}\nreward_frame: {reward_frame}\nchunk_size: 4\n")
        out = f"pendulum/one-{reward_frame}-v0"
        assert main(relabel_argv("pendulum/one-v0", config, out)) == 0
        relabelled = open_dataset(out)
        for i in range(3):
            np.testing.assert_allclose(relabelled.episode(i).rewards, source.true_rewards(source.episode(i)), rtol=1e-6)
    pref = write(tmp_path / "pref.yaml", (
        "labeler: {kind: teacher}\n"
        f"preference: {{goal: swing up, label_store: {tmp_path / 'l.sqlite'}, budget: 6, pairs_per_round: 3, "
        "net: {kind: mlp, ensemble_size: 1}, fit: {epochs: 2}}\n"))
    assert main(relabel_argv("pendulum/one-v0", pref, "pendulum/one-pref-v0")) == 0
    assert [open_dataset("pendulum/one-pref-v0").episode(i).num_transitions for i in range(3)] == [1, 1, 1]
    # d3rlpy drops the last step of a timed-out episode; the final observation, appended, keeps it.
    mdp = to_mdp_dataset(source)
    assert mdp.size() == 3 and mdp.transition_count == 3
    transition = mdp.sample_transition()
    assert not transition.terminal  # truncated by --max-steps: bootstrapped from the final observation
    for i, episode in enumerate(mdp.episodes):
        np.testing.assert_allclose(episode.observations[1], source.episode(i).observations[1])


def test_a_single_frame_is_too_few_for_preferences(root, tmp_path, capsys):
    collect("pendulum/one-v0", episodes=1, steps=1)
    config = write(tmp_path / "pref.yaml", (
        "labeler: {kind: teacher}\n"
        f"preference: {{goal: swing up, label_store: {tmp_path / 'l.sqlite'}, budget: 4, pairs_per_round: 2, "
        "net: {kind: mlp}}\n"))
    code, err = run_cli(relabel_argv("pendulum/one-v0", config, "pendulum/pref-v0"), capsys)
    assert_one_message(code, err, "fewer than two frames to compare")
    assert leftovers(root) == [] and not (tmp_path / "l.sqlite").exists()


def test_zero_step_episodes_are_skipped_by_offline_export(root):
    from vlmrl.datasets import open_dataset, to_mdp_dataset, validate_dataset

    record_with_data_collector("pendulum/pixels-v0", episodes=3, steps=4)
    empty_episode(root / "pendulum/pixels-v0/data/main_data.hdf5", 1)
    dataset = open_dataset("pendulum/pixels-v0")
    validate_dataset(dataset, None, need_frames=False, min_steps=0)
    mdp = to_mdp_dataset(dataset, observation_key="state")
    assert mdp.size() == 2 and mdp.transition_count == 8  # 4 steps each (+ the final observation's padding row)


# -- offline train -----------------------------------------------------------------------------------


def offline_config(tmp_path: Path, dataset: str, run_root: Path) -> Path:
    return write(tmp_path / "offline.yaml", (
        f"task: pendulum\ndataset: {{id: {dataset}}}\n"
        "agent: {algo: iql, n_steps: 10, n_steps_per_epoch: 10, batch_size: 8, device: 'cpu:0'}\n"
        f"eval: {{episodes: 1, env_id: Pendulum-v1}}\nrun: {{seeds: [0], baselines: [], root: {run_root}, name: t}}\n"))


def test_offline_train_refuses_unreadable_and_empty_datasets_without_a_run_dir(root, tmp_path, capsys):
    collect("pendulum/random-v0")
    hdf5 = root / "pendulum/random-v0/data/main_data.hdf5"
    os.truncate(hdf5, 1000)
    runs = tmp_path / "runs"
    code, err = run_cli(["train", str(offline_config(tmp_path, "pendulum/random-v0", runs))], capsys)
    assert_one_message(code, err, f"file {hdf5}", "truncated or corrupt")
    np.savez(tmp_path / "empty.npz", observations=np.zeros((0, 3), np.float32), actions=np.zeros((0, 1), np.float32),
             rewards=np.zeros(0, np.float32), terminals=np.zeros(0, bool))
    code, err = run_cli(["train", str(offline_config(tmp_path, str(tmp_path / "empty.npz"), runs))], capsys)
    assert_one_message(code, err, "field 'rewards' has 0 rows")
    assert not runs.exists()


def test_offline_train_refuses_an_unwritable_or_busy_run_directory(root, tmp_path, capsys):
    collect("pendulum/random-v0")
    (tmp_path / "runs").write_text("a file")
    code, err = run_cli(["train", str(offline_config(tmp_path, "pendulum/random-v0", tmp_path / "runs"))], capsys)
    assert_one_message(code, err, "cannot write the offline run directory", "is a file, not a folder")

    run_dir = tmp_path / "runs2" / "t"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(  # another `vlmrl train` writing the same run directory
        [sys.executable, "-c", "import sys, time; from vlmrl.runs import run_dir_lock; "
                               "lock = run_dir_lock(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
         str(run_dir)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = run_cli(["train", str(offline_config(tmp_path, "pendulum/random-v0", tmp_path / "runs2"))], capsys)
        assert_one_message(code, err, f"another train (pid {holder.pid}) is writing {run_dir}")
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing of ours written
    finally:
        holder.kill()
        holder.wait()

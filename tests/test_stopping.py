"""SIGTERM and SIGINT stop real processes cleanly: the ``vlmrl.stopping`` helper, the SDL handler
that used to swallow SIGTERM, and ``vlmrl train`` writing a checkpoint that ``--resume`` continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmrl.cli import main
from vlmrl.runs import list_checkpoints, read_checkpoint_state

from helpers import train_cli_args
from openai_test_server import OpenAITestServer

REPO = Path(__file__).resolve().parents[1]
VLMRL = [sys.executable, "-m", "vlmrl.cli"]

FLAG_WAITER = """
import time
from vlmrl.stopping import StopRequest
with StopRequest() as stop:
    print("ready", flush=True)
    while not stop.requested:
        time.sleep(0.01)
    print("requested", stop.name, stop.exit_code, flush=True)
    time.sleep(60)
"""

# Renders a Gymnasium classic-control env: its render() calls pygame.init(), i.e. SDL_Init.
PYGAME_RENDERER = """
import sys, time
if sys.argv[1] == "with-vlmrl":
    import vlmrl.stopping  # noqa: F401
import gymnasium as gym
env = gym.make("CartPole-v1", render_mode="rgb_array")
env.reset(seed=0)
env.render()
print("rendered", flush=True)
time.sleep(60)
"""


def python(code: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env or {**os.environ, "PYTHONPATH": str(REPO / "tests")})


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_first_signal_sets_the_flag_and_a_second_one_stops_at_once(signum, code):
    process = python(FLAG_WAITER)
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signum)
        assert process.stdout.readline().split() == ["requested", signal.Signals(signum).name, str(code)]
        process.send_signal(signum)
        process.wait(timeout=30)
        assert process.returncode == -signum
        assert "send it again to stop at once" in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def test_sdl_swallowed_sigterm_until_vlmrl_stopping_told_it_not_to():
    env = {key: value for key, value in os.environ.items() if key != "SDL_NO_SIGNAL_HANDLERS"}
    env.update(SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    # The culprit: after pygame.init() SIGTERM is turned into an SDL quit event nobody reads.
    plain = python(PYGAME_RENDERER, "plain", env=env)
    fixed = python(PYGAME_RENDERER, "with-vlmrl", env={**env, "PYTHONPATH": str(REPO)})
    try:
        for process in (plain, fixed):
            assert process.stdout.readline().strip() == "rendered"
            process.send_signal(signal.SIGTERM)
        fixed.wait(timeout=30)
        assert fixed.returncode == -signal.SIGTERM
        with pytest.raises(subprocess.TimeoutExpired):
            plain.wait(timeout=2)
    finally:
        for process in (plain, fixed):
            process.kill()
            process.wait()


def train_process(config: str, root: Path, *settings: str) -> subprocess.Popen:
    args = [*VLMRL, *train_cli_args(config, [f"run.root={root}", *settings], "--no-video")]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out waiting for the run to get there"
        time.sleep(0.05)


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


VLM_SETTINGS = (
    "labeler.model=test-vlm", "labeler.max_concurrency=2", "labeler.max_retries=0", "labeler.timeout_s=600",
    "env.n_envs=2", "env.render_width=64", "env.render_height=64", "preference.first_round_at=64",
    "preference.round_every=256", "preference.pairs_per_round=16", "preference.fit.epochs=1",
    "preference.net.ensemble_size=1", "agent.total_timesteps=512", "agent.hyperparams.n_steps=64",
    "agent.hyperparams.batch_size=64", "agent.hyperparams.n_epochs=1", "run.eval_episodes=1",
    "run.torch_threads=1", "run.checkpoint_every=100000",
)


def test_sigterm_stops_train_while_a_sync_round_waits_on_a_slow_vlm_and_resume_continues(tmp_path):
    root = tmp_path / "runs"
    # 10 s per request: the round of 16 pairs (2 turns each, 2 at a time) would take 160 s.
    with OpenAITestServer(model="test-vlm", latency_ms=10_000) as server:
        process = train_process("configs/cartpole_vlm_pref.yaml", root, f"labeler.base_url={server.base_url}", *VLM_SETTINGS)
        try:
            wait_until(lambda: server.count() >= 1, process)  # the env step is now waiting for the round
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=60)  # far less than the round: it did not wait for it
        finally:
            process.kill()
        assert process.returncode == 143, err
        run_dir = only_run_dir(root)
        (checkpoint,) = list_checkpoints(run_dir)
        assert f"stopped by SIGTERM after checkpoint {checkpoint}; continue with vlmrl train --resume {run_dir}" in err
        assert "Traceback" not in err
        assert read_checkpoint_state(checkpoint)["num_timesteps"] >= 64

        server.latency_s = 0.0
        assert main(["train", "--resume", str(run_dir), "--no-progress", "--no-video"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] >= 512 and summary["pairs_asked"] > 0  # PPO ends on a whole rollout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_train_on_a_pygame_rendered_env_after_a_checkpoint(tmp_path, signum):
    root = tmp_path / "runs"
    # Gymnasium's own CartPole renders with pygame (SDL) -- the env that used to swallow SIGTERM.
    process = train_process(
        "configs/cartpole_oracle.yaml", root, "env.id=CartPole-v1", "env.n_envs=2", "reward.distill=true",
        "reward.net.input_size=48", "reward.warmup_labels=64", "agent.total_timesteps=1000000",
        "agent.hyperparams.n_steps=64", "agent.hyperparams.batch_size=64", "run.torch_threads=1",
    )
    try:
        wait_until(lambda: root.is_dir() and any(root.glob("*/tb/*")), process)
        time.sleep(1.0)  # into the rollouts
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, err
    run_dir = only_run_dir(root)
    (checkpoint,) = list_checkpoints(run_dir)
    assert f"stopped by {name} after checkpoint {checkpoint}" in err and "Traceback" not in err
    assert (checkpoint / "reward_net.safetensors").is_file() and not (run_dir / "summary.json").exists()

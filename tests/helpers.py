"""Small helpers shared by the test modules: `vlmrl train` argument lists, Python snippets run in a
fresh process, relabel preference configs and CartPole rollouts. Imports are kept light (gymnasium,
numpy and torch load inside the functions that need them), so any test module can use this one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# -- the command line ------------------------------------------------------------------------------


def set_args(settings: Iterable[str]) -> list[str]:
    """``--set KEY=VALUE`` for each setting, as the CLI takes config overrides."""
    return [arg for setting in settings for arg in ("--set", setting)]


def train_cli_args(config: str | Path, overrides: Iterable[str] = (), *flags: str) -> list[str]:
    """The arguments of ``vlmrl train CONFIG --no-progress FLAGS --set OVERRIDE...`` for
    ``vlmrl.cli.main``; a relative ``config`` (``configs/cartpole_oracle.yaml``) is under the repo."""
    return ["train", str(REPO / config), "--no-progress", *flags, *set_args(overrides)]


def run_python(code: str, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -c code args...`` in a fresh interpreter (``kwargs``: ``env``, ``cwd``) and
    assert it exits with 0 (else fail with the end of its stderr); returns the finished process,
    its stdout and stderr as text."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                            **kwargs)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    return result


# -- relabel configs -------------------------------------------------------------------------------


def relabel_preference_yaml(labeler: str, store: str | Path, *, goal: str, budget: int, pairs_per_round: int,
                            net: str, epochs: int = 3, chunk_size: int | None = None) -> str:
    """A pairwise relabel config: ``labeler`` (a YAML flow mapping) and a ``preference`` section
    asking ``budget`` pairs, ``pairs_per_round`` at a time, into the label store ``store``, and
    fitting the reward net ``net`` (a YAML flow mapping) for ``epochs``."""
    head = "" if chunk_size is None else f"chunk_size: {chunk_size}\n"
    return (f"{head}labeler: {labeler}\n"
            "preference:\n"
            f"  goal: {goal}\n"
            f"  label_store: {store}\n"
            f"  budget: {budget}\n"
            f"  pairs_per_round: {pairs_per_round}\n"
            f"  net: {net}\n"
            f"  fit: {{epochs: {epochs}}}\n")


def openai_preference_yaml(store: str | Path, base_url: str, *, max_concurrency: int, pairs_per_round: int) -> str:
    """A pairwise relabel asking the OpenAI-compatible test server (tests/openai_test_server.py)
    at ``base_url`` for 24 pairs whether "the pendulum is bright", in chunks of 8 frames, for a CNN
    reward net on 48-pixel frames."""
    labeler = (f'{{kind: openai, device: cpu, base_url: "{base_url}", model: test-vlm, '
               f"max_concurrency: {max_concurrency}, max_retries: 0, timeout_s: 10}}")
    return relabel_preference_yaml(labeler, store, goal="the pendulum is bright", budget=24,
                                   pairs_per_round=pairs_per_round, net="{kind: cnn, input_size: 48, ensemble_size: 2}",
                                   chunk_size=8)


# -- CartPole frames -------------------------------------------------------------------------------


def cartpole_rollout(count: int, seed: int = 0, frame_size: int | None = None):
    """``count`` frames of gymnasium's CartPole-v1 under a random policy (seeded by ``seed``) and
    their states: ``(frames, states)``, uint8 ``[count, 400, 600, 3]`` (``[count, size, size, 3]``
    downsampled when ``frame_size`` is given) and float32 ``[count, 4]``."""
    import gymnasium as gym
    import numpy as np

    import vlmrl  # noqa: F401  (headless rendering defaults)

    if frame_size is not None:
        from vlmrl.reward_nets import downsample_frames
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    frames, states = [], []
    while len(frames) < count:
        frame = env.render()
        frames.append(frame if frame_size is None else downsample_frames(frame[None], frame_size)[0])
        states.append(obs)
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(2)))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.stack(frames), np.stack(states).astype(np.float32)

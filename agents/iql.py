"""Offline learners: d3rlpy IQL (Kostrikov et al.) and behaviour cloning, with checkpoints and resume.

IQL uses d3rlpy's ``IQLConfig`` defaults, which are the paper's settings (expectile 0.7,
temperature 3.0, gamma 0.99, tau 0.005, batch 256, 2x256 MLPs, lr 3e-4), plus state
normalisation (``StandardObservationScaler``) as in the paper. d3rlpy's IQL takes continuous
actions only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

Method = Literal["iql", "bc"]


def d3rlpy_device(device: str = "auto") -> str:
    """``vlmrl.devices.resolve_device`` as the indexed string d3rlpy wants: ``"cuda:N"`` or ``"cpu:0"``."""
    from vlmrl.devices import resolve_device

    resolved = resolve_device(device)
    return f"{resolved.type}:{resolved.index or 0}"


def make_learner(method: Method, device: str = "auto", batch_size: int = 256, **hyperparams: Any) -> Any:
    """A fresh d3rlpy learner. ``hyperparams`` override IQLConfig / BCConfig fields."""
    import d3rlpy

    common = dict(
        batch_size=batch_size,
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        action_scaler=d3rlpy.preprocessing.MinMaxActionScaler(),
    )
    if method == "iql":
        return d3rlpy.algos.IQLConfig(**common, **hyperparams).create(device=d3rlpy_device(device))
    if method == "bc":
        return d3rlpy.algos.BCConfig(**common, **hyperparams).create(device=d3rlpy_device(device))
    raise ValueError(f"unknown offline method {method!r} (iql, bc)")


class TensorBoardAdapter:
    """d3rlpy logger adapter writing scalars with torch's SummaryWriter (tensorboardX is not needed)."""

    def __init__(self, log_dir: Path, step_offset: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))
        self._offset = step_offset

    def write_params(self, params: dict[str, Any]) -> None:
        pass

    def before_write_metric(self, epoch: int, step: int) -> None:
        pass

    def write_metric(self, epoch: int, step: int, name: str, value: float) -> None:
        self._writer.add_scalar(f"train/{name}", value, self._offset + step)

    def after_write_metric(self, epoch: int, step: int) -> None:
        self._writer.flush()

    def save_model(self, epoch: int, algo: Any) -> None:
        pass  # checkpoints are written by train_offline's epoch callback

    def close(self) -> None:
        self._writer.close()

    def watch_model(self, epoch: int, step: int) -> None:
        pass


class TensorBoardAdapterFactory:
    def __init__(self, log_dir: Path, step_offset: int = 0) -> None:
        self.log_dir = log_dir
        self.step_offset = step_offset

    def create(self, algo: Any, experiment_name: str, n_steps_per_epoch: int) -> TensorBoardAdapter:
        return TensorBoardAdapter(self.log_dir, self.step_offset)


def train_offline(
    method: Method,
    dataset: Any,
    out_dir: Path,
    n_steps: int,
    n_steps_per_epoch: int = 1000,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 256,
    hyperparams: dict[str, Any] | None = None,
    show_progress: bool = False,
) -> Any:
    """Train (or resume training) an offline learner on a d3rlpy ``MDPDataset``.

    A checkpoint (``checkpoint.d3``) and ``progress.json`` (gradient steps done) are written at
    the end of every epoch; called again with the same ``out_dir`` it continues from there.
    TensorBoard scalars go to ``out_dir/tensorboard``.

    Returns:
        The trained d3rlpy learner.
    """
    import d3rlpy

    if n_steps % n_steps_per_epoch:
        raise ValueError(f"n_steps ({n_steps}) must be a multiple of n_steps_per_epoch ({n_steps_per_epoch})")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, progress = out_dir / "checkpoint.d3", out_dir / "progress.json"
    done = json.loads(progress.read_text())["steps"] if progress.is_file() and checkpoint.is_file() else 0
    d3rlpy.seed(seed + done)
    if done:
        algo = d3rlpy.load_learnable(str(checkpoint), device=d3rlpy_device(device))
    else:
        algo = make_learner(method, device=device, batch_size=batch_size, **(hyperparams or {}))
    if done >= n_steps:
        return algo

    def save(learner: Any, epoch: int, total_step: int) -> None:
        tmp = out_dir / f".checkpoint.tmp{os.getpid()}.d3"
        learner.save(str(tmp))
        os.replace(tmp, checkpoint)
        progress.write_text(json.dumps({"steps": done + total_step}))

    algo.fit(
        dataset,
        n_steps=n_steps - done,
        n_steps_per_epoch=n_steps_per_epoch,
        experiment_name=f"{method}_seed{seed}",
        with_timestamp=False,
        logger_adapter=TensorBoardAdapterFactory(out_dir / "tensorboard", step_offset=done),
        show_progress=show_progress,
        save_interval=10**9,
        epoch_callback=save,
    )
    return algo


def evaluate_policy(algo: Any, make_env: Any, episodes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the greedy policy for ``episodes`` episodes.

    Returns:
        (float64 ``[episodes]`` TRUE returns, float64 ``[episodes]`` success (``info["success"]``
        at the episode's last step, 0 or 1) or None when the env does not report success).
        The true reward of a step is ``info["true_reward"]`` when the env reports one (vlmrl envs
        do), else the env's reward.
    """
    env = make_env()
    returns = np.zeros(episodes)
    successes = np.zeros(episodes)
    reports_success = False
    try:
        for episode in range(episodes):
            observation, _ = env.reset(seed=seed * 10_000 + episode)
            while True:
                action = algo.predict(np.asarray(observation, dtype=np.float32)[None])[0]
                observation, reward, terminated, truncated, info = env.step(action)
                returns[episode] += float(info.get("true_reward", reward))
                if terminated or truncated:
                    reports_success = reports_success or "success" in info
                    successes[episode] = float(bool(info.get("success", False)))
                    break
    finally:
        env.close()
    return returns, (successes if reports_success else None)

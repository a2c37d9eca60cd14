"""``vlmrl train``: train an agent online from labeler rewards (or offline with IQL).

Read top to bottom: build labeler -> vector env -> reward wrapper (+ distilled net) -> SB3
learner; learn with metrics, checkpoint and video callbacks; save; evaluate on the true reward;
record a video.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vlmrl.config import ExperimentConfig, load_config
from vlmrl.config_loading import apply_overrides, build_dataclass, load_yaml, to_plain
from vlmrl.errors import ConfigError, UserError

DESCRIPTION = """\
Train an agent whose reward comes from a labeler instead of the environment.

Online configs (agent.algo ppo or sac) train with stable-baselines3: every step's frame is
rendered, labelled (CLIP zero-shot score or the scripted teacher's true reward) and, with
reward.distill, regressed into a small CNN reward net that rewards the unlabelled steps.
Offline configs (agent.algo iql) train d3rlpy IQL on a relabelled dataset.

The run directory runs/<task>__<labeler>__<seed>__<time>/ receives the resolved config,
TensorBoard logs (tensorboard --logdir runs), checkpoints, the final policy, eval.json (true
return of the final policy) and videos/.
"""

EPILOG = """\
examples:
  vlmrl train configs/cartpole_oracle.yaml                 # no weights needed
  vlmrl train configs/cartpole_clip.yaml                   # needs CLIP weights (see README)
  vlmrl train configs/cartpole_clip.yaml --set agent.total_timesteps=20000 --set run.seed=3
  vlmrl train --resume runs/cartpole__clip__0__20261127-101500
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an agent from VLM rewards (online PPO/SAC, or offline IQL)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML config file, e.g. configs/cartpole_clip.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path, value parsed as YAML); repeatable",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its latest checkpoint (its config.yaml is used; --set may extend "
        "agent.total_timesteps)",
    )
    parser.add_argument("--no-video", action="store_true", help="skip the video of the final policy")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--baselines",
        default="",
        help="offline configs only: comma-separated baselines trained by the same command (bc, iql-gt); "
        "default: the config's list",
    )
    parser.add_argument("--seeds", default="", help="offline configs only: comma-separated seeds, e.g. 0,1,2")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        from vlmrl.runs import load_run_config

        run_dir = Path(args.resume)
        config = load_run_config(run_dir)
        if args.overrides:
            config = _resume_overrides(config, args.overrides, run_dir)
        summary = train_online(config, run_dir, resume=True, progress_bar=not args.no_progress, video=not args.no_video)
    else:
        if not args.config:
            raise UserError("give a config file (e.g. configs/cartpole_oracle.yaml) or --resume RUN_DIR")
        if _is_offline(args.config):
            from vlmrl.offline_train import run_offline_training

            baselines = [b for b in args.baselines.split(",") if b] or None  # None: the config's list
            seeds = [int(s) for s in args.seeds.split(",") if s] or None
            run_offline_training(args.config, args.overrides, baselines, seeds)
            return 0
        from vlmrl.runs import create_run_dir

        config = load_config(args.config, args.overrides)
        run_dir = create_run_dir(config)
        print(f"run directory: {run_dir}")
        summary = train_online(config, run_dir, resume=False, progress_bar=not args.no_progress, video=not args.no_video)
    print(json.dumps(summary, indent=2))
    return 0


def _is_offline(config_path: str) -> bool:
    agent = load_yaml(config_path).get("agent", {})
    return isinstance(agent, dict) and agent.get("algo") == "iql"


def _resume_overrides(config: ExperimentConfig, overrides: list[str], run_dir: Path) -> ExperimentConfig:
    if any(not o.startswith("agent.total_timesteps=") for o in overrides):
        raise ConfigError("with --resume only agent.total_timesteps may be overridden")
    data = apply_overrides(config.to_dict(), overrides, str(run_dir / "config.yaml"))
    updated = build_dataclass(ExperimentConfig, data, str(run_dir / "config.yaml"))
    (run_dir / "config.yaml").write_text(updated.to_yaml())
    return updated


@dataclass
class RewardPipeline:
    """The part of an online run that differs between labelers: the VecEnv wrapper that gives the
    agent its reward, its callbacks, and how it is checkpointed and summarised."""

    env: Any
    callbacks: list
    save: Callable[[Path], dict[str, Any]]  # writes into a checkpoint dir; returns state.json counters
    restore: Callable[[Path, dict[str, Any]], None]
    summary: Callable[[], dict[str, Any]]
    reward_model: Callable[[], Any]  # the reward net to save as reward_net.*, or None
    video_scorer: Callable[[], tuple[Callable | None, str]]  # frames -> rewards drawn on videos


def train_online(config: ExperimentConfig, run_dir: Path, resume: bool, progress_bar: bool = True, video: bool = True) -> dict[str, Any]:
    """Train (or continue) an online run in ``run_dir``; return a summary dict (also saved)."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.utils import set_random_seed

    from vlmrl.agents.sb3_agents import build_agent, load_agent
    from vlmrl.agents.training_callbacks import PeriodicCallback
    from vlmrl.runs import checkpoint_dir, finish_checkpoint, latest_checkpoint, read_checkpoint_state

    seed = config.run.seed
    set_random_seed(seed)
    if config.run.torch_threads:
        import torch

        torch.set_num_threads(config.run.torch_threads)
    if config.labeler.family == "pair":
        pipeline = _preference_pipeline(config, run_dir, seed)
    else:
        pipeline = _labelled_pipeline(config, seed)
    algo = config.agent.algo
    try:
        if resume:
            checkpoint = latest_checkpoint(run_dir)
            if checkpoint is None:
                raise UserError(f"{run_dir} has no complete checkpoint to resume from")
            model = load_agent(algo, checkpoint / "model.zip", pipeline.env, config.agent.device)
            if isinstance(model, SAC) and (checkpoint / "replay_buffer.pkl").is_file():
                model.load_replay_buffer(checkpoint / "replay_buffer.pkl")
            pipeline.restore(checkpoint, read_checkpoint_state(checkpoint))
            print(f"resuming from {checkpoint} at step {model.num_timesteps}")
        else:
            try:
                model = build_agent(
                    algo,
                    pipeline.env,
                    policy=config.agent.policy,
                    hyperparams=to_plain(config.agent.hyperparams),
                    seed=seed,
                    device=config.agent.device,
                    tensorboard_dir=run_dir / "tb",
                )
            except ValueError as error:
                raise ConfigError(f"agent.hyperparams: {error}") from error

        def save_checkpoint(step: int) -> None:
            directory = checkpoint_dir(run_dir, step)
            directory.mkdir(parents=True, exist_ok=True)
            model.save(directory / "model.zip")
            if isinstance(model, SAC):
                model.save_replay_buffer(directory / "replay_buffer.pkl")
            state = pipeline.save(directory)
            finish_checkpoint(directory, {"num_timesteps": int(model.num_timesteps), **state})

        def record(prefix: str) -> list[Path]:
            scorer, name = pipeline.video_scorer()
            return _record_video(config, model, scorer, name, run_dir / "videos", prefix)

        callbacks = [*pipeline.callbacks, PeriodicCallback(config.run.checkpoint_every, save_checkpoint)]
        if config.run.video_every and video:
            callbacks.append(PeriodicCallback(config.run.video_every, lambda step: record(f"step{step}")))
        remaining = config.agent.total_timesteps - model.num_timesteps
        start = time.perf_counter()
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                reset_num_timesteps=not resume,
                tb_log_name=algo.upper(),
                progress_bar=progress_bar,
            )
        train_seconds = time.perf_counter() - start
        model.save(run_dir / "model.zip")
        if pipeline.reward_model() is not None:
            pipeline.reward_model().save(run_dir / "reward_net")
    finally:
        pipeline.env.close()

    summary = {
        "run_dir": str(run_dir),
        "env_steps": int(model.num_timesteps),
        "train_seconds": round(train_seconds, 2),
        **pipeline.summary(),
    }
    if config.run.eval_episodes:
        summary["eval"] = evaluate_policy_true_return(config, model, config.run.eval_episodes)
    if video and config.run.video_episodes:
        summary["videos"] = [str(p) for p in record("final")]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _labelled_pipeline(config: ExperimentConfig, seed: int) -> RewardPipeline:
    """Per-frame labels (CLIP or oracle), optionally distilled into a CNN reward net."""
    from vlmrl.agents.labelled_reward import LabelledRewardVecEnv
    from vlmrl.agents.training_callbacks import LabelMetricsCallback
    from vlmrl.factory import make_labeler, make_vec_env
    from vlmrl.reward_nets import RewardModel

    labeler = make_labeler(config.labeler, "frame", seed=seed)
    reward_model = None
    if config.reward.distill:
        net = config.reward.net
        reward_model = RewardModel(net.net_config(), ensemble_size=net.ensemble_size, device=config.labeler.device, seed=seed)
    venv = make_vec_env(config.env, seed, capture_frames=labeler.needs_frames or reward_model is not None)
    labelled = LabelledRewardVecEnv(venv, labeler, reward_model, config.reward, seed=seed)
    counters = ("labeler_calls", "labelled_frames", "net_frames", "net_fits")

    def save(directory: Path) -> dict[str, Any]:
        if labelled.reward_model is not None:
            labelled.reward_model.save(directory / "reward_net")
            np.savez(directory / "label_buffer.npz", **labelled.buffer.state_dict())
        return {
            "vector_steps": labelled.vector_steps,
            "env_steps_at_last_fit": labelled.env_steps_at_last_fit,
            **{key: getattr(labelled.stats, key) for key in counters},
        }

    def restore(directory: Path, state: dict[str, Any]) -> None:
        if labelled.reward_model is not None:
            labelled.reward_model = RewardModel.load(directory / "reward_net", device=str(labelled.reward_model.device))
            with np.load(directory / "label_buffer.npz") as data:
                labelled.buffer.load_state_dict({key: data[key] for key in data.files})
        labelled.vector_steps = state["vector_steps"]
        labelled.env_steps_at_last_fit = state["env_steps_at_last_fit"]
        for key in counters:
            setattr(labelled.stats, key, state[key])

    def video_scorer() -> tuple[Callable | None, str]:
        if labelled.reward_model is not None:
            return labelled.reward_model.predict, "learned"
        if labeler.needs_frames:
            return labeler.label, config.labeler.name
        return None, "reward"

    return RewardPipeline(
        env=labelled,
        callbacks=[LabelMetricsCallback(labelled)],
        save=save,
        restore=restore,
        summary=lambda: {key: getattr(labelled.stats, key) for key in counters},
        reward_model=lambda: labelled.reward_model,
        video_scorer=video_scorer,
    )


def _preference_pipeline(config: ExperimentConfig, run_dir: Path, seed: int) -> RewardPipeline:
    """RL-VLM-F: rewards learned from pairwise labels (VLM or scripted teacher), with PEBBLE
    replay relabelling under SAC. Every VLM answer goes to ``run_dir/labels.sqlite``."""
    from vlmrl.agents.preference_reward import (
        build_preference_env,
        preference_needs_frames,
        restore_preference_checkpoint,
        save_preference_checkpoint,
    )
    from vlmrl.factory import make_labeler, make_vec_env

    schedule = config.preference
    labeler = make_labeler(config.labeler, "pair", seed=seed, store=schedule.label_store or run_dir / "labels.sqlite")
    venv = make_vec_env(config.env, seed, capture_frames=preference_needs_frames(labeler, schedule))
    preference_env, callbacks = build_preference_env(
        venv, labeler, schedule.goal, schedule, config.agent.algo, seed=seed, device=config.labeler.device
    )

    def save(directory: Path) -> dict[str, Any]:
        save_preference_checkpoint(directory, preference_env, callbacks)
        return {}

    def summary() -> dict[str, Any]:
        stats = preference_env.stats
        # NaN (no decisive pair, no held-out split yet) is written as null: summary.json stays strict JSON.
        return {
            "pairs_asked": stats.asked,
            "pairs_labelled": stats.labelled,
            "query_rounds": stats.rounds,
            "reward_fits": stats.fits,
            "label_accuracy_vs_oracle": None if math.isnan(stats.accuracy_vs_oracle) else stats.accuracy_vs_oracle,
            "heldout_accuracy": None if math.isnan(stats.heldout_accuracy) else stats.heldout_accuracy,
        }

    def video_scorer() -> tuple[Callable | None, str]:
        # Videos get frames: draw the learned reward only when the net reads frames.
        return (preference_env.reward_model.predict, "learned") if schedule.net.kind == "cnn" else (None, "reward")

    return RewardPipeline(
        env=preference_env,
        callbacks=callbacks,
        save=save,
        restore=lambda directory, state: restore_preference_checkpoint(directory, preference_env, callbacks),
        summary=summary,
        reward_model=lambda: preference_env.reward_model,
        video_scorer=video_scorer,
    )


def evaluate_policy_true_return(config: ExperimentConfig, model, episodes: int) -> dict[str, float]:
    """Mean and std of the true episode return of the deterministic policy (no rendering)."""
    from vlmrl.evaluation import true_returns
    from vlmrl.factory import make_env

    env = make_env(config.env)
    try:
        returns = true_returns(env, lambda obs: model.predict(obs, deterministic=True)[0], episodes, seed=config.run.seed + 10_000)
    finally:
        env.close()
    return {"true_return_mean": float(np.mean(returns)), "true_return_std": float(np.std(returns)), "episodes": episodes}


def _record_video(config: ExperimentConfig, model, scorer: Callable | None, scorer_name: str, out_dir: Path, prefix: str) -> list[Path]:
    from vlmrl.factory import make_env
    from vlmrl.video import record_episodes

    size = config.run.video_size
    env = make_env(config.env, render_size=(size, size) if size else None)
    try:
        paths, _ = record_episodes(
            env,
            lambda obs: model.predict(obs, deterministic=True)[0],
            out_dir,
            prefix,
            episodes=config.run.video_episodes,
            seed=config.run.seed + 20_000,
            scorer=scorer,
            scorer_name=scorer_name,
        )
    finally:
        env.close()
    return paths

"""``vlmrl train``: train an agent online from labeler rewards (or offline with IQL).

Read top to bottom: build labeler -> vector env -> reward wrapper (+ distilled net) -> SB3
learner; learn with metrics, checkpoint and video callbacks; save; evaluate on the true reward;
record a video.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.config import ExperimentConfig, load_config, plain_dict
from vlmrl.config_loading import load_yaml
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
    from vlmrl.config_loading import apply_overrides, build_dataclass

    data = apply_overrides(config.to_dict(), overrides, str(run_dir / "config.yaml"))
    updated = build_dataclass(ExperimentConfig, data, str(run_dir / "config.yaml"))
    (run_dir / "config.yaml").write_text(updated.to_yaml())
    return updated


def train_online(config: ExperimentConfig, run_dir: Path, resume: bool, progress_bar: bool = True, video: bool = True) -> dict[str, Any]:
    """Train (or continue) an online run in ``run_dir``; return a summary dict (also saved)."""
    if config.labeler.kind == "preference":
        return train_online_preference(config, run_dir, resume, progress_bar=progress_bar, video=video)
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.utils import set_random_seed

    from vlmrl.agents.labelled_reward import DistillSchedule, LabelledRewardVecEnv
    from vlmrl.agents.sb3_agents import build_agent, load_agent
    from vlmrl.agents.training_callbacks import LabelMetricsCallback, PeriodicCallback
    from vlmrl.factory import make_frame_labeler, make_vec_env
    from vlmrl.reward_nets import RewardModel, RewardNetConfig
    from vlmrl.runs import (
        checkpoint_dir,
        finish_checkpoint,
        latest_checkpoint,
        read_checkpoint_state,
    )

    seed = config.run.seed
    set_random_seed(seed)
    if config.run.torch_threads:
        import torch

        torch.set_num_threads(config.run.torch_threads)
    labeler = make_frame_labeler(config.labeler, seed=seed)
    reward_model = None
    if config.reward.distill:
        reward_model = RewardModel(
            RewardNetConfig(kind="cnn", input_size=config.reward.net_input_size), device=config.labeler.device, seed=seed
        )
    schedule = DistillSchedule(
        label_every=config.reward.label_every,
        warmup_labels=config.reward.warmup_labels,
        retrain_every=config.reward.retrain_every,
        buffer_size=config.reward.buffer_size,
        epochs=config.reward.epochs,
        batch_size=config.reward.batch_size,
        lr=config.reward.lr,
    )
    venv = make_vec_env(config.env, seed, capture_frames=labeler.needs_frames or reward_model is not None)
    labelled = LabelledRewardVecEnv(venv, labeler, reward_model, schedule, seed=seed)
    algo = config.agent.algo
    try:
        if resume:
            checkpoint = latest_checkpoint(run_dir)
            if checkpoint is None:
                raise UserError(f"{run_dir} has no complete checkpoint to resume from")
            model = load_agent(algo, checkpoint / "model.zip", labelled, config.agent.device)
            _restore_checkpoint(checkpoint, model, labelled, read_checkpoint_state(checkpoint))
            print(f"resuming from {checkpoint} at step {model.num_timesteps}")
        else:
            try:
                model = build_agent(
                    algo,
                    labelled,
                    policy=config.agent.policy,
                    hyperparams=plain_dict(config.agent.hyperparams),
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
            if reward_model is not None:
                reward_model.save(directory / "reward_net")
                np.savez(directory / "label_buffer.npz", **labelled.buffer.state_dict())
            finish_checkpoint(directory, _wrapper_state(model, labelled))

        callbacks = [LabelMetricsCallback(labelled), PeriodicCallback(config.run.checkpoint_every, save_checkpoint)]
        if config.run.video_every and video:
            callbacks.append(
                PeriodicCallback(
                    config.run.video_every,
                    lambda step: _record_video(config, model, reward_model, labeler, run_dir / "videos", f"step{step}"),
                )
            )
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
        if reward_model is not None:
            reward_model.save(run_dir / "reward_net")
    finally:
        labelled.close()

    summary = {
        "run_dir": str(run_dir),
        "env_steps": int(model.num_timesteps),
        "train_seconds": round(train_seconds, 2),
        "labeler_calls": labelled.stats.labeler_calls,
        "labelled_frames": labelled.stats.labelled_frames,
        "net_frames": labelled.stats.net_frames,
        "net_fits": labelled.stats.net_fits,
    }
    if config.run.eval_episodes:
        summary["eval"] = evaluate_policy_true_return(config, model, config.run.eval_episodes)
    if video and config.run.video_episodes:
        paths = _record_video(config, model, reward_model, labeler, run_dir / "videos", "final")
        summary["videos"] = [str(p) for p in paths]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# --- preference labelers (RL-VLM-F / PEBBLE): labeler.kind == "preference" ---


def train_online_preference(
    config: ExperimentConfig, run_dir: Path, resume: bool, progress_bar: bool = True, video: bool = True
) -> dict[str, Any]:
    """``train_online`` for ``labeler.kind: preference``: RL-VLM-F rewards learned from pairwise
    labels (VLM or scripted teacher), with PEBBLE replay relabelling under SAC."""
    import math
    from types import SimpleNamespace

    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.utils import set_random_seed

    from vlmrl.agents.preference_reward import (
        PreferenceSchedule,
        build_preference_env,
        preference_needs_frames,
        restore_preference_checkpoint,
        save_preference_checkpoint,
    )
    from vlmrl.agents.sb3_agents import build_agent, load_agent
    from vlmrl.agents.training_callbacks import PeriodicCallback
    from vlmrl.factory import make_preference_labeler, make_vec_env
    from vlmrl.runs import checkpoint_dir, finish_checkpoint, latest_checkpoint

    seed = config.run.seed
    set_random_seed(seed)
    if config.run.torch_threads:
        import torch

        torch.set_num_threads(config.run.torch_threads)
    labeler = make_preference_labeler(config.labeler, str(run_dir / "labels.sqlite"), seed=seed)
    schedule = PreferenceSchedule.from_config(config.reward.preference)
    venv = make_vec_env(config.env, seed, capture_frames=preference_needs_frames(labeler, schedule))
    algo = config.agent.algo
    preference_env, preference_callbacks = build_preference_env(
        venv, labeler, config.labeler.preference.goal, schedule, algo, seed=seed, device=config.labeler.device
    )
    try:
        if resume:
            checkpoint = latest_checkpoint(run_dir)
            if checkpoint is None:
                raise UserError(f"{run_dir} has no complete checkpoint to resume from")
            model = load_agent(algo, checkpoint / "model.zip", preference_env, config.agent.device)
            if isinstance(model, SAC) and (checkpoint / "replay_buffer.pkl").is_file():
                model.load_replay_buffer(checkpoint / "replay_buffer.pkl")
            restore_preference_checkpoint(checkpoint, preference_env, preference_callbacks)
            print(f"resuming from {checkpoint} at step {model.num_timesteps}")
        else:
            try:
                model = build_agent(
                    algo,
                    preference_env,
                    policy=config.agent.policy,
                    hyperparams=plain_dict(config.agent.hyperparams),
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
            save_preference_checkpoint(directory, preference_env, preference_callbacks)
            finish_checkpoint(directory, {"num_timesteps": int(model.num_timesteps)})

        # The video scorer takes frames: the learned reward only when the net reads frames.
        video_net = preference_env.reward_model if schedule.net == "cnn" else None
        no_frame_labeler = SimpleNamespace(needs_frames=False)
        callbacks = [*preference_callbacks, PeriodicCallback(config.run.checkpoint_every, save_checkpoint)]
        if config.run.video_every and video:
            callbacks.append(
                PeriodicCallback(
                    config.run.video_every,
                    lambda step: _record_video(config, model, video_net, no_frame_labeler, run_dir / "videos", f"step{step}"),
                )
            )
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
        preference_env.reward_model.save(run_dir / "reward_net")
    finally:
        preference_env.close()

    stats = preference_env.stats
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "env_steps": int(model.num_timesteps),
        "train_seconds": round(train_seconds, 2),
        "pairs_asked": stats.asked,
        "pairs_labelled": stats.labelled,
        "query_rounds": stats.rounds,
        "reward_fits": stats.fits,
        # NaN (no decisive pair, no held-out split yet) is written as null: summary.json stays strict JSON.
        "label_accuracy_vs_oracle": None if math.isnan(stats.accuracy_vs_oracle) else stats.accuracy_vs_oracle,
        "heldout_accuracy": None if math.isnan(stats.heldout_accuracy) else stats.heldout_accuracy,
    }
    if config.run.eval_episodes:
        summary["eval"] = evaluate_policy_true_return(config, model, config.run.eval_episodes)
    if video and config.run.video_episodes:
        paths = _record_video(config, model, video_net, no_frame_labeler, run_dir / "videos", "final")
        summary["videos"] = [str(p) for p in paths]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _wrapper_state(model, labelled) -> dict[str, Any]:
    stats = labelled.stats
    return {
        "num_timesteps": int(model.num_timesteps),
        "vector_steps": labelled.vector_steps,
        "env_steps_at_last_fit": labelled.env_steps_at_last_fit,
        "labeler_calls": stats.labeler_calls,
        "labelled_frames": stats.labelled_frames,
        "net_frames": stats.net_frames,
        "net_fits": stats.net_fits,
    }


def _restore_checkpoint(checkpoint: Path, model, labelled, state: dict[str, Any]) -> None:
    from stable_baselines3 import SAC

    from vlmrl.reward_nets import RewardModel

    if isinstance(model, SAC) and (checkpoint / "replay_buffer.pkl").is_file():
        model.load_replay_buffer(checkpoint / "replay_buffer.pkl")
    if labelled.reward_model is not None:
        restored = RewardModel.load(checkpoint / "reward_net", device=str(labelled.reward_model.device))
        labelled.reward_model = restored
        with np.load(checkpoint / "label_buffer.npz") as data:
            labelled.buffer.load_state_dict({key: data[key] for key in data.files})
    labelled.vector_steps = state["vector_steps"]
    labelled.env_steps_at_last_fit = state["env_steps_at_last_fit"]
    for key in ("labeler_calls", "labelled_frames", "net_frames", "net_fits"):
        setattr(labelled.stats, key, state[key])


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


def _record_video(config: ExperimentConfig, model, reward_model, labeler, out_dir: Path, prefix: str) -> list[Path]:
    from vlmrl.factory import make_env
    from vlmrl.video import record_episodes

    size = config.run.video_size
    env = make_env(config.env, render_size=(size, size) if size else None)
    scorer, name = None, "reward"
    if reward_model is not None:
        scorer, name = reward_model.predict, "learned"
    elif labeler.needs_frames:
        scorer, name = labeler.label, config.labeler.name
    try:
        paths, _ = record_episodes(
            env,
            lambda obs: model.predict(obs, deterministic=True)[0],
            out_dir,
            prefix,
            episodes=config.run.video_episodes,
            seed=config.run.seed + 20_000,
            scorer=scorer,
            scorer_name=name,
        )
    finally:
        env.close()
    return paths

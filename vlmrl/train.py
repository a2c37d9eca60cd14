"""``vlmrl train``: train an agent online from labeler rewards (or offline with IQL).

Read top to bottom: build labeler (and check its endpoint) -> vector env -> reward wrapper (+
distilled net) -> SB3 learner; learn with metrics, checkpoint, video and stop callbacks; save;
evaluate on the true reward; record a video.

Stopping: SIGTERM / SIGINT (:mod:`vlmrl.stopping`) and a labeler whose queries keep failing
(``preference.max_consecutive_failures``) end ``learn`` after the current env step; a checkpoint
is written, the labelling worker and the envs are closed, and the command exits (143 / 130 for
the signals, 2 with a message for the labeler) saying how to continue with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vlmrl.config import ExperimentConfig, load_config
from vlmrl.config_loading import apply_overrides, build_dataclass, load_yaml, to_plain
from vlmrl.errors import ConfigError, UserError
from vlmrl.stopping import StopRequest

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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path, value parsed as YAML); repeatable")
    parser.add_argument("--no-video", action="store_true", help="skip the video of the final policy")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    online = parser.add_argument_group("online configs (agent.algo ppo or sac)")
    online.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint (its "
                        "config.yaml is used; --set may extend agent.total_timesteps)")
    offline = parser.add_argument_group("offline configs (agent.algo iql)")
    offline.add_argument("--baselines", default="", help="comma-separated baselines trained by the same command "
                         "(bc, iql-gt); default: the config's run.baselines")
    offline.add_argument("--seeds", default="", help="comma-separated seeds, e.g. 0,1,2; default: the config's run.seeds")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # A Stopped (SIGTERM / SIGINT after a checkpoint) is reported by vlmrl.cli.main, as for every command.
    if args.resume:
        from vlmrl.runs import load_run_config, run_dir_lock

        run_dir = Path(args.resume)
        with run_dir_lock(run_dir):  # a second `vlmrl train` writing the same run stops at once (exit 2)
            config = load_run_config(run_dir)
            if args.overrides:
                config = _resume_overrides(config, args.overrides, run_dir)
            summary = train_online(config, run_dir, resume=True, progress_bar=not args.no_progress,
                                   video=not args.no_video)
    else:
        if not args.config:
            raise UserError("give a config file (e.g. configs/cartpole_oracle.yaml) or --resume RUN_DIR")
        if _is_offline(args.config):
            from vlmrl.offline_train import run_offline_training

            baselines = [b for b in args.baselines.split(",") if b] or None  # None: the config's list
            seeds = [int(s) for s in args.seeds.split(",") if s] or None
            run_offline_training(args.config, args.overrides, baselines, seeds)
            return 0
        if args.baselines or args.seeds:
            raise UserError(f"--baselines and --seeds are for offline configs (agent.algo iql); {args.config} is "
                            "an online config: set its seed with --set run.seed=N")
        from vlmrl.runs import create_run_dir, run_dir_lock

        config = load_config(args.config, args.overrides)
        run_dir = create_run_dir(config)
        print(f"run directory: {run_dir}")
        try:
            with run_dir_lock(run_dir):  # so a --resume of a run still training is refused
                summary = train_online(config, run_dir, resume=False, progress_bar=not args.no_progress,
                                       video=not args.no_video)
        except UserError:
            _remove_if_unused(run_dir)
            raise
    print(json.dumps(summary, indent=2))
    return 0


def _remove_if_unused(run_dir: Path) -> None:
    """Remove a fresh run directory that a start-up error (an unreachable endpoint, missing
    weights) left before the first step: no checkpoint, no TensorBoard log."""
    from vlmrl.runs import CHECKPOINTS

    if not (run_dir / CHECKPOINTS).exists() and not (run_dir / "tb").exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def _is_offline(config_path: str) -> bool:
    agent = load_yaml(config_path).get("agent", {})
    return isinstance(agent, dict) and agent.get("algo") == "iql"


# Keys --resume may change: the run's length and how (not what) its labels are asked.
RESUME_OVERRIDES = (
    "agent.total_timesteps",
    "preference.labeling",
    "preference.queue_size",
    "preference.max_consecutive_failures",
    "reward.labeling",
    "reward.queue_size",
)


def _resume_overrides(config: ExperimentConfig, overrides: list[str], run_dir: Path) -> ExperimentConfig:
    if any(o.partition("=")[0] not in RESUME_OVERRIDES for o in overrides):
        raise ConfigError(f"with --resume only {', '.join(RESUME_OVERRIDES)} may be overridden")
    data = apply_overrides(config.to_dict(), overrides, str(run_dir / "config.yaml"))
    updated = build_dataclass(ExperimentConfig, data, str(run_dir / "config.yaml"))
    (run_dir / "config.yaml").write_text(updated.to_yaml())
    return updated


@dataclass
class RewardPipeline:
    """The part of an online run that differs between labelers: the VecEnv wrapper that gives the
    agent its reward (a :class:`~vlmrl.agents.reward_wrapper.RewardVecEnvWrapper`: it checkpoints,
    summarises and scores videos itself) and the callbacks the learner needs with it."""

    env: Any  # RewardVecEnvWrapper; not imported here, so the CLI starts without torch
    callbacks: list

    def save(self, directory: Path) -> None:
        """Write the wrapper's and the callbacks' state into a checkpoint directory."""
        from vlmrl.agents.training_callbacks import CheckpointedCallback

        self.env.save(directory)
        for callback in self.callbacks:
            if isinstance(callback, CheckpointedCallback):
                callback.save(directory)

    def restore(self, directory: Path) -> None:
        """Undo :meth:`save` (after the agent and its replay buffer are loaded)."""
        from vlmrl.agents.training_callbacks import CheckpointedCallback

        self.env.load(directory)
        for callback in self.callbacks:
            if isinstance(callback, CheckpointedCallback):
                callback.load(directory)


def train_online(config: ExperimentConfig, run_dir: Path, resume: bool, progress_bar: bool = True, video: bool = True) -> dict[str, Any]:
    """Train (or continue) an online run in ``run_dir``; return a summary dict (also saved).

    Raises:
        Stopped: SIGTERM / SIGINT arrived; a checkpoint was written (exit code 143 / 130).
        UserError: the labeler's endpoint is unreachable or refuses the key (before training),
            or ``max_consecutive_failures`` queries in a row failed (after a checkpoint).
    """
    # Before anything renders: the handlers must be in place before SDL (pygame) looks.
    stop = StopRequest().install()
    try:
        return _train_online(config, run_dir, resume, progress_bar, video, stop)
    finally:
        stop.uninstall()


def _train_online(
    config: ExperimentConfig, run_dir: Path, resume: bool, progress_bar: bool, video: bool, stop: StopRequest
) -> dict[str, Any]:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.utils import set_random_seed

    from vlmrl.agents.sb3_agents import build_agent, load_agent
    from vlmrl.agents.success import SuccessRateCallback
    from vlmrl.agents.training_callbacks import PeriodicCallback, StopTrainingCallback
    from vlmrl.runs import checkpoint_dir, finish_checkpoint, latest_checkpoint

    seed = config.run.seed
    set_random_seed(seed)
    if config.run.torch_threads:
        import torch

        torch.set_num_threads(config.run.torch_threads)
    if config.labeler.family == "pair":
        pipeline = _preference_pipeline(config, run_dir, seed, stop)
    else:
        pipeline = _labelled_pipeline(config, seed)
    success = SuccessRateCallback()  # silent for envs that never report info["success"]
    pipeline.callbacks.append(success)
    algo = config.agent.algo
    try:
        if resume:
            checkpoint = latest_checkpoint(run_dir)
            if checkpoint is None:
                raise UserError(f"{run_dir} has no complete checkpoint to resume from")
            model = load_agent(algo, checkpoint / "model.zip", pipeline.env, config.agent.device)
            if isinstance(model, SAC) and (checkpoint / "replay_buffer.pkl").is_file():
                model.load_replay_buffer(checkpoint / "replay_buffer.pkl")
            pipeline.restore(checkpoint)
            print(f"resuming from {checkpoint} at step {model.num_timesteps}")
            _note_labeling_change(config, pipeline.env)
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

        def save_checkpoint(step: int) -> Path:
            directory = checkpoint_dir(run_dir, step)
            directory.mkdir(parents=True, exist_ok=True)
            model.save(directory / "model.zip")
            if isinstance(model, SAC):
                model.save_replay_buffer(directory / "replay_buffer.pkl")
            pipeline.save(directory)
            # state.json is written last and marks the checkpoint complete; the counters are for people.
            finish_checkpoint(directory, {"num_timesteps": int(model.num_timesteps), **pipeline.env.summary()})
            return directory

        def record(prefix: str) -> list[Path]:
            scorer, name = pipeline.env.video_scorer()
            return _record_video(config, model, scorer, name, run_dir / "videos", prefix)

        stopper = StopTrainingCallback(lambda: stop.reason() or pipeline.env.labelling_failure())
        callbacks = [*pipeline.callbacks, PeriodicCallback(config.run.checkpoint_every, save_checkpoint), stopper]
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
        if stopper.stopped_because is not None:
            _stop_after_checkpoint(config, run_dir, save_checkpoint(int(model.num_timesteps)), stop, pipeline.env)
        model.save(run_dir / "model.zip")
        if pipeline.env.reward_model is not None:
            pipeline.env.reward_model.save(run_dir / "reward_net")
    finally:
        pipeline.env.close()

    summary = {
        "run_dir": str(run_dir),
        "env_steps": int(model.num_timesteps),
        "train_seconds": round(train_seconds, 2),
        **pipeline.env.summary(),
        **success.summary(),
        **_label_store_summary(config, run_dir),
    }
    if config.run.eval_episodes and not stop.requested:
        summary["eval"] = evaluate_policy_true_return(config, model, config.run.eval_episodes)
    if video and config.run.video_episodes and not stop.requested:
        summary["videos"] = [str(p) for p in record("final")]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if not stop.requested:
        from vlmrl.report import write_report

        summary["report"] = str(write_report(run_dir))
    if stop.requested:  # after training had finished: the run is complete, only the extras were skipped
        raise stop.stopped(f"stopped by {stop.name} after training finished; the final policy is in "
                           f"{run_dir / 'model.zip'} (evaluation and video skipped)")
    return summary


def _label_store_summary(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """A VLM run's answers as ``{"labels": ...}``: parse rate, share of each answer kind and
    agreement with the scripted teacher per confidence bucket (``vlmrl label-pairs`` prints the same)."""
    if config.labeler.family != "pair" or not config.labeler.needs_frames:
        return {}
    from vlmrl.label_store import LabelStore
    from vlmrl.runs import label_store_path

    path = label_store_path(config, run_dir)
    if not path.is_file():
        return {}
    with LabelStore(path, read_only=True) as store:
        return {"labels": store.summary().as_dict()}


def _stop_after_checkpoint(config: ExperimentConfig, run_dir: Path, checkpoint: Path, stop: StopRequest, reward_env: Any) -> None:
    """Raise what ends a run stopped mid-way, once its checkpoint is written."""
    resume = f"continue with vlmrl train --resume {run_dir}"
    if stop.requested:
        raise stop.stopped(f"stopped by {stop.name} after checkpoint {checkpoint}; {resume}")
    endpoint = getattr(config.labeler, "base_url", None)
    where = f"the VLM endpoint at {endpoint}" if endpoint else f"the {config.labeler.kind} labeler"
    check = ("check that the server is running and answers, and that labeler.base_url, labeler.model and "
             "labeler.api_key_env are right" if endpoint else "check the labeler's log")
    raise UserError(f"stopped: {where} keeps failing: {reward_env.labelling_failure()}. {check.capitalize()}. "
                    f"A checkpoint was written to {checkpoint}; once it works, {resume}")


def _note_labeling_change(config: ExperimentConfig, reward_env: Any) -> None:
    """Say so when a run resumes in another labelling mode than its checkpoint's (allowed)."""
    before = getattr(reward_env, "labeling_at_checkpoint", None)
    section = "preference" if config.labeler.family == "pair" else "reward"
    now = getattr(config, section).labeling
    if before is not None and before != now:
        print(f"note: the checkpoint was written with {section}.labeling={before}; this run continues with "
              f"{section}.labeling={now}" + (" (pairs in flight at the checkpoint are drawn again)" if before == "async" else ""))


def _labelled_pipeline(config: ExperimentConfig, seed: int) -> RewardPipeline:
    """Per-frame labels (CLIP or oracle), optionally distilled into a CNN reward net; with
    ``reward.labeling: async`` labelled in a background thread, and the stored rewards of PPO's
    rollout (or SAC's replay buffer) refreshed after each refit."""
    from vlmrl.agents.labelled_reward import LabelledRewardVecEnv
    from vlmrl.agents.rollout_relabel import PPORolloutRelabelCallback, SACReplayRelabelCallback
    from vlmrl.agents.training_callbacks import RewardMetricsCallback
    from vlmrl.factory import make_labeler, make_vec_env
    from vlmrl.reward_nets import RewardModel

    labeler = make_labeler(config.labeler, "frame", seed=seed)
    reward_model = None
    if config.reward.distill:
        net = config.reward.net
        reward_model = RewardModel(net.net_config(), ensemble_size=net.ensemble_size, device=config.labeler.device, seed=seed)
    venv = make_vec_env(config.env, seed, capture_frames=labeler.needs_frames or reward_model is not None)
    labelled = LabelledRewardVecEnv(venv, labeler, reward_model, config.reward, seed=seed, labeler_name=config.labeler.name)
    callbacks: list = [RewardMetricsCallback(labelled)]
    if labelled.asynchronous:
        relabel = SACReplayRelabelCallback if config.agent.algo == "sac" else PPORolloutRelabelCallback
        callbacks.append(relabel(labelled))
    return RewardPipeline(env=labelled, callbacks=callbacks)


def _labels_in_a_process(config: ExperimentConfig) -> bool:
    """Async labels from a local transformers VLM come from a worker process (its generation
    would compete with the agent for the GIL); endpoint labelers and the teacher use threads."""
    return config.preference.labeling == "async" and config.labeler.kind == "hf"


def _preference_pipeline(config: ExperimentConfig, run_dir: Path, seed: int, stop: StopRequest) -> RewardPipeline:
    """RL-VLM-F: rewards learned from pairwise labels (VLM or scripted teacher), with PEBBLE
    replay relabelling under SAC. Every VLM answer goes to ``run_dir/labels.sqlite``.

    The endpoint is checked (``preflight``) before any env exists, so a dead or unauthorised
    one stops the run within seconds."""
    from vlmrl.agents.preference_reward import build_preference_env, preference_needs_frames
    from vlmrl.factory import make_labeler, make_vec_env
    from vlmrl.runs import label_store_path

    schedule = config.preference
    store = label_store_path(config, run_dir)
    if _labels_in_a_process(config):
        from vlmrl.reward_labelers.preference import StoreLedger

        # The model loads in the worker process only; this one plans and records under its store keys.
        labeler = StoreLedger(config.labeler.store_key_config(), store)
    else:
        labeler = make_labeler(config.labeler, "pair", seed=seed, store=store)
        preflight = getattr(labeler, "preflight", None)
        if preflight is not None:
            preflight()
    venv = make_vec_env(config.env, seed, capture_frames=preference_needs_frames(labeler, schedule))
    answers = None
    if _labels_in_a_process(config):
        from vlmrl.agents.async_labelling import ProcessPairAnswers

        try:  # waits for the worker to load the model: a model that cannot load stops the run here
            answers = ProcessPairAnswers(config.labeler, labeler, schedule.goal, schedule.queue_size,
                                         max_consecutive_failures=schedule.max_consecutive_failures, should_stop=stop,
                                         seed=seed)
        except BaseException:
            venv.close()
            raise
    preference_env, callbacks = build_preference_env(
        venv, labeler, schedule.goal, schedule, config.agent.algo, seed=seed, device=config.labeler.device,
        answers=answers, should_stop=stop,
    )
    return RewardPipeline(env=preference_env, callbacks=callbacks)


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

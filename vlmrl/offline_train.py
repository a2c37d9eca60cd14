"""Offline training (Offline RL-VLM-F): IQL on a relabelled dataset, with BC and IQL-on-true-reward baselines.

``vlmrl train configs/pendulum_offline_iql.yaml`` routes here when ``agent.algo`` is ``iql``.
Every method is trained for each seed, evaluated in the env on the TRUE return, and summarised
as one table (mean +- std over seeds of each seed's mean return), ``results.csv`` and
``results.png``. Methods:

- ``iql``: IQL on the dataset's rewards (the relabelled ones);
- ``bc``: behaviour cloning (ignores rewards);
- ``iql-gt``: IQL on the ground-truth rewards of the same transitions.

Layout: ``<run.root>/<run.name>/<method>/seed_<s>/`` holds the d3rlpy checkpoint
(resumed if the run is started again), TensorBoard logs and ``result.json``; a finished
``result.json`` is never recomputed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.config import OFFLINE_METHODS, load_offline_config
from vlmrl.errors import ConfigError, UserError

METHODS = OFFLINE_METHODS


def run_offline_training(
    config_path: str,
    overrides: list[str],
    baselines: list[str] | None = None,
    seeds: list[int] | None = None,
    show_progress: bool = True,
) -> Path:
    """Train IQL (+ baselines) for every seed, evaluate on the true return, write the summary.

    Args:
        config_path: the YAML config (see ``configs/pendulum_offline_iql.yaml``).
        overrides: ``KEY=VALUE`` overrides (``--set``).
        baselines: methods besides ``iql`` (``bc``, ``iql-gt``); None = the config's ``run.baselines``.
        seeds: None = the config's ``run.seeds``.

    Returns:
        The run directory.
    """
    import gymnasium as gym

    from vlmrl.datasets import open_dataset, validate_dataset

    config = load_offline_config(config_path, overrides)
    _quiet_d3rlpy_logging()
    methods = ["iql"] + [b for b in (config.run.baselines if baselines is None else baselines) if b != "iql"]
    for method in methods:
        if method not in METHODS:
            raise ConfigError(f"--baselines: unknown method {method!r}; choose from bc, iql-gt")
    seeds = list(config.run.seeds if seeds is None else seeds)

    # Everything is checked before the run directory is touched, so bad input leaves nothing.
    dataset = open_dataset(config.dataset.id)
    # Episodes of 0 steps hold no transition: skipped by to_mdp_dataset, not refused.
    validate_dataset(dataset, None, need_frames=False, min_steps=0)
    env_id = config.eval.env_id or dataset.metadata.get("vlmrl", {}).get("task") or _spec_id(dataset)
    if not env_id:
        raise ConfigError(f"{config_path}: eval.env_id is needed (the dataset does not name its env)")
    run_dir = Path(config.run.root) / (config.run.name or f"{config.task}_offline_iql")

    def make_env() -> Any:
        import vlmrl.envs  # noqa: F401  (registers vlmrl/* ids)

        return gym.make(env_id, **dict(config.eval.env_kwargs))

    _check_eval_env(make_env, env_id, config_path)
    with _claim_run_dir(run_dir, config_path):
        (run_dir / "config.json").write_text(json.dumps(_plain(config), indent=2, sort_keys=True))
        results, success = _train_methods(config, dataset, run_dir, methods, seeds, make_env, show_progress)
        write_summary(run_dir, results, seeds, success)
        from vlmrl.report import write_report

        print(f"report: {write_report(run_dir)}")
    return run_dir


def _check_eval_env(make_env: Any, env_id: str, config_path: str) -> None:
    """Build the evaluation env once now: an unknown env id fails before training, not after."""
    import gymnasium as gym

    try:
        make_env().close()
    except gym.error.Error as error:
        raise ConfigError(f"{config_path}: eval.env_id {env_id!r} cannot be made: {error}") from error


def _train_methods(config: Any, dataset: Any, run_dir: Path, methods: list[str], seeds: list[int], make_env: Any,
                   show_progress: bool) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Train and evaluate every method for every seed; finished ``result.json`` files are reused."""
    from vlmrl.agents.iql import evaluate_policy, train_offline
    from vlmrl.datasets import to_mdp_dataset

    mdp = {}
    agent = config.agent
    iql_params = dict(gamma=agent.gamma, tau=agent.tau, expectile=agent.expectile, weight_temp=agent.weight_temp,
                      max_weight=agent.max_weight, actor_learning_rate=agent.actor_learning_rate,
                      critic_learning_rate=agent.critic_learning_rate)
    results: dict[str, list[float]] = {}
    success: dict[str, list[float]] = {}  # methods whose eval env reports info["success"]
    for method in methods:
        rewards = "true" if method == "iql-gt" else "dataset"
        if rewards not in mdp:
            mdp[rewards] = to_mdp_dataset(dataset, rewards=rewards, observation_key=config.dataset.observation_key)
        results[method] = []
        for seed in seeds:
            out = run_dir / method / f"seed_{seed}"
            result_file = out / "result.json"
            if result_file.is_file():
                result = json.loads(result_file.read_text())
            else:
                algo = train_offline(
                    "bc" if method == "bc" else "iql", mdp[rewards], out, n_steps=agent.n_steps,
                    n_steps_per_epoch=agent.n_steps_per_epoch, seed=seed, device=agent.device,
                    batch_size=agent.batch_size,
                    hyperparams={"learning_rate": agent.bc_learning_rate} if method == "bc" else iql_params,
                    show_progress=show_progress,
                )
                returns, successes = evaluate_policy(algo, make_env, config.eval.episodes, seed=seed)
                result = {"method": method, "seed": seed, "returns": returns.tolist(),
                          "mean_return": float(returns.mean()), "std_return": float(returns.std())}
                if successes is not None:
                    result["success_rate"] = float(successes.mean())
                result_file.write_text(json.dumps(result, indent=2))
            results[method].append(result["mean_return"])
            if "success_rate" in result:
                success.setdefault(method, []).append(result["success_rate"])
    return results, success


def _claim_run_dir(run_dir: Path, config_path: str) -> Any:
    """Create ``run_dir`` (checked writable first) and lock it: a second ``vlmrl train`` of the
    same offline run stops at once instead of writing the same checkpoints."""
    from vlmrl.locks import check_writable_dir
    from vlmrl.runs import run_dir_lock

    check_writable_dir(run_dir, "the offline run directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the run directory {run_dir} ({error.strerror})") from error
    return run_dir_lock(run_dir, resume_command=f"vlmrl train {config_path}")


def summary_table(results: dict[str, list[float]], success: dict[str, list[float]] | None = None) -> str:
    """One row per method: mean +- std over seeds of each seed's mean true return, and of its
    success rate where the env reports success (Meta-World)."""
    success = success or {}
    header = f"{'method':<10} {'true return (mean +- std over seeds)':>38} {'seeds':>6}"
    lines = [header + (f" {'success rate':>20}" if success else "")]
    for method, values in results.items():
        values_arr = np.asarray(values)
        line = f"{method:<10} {values_arr.mean():>24.2f} +- {values_arr.std():<10.2f} {len(values):>6}"
        if method in success:
            rates = np.asarray(success[method])
            line += f" {rates.mean():>12.2f} +- {rates.std():.2f}"
        lines.append(line)
    return "\n".join(lines)


def write_summary(run_dir: Path, results: dict[str, list[float]], seeds: list[int],
                  success: dict[str, list[float]] | None = None) -> None:
    """Print the table; write ``results.csv`` (one row per method and seed, with a
    ``success_rate`` column where the env reports success) and ``results.png``."""
    success = success or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print(summary_table(results, success))
    with open(run_dir / "results.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "seed", "mean_true_return"] + (["success_rate"] if success else []))
        for method, values in results.items():
            rates = success.get(method, [None] * len(values))
            for seed, value, rate in zip(seeds, values, rates):
                writer.writerow([method, seed, f"{value:.6f}"] + ([] if not success else [
                    "" if rate is None else f"{rate:.6f}"]))
    names = list(results)
    means = [float(np.mean(results[m])) for m in names]
    stds = [float(np.std(results[m])) for m in names]
    figure, axis = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5))
    axis.bar(names, means, yerr=stds, capsize=6, color=["tab:blue", "tab:gray", "tab:green"][: len(names)])
    axis.set_ylabel("true return")
    axis.set_title(f"{run_dir.name}: mean +- std over {len(seeds)} seed(s)")
    figure.tight_layout()
    figure.savefig(run_dir / "results.png", dpi=100)
    plt.close(figure)


def _spec_id(dataset: Any) -> str | None:
    spec = dataset.metadata.get("env_spec")
    if not spec:
        return None
    return json.loads(spec).get("id")


def _plain(config: Any) -> Any:
    from vlmrl.config_loading import to_plain

    return to_plain(config)


def _quiet_d3rlpy_logging() -> None:
    """d3rlpy logs every build step and epoch through structlog at debug/info level; keep its
    warnings only (our table, progress bars and TensorBoard carry the metrics)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

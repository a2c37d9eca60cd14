"""``vlmrl eval-reward``: how well does a labeler's reward track the true reward?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DESCRIPTION = """\
Roll out a policy (random, or a run's saved policy), label every rendered frame with the
config's labeler, and report the Pearson and Spearman correlation between the labeler's reward
and the environment's true reward, with a PNG scatter plot. Run it before a long training run:
a CLIP reward that does not correlate with the task will not train it.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-reward",
        help="correlate a labeler's reward with the true reward on rollouts (PNG scatter plot)",
        description=DESCRIPTION,
        epilog="example: vlmrl eval-reward configs/cartpole_clip.yaml --episodes 5 --out runs/eval_cartpole",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config whose env and labeler are evaluated")
    parser.add_argument("--policy", default="random", help="'random' or a run directory with a saved policy (default: random)")
    parser.add_argument("--episodes", type=int, default=5, help="episodes to roll out (default: 5)")
    parser.add_argument("--out", default=None, help="output folder for scatter.png and correlation.json (default: runs/eval-reward__<task>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key; repeatable")
    parser.set_defaults(func=run)


def correlations(labels: np.ndarray, true_rewards: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation (NaN when either side is constant)."""
    from scipy import stats

    if np.std(labels) == 0 or np.std(true_rewards) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {
        "pearson": float(stats.pearsonr(labels, true_rewards).statistic),
        "spearman": float(stats.spearmanr(labels, true_rewards).statistic),
    }


def scatter_plot(labels: np.ndarray, true_rewards: np.ndarray, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 4), dpi=100)
    jitter = np.random.default_rng(0).normal(0, 0.01 * (np.ptp(true_rewards) or 1.0), size=true_rewards.shape)
    axis.scatter(true_rewards + jitter, labels, s=6, alpha=0.4)
    axis.set_xlabel("true reward (jittered)")
    axis.set_ylabel("labeler reward")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def run(args: argparse.Namespace) -> int:
    from vlmrl.agents.sb3_agents import load_agent
    from vlmrl.config import load_config
    from vlmrl.errors import UserError
    from vlmrl.factory import make_env, make_labeler
    from vlmrl.runs import load_run_config, policy_path
    from vlmrl.video import rollout

    if args.episodes < 1:
        raise UserError("--episodes must be >= 1")
    config = load_config(args.config, args.overrides)
    labeler = make_labeler(config.labeler, "frame", seed=config.run.seed)
    env = make_env(config.env)
    if args.policy == "random":
        env.action_space.seed(args.seed)
        policy = lambda obs: env.action_space.sample()  # noqa: E731
    else:
        run_config = load_run_config(args.policy)
        model = load_agent(run_config.agent.algo, policy_path(Path(args.policy)), None, device="cpu")
        policy = lambda obs: model.predict(obs, deterministic=True)[0]  # noqa: E731
    try:
        episodes = rollout(env, policy, args.episodes, seed=args.seed)
    finally:
        env.close()
    frames = np.concatenate([e.frames for e in episodes])
    true_rewards = np.concatenate([e.true_rewards for e in episodes])
    labels = np.asarray(labeler.label(frames, true_rewards=true_rewards), dtype=np.float64)

    out = Path(args.out or f"runs/eval-reward__{config.task}__{config.labeler.name}")
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "config": str(args.config),
        "labeler": config.labeler.name,
        "policy": args.policy,
        "frames": int(len(frames)),
        **correlations(labels, true_rewards.astype(np.float64)),
        "labeler_reward_mean": float(labels.mean()),
        "labeler_reward_std": float(labels.std()),
    }
    title = f"{config.task} / {config.labeler.name}: pearson {result['pearson']:.3f}, spearman {result['spearman']:.3f}"
    result["scatter_png"] = str(scatter_plot(labels, true_rewards, title, out / "scatter.png"))
    (out / "correlation.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0

"""``vlmrl record``: write rollout videos of a run's saved policy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Roll out the saved policy of a training run and write each episode as an MP4 (and GIF with
--gif). With --overlay, every frame shows a reward next to the true reward:
  learned   the run's distilled reward net (runs trained with reward.distill)
  labeler   the run's labeler (e.g. CLIP; loads its weights)
  none      plain frames (default)
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "record",
        help="write MP4/GIF rollout videos of a run's saved policy",
        description=DESCRIPTION,
        epilog="example: vlmrl record runs/cartpole__oracle__0__20261127-101500 --episodes 3 --overlay learned",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `vlmrl train`")
    parser.add_argument("--episodes", type=int, default=3, help="number of episodes to record (default: 3)")
    parser.add_argument("--out", default="videos", help="output folder (default: videos/)")
    parser.add_argument("--gif", action="store_true", help="also write a GIF per episode")
    parser.add_argument("--fps", type=int, default=30, help="frames per second of the video (default: 30)")
    parser.add_argument("--size", type=int, default=0, help="render frames SIZE x SIZE pixels (default: the run's render size)")
    parser.add_argument("--overlay", choices=("none", "learned", "labeler"), default="none", help="reward drawn on each frame")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (episode i uses seed+i)")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic policy")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmrl.agents.sb3_agents import load_agent
    from vlmrl.errors import UserError
    from vlmrl.factory import make_env, make_labeler
    from vlmrl.runs import load_run_config, policy_path
    from vlmrl.video import record_episodes

    if args.episodes < 1:
        raise UserError("--episodes must be >= 1")
    run_dir = Path(args.run_dir)
    config = load_run_config(run_dir)
    model = load_agent(config.agent.algo, policy_path(run_dir), None, device="cpu")

    scorer, scorer_name = None, "reward"
    if args.overlay == "learned":
        from vlmrl.reward_nets import RewardModel

        if not (run_dir / "reward_net.json").is_file():
            raise UserError(f"{run_dir} has no reward_net.json: --overlay learned needs a run trained with reward.distill")
        scorer, scorer_name = RewardModel.load(run_dir / "reward_net").predict, "learned"
    elif args.overlay == "labeler":
        labeler = make_labeler(config.labeler, "frame", seed=config.run.seed)
        if not labeler.needs_frames:
            raise UserError(f"the {config.labeler.kind} labeler scores true rewards, not frames: use --overlay none or learned")
        scorer, scorer_name = labeler.label, config.labeler.name

    env = make_env(config.env, render_size=(args.size, args.size) if args.size else None)
    try:
        paths, episodes = record_episodes(
            env,
            lambda obs: model.predict(obs, deterministic=not args.stochastic)[0],
            Path(args.out),
            prefix=run_dir.name,
            episodes=args.episodes,
            seed=args.seed,
            fps=args.fps,
            gif=args.gif,
            scorer=scorer,
            scorer_name=scorer_name,
        )
    finally:
        env.close()
    print(json.dumps({"videos": [str(p) for p in paths], "true_returns": [e.true_return for e in episodes]}, indent=2))
    return 0

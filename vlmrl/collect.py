"""``vlmrl collect``: record a sub-optimal offline dataset, with frames, as a new Minari dataset.

Examples::

    vlmrl collect pendulum --policy random --episodes 50 --out pendulum/random-v0
    vlmrl collect pendulum --policy runs/pendulum_sac --noise 0.3 --random-fraction 0.5 \\
        --episodes 100 --out pendulum/medium-replay-v0
    vlmrl collect metaworld-drawer-open --policy scripted --noise 0.5 --random-fraction 0.3 \
        --episodes 50 --render-size 300 --out metaworld/drawer-open-medium-v0

A mixture (random / medium / expert) is ``--random-fraction`` of the episodes played by the
uniform random policy and the rest by the trained policy (or Meta-World's scripted expert,
``--policy scripted``) with Gaussian action noise of
``--noise`` times half the action range. Frames (``--render-size``) are stored losslessly
beside the Minari data (see :mod:`vlmrl.datasets`).
"""

from __future__ import annotations

import argparse
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.datasets import check_output_dataset, datasets_root
from vlmrl.errors import UserError
from vlmrl.locks import OutputLock
from vlmrl.stopping import StopRequest

TASK_ALIASES = {
    "pendulum": "Pendulum-v1",
    "mountaincar": "vlmrl/MountainCarContinuousTextured-v0",
    "humanoid": "vlmrl/HumanoidTextured-v0",
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
}

Policy = Callable[[np.ndarray], np.ndarray]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="record an offline dataset (random / medium / expert mixtures) with frames",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", help=f"Gymnasium id, alias ({', '.join(TASK_ALIASES)}) or metaworld-<task> "
                                     "(e.g. metaworld-drawer-open, metaworld-sweep-into, metaworld-soccer)")
    parser.add_argument("--policy", default="random",
                        help="'random', 'scripted' (Meta-World's expert, metaworld-<task> only) or an SB3 run "
                             "directory (model.zip or checkpoints/)")
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian action noise, in half action ranges")
    parser.add_argument("--random-fraction", type=float, default=0.0, help="fraction of episodes played at random")
    parser.add_argument("--episodes", type=int, required=True)
    parser.add_argument("--max-steps", type=int, default=None, help="cap on steps per episode")
    parser.add_argument("--out", required=True, help="new dataset id, e.g. pendulum/random-v0")
    parser.add_argument("--render-size", type=int, nargs="+", default=[64], metavar="PX",
                        help="frame size: one number (square) or HEIGHT WIDTH")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if len(args.render_size) not in (1, 2):
        raise UserError("--render-size takes one number or HEIGHT WIDTH")
    if min(args.render_size) <= 0:
        raise UserError(f"--render-size must be > 0 pixels, got {' '.join(map(str, args.render_size))}")
    size = (args.render_size[0], args.render_size[-1])
    check_collect_arguments(args.episodes, args.random_fraction, args.noise, args.max_steps)
    check_output_dataset(args.out)  # before loading a policy or rendering anything
    if args.policy == "random":
        policy = None
    elif args.policy == "scripted":
        policy = scripted_expert(args.task)
    else:
        policy = load_sb3_policy(Path(args.policy))
    path = collect_dataset(
        task=args.task,
        dataset_id=args.out,
        episodes=args.episodes,
        policy=policy,
        policy_name=args.policy,
        noise=args.noise,
        random_fraction=1.0 if policy is None else args.random_fraction,
        render_size=size,
        max_steps=args.max_steps,
        seed=args.seed,
    )
    print(f"wrote dataset {args.out} ({args.episodes} episodes) to {path}")
    return 0


METAWORLD_PREFIX = "metaworld-"


def resolve_task(task: str) -> str:
    """An alias, ``metaworld-<task>`` (e.g. ``metaworld-drawer-open``) or a Gymnasium id."""
    if task.lower().startswith(METAWORLD_PREFIX):
        from vlmrl.envs import metaworld_env_id

        return metaworld_env_id(task[len(METAWORLD_PREFIX):].lower())  # unknown: lists the tasks
    return TASK_ALIASES.get(task.lower(), task)


def scripted_expert(task: str) -> Policy:
    """Meta-World's own scripted expert policy for a ``metaworld-<task>`` (``--policy scripted``)."""
    if not task.lower().startswith(METAWORLD_PREFIX):
        raise UserError(f"--policy scripted needs a Meta-World task (metaworld-<task>, e.g. metaworld-drawer-open), "
                        f"got {task!r}; use 'random' or an SB3 run directory")
    resolve_task(task)  # an unknown task names the available ones
    from vlmrl.envs.metaworld_policies import scripted_policy

    return scripted_policy(task[len(METAWORLD_PREFIX):].lower())


def make_render_env(env_id: str, render_size: tuple[int, int]) -> Any:
    """``gym.make`` with rgb_array rendering, at the frame size when the env accepts one."""
    import gymnasium as gym

    import vlmrl.envs  # noqa: F401  (registers vlmrl/* ids)

    height, width = render_size
    # vlmrl's envs take render_width/render_height; Gymnasium's MuJoCo envs take width/height.
    size_kwargs = (
        {"render_width": width, "render_height": height} if env_id.startswith("vlmrl/") else {"width": width, "height": height}
    )
    try:
        return gym.make(env_id, render_mode="rgb_array", **size_kwargs)
    except TypeError:
        pass
    except gym.error.Error as error:
        raise UserError(f"unknown task {env_id!r}: {error}") from error
    try:
        return gym.make(env_id, render_mode="rgb_array")
    except gym.error.Error as error:
        raise UserError(f"unknown task {env_id!r}: {error}") from error


def resize_frame(frame: np.ndarray, render_size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` at ``render_size`` (height, width); area filter when shrinking."""
    from PIL import Image

    frame = np.asarray(frame, dtype=np.uint8)
    if frame.shape[:2] == tuple(render_size):
        return frame
    image = Image.fromarray(frame).resize((render_size[1], render_size[0]), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


def collect_dataset(
    task: str,
    dataset_id: str,
    episodes: int,
    policy: Policy | None = None,
    policy_name: str = "random",
    noise: float = 0.0,
    random_fraction: float = 1.0,
    render_size: tuple[int, int] = (64, 64),
    max_steps: int | None = None,
    seed: int = 0,
) -> Path:
    """Roll out a (noisy) policy / random mixture and publish a new Minari dataset with frames.

    Args:
        policy: maps one observation to one action; None = uniform random actions.
        noise: std of Gaussian action noise in units of half the action range.
        random_fraction: fraction of episodes played by the random policy (the rest by ``policy``).
        render_size: (height, width) of stored frames in pixels.

    Returns:
        The published dataset directory.
    """
    check_collect_arguments(episodes, random_fraction, noise, max_steps)
    check_output_dataset(dataset_id)
    lock = OutputLock(datasets_root() / f".collect-{dataset_id.replace('/', '__')}.lock", "collect", dataset_id)
    with lock:  # one writer per output: a second collect of the same --out stops at once
        return _collect(task, dataset_id, episodes, policy, policy_name, noise, random_fraction, render_size,
                        max_steps, seed)


def check_collect_arguments(episodes: int, random_fraction: float, noise: float, max_steps: int | None) -> None:
    """Refuse values that would record nothing or fail later, before anything is rendered."""
    if episodes <= 0:
        raise UserError(f"--episodes must be > 0, got {episodes}")
    if not 0.0 <= random_fraction <= 1.0:
        raise UserError(f"--random-fraction must be in [0, 1], got {random_fraction}")
    if noise < 0:
        raise UserError(f"--noise must be >= 0, got {noise}")
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be >= 1 (an episode needs at least one step), got {max_steps}")


def _collect(task: str, dataset_id: str, episodes: int, policy: Policy | None, policy_name: str, noise: float,
             random_fraction: float, render_size: tuple[int, int], max_steps: int | None, seed: int) -> Path:
    """The rollouts of :func:`collect_dataset`, once its arguments and output are checked and locked."""
    from tqdm import tqdm

    from vlmrl.datasets import EpisodeData, MinariWriter

    env_id = resolve_task(task)
    env = make_render_env(env_id, render_size)
    space = env.action_space
    if not hasattr(space, "low"):
        env.close()
        raise UserError(f"{env_id}: collect supports continuous (Box) action spaces only")
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    rng = np.random.default_rng(seed)
    n_random = int(round(random_fraction * episodes)) if policy is not None else episodes
    players = np.array(["random"] * n_random + ["policy"] * (episodes - n_random))
    rng.shuffle(players)
    writer = MinariWriter(dataset_id, env.observation_space, space, env_spec=env.spec)
    returns = []
    stop = StopRequest().install()  # SIGTERM / SIGINT: stop between episodes, publish nothing
    try:
        for index in tqdm(range(episodes), desc=f"collect {dataset_id}", unit="ep"):
            if stop.requested:
                raise stop.stopped(f"stopped by {stop.name} after {index} of {episodes} episodes; nothing was published")
            episode_seed = int(seed * 1_000_003 + index)
            observation, info = env.reset(seed=episode_seed)
            space.seed(episode_seed)
            observations, frames = [observation], [resize_frame(env.render(), render_size)]
            actions, rewards, terminations, truncations, true_rewards = [], [], [], [], []
            while True:
                if players[index] == "random":
                    action = space.sample()
                else:
                    action = np.asarray(policy(observation), dtype=np.float64).reshape(space.shape)
                    if noise > 0:
                        action = action + noise * (high - low) / 2 * rng.standard_normal(space.shape)
                    action = np.clip(action, low, high).astype(space.dtype)
                observation, reward, terminated, truncated, info = env.step(action)
                # Render now, before any reset, so the frame shows this step's state.
                frames.append(resize_frame(env.render(), render_size))
                observations.append(observation)
                actions.append(action)
                rewards.append(float(reward))
                true_rewards.append(float(info.get("true_reward", reward)))
                terminations.append(bool(terminated))
                truncations.append(bool(truncated) or (max_steps is not None and len(rewards) >= max_steps))
                if terminations[-1] or truncations[-1]:
                    break
            returns.append(sum(true_rewards))
            writer.add_episode(
                EpisodeData(
                    index=index,
                    observations=np.stack(observations),
                    actions=np.stack(actions),
                    rewards=np.asarray(rewards),
                    terminations=np.asarray(terminations),
                    truncations=np.asarray(truncations),
                    infos={"true_reward": np.asarray([0.0] + true_rewards)},
                    seed=episode_seed,
                ),
                frames=np.stack(frames),
            )
        metadata = {
            "algorithm_name": f"vlmrl collect ({policy_name}, noise={noise}, random_fraction={random_fraction})",
            "vlmrl": {
                "task": env_id,
                "policy": policy_name,
                "noise": noise,
                "random_fraction": random_fraction,
                "frames": {"dir": "frames", "layout": "episode_<i>.npy uint8 [T+1, H, W, 3]",
                           "height": render_size[0], "width": render_size[1]},
                "mean_true_return": float(np.mean(returns)),
                "seed": seed,
            },
        }
        return writer.publish(metadata)
    except BaseException:
        writer.discard()
        raise
    finally:
        stop.uninstall()
        env.close()


def find_sb3_model(run_dir: Path) -> Path:
    """``RUN_DIR/model.zip``, else the newest ``RUN_DIR/checkpoints/*.zip``, else RUN_DIR itself."""
    if run_dir.is_file() and run_dir.suffix == ".zip":
        return run_dir
    if (run_dir / "model.zip").is_file():
        return run_dir / "model.zip"
    checkpoints = sorted((run_dir / "checkpoints").glob("*.zip"), key=lambda p: p.stat().st_mtime)
    if checkpoints:
        return checkpoints[-1]
    raise UserError(f"--policy {run_dir}: no model.zip or checkpoints/*.zip found (or use --policy random)")


def load_sb3_policy(run_dir: Path) -> Policy:
    """Deterministic action function of a saved SB3 model (SAC, TD3, DDPG, PPO, A2C)."""
    import stable_baselines3 as sb3

    path = find_sb3_model(run_dir)
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"--policy {path}: not a readable SB3 model file ({error})") from error
    except KeyError as error:
        raise UserError(f"--policy {path}: not an SB3 model (no 'data' entry in the zip)") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"--policy {path}, entry 'data': corrupt JSON ({error})") from error
    if not isinstance(data, dict):
        raise UserError(f"--policy {path}, entry 'data': expected a JSON object")
    policy_class = data.get("policy_class")
    module = str(policy_class.get("__module__", "")) if isinstance(policy_class, dict) else ""
    classes = {"sac": sb3.SAC, "td3": sb3.TD3, "ddpg": sb3.DDPG, "ppo": sb3.PPO, "a2c": sb3.A2C}
    algo = next((cls for name, cls in classes.items() if f".{name}." in module), None)
    if algo is None:
        raise UserError(f"--policy {path}: unsupported SB3 policy class {module!r}")
    model = algo.load(path, device="cpu")

    def act(observation: np.ndarray) -> np.ndarray:
        action, _ = model.predict(observation, deterministic=True)
        return np.asarray(action)

    return act

"""Roll out a policy and write the episodes as MP4 (and optionally GIF) videos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw

Policy = Callable[[np.ndarray], np.ndarray]
"""Maps one observation to one action."""

FrameScorer = Callable[[np.ndarray], np.ndarray]
"""Maps uint8 frames ``[N, H, W, 3]`` to float rewards ``[N]`` (a labeler or reward net)."""


@dataclass
class Episode:
    """One rollout: frames uint8 ``[T, H, W, 3]`` and the true reward of each step ``[T]``."""

    frames: np.ndarray
    true_rewards: np.ndarray

    @property
    def true_return(self) -> float:
        return float(self.true_rewards.sum())


def rollout(env: gym.Env, policy: Policy, episodes: int, seed: int, max_steps: int = 10_000) -> list[Episode]:
    """Run ``episodes`` episodes, keeping the frame rendered after every step."""
    result = []
    for index in range(episodes):
        observation, _ = env.reset(seed=seed + index)
        frames, rewards = [], []
        for _ in range(max_steps):
            observation, reward, terminated, truncated, info = env.step(policy(observation))
            frames.append(np.asarray(env.render(), dtype=np.uint8))
            rewards.append(float(info.get("true_reward", reward)))
            if terminated or truncated:
                break
        result.append(Episode(np.stack(frames), np.asarray(rewards, dtype=np.float32)))
    return result


def draw_reward_overlay(frames: np.ndarray, rewards: np.ndarray, label: str, true_rewards: np.ndarray) -> np.ndarray:
    """Write ``label`` reward, true reward and step index into the top-left corner of each frame."""
    out = np.empty_like(frames)
    for t, (frame, reward, true_reward) in enumerate(zip(frames, rewards, true_rewards)):
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        text = f"t={t}  {label}={reward:+.3f}  true={true_reward:+.2f}"
        box = draw.textbbox((4, 4), text)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((4, 4), text, fill=(255, 255, 255))
        out[t] = np.asarray(image)
    return out


def _even(frames: np.ndarray) -> np.ndarray:
    """H.264 with yuv420p needs even width and height: pad one edge pixel where needed."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 30) -> Path:
    """Write uint8 ``[T, H, W, 3]`` frames as an H.264 MP4 playable by browsers and players."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(
        path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error"
    ) as writer:
        for frame in _even(frames):
            writer.append_data(frame)
    return path


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 30) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def record_episodes(
    env: gym.Env,
    policy: Policy,
    out_dir: str | Path,
    prefix: str,
    episodes: int = 1,
    seed: int = 0,
    fps: int = 30,
    gif: bool = False,
    scorer: FrameScorer | None = None,
    scorer_name: str = "reward",
) -> tuple[list[Path], list[Episode]]:
    """Roll out ``episodes`` episodes and write ``{prefix}-episode{i}.mp4`` (+ ``.gif``) files.

    With ``scorer``, each frame shows the scorer's reward next to the true reward.
    Returns the written paths and the episodes (for their true returns).
    """
    out_dir = Path(out_dir)
    paths = []
    recorded = rollout(env, policy, episodes, seed)
    for index, episode in enumerate(recorded):
        frames = episode.frames
        if scorer is not None:
            frames = draw_reward_overlay(frames, scorer(frames), scorer_name, episode.true_rewards)
        stem = out_dir / f"{prefix}-episode{index}"
        paths.append(write_mp4(frames, stem.with_suffix(".mp4"), fps))
        if gif:
            paths.append(write_gif(frames, stem.with_suffix(".gif"), fps))
    return paths, recorded

"""Evaluate a policy on the environment's true reward."""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np


def true_returns(
    env: gym.Env, policy: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int, max_steps: int = 100_000
) -> list[float]:
    """True return (sum of ``info["true_reward"]``, else the env reward) of each episode."""
    returns = []
    for index in range(episodes):
        observation, _ = env.reset(seed=seed + index)
        total = 0.0
        for _ in range(max_steps):
            observation, reward, terminated, truncated, info = env.step(policy(observation))
            total += float(info.get("true_reward", reward))
            if terminated or truncated:
                break
        returns.append(total)
    return returns

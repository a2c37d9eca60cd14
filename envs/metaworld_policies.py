"""Meta-World's own scripted expert policies, as plain ``obs -> action`` functions.

For offline datasets (``vlmrl collect metaworld-<task> --policy scripted``): the collector mixes
these actions with noise and random actions itself. Each expert is Meta-World's
``metaworld.policies.Sawyer<Task>V3Policy``; this module only adapts its interface.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from vlmrl.envs.metaworld import canonical_task, metaworld_missing

# Meta-World's policies warn on every step whose proportional response exceeds 1 (the env
# clips it anyway); silenced per call so a collection run does not print thousands of them.
_GAIN_WARNING = r"Constant\(s\) may be too high"


def scripted_policy(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """Meta-World's scripted expert for ``task`` (``"drawer-open"``, ``-v3`` suffix accepted).

    The returned function maps one observation of ``vlmrl/MetaWorld<Task>-v0`` (the 39-dim
    float64 state, **goal observable**, i.e. the env's default ``goal_observable=True``: 19 of
    the 50 experts steer towards the goal in the last three entries) to one action, float32 of
    shape (4,) clipped to the action space [-1, 1]. It keeps no state between calls, so one
    function serves any number of envs and episodes.

    :raises ConfigError: unknown task (the message lists the available ones).
    :raises MetaWorldNotInstalledError: metaworld is missing (the message says how to add it).
    """
    try:
        from metaworld.policies import ENV_POLICY_MAP
    except ImportError as error:
        raise metaworld_missing(error) from error
    experts = {name.removesuffix("-v3"): cls for name, cls in ENV_POLICY_MAP.items()}
    expert = experts[canonical_task(task, tuple(experts))]()

    def act(obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_GAIN_WARNING)
            action = expert.get_action(np.asarray(obs, dtype=np.float64))
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    act.__name__ = f"scripted_{expert.__class__.__name__}"
    return act


__all__ = ["scripted_policy"]

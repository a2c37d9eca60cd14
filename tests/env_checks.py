"""Gymnasium's ``check_env`` as the contract every vlmrl env passes, shared by the env test modules."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from gymnasium.utils.env_checker import check_env


def check_env_warnings(env, benign: Iterable[str]) -> list[str]:
    """Run ``check_env`` on ``env`` and its unwrapped core, close it, and return the warnings
    that contain none of the ``benign`` snippets (an empty list is a pass)."""
    benign = tuple(benign)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
        check_env(env)
    env.close()
    return [str(w.message) for w in caught if not any(b in str(w.message) for b in benign)]

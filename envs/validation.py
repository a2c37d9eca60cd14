"""Argument checks shared by the env constructors; bad values raise ConfigError (user-fixable)."""

from __future__ import annotations

import numpy as np

from vlmrl.errors import ConfigError


def check_positive_ints(**values: object) -> None:
    """Raise ConfigError unless every keyword value is an integer >= 1 (names appear in the message)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def check_render_mode(render_mode: str | None, allowed: list[str]) -> None:
    """Raise ConfigError unless ``render_mode`` is None or one of ``allowed``."""
    if render_mode is not None and render_mode not in allowed:
        raise ConfigError(f"render_mode must be None or one of {allowed}, got {render_mode!r}")

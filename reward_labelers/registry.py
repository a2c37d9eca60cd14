"""The labeler registry: ``kind`` -> config class, the one place ``train`` and ``relabel`` look.

A labeler is its config class plus its implementation. The config is a frozen dataclass that
subclasses :class:`LabelerConfig`, names its ``kind``, says whether the labeler scores single
frames (``family = "frame"``, a :class:`~vlmrl.reward_labelers.base.FrameRewardLabeler`) or
compares pairs (``family = "pair"``, a :class:`~vlmrl.reward_labelers.base.PairwiseLabeler`),
and builds it in :meth:`LabelerConfig.create`. Registering it (d3rlpy's ``register_learnable``
pattern) makes ``labeler: {kind: <kind>, ...}`` valid in every YAML config. README "Adding a
labeler" walks through a complete example (``tests/test_adding_a_labeler.py`` runs it).

The YAML section is flat: ``kind`` picks the class, every other key is one of its fields
(``device`` is common to all). Config modules must stay light (no torch at import): the
implementation is imported inside ``create``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from vlmrl.errors import ConfigError

FAMILIES = ("frame", "pair")

# Modules whose import registers the built-in kinds (imported on the first lookup).
BUILTIN_CONFIG_MODULES = (
    "vlmrl.reward_labelers.clip_config",
    "vlmrl.reward_labelers.oracle_config",
    "vlmrl.reward_labelers.vlm_config",
)

_REGISTRY: dict[str, type[LabelerConfig]] = {}


@dataclass(frozen=True, kw_only=True)
class LabelerConfig:
    """Base of every labeler's config.

    Attributes:
        kind: registry name (class attribute; the YAML ``kind`` key).
        family: ``"frame"`` (one reward per frame) or ``"pair"`` (preferences between two).
        needs_frames: whether the labeler reads pixels (the scripted teachers read only true
            rewards, so callers may skip rendering for them).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:N]"``: where its model runs.
    """

    kind: ClassVar[str] = ""
    family: ClassVar[str] = "frame"
    needs_frames: ClassVar[bool] = True
    device: str = "auto"

    def create(self, *, seed: int = 0, store: str | Path | None = None) -> Any:
        """Build the labeler (loads model weights where it has any).

        Args:
            seed: seeds any randomness of the labeler (noise, the teacher's mistakes).
            store: pairwise VLM labelers: the SQLite label store (None = keep no record).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement create()")

    def preflight(self) -> None:
        """Check in seconds, before any work, that the labeler's service answers (one cheap
        request for an endpoint); raise :class:`~vlmrl.errors.UserError` saying what to fix.
        Labelers without a service check nothing."""

    @property
    def inputs(self) -> str:
        """What ``label`` reads per item: ``frames``, ``observations`` (state vectors) or
        ``none`` (only the true rewards)."""
        return "frames" if self.needs_frames else "none"

    @property
    def pairs_in_flight(self) -> int:
        """Pairs one instance works on at once (HTTP requests, or one generate batch)."""
        return 1

    @property
    def name(self) -> str:
        """Short name for run directories and plots."""
        return self.kind

    @classmethod
    def config_class_for(cls, kind: Any) -> type[LabelerConfig]:
        """The registered config class of ``kind`` (used by the YAML loader)."""
        return labeler_config_class(kind)


def register_labeler(config_class: type[LabelerConfig]) -> type[LabelerConfig]:
    """Register a labeler config class under its ``kind`` (usable as a class decorator)."""
    if not (isinstance(config_class, type) and issubclass(config_class, LabelerConfig)):
        raise TypeError(f"{config_class!r} must subclass vlmrl.reward_labelers.registry.LabelerConfig")
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"{config_class.__name__} must be a (frozen) dataclass")
    kind = config_class.kind
    if not kind or not isinstance(kind, str):
        raise TypeError(f"{config_class.__name__}.kind must be a non-empty string")
    if config_class.family not in FAMILIES:
        raise TypeError(f"{config_class.__name__}.family must be one of {FAMILIES}, got {config_class.family!r}")
    known = _REGISTRY.get(kind)
    if known is not None and known.__qualname__ != config_class.__qualname__:
        raise ValueError(f"labeler kind {kind!r} is already registered by {known.__module__}.{known.__qualname__}")
    _REGISTRY[kind] = config_class
    return config_class


PLUGINS_VARIABLE = "VLMRL_LABELERS"
"""Comma-separated modules imported on the first lookup, e.g. ``VLMRL_LABELERS=my_labelers``:
how a labeler defined outside vlmrl reaches the ``vlmrl`` command."""


def _load_builtins() -> None:
    for module in BUILTIN_CONFIG_MODULES:
        importlib.import_module(module)
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_VARIABLE, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"{PLUGINS_VARIABLE}: cannot import labeler module {module!r} ({error}); "
                              "it must be importable (installed, or on PYTHONPATH)") from error


def labeler_config_class(kind: Any) -> type[LabelerConfig]:
    """The config class registered for ``kind``; ConfigError listing the registered kinds."""
    _load_builtins()
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise ConfigError(f"unknown labeler kind {kind!r}; registered kinds: {', '.join(registered_kinds())}")
    return _REGISTRY[kind]


def registered_kinds() -> tuple[str, ...]:
    """Every registered kind, sorted."""
    _load_builtins()
    return tuple(sorted(_REGISTRY))


__all__ = ["FAMILIES", "PLUGINS_VARIABLE", "LabelerConfig", "labeler_config_class", "register_labeler", "registered_kinds"]

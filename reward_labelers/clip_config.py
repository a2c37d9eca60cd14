"""Config of the CLIP zero-shot labeler (``kind: clip``); the labeler is in ``clip.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from vlmrl.reward_labelers.registry import LabelerConfig, register_labeler


@register_labeler
@dataclass(frozen=True, kw_only=True)
class ClipConfig(LabelerConfig):
    """CLIP zero-shot reward with VLM-RM goal-baseline regularisation (methods.md section 1).

    Attributes:
        goal_prompts: texts describing the goal; their normalised embeddings are averaged.
        baseline_prompts: texts describing the scene without the goal.
        model: open_clip model name (e.g. ``ViT-B-32``) or, with ``backend: transformers``, a hub
            id or local folder.
        pretrained: open_clip pretrained tag or checkpoint path; null for random weights (tests)
            and for the transformers backend.
        backend: ``open_clip`` or ``transformers``.
        alpha: regularisation strength in [0, 1] (0 = plain distance to the goal).
        batch_size: frames per encoder call.
    """

    kind: ClassVar[str] = "clip"
    family: ClassVar[str] = "frame"
    goal_prompts: tuple[str, ...]
    baseline_prompts: tuple[str, ...]
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    backend: Literal["open_clip", "transformers"] = "open_clip"
    alpha: float = 0.5
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.goal_prompts:
            raise ValueError("goal_prompts must hold at least one prompt")
        if not self.baseline_prompts:
            raise ValueError("baseline_prompts must hold at least one prompt")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")

    def create(self, *, seed: int = 0, store: str | Path | None = None) -> Any:
        from vlmrl.reward_labelers.clip import ClipRewardLabeler

        return ClipRewardLabeler(
            model=self.model,
            pretrained=self.pretrained,
            goal_prompts=list(self.goal_prompts),
            baseline_prompts=list(self.baseline_prompts),
            alpha=self.alpha,
            device=self.device,
            backend=self.backend,
            batch_size=self.batch_size,
        )

"""Configs of the VLM preference labelers (RL-VLM-F): ``kind: openai`` (any OpenAI-compatible
endpoint: vLLM, Ollama, hosted APIs) and ``kind: hf`` (a local transformers model).

Both take the same question (the goal is ``preference.goal``, the prompts are RL-VLM-F's) and
record every answer in the label store the caller passes to ``create``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

from vlmrl.reward_labelers.registry import LabelerConfig, register_labeler


@dataclass(frozen=True, kw_only=True)
class VlmConfig(LabelerConfig):
    """What every VLM preference labeler shares.

    Attributes:
        two_stage: RL-VLM-F's analysis + labelling turns (true) or one direct question (false).
    """

    family: ClassVar[str] = "pair"
    two_stage: bool = True


@register_labeler
@dataclass(frozen=True, kw_only=True)
class OpenAIConfig(VlmConfig):
    """A VLM behind an OpenAI-compatible chat-completions endpoint.

    Attributes:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (vLLM) or ``https://api.openai.com/v1``.
        model: the served model's name.
        api_key_env: environment variable holding the API key (never written anywhere).
        max_concurrency: requests in flight at once.
        timeout_s: seconds per request before it is retried.
        max_retries: retries per request (429/5xx/timeouts), with exponential backoff.
        answer_mode: how the answer turn is asked and read: ``text`` (free text, parsed),
            ``constrained`` (the server must choose among ``0``, ``1``, ``-1``: vLLM's guided
            choice; falls back to text with a warning where the server rejects it) or
            ``logprobs`` (the answer token's top log-probabilities give P(image 1), P(image 2),
            stored beside the label; the server must return log-probabilities). Changing it
            asks again (it is part of the store key, except ``text``).
    """

    kind: ClassVar[str] = "openai"
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 5
    answer_mode: Literal["text", "constrained", "logprobs"] = "text"

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.max_concurrency <= 0:
            raise ValueError(f"max_concurrency must be > 0, got {self.max_concurrency}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    @property
    def pairs_in_flight(self) -> int:
        return self.max_concurrency

    def preflight(self) -> None:
        self.create(store=None).preflight()

    def create(self, *, seed: int = 0, store: str | Path | None = None) -> Any:
        from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler

        return OpenAIPreferenceLabeler(
            base_url=self.base_url, model=self.model, api_key_env=self.api_key_env, store=store,
            two_stage=self.two_stage, max_concurrency=self.max_concurrency, timeout_s=self.timeout_s,
            max_retries=self.max_retries, answer_mode=self.answer_mode,
        )


@register_labeler
@dataclass(frozen=True, kw_only=True)
class HFConfig(VlmConfig):
    """A local transformers VLM (Qwen2-VL class).

    Attributes:
        model: hub id (read from the Hugging Face cache) or a local model folder.
        batch_size: pairs generated together in one batch.
        max_new_tokens: length limit of the analysis turn, in tokens.
        answer_mode: ``text`` (generate the answer, parse it) or ``logprobs`` (score the answers
            ``0`` / ``1`` / ``-1`` from the logits of one forward pass of the answer turn, no
            sampling; P(image 1), P(image 2) are stored beside the label). Part of the store key
            except ``text``.
    """

    kind: ClassVar[str] = "hf"
    model: str
    batch_size: int = 8
    max_new_tokens: int = 256
    answer_mode: Literal["text", "logprobs"] = "text"

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")

    @property
    def pairs_in_flight(self) -> int:
        return self.batch_size

    def store_key_config(self) -> Mapping[str, Any]:
        """The labeler's ``config`` (its label-store key fields) without loading the model."""
        from vlmrl.reward_labelers.hf_preference import hf_labeler_config

        return hf_labeler_config(self.model, self.two_stage, self.max_new_tokens, answer_mode=self.answer_mode)

    def create(self, *, seed: int = 0, store: str | Path | None = None) -> Any:
        from vlmrl.reward_labelers.hf_preference import HFPreferenceLabeler

        return HFPreferenceLabeler(model=self.model, store=store, two_stage=self.two_stage, device=self.device,
                                   batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                   answer_mode=self.answer_mode)

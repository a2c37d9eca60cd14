"""Preference labels from a local transformers vision-language model (RL-VLM-F, methods.md section 2).

Any checkpoint that ``AutoProcessor`` + ``AutoModelForImageTextToText`` load and whose chat
template accepts several images in one message works: Qwen2-VL / Qwen2.5-VL, Idefics3 / SmolVLM,
LLaVA-style models. ``model`` is a hub id (read from the Hugging Face cache; downloaded first when
online) or a local folder written by ``save_pretrained`` / ``snapshot_download``.
``HF_HUB_OFFLINE=1`` and ``HF_HOME`` / ``HF_HUB_CACHE`` are honoured as transformers honours them.

Query, as in RL-VLM-F: an analysis turn whose message holds both frames as two images, then a
text-only labelling turn that quotes the analysis and asks for ``0`` / ``1`` / ``-1``; or, in
single-stage mode, the direct question. Decoding is greedy, so a rerun gives the same answers.

Answer modes: ``text`` generates the answer turn greedily and reads it with
``prompts.parse_answer``; ``logprobs`` generates nothing on the answer turn: one forward pass of
the answer turn's prompt gives the next-token probabilities of the answers ``0``, ``1`` and
``-1`` (its first token, e.g. ``-``), normalised over the three. The likeliest decides, as a
decoder constrained to the three answers would, and P(image 1) / P(image 2) are stored beside
the label (``PairOutcome.p_first`` / ``p_second``). The two-stage analysis turn is generated in
both modes.

Batching: ``PreferenceLabeler.compare`` asks for one pair at a time from ``batch_size`` worker
threads; ``_PairBatcher`` gathers those concurrent requests into one left-padded ``generate``
call, so a batch of pairs costs one forward pass per generated token, not one per pair.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmrl.devices import resolve_device
from vlmrl.errors import MissingWeightsError, UserError
from vlmrl.label_store import LabelStore
from vlmrl.reward_labelers.preference import DEFAULT_IDENTICAL_THRESHOLD, PairOutcome, PreferenceLabeler, query_outcome
from vlmrl.reward_labelers.prompts import (
    ANALYSIS_PROMPT,
    ANSWER_CHOICES,
    LABELLING_PROMPT,
    SINGLE_STAGE_PROMPT,
    QueryPrompts,
    vision_content_parts,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "bfloat16", "float16")
HF_ANSWER_MODES = ("text", "logprobs")


def vision_message(template: str, goal: str) -> list[dict[str, Any]]:
    """One user message for a prompt with ``{image1}``/``{image2}`` placeholders.

    Content parts in prompt order: text, ``{"type": "image"}``, text, ``{"type": "image"}``,
    text (see ``prompts.vision_content_parts``). The processor fills the image slots with the
    frames, first frame first.
    """
    return [{"role": "user", "content": vision_content_parts(template, goal, {"type": "image"}, {"type": "image"})}]


def text_message(text: str) -> list[dict[str, Any]]:
    """One text-only user message (the labelling turn)."""
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def missing_weights_message(model: str, reason: str) -> str:
    """How to provide the weights of ``model`` on a machine that cannot download them."""
    return (
        f"cannot load the vision-language model {model!r}: {reason}\n"
        "Provide the weights in one of these ways:\n"
        f"  1. on a machine with internet: `hf download {model}` (`huggingface-cli download {model}` "
        f"with huggingface_hub < 1.0; in Python `huggingface_hub.snapshot_download({model!r})`), "
        "then copy its Hugging Face cache "
        "folder (~/.cache/huggingface/hub, or $HF_HUB_CACHE) to the same place here;\n"
        f"  2. or save it to a folder with `huggingface_hub.snapshot_download({model!r}, "
        "local_dir='DIR')` and pass that folder as the model (model=DIR).\n"
        "With HF_HUB_OFFLINE=1 only the local cache is read; unset it to download here."
    )


def resolve_dtype(dtype: str, device: str | torch.device):
    """The torch dtype to load weights in: ``"auto"`` is bf16 on CUDA (fp16 where bf16 is not
    supported) and float32 elsewhere (bf16 on CPU is slower, install-notes)."""
    import torch

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_vlm(model: str, device: str | torch.device, dtype, cache_dir: str | None = None):
    """Load ``(processor, model)`` from a hub id or a local folder.

    Raises:
        MissingWeightsError: the folder does not exist or holds no ``config.json``, or the hub id
            is neither cached nor downloadable; the message says how to provide the weights.
    """
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise MissingWeightsError(missing_weights_message(model, f"the folder {local} holds no config.json"))
        source = str(local)
    elif model.startswith(("/", "./", "../", "~")) or local.exists():
        raise MissingWeightsError(missing_weights_message(model, f"no model folder at {local}"))
    else:
        source = model
        try:
            cached = try_to_load_from_cache(model, "config.json", cache_dir=cache_dir)
        except HFValidationError as error:
            raise MissingWeightsError(missing_weights_message(model, str(error))) from error
        if not isinstance(cached, str):
            if constants.is_offline_mode():
                raise MissingWeightsError(
                    missing_weights_message(model, "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache")
                )
            _check_hub_reachable(model)
    try:
        processor = AutoProcessor.from_pretrained(source, cache_dir=cache_dir)
        network = AutoModelForImageTextToText.from_pretrained(source, cache_dir=cache_dir, dtype=dtype)
    except (OSError, HFValidationError) as error:
        raise MissingWeightsError(missing_weights_message(model, f"{type(error).__name__}: {error}")) from error
    tokenizer = getattr(processor, "tokenizer", None)
    # transformers 5 can silently build a near-empty tokenizer when its files are missing
    # (install-notes): its answers would be garbage, so refuse it.
    if tokenizer is None or len(tokenizer) < 100:
        size = None if tokenizer is None else len(tokenizer)
        reason = f"its tokenizer is missing or broken (vocabulary {size})"
        raise MissingWeightsError(missing_weights_message(model, reason))
    return processor, network.to(device).eval()


def _check_hub_reachable(model: str) -> None:
    """Raise MissingWeightsError at once when ``model`` is not cached and the hub cannot serve it.

    Without this, transformers retries every file with backoff: minutes of waiting on a
    machine without internet before the same conclusion.
    """
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(model, timeout=10)
    except Exception as error:  # network, HTTP, auth: all mean "cannot download it from here"
        reason = f"it is not in the Hugging Face cache and the hub did not answer ({type(error).__name__}: {error})"
        raise MissingWeightsError(missing_weights_message(model, reason)) from error


@dataclass
class _Job:
    """One pair waiting in the batcher."""

    first: np.ndarray
    second: np.ndarray
    goal: str
    outcome: PairOutcome | None = None
    error: BaseException | None = None
    done: bool = False


class _PairBatcher:
    """Runs the pairs that worker threads submit one at a time as batches of up to ``max_batch``.

    The first thread to find no batch running leads: it waits up to ``wait_s`` for the batch to
    fill, takes the queued pairs, runs them outside the lock and hands every job its outcome.
    Threads whose pair is in someone else's batch sleep until it is done. An exception in
    ``run`` is re-raised in every thread of that batch.
    """

    def __init__(self, run: Callable[[list[_Job]], list[PairOutcome]], max_batch: int, wait_s: float) -> None:
        self._run = run
        self._max_batch = max_batch
        self._wait_s = wait_s
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._busy = False

    def ask(self, first: np.ndarray, second: np.ndarray, goal: str) -> PairOutcome:
        job = _Job(first, second, goal)
        with self._cond:
            self._queue.append(job)
            self._cond.notify_all()
        while True:
            with self._cond:
                batch = self._claim_batch(job)
            if batch is None:
                break
            self._execute(batch)
        if job.error is not None:
            raise job.error
        assert job.outcome is not None
        return job.outcome

    def _claim_batch(self, job: _Job) -> list[_Job] | None:
        """Under the lock: None once ``job`` is done, else a batch this thread must run."""
        while not job.done:
            if self._busy:
                self._cond.wait()
                continue
            deadline = time.monotonic() + self._wait_s
            while not (self._busy or job.done) and len(self._queue) < self._max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._busy or job.done or not self._queue:
                continue
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self._busy = True
            return batch
        return None

    def _execute(self, batch: list[_Job]) -> None:
        outcomes: list[PairOutcome] | None = None
        error: BaseException | None = None
        try:
            outcomes = self._run(batch)
        except BaseException as exc:  # handed to every waiting thread, re-raised there
            error = exc
        with self._cond:
            for index, job in enumerate(batch):
                job.outcome = outcomes[index] if outcomes is not None else None
                job.error = error
                job.done = True
            self._busy = False
            self._cond.notify_all()


def hf_labeler_config(
    model: str,
    two_stage: bool = True,
    max_new_tokens: int = 256,
    answer_max_new_tokens: int = 16,
    analysis_prompt: str = ANALYSIS_PROMPT,
    labelling_prompt: str = LABELLING_PROMPT,
    single_stage_prompt: str = SINGLE_STAGE_PROMPT,
    answer_mode: str = "text",
) -> dict[str, Any]:
    """:attr:`HFPreferenceLabeler.config` for these arguments, without loading the model (a
    process that only plans and records, e.g. the Ray driver, needs the store keys, not the VLM).

    Device, dtype and batch size are left out: they change the arithmetic, not the question, so
    a store filled on a GPU stays valid on another machine. ``answer_mode`` is named only when it
    is not ``text`` (text-mode keys stay those of stores written before answer modes existed);
    in ``logprobs`` mode nothing is generated on the answer turn, so its token limit is left out.
    """
    if answer_mode not in HF_ANSWER_MODES:
        raise ValueError(f"answer_mode must be one of {HF_ANSWER_MODES}, got {answer_mode!r}")
    prompts = QueryPrompts(two_stage, analysis_prompt, labelling_prompt, single_stage_prompt)
    return _store_key_config(model, prompts, max_new_tokens, answer_max_new_tokens, answer_mode)


def _store_key_config(
    model: str, prompts: QueryPrompts, max_new_tokens: int, answer_max_new_tokens: int, answer_mode: str
) -> dict[str, Any]:
    """:func:`hf_labeler_config` for arguments already checked (the labeler's own)."""
    config: dict[str, Any] = {
        "labeler": "hf-transformers",
        "model": model,
        "decoding": "greedy",
        "answer_max_new_tokens": answer_max_new_tokens,
        **prompts.key_fields(),
    }
    if prompts.two_stage:
        config["max_new_tokens"] = max_new_tokens
    if answer_mode == "logprobs":
        del config["answer_max_new_tokens"]
        config["answer_mode"] = "logprobs"
    return config


def answer_token_ids(tokenizer: Any) -> tuple[int, int, int]:
    """Ids of the first tokens of the answers ``0``, ``1``, ``-1`` (``-1`` may be ``-`` then
    ``1``: its first token is what the model commits to first).

    Raises:
        ValueError: two answers start with the same token, so they cannot be told apart.
    """
    ids = []
    for choice in ANSWER_CHOICES:
        encoded = tokenizer.encode(choice, add_special_tokens=False)
        if not encoded:
            raise ValueError(f"the tokenizer encodes the answer {choice!r} as no tokens")
        ids.append(int(encoded[0]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"the answers {ANSWER_CHOICES} start with the same token ids {ids}; answer_mode: logprobs "
                         "cannot tell them apart with this tokenizer (use answer_mode: text)")
    return ids[0], ids[1], ids[2]


class HFPreferenceLabeler(PreferenceLabeler):
    """Compare frame pairs with a local transformers vision-language model.

    Args:
        model: hub id (e.g. ``"Qwen/Qwen2.5-VL-3B-Instruct"``) or a local model folder.
        store: label store or its SQLite path (see ``PreferenceLabeler``).
        two_stage: RL-VLM-F's analysis + labelling turns (True) or one direct question (False).
        device: ``"auto"`` (CUDA when present, else CPU), or a torch device string.
        dtype: ``"auto"`` (bf16 on CUDA, fp16 where bf16 is unsupported, float32 on CPU),
            ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        max_new_tokens: length limit of the analysis turn (two-stage), in tokens.
        answer_max_new_tokens: length limit of the answer turn in ``text`` mode, in tokens.
        answer_mode: ``text`` (generate the answer, parse it) or ``logprobs`` (score the answers
            ``0`` / ``1`` / ``-1`` from one forward pass; see the module docstring).
        batch_size: pairs generated together in one left-padded batch.
        batch_wait_s: how long a partial batch waits for more pairs before it runs, in seconds.
        analysis_prompt: first-stage template with ``{image1}``, ``{image2}``, ``{goal}``.
        labelling_prompt: second-stage template with ``{goal}`` and ``{analysis}``.
        single_stage_prompt: template used when ``two_stage`` is False.
        cache_dir: Hugging Face cache folder; None = the default (``HF_HUB_CACHE``).
        identical_threshold: see ``PreferenceLabeler``.
        thumbnail_size: see ``PreferenceLabeler``.

    ``prompts`` is the question asked (:class:`~vlmrl.reward_labelers.prompts.QueryPrompts`).
    ``stats.requests`` counts model turns (2 per pair in two-stage mode, 1 in single-stage).
    ``batches`` records the size of every model call (``generate`` or, in ``logprobs`` mode, the
    answer turn's forward pass).
    The store key names the model by the ``model`` string as given, so a hub id and a local copy
    of the same weights keep separate labels.

    Raises:
        MissingWeightsError: the weights are not available locally and cannot be downloaded.
    """

    def __init__(
        self,
        model: str,
        store: LabelStore | str | Path | None = None,
        two_stage: bool = True,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 256,
        answer_max_new_tokens: int = 16,
        batch_size: int = 8,
        batch_wait_s: float = 0.05,
        analysis_prompt: str = ANALYSIS_PROMPT,
        labelling_prompt: str = LABELLING_PROMPT,
        single_stage_prompt: str = SINGLE_STAGE_PROMPT,
        cache_dir: str | None = None,
        identical_threshold: float = DEFAULT_IDENTICAL_THRESHOLD,
        thumbnail_size: int = 64,
        answer_mode: str = "text",
    ) -> None:
        if max_new_tokens < 1 or answer_max_new_tokens < 1 or batch_size < 1 or batch_wait_s < 0:
            raise ValueError("max_new_tokens, answer_max_new_tokens and batch_size must be >= 1; batch_wait_s >= 0")
        if answer_mode not in HF_ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {HF_ANSWER_MODES}, got {answer_mode!r}")
        # Checked before loading: a broken template fails at once, not after a model load.
        self.prompts = QueryPrompts(two_stage, analysis_prompt, labelling_prompt, single_stage_prompt)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor, self.model = load_vlm(model, self.device, self.dtype, cache_dir)
        logger.info("loaded %s on %s in %s", model, self.device, self.dtype)
        # One worker thread per batch slot: the batcher turns their single-pair asks into batches.
        super().__init__(store, batch_size, identical_threshold, thumbnail_size)
        self.model_name = model
        self.answer_mode = answer_mode
        self.max_new_tokens = int(max_new_tokens)
        self.answer_max_new_tokens = int(answer_max_new_tokens)
        self.batch_size = int(batch_size)
        # Decoder-only batches must be padded on the left so every row's answer starts at the end.
        self.processor.tokenizer.padding_side = "left"
        if self.processor.tokenizer.pad_token_id is None:
            self.processor.tokenizer.pad_token = self.processor.tokenizer.eos_token
        # Only logprobs mode scores them: a tokenizer whose answers share a first token still serves text mode.
        self.answer_token_ids = answer_token_ids(self.processor.tokenizer) if answer_mode == "logprobs" else None
        """Token ids of the first tokens of ``0``, ``1``, ``-1`` (what ``logprobs`` mode scores); None in text mode."""
        self.batches: list[int] = []
        """Size of every model call so far (one entry per model turn of a batch)."""
        self._batcher = _PairBatcher(self._run_jobs, self.batch_size, float(batch_wait_s))

    def __repr__(self) -> str:
        mode = self.prompts.mode
        if self.answer_mode != "text":
            mode += f", answer_mode={self.answer_mode!r}"
        return (
            f"HFPreferenceLabeler(model={self.model_name!r}, {mode}, device={str(self.device)!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}, batch_size={self.batch_size}, store={self.store!r})"
        )

    @property
    def config(self) -> Mapping[str, Any]:
        return _store_key_config(self.model_name, self.prompts, self.max_new_tokens, self.answer_max_new_tokens,
                                 self.answer_mode)

    def ask(self, first: np.ndarray, second: np.ndarray, goal: str) -> PairOutcome:
        return self._batcher.ask(first, second, goal)

    def _run_jobs(self, jobs: list[_Job]) -> list[PairOutcome]:
        raw = self._query_pairs([j.first for j in jobs], [j.second for j in jobs], [j.goal for j in jobs])
        outcomes = []
        for analysis, answer, probabilities in raw:
            turns = 2 if self.prompts.two_stage and answer is not None else 1
            outcomes.append(query_outcome(analysis, answer, turns, probabilities))
        return outcomes

    def _query_pairs(
        self, first: Sequence[np.ndarray], second: Sequence[np.ndarray], goals: Sequence[str]
    ) -> list[tuple[str | None, str | None, tuple[float, float, float] | None]]:
        """Ask the model about a batch of pairs; no parsing, no store.

        Args:
            first: uint8 ``[H, W, 3]`` frames shown as image 1, one per pair.
            second: uint8 ``[H, W, 3]`` frames shown as image 2.
            goals: the goal of each pair.

        Returns:
            ``(analysis, answer, probabilities)`` per pair: analysis is None in single-stage
            mode; answer is None when a two-stage analysis came back empty (no labelling turn is
            run for it); probabilities are P(``0``), P(``1``), P(``-1``) of the answer turn's
            next token in ``logprobs`` mode (answer is then the likeliest of the three), else None.
        """
        from PIL import Image

        images = [[Image.fromarray(a), Image.fromarray(b)] for a, b in zip(first, second)]
        messages = [vision_message(self.prompts.vision_template, goal) for goal in goals]
        if not self.prompts.two_stage:
            return self._answer(messages, images)

        analyses = self._generate(messages, images, self.max_new_tokens)
        to_label = [i for i, analysis in enumerate(analyses) if analysis.strip()]
        results: list[tuple[str | None, str | None, tuple[float, float, float] | None]] = [
            (analysis, None, None) for analysis in analyses
        ]
        if to_label:
            questions = [text_message(self.prompts.labelling_question(goals[i], analyses[i])) for i in to_label]
            for i, (_, answer, probabilities) in zip(to_label, self._answer(questions, None)):
                results[i] = (analyses[i], answer, probabilities)
        return results

    def _answer(
        self, messages: list[list[dict[str, Any]]], images: list[list[Any]] | None
    ) -> list[tuple[None, str, tuple[float, float, float] | None]]:
        """The answer turn of each conversation, in this labeler's answer mode."""
        if self.answer_mode == "text":
            return [(None, answer, None) for answer in self._generate(messages, images, self.answer_max_new_tokens)]
        probabilities = self._score_answers(messages, images)
        return [(None, ANSWER_CHOICES[int(np.argmax(row))], tuple(row.tolist())) for row in probabilities]

    def _model_inputs(self, messages: list[list[dict[str, Any]]], images: list[list[Any]] | None) -> Any:
        """Left-padded processor inputs of one user turn per conversation, on the model's device."""
        texts = [self.processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if images is not None:
            kwargs["images"] = images
        inputs = self.processor(**kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def _score_answers(self, messages: list[list[dict[str, Any]]], images: list[list[Any]] | None) -> np.ndarray:
        """Next-token probabilities of the answers after each prompt: float64 ``[B, 3]`` for
        ``0``, ``1``, ``-1`` (each answer's first token), from one forward pass, no sampling.

        Left padding puts every row's last prompt token at the last position, whose logits give
        the first answer token's distribution (the one ``generate`` would sample from).
        """
        import torch

        inputs = self._model_inputs(messages, images)
        self.batches.append(len(messages))
        try:
            with torch.inference_mode():
                # logits_to_keep=1: only the last position's logits, not [B, L, vocab].
                logits = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1, :]
        except torch.cuda.OutOfMemoryError as error:
            raise UserError(
                f"the GPU ran out of memory scoring {len(messages)} answers at once; lower batch_size "
                f"(now {self.batch_size})"
            ) from error
        # Softmax in float32 over the whole vocabulary: bf16 logits would round small probabilities.
        probabilities = torch.softmax(logits.float(), dim=-1)[:, list(self.answer_token_ids)]
        return probabilities.double().cpu().numpy()

    def _generate(
        self, messages: list[list[dict[str, Any]]], images: list[list[Any]] | None, max_new_tokens: int
    ) -> list[str]:
        """Greedy-decode one user turn per conversation; returns the new text of each."""
        import torch

        inputs = self._model_inputs(messages, images)
        self.batches.append(len(messages))
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    # Hub generation configs often carry sampling settings; greedy ignores them.
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.processor.tokenizer.pad_token_id,
                )
        except torch.cuda.OutOfMemoryError as error:
            raise UserError(
                f"the GPU ran out of memory generating for {len(messages)} pairs at once; "
                f"lower batch_size (now {self.batch_size}) or max_new_tokens (now {self.max_new_tokens})"
            ) from error
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)


__all__ = [
    "HF_ANSWER_MODES",
    "HFPreferenceLabeler",
    "answer_token_ids",
    "hf_labeler_config",
    "load_vlm",
    "missing_weights_message",
    "text_message",
    "vision_message",
]

"""RL-VLM-F prompts and the strict parser for the VLM's labelling answer.

Two-stage query (shared/reference/methods.md, section 2):
1. analysis, with both frames as separate images in one message;
2. labelling, text only: answer ``0`` (goal better achieved in image 1), ``1`` (image 2) or
   ``-1`` (unsure / no difference).

vlmrl's label convention differs from the VLM's answer convention on purpose: a label is the
probability that the *first* frame is preferred, so answer ``0`` -> label 1.0, answer ``1`` ->
label 0.0, answer ``-1`` -> NaN. Anything else is unparseable -> NaN, never guessed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

ANALYSIS_PROMPT = (
    "Consider the following two images:\n"
    "Image 1:\n{image1}\n"
    "Image 2:\n{image2}\n"
    "1. What is shown in Image 1?\n"
    "2. What is shown in Image 2?\n"
    "3. The goal is {goal}. Is there any difference between Image 1 and Image 2 in terms of "
    "achieving the goal?"
)

LABELLING_PROMPT = (
    "Based on the text below to the questions:\n"
    "1. What is shown in Image 1?\n"
    "2. What is shown in Image 2?\n"
    "3. The goal is {goal}. Is there any difference between Image 1 and Image 2 in terms of "
    "achieving the goal?\n"
    "{analysis}\n\n"
    "Is the goal better achieved in Image 1 or Image 2?\n"
    "Reply a single line of 0 if the goal is better achieved in Image 1, or 1 if it is better "
    "achieved in Image 2.\n"
    "Reply -1 if the text is unsure or there is no difference."
)

SINGLE_STAGE_PROMPT = (
    "Consider the following two images:\n"
    "Image 1:\n{image1}\n"
    "Image 2:\n{image2}\n"
    "The goal is {goal}. Is the goal better achieved in Image 1 or Image 2?\n"
    "Reply a single line of 0 if the goal is better achieved in Image 1, or 1 if it is better "
    "achieved in Image 2.\n"
    "Reply -1 if you are unsure or there is no difference."
)


class AnswerKind(str, Enum):
    FIRST = "first"  # VLM answered 0: image 1 better
    SECOND = "second"  # VLM answered 1: image 2 better
    UNSURE = "unsure"  # VLM answered -1
    UNPARSEABLE = "unparseable"


@dataclass(frozen=True)
class ParsedAnswer:
    kind: AnswerKind

    @property
    def label(self) -> float:
        """1.0 if the first frame is preferred, 0.0 if the second, NaN otherwise."""
        if self.kind is AnswerKind.FIRST:
            return 1.0
        if self.kind is AnswerKind.SECOND:
            return 0.0
        return math.nan


_ANSWER = re.compile(r"^[\s\"'`*]*(-1|0|1)[\s\"'`*.]*$")


def parse_answer(text: str | None) -> ParsedAnswer:
    """Parse the labelling answer. Only a first non-empty line that is exactly ``0``, ``1`` or
    ``-1`` (optionally quoted, bolded or followed by a period) counts; free text is unparseable.
    """
    if not text:
        return ParsedAnswer(AnswerKind.UNPARSEABLE)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ParsedAnswer(AnswerKind.UNPARSEABLE)
    match = _ANSWER.match(lines[0])
    if match is None:
        return ParsedAnswer(AnswerKind.UNPARSEABLE)
    return ParsedAnswer({"0": AnswerKind.FIRST, "1": AnswerKind.SECOND, "-1": AnswerKind.UNSURE}[match.group(1)])


def prompt_key_fields(two_stage: bool, analysis_prompt: str, labelling_prompt: str, single_stage_prompt: str) -> dict[str, str]:
    """The mode and the prompts in use, as label-store key fields (changing one asks again)."""
    if two_stage:
        return {"mode": "two-stage", "analysis_prompt": analysis_prompt, "labelling_prompt": labelling_prompt}
    return {"mode": "single-stage", "single_stage_prompt": single_stage_prompt}

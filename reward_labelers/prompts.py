"""RL-VLM-F prompts and the one parser for the VLM's labelling answer (every backend uses it).

``QueryPrompts`` is the question a backend asks (mode and templates, checked once, with the
label-store key fields they make); ``vision_content_parts`` lays a template out around the two
frames as chat content parts.

Two-stage query (shared/reference/methods.md, section 2):
1. analysis, with both frames as separate images in one message;
2. labelling, text only: answer ``0`` (goal better achieved in image 1), ``1`` (image 2) or
   ``-1`` (unsure / no difference).

vlmrl's label convention differs from the VLM's answer convention on purpose: a label is the
probability that the *first* frame is preferred, so answer ``0`` -> label 1.0, answer ``1`` ->
label 0.0, answer ``-1`` -> NaN. Anything else, or anything ambiguous, is unparseable -> NaN,
never guessed (see ``parse_answer`` for the rules).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import Any

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

_VISION_PLACEHOLDERS = ("{image1}", "{image2}", "{goal}")


@dataclass(frozen=True)
class QueryPrompts:
    """The question a VLM preference backend asks about a pair: RL-VLM-F's two turns (the
    analysis, showing both frames, then the text-only labelling turn that quotes it) or, when
    ``two_stage`` is False, one direct question showing both frames.

    Attributes:
        two_stage: analysis + labelling turns (True) or the single-stage question (False).
        analysis: first-stage template with ``{image1}``, ``{image2}``, ``{goal}``.
        labelling: second-stage template with ``{analysis}`` (and usually ``{goal}``).
        single_stage: single-stage template with ``{image1}``, ``{image2}``, ``{goal}``.

    Every template is checked, the unused ones too, so a broken template fails at construction
    whichever mode runs.

    Raises:
        ValueError: a template lacks one of its placeholders.
    """

    two_stage: bool = True
    analysis: str = ANALYSIS_PROMPT
    labelling: str = LABELLING_PROMPT
    single_stage: str = SINGLE_STAGE_PROMPT

    def __post_init__(self) -> None:
        # Named as the backends' constructor arguments, which is what a user has to fix.
        for name, template, needed in (
            ("analysis_prompt", self.analysis, _VISION_PLACEHOLDERS),
            ("labelling_prompt", self.labelling, ("{analysis}",)),
            ("single_stage_prompt", self.single_stage, _VISION_PLACEHOLDERS),
        ):
            missing = [p for p in needed if p not in template]
            if missing:
                raise ValueError(f"{name} lacks the placeholder(s) {', '.join(missing)}")

    @property
    def mode(self) -> str:
        """``"two-stage"`` or ``"single-stage"``."""
        return "two-stage" if self.two_stage else "single-stage"

    @property
    def vision_template(self) -> str:
        """The template of the turn that shows both frames: the analysis (two-stage) or the
        single-stage question."""
        return self.analysis if self.two_stage else self.single_stage

    def labelling_question(self, goal: str, analysis: str) -> str:
        """The labelling turn's text for ``goal``, quoting ``analysis``.

        Plain replacement rather than ``str.format``: braces in a goal or an analysis are text.
        """
        return self.labelling.replace("{goal}", goal).replace("{analysis}", analysis)

    def key_fields(self) -> dict[str, str]:
        """The mode and the templates it uses, as label-store key fields (changing one asks again).

        The key names and values are those of every store written so far: do not rename them,
        or stored labels stop being found.
        """
        if self.two_stage:
            return {"mode": self.mode, "analysis_prompt": self.analysis, "labelling_prompt": self.labelling}
        return {"mode": self.mode, "single_stage_prompt": self.single_stage}


def vision_content_parts(
    template: str, goal: str, first_image: dict[str, Any], second_image: dict[str, Any]
) -> list[dict[str, Any]]:
    """Chat content parts of a prompt with ``{image1}``/``{image2}`` placeholders, in prompt order:
    a ``{"type": "text", "text": ...}`` part for each non-blank piece of text, ``first_image``
    where ``{image1}`` stands and ``second_image`` where ``{image2}`` stands (each backend passes
    its own image part).

    ``{goal}`` is substituted by plain replacement, so braces inside a goal are harmless.

    Raises:
        ValueError: the template does not hold ``{image1}`` and ``{image2}`` exactly once each.
    """
    text = template.replace("{goal}", goal)
    if text.count("{image1}") != 1 or text.count("{image2}") != 1:
        raise ValueError("a vision prompt must contain {image1} and {image2} exactly once each")
    before, rest = text.split("{image1}")
    middle, after = rest.split("{image2}")
    parts: list[dict[str, Any]] = []
    for piece, image in ((before, first_image), (middle, second_image)):
        if piece.strip():
            parts.append({"type": "text", "text": piece})
        parts.append(image)
    if after.strip():
        parts.append({"type": "text", "text": after})
    return parts


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


_AS_KIND = {"0": AnswerKind.FIRST, "1": AnswerKind.SECOND, "+1": AnswerKind.SECOND, "-1": AnswerKind.UNSURE}
_IMAGE_KIND = {"1": AnswerKind.FIRST, "2": AnswerKind.SECOND}
_POISON = "poison"  # a reading that makes the whole answer unparseable (off-scale, "0 or 1", ...)

# Any integer or decimal, signed with +, -, en or em dash; only the keys of _AS_KIND are on scale.
_NUMBER = re.compile(r"[+\-\u2013\u2014]?\d+(?:[.,]\d+)?(?!\w)")
_IMAGE = re.compile(r"image\s*([12])(?!\w)")
_END = re.compile(r"\s*[.!]?\s*")
_CHOICE = re.compile(r"\s*(?:or|and|/|&|to|vs\.?|versus)\s*(?:[+\-\u2013\u2014]?\d|image\b)")
_QUALIFIER = re.compile(r"\s*(?:[(\[:;,]|[-\u2013\u2014](?=\s)|(?=(?:because|since|as)\b))\s*(.*)")
_SENTENCE = re.compile(r"\s*[.!]\s+(.*)")
_QUALIFIER_IMAGE = re.compile(r"[(\[]?\s*image\s*([12])(?!\w)\s*[)\]]?\s*[.!]?\s*")
_QUALIFIER_NUMBER = re.compile(r"[(\[]?\s*[+\-\u2013\u2014]?\d")
_ANSWER_WORD = re.compile(
    r"\b(?:answer|output|response|verdict)\b"
    r"(?:\s+(?:is|would\s+be|will\s+be|should\s+be))?\s*[:=]?\s*[\"'(\[]?"
)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_DANGLING_SIGN = re.compile(r"[+\-\u2013\u2014]\s+\d")
_LINE_DECORATION = " \t\"'>#"
_STATEMENTS = tuple(
    re.compile(pattern)
    for pattern in (
        r"\bbetter\s+(?:(?:achieved|accomplished|met|fulfilled|satisfied|reached)\s+)?(?:in|by)\s+(?:the\s+)?image\s*([12])(?!\w)",
        r"\bimage\s*([12])\s+(?:is|was|looks|seems|appears)\s+(?:to\s+be\s+)?(?:the\s+)?(?:better|closer|preferred|superior)\b",
        r"\bimage\s*([12])\s+(?:better|more\s+closely)\s+(?:achieves|accomplishes|meets|fulfills|fulfils|satisfies|reaches)\b",
        r"\bimage\s*([12])\s+(?:achieves|accomplishes|meets|fulfills|fulfils|satisfies)\s+(?:the\s+goal\s+)?better\b",
        r"\bprefer(?:red)?\s+(?:the\s+)?image\s*([12])(?!\w)",
        r"\bthe\s+better\s+(?:one|image|choice)\s+(?:is\s+)?(?:the\s+)?image\s*([12])(?!\w)",
    )
)
# A statement whose own clause says any of these is not a statement of preference.
_HEDGE = re.compile(
    r"\b(?:not|no|never|neither|nor|cannot|can't|can\s+not|couldn't|isn't|aren't|wasn't|doesn't|don't|didn't"
    r"|unable|unclear|unsure|uncertain|unknown|whether|if|hard|difficult|impossible)\b"
)
_CLAUSE_BREAK = re.compile(r"[.!?;:,\n]|\bbut\b")
_SENTENCE_END = re.compile(r"[.!?\n]")
# Refusals and "no difference": with one of these anywhere only -1 may be read.
_REFUSAL = re.compile(
    r"\b(?:sorry|apologi[sz]e|as\s+an\s+ai|i\s+(?:cannot|can't|can\s+not|am\s+unable|'m\s+unable|am\s+not\s+able"
    r"|'m\s+not\s+able|don't\s+know|do\s+not\s+know)"
    r"|unable\s+to\s+(?:determine|tell|say|answer|assess|judge|decide|compare|see|view)"
    r"|(?:cannot|can't|can\s+not)\s+(?:be\s+)?(?:determined?|tell|told|say|answer|assess|judge|decide|compare|see|view)"
    r"|not\s+sure|unsure|uncertain|unclear|(?:insufficient|not\s+enough)\s+information"
    r"|no\s+(?:\w+\s+)?difference|equally)"
)
_TRANSLATE = str.maketrans({"\u2212": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "*": None, "`": None, "$": None})


def _normalise(text: str) -> str:
    """Full-width forms to ASCII (NFKC), the minus sign and curly quotes to ASCII, markdown
    emphasis/code marks and LaTeX dollars removed, lower case."""
    return unicodedata.normalize("NFKC", text).translate(_TRANSLATE).lower()


def _read_choice(text: str, *, at_answer: bool) -> tuple[str | AnswerKind, str] | None:
    """Read one answer at the start of ``text``: ``(kind or _POISON, qualifier)``, or None when
    ``text`` does not start with an answer. ``at_answer``: right after "answer:", where any text
    may follow and an image may be named with a qualifier (at the start of a line, a number must
    stand alone or before a qualifier, and ``Image N`` alone)."""
    text = text.lstrip()
    if _DANGLING_SIGN.match(text):
        return _POISON, ""  # "- 1", "Answer - 1": a bullet, a separator or a spaced -1?
    number = _NUMBER.match(text)
    if number:
        kind: str | AnswerKind = _AS_KIND.get(number.group().replace("\u2013", "-").replace("\u2014", "-"), _POISON)
        tail = text[number.end():]
    else:
        image = _IMAGE.match(text)
        if image is None:
            return None
        kind, tail = _IMAGE_KIND[image.group(1)], text[image.end():]
    if _CHOICE.match(tail):
        return _POISON, ""  # "0 or 1", "0/1", "Image 1 and Image 2": two answers offered
    if _END.fullmatch(tail):
        return kind, ""
    if number is None and not at_answer:
        return None  # "Image 1: the cart is centred" describes an image, it does not choose one
    rest = _QUALIFIER.fullmatch(tail) or (_SENTENCE.fullmatch(tail) if at_answer else None)
    if rest is None:
        if at_answer:  # announced as the answer: "Answer: 0 ... Final answer: 1" reads 0 here
            return kind, ""
        return None  # a line like "10 seconds" or "1 cart" is not an answer
    if kind == _POISON or _QUALIFIER_NUMBER.match(rest.group(1)):
        return _POISON, ""
    return kind, rest.group(1)


def _readings(text: str) -> list[str | AnswerKind]:
    """Every answer stated in the (normalised) text, poison markers included."""
    found: list[str | AnswerKind] = []

    def take(choice: tuple[str | AnswerKind, str] | None) -> None:
        if choice is None:
            return
        kind, qualifier = choice
        found.append(kind)
        image = _QUALIFIER_IMAGE.fullmatch(qualifier)
        if image:  # "1 (Image 2)": the named image must agree with the number
            found.append(_IMAGE_KIND[image.group(1)])

    for line in text.splitlines():
        line = line.strip(_LINE_DECORATION)
        take(_read_choice(line, at_answer=False))
        for anchor in _ANSWER_WORD.finditer(line):
            take(_read_choice(line[anchor.end():], at_answer=True))
        for boxed in _BOXED.finditer(line):
            take(_read_choice(boxed.group(1), at_answer=False))
    for pattern in _STATEMENTS:
        for statement in pattern.finditer(text):
            clause_start = max((m.end() for m in _CLAUSE_BREAK.finditer(text, 0, statement.start())), default=0)
            if _HEDGE.search(text, clause_start, statement.start()):
                continue  # "not better achieved in Image 1", "whether Image 2 is better"
            end = _SENTENCE_END.search(text, statement.end())
            if end is not None and end.group() == "?":
                continue  # a question, e.g. the prompt echoed back
            found.append(_IMAGE_KIND[statement.group(1)])
    return found


def parse_answer(text: str | None) -> ParsedAnswer:
    """Parse the labelling answer into FIRST (``0``), SECOND (``1``), UNSURE (``-1``) or
    UNPARSEABLE, reading a label only when the text states exactly one consistent answer.

    Before reading, the text is NFKC-normalised (full-width ``１`` is ``1``), the minus sign and
    curly quotes become ASCII, markdown ``*``/backticks (so code fences) and ``$`` are dropped,
    and case is ignored. An answer is then stated by any of:

    - a line that is only a number (quotes, ``>``/``#`` around it and a final period allowed):
      ``1``, ``"1"``, ``**1**``, ``1.``, ``+1``, ``-1``, a fenced block holding ``1``;
    - such a number followed by a qualifier after ``(``, ``:``, ``,``, `` - `` or "because":
      ``1 (Image 2)``, ``0 - the goal is better achieved in Image 1``;
    - a number or ``Image N`` right after "answer"/"output"/"response"/"verdict" (optionally
      "is"/"would be" and ``:``), anywhere: ``The answer is 0.``, ``Final answer: -1``,
      ``Answer: Image 2``; or inside ``\\boxed{...}``;
    - a line that is only ``Image 1`` / ``Image 2``;
    - a statement that an image is the better one: "better achieved in Image 1", "Image 2 is
      better", "Image 1 better achieves ...", "prefer Image 2", "the better one is Image 1" --
      unless its own clause negates or hedges it ("not", "whether", "if", "unclear", ...) or
      it is part of a question (the prompt echoed back).

    Every stated answer is collected; ``0`` and ``Image 1`` are the same reading, as are ``1``
    and ``Image 2``. The result is UNPARSEABLE, never guessed, when:

    - nothing is stated (empty, whitespace, None, free text);
    - two different readings are stated: ``0\\n1``, ``1 (Image 1)``, ``Answer: 0 ... Final
      answer: 1``, or two answers are offered as a choice (``0 or 1``, ``0/1``, ``Image 1 and
      Image 2``);
    - a number in answer position is off the scale: only ``0``, ``1``, ``+1`` and ``-1`` are
      answers; ``2``, ``10``, ``0.5``, ``1.5``, ``01``, ``-0`` are not, and a spaced ``- 1``
      (``Answer - 1``: a separator or a spaced ``-1``?) is refused too;
    - the text refuses or hedges ("I cannot determine", "I'm sorry", "not sure", "unclear",
      "no difference", "equally") and the reading is not ``-1``.

    Only ``-1`` maps to UNSURE; "no difference"/"cannot tell" wording without ``-1`` is
    UNPARSEABLE. Repeating one answer (``1\\n\\nImage 2 is better.``) is one consistent reading.
    """
    if not text or not text.strip():
        return ParsedAnswer(AnswerKind.UNPARSEABLE)
    normalised = _normalise(text)
    readings = set(_readings(normalised))
    if len(readings) != 1 or _POISON in readings:
        return ParsedAnswer(AnswerKind.UNPARSEABLE)
    (kind,) = readings
    if kind is not AnswerKind.UNSURE and _REFUSAL.search(normalised):
        return ParsedAnswer(AnswerKind.UNPARSEABLE)
    return ParsedAnswer(kind)


ANSWER_CHOICES = ("0", "1", "-1")
"""The only answers a constrained server may give, in the VLM's convention (image 1, image 2, unsure)."""

# First tokens of the answers as tokenisers split them: "-1" is often "-" then "1".
_TOKEN_KIND = {"0": AnswerKind.FIRST, "1": AnswerKind.SECOND, "+1": AnswerKind.SECOND, "-1": AnswerKind.UNSURE,
               "-": AnswerKind.UNSURE}


def answer_token_kind(token: str) -> AnswerKind | None:
    """What the *first token* of an answer commits to: ``"0"`` FIRST, ``"1"`` SECOND, ``"-1"``
    or ``"-"`` (the start of ``-1``) UNSURE; None for any other token. Surrounding whitespace
    and full-width forms are ignored, case too (``" 0"``, ``"\uff10"``)."""
    return _TOKEN_KIND.get(_normalise(token).strip())

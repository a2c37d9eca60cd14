"""The one answer parser every VLM backend uses: real-looking answers and what they must become.

FIRST is the VLM's ``0`` (image 1 better), SECOND its ``1`` (image 2 better), UNSURE its ``-1``.
Anything without exactly one consistent reading must stay UNPARSEABLE: a label is never guessed.
Also the other pieces both backends share: the question (``QueryPrompts``) and ``query_outcome``.
"""

from __future__ import annotations

import math

import pytest

from vlmrl.label_store import ANSWERED, UNPARSEABLE, UNSURE
from vlmrl.reward_labelers.preference import outcome_from_answer, query_outcome
from vlmrl.reward_labelers.prompts import (
    ANALYSIS_PROMPT,
    LABELLING_PROMPT,
    SINGLE_STAGE_PROMPT,
    AnswerKind,
    QueryPrompts,
    parse_answer,
)

FIRST, SECOND, NOT_SURE, NONE = AnswerKind.FIRST, AnswerKind.SECOND, AnswerKind.UNSURE, AnswerKind.UNPARSEABLE

ANSWERS = [
    # --- a lone number, as asked (Qwen2-VL, GPT-4o) ---
    ("0", FIRST),
    ("1", SECOND),
    ("-1", NOT_SURE),
    ("+1", SECOND),
    ("1\n", SECOND),
    ("  0  ", FIRST),
    ("\uff11", SECOND),  # full-width 1
    ("\uff0d\uff11", NOT_SURE),  # full-width -1
    ("\u22121", NOT_SURE),  # minus sign
    ('"1"', SECOND),
    ("**1**", SECOND),
    ("`0`", FIRST),
    ("1.", SECOND),
    ("```\n1\n```", SECOND),
    ("```text\n0\n```", FIRST),
    ("$1$", SECOND),
    ("\\boxed{0}", FIRST),
    # --- a number after "answer" ---
    ("The answer is 0.", FIRST),
    ("Answer: 1", SECOND),
    ("Final answer: -1", NOT_SURE),
    ("**Answer:** 1", SECOND),
    ("Answer:\n0", FIRST),
    ("Based on the text, the goal is better achieved in Image 1. Therefore, the answer is 0.", FIRST),
    ("My answer would be 1, since the cart is closer to the centre in Image 2.", SECOND),
    ("Answer: Image 2", SECOND),
    ("Answer: 0 (Image 1)", FIRST),
    # --- a number with its image named, which must agree ---
    ("1 (Image 2)", SECOND),
    ("0 (Image 1)", FIRST),
    ("0 - the goal is better achieved in Image 1", FIRST),
    ("1: Image 2 is better.", SECOND),
    ("-1 (no difference)", NOT_SURE),
    ("1\n\nImage 2 is better.", SECOND),
    ("1\n\nThe goal is better achieved in Image 2, as the pole is upright there.", SECOND),
    ("**0**\n\nExplanation: Image 1 shows the robot closer to the goal, so Image 1 is better.", FIRST),
    ("-1\n\nThe text is unsure.", NOT_SURE),
    # --- the better image named in words (LLaVA) ---
    ("Image 1", FIRST),
    ("Image 2.", SECOND),
    ("**Image 2**", SECOND),
    ("Image 2 is better", SECOND),
    ("The goal is better achieved in Image 1.", FIRST),
    ("The goal is better achieved in Image 1 than in Image 2.", FIRST),
    ("Image 2 is better than Image 1 in terms of achieving the goal.", SECOND),
    ("Image 1 better achieves the goal of keeping the pole upright.", FIRST),
    ("Image 2 is not perfect, but the goal is better achieved in Image 2.", SECOND),
    # --- contradictions: two different answers ---
    ("1 (Image 1)", NONE),
    ("0 (Image 2)", NONE),
    ("0\n1", NONE),
    ("0 or 1", NONE),
    ("Answer: 0 or 1", NONE),
    ("0/1", NONE),
    ("Image 1 and Image 2", NONE),
    ("Image 1 or Image 2", NONE),
    ("Answer: 0 ... Final answer: 1", NONE),
    ("Answer: 0\nFinal answer: 1", NONE),
    ("0\n\nThe goal is better achieved in Image 2.", NONE),
    ("Image 1: the cart is centred.\nImage 2: the cart is near the edge.", NONE),
    # --- off the scale ---
    ("2", NONE),
    ("10", NONE),
    ("0.5", NONE),
    ("01", NONE),
    ("-0", NONE),
    ("1.5", NONE),
    ("1.0", NONE),
    ("The answer is 2.", NONE),
    ("- 1", NONE),
    ("Answer - 1", NONE),
    ("Image 3", NONE),
    # --- nothing usable ---
    (None, NONE),
    ("", NONE),
    ("   \n\t ", NONE),
    ("```\n```", NONE),
    ("I cannot determine which image better achieves the goal from the text.", NONE),
    ("I'm sorry, but I can't tell whether the goal is better achieved in Image 1.", NONE),
    ("I'm sorry, I can't help with that.", NONE),
    ("I'm not sure, but Image 2 is better.", NONE),
    ("Answer: 1\n\nI cannot determine this from the text, though.", NONE),
    ("There is no difference between Image 1 and Image 2.", NONE),
    ("Both images achieve the goal equally.", NONE),
    ("The first image, I believe, is closer to the goal.", NONE),
    ("In Image 1 the pole is tilted left, while in Image 2 it is tilted right.", NONE),
    ("The goal is not better achieved in Image 1.", NONE),
    ("It is unclear whether Image 2 is better.", NONE),
    ("Is the goal better achieved in Image 1 or Image 2?", NONE),
    (
        "Reply a single line of 0 if the goal is better achieved in Image 1, or 1 if it is better "
        "achieved in Image 2.\nReply -1 if the text is unsure or there is no difference.",
        NONE,
    ),
    ("1. What is shown in Image 1? A cart with a pole.\n2. What is shown in Image 2? A cart.", NONE),
    ("The robot has 1 arm.", NONE),
    ("unsure", NONE),
    ("cannot tell", NONE),
]


@pytest.mark.parametrize("answer, expected", ANSWERS)
def test_parse_answer(answer, expected):
    assert parse_answer(answer).kind is expected


def test_table_is_big_and_mostly_refuses():
    assert len(ANSWERS) >= 40
    assert sum(expected is NONE for _, expected in ANSWERS) >= 15


def test_label_follows_the_kind():
    assert parse_answer("0").label == 1.0
    assert parse_answer("Image 2 is better").label == 0.0
    assert math.isnan(parse_answer("-1").label)
    assert math.isnan(parse_answer("0 or 1").label)


def test_outcome_from_answer():
    first = outcome_from_answer("Answer: 0", "Image 1 is upright.", requests=2)
    assert (first.status, first.label, first.error, first.requests) == (ANSWERED, 1.0, None, 2)
    assert (first.analysis, first.answer) == ("Image 1 is upright.", "Answer: 0")

    second = outcome_from_answer("1 (Image 2)", None, requests=1)
    assert (second.status, second.label, second.error, second.analysis) == (ANSWERED, 0.0, None, None)

    unsure = outcome_from_answer("-1", None, requests=1)
    assert unsure.status == UNSURE and math.isnan(unsure.label) and unsure.error is None

    for text in ("0 or 1", "I'm sorry, I can't help with that.", "", None):
        bad = outcome_from_answer(text, "some analysis", requests=3)
        assert bad.status == UNPARSEABLE and math.isnan(bad.label) and bad.requests == 3
        assert bad.error == "answer is not 0, 1 or -1 (or it is ambiguous)"
        assert bad.answer == text and bad.analysis == "some analysis"


def test_query_outcome_of_an_empty_analysis_and_of_scored_answers():
    empty = query_outcome("  ", None, requests=1)
    assert (empty.status, empty.error, empty.analysis, empty.requests) == (UNPARSEABLE, "empty analysis", "  ", 1)
    assert math.isnan(empty.label)
    scored = query_outcome(None, "1", 1, (0.2, 0.6, 0.2))
    assert (scored.status, scored.label, scored.answer) == (ANSWERED, 0.0, "1")
    assert scored.p_second == pytest.approx(0.6)
    assert query_outcome("analysis", "0", 2) == outcome_from_answer("0", "analysis", 2)


def test_query_prompts_check_every_template_and_name_the_argument_to_fix():
    with pytest.raises(ValueError, match=r"^analysis_prompt lacks the placeholder\(s\) \{image1\}, \{image2\}$"):
        QueryPrompts(analysis="Which image is better for {goal}?")
    with pytest.raises(ValueError, match=r"^labelling_prompt lacks the placeholder\(s\) \{analysis\}$"):
        QueryPrompts(labelling="Answer 0 or 1.")
    with pytest.raises(ValueError, match="single_stage_prompt lacks"):  # checked in two-stage mode too
        QueryPrompts(two_stage=True, single_stage="{image1} {image2}")


def test_query_prompts_key_fields_name_only_the_templates_in_use():
    two_stage = QueryPrompts()
    # These exact fields are in the keys of every store written so far.
    assert two_stage.key_fields() == {
        "mode": "two-stage", "analysis_prompt": ANALYSIS_PROMPT, "labelling_prompt": LABELLING_PROMPT,
    }
    assert (two_stage.mode, two_stage.vision_template) == ("two-stage", ANALYSIS_PROMPT)
    single_stage = QueryPrompts(two_stage=False)
    assert single_stage.key_fields() == {"mode": "single-stage", "single_stage_prompt": SINGLE_STAGE_PROMPT}
    assert (single_stage.mode, single_stage.vision_template) == ("single-stage", SINGLE_STAGE_PROMPT)


def test_labelling_question_replaces_placeholders_only():
    prompts = QueryPrompts(labelling="Goal: {goal}\n{analysis}")
    # Plain replacement: braces in a goal or an analysis are text, never format fields.
    assert prompts.labelling_question("keep {x} up", "{0} is left") == "Goal: keep {x} up\n{0} is left"

"""The answer parsers on real-looking model outputs, including the traps the protocol names."""

import pytest

from viral.evaluate import parse_choice, parse_direction, parse_short_answer, parse_yes_no

CHOICE_TABLE = [
    # plain forms
    ("A", "A"),
    ("(B)", "B"),
    ("C.", "C"),
    ("D)", "D"),
    ("**B**", "B"),
    ("Answer: D", "D"),
    ("The answer is A", "A"),
    ("The answer is A.", "A"),
    ("The correct option is (C) 4.", "C"),
    ("B. Closed", "B"),
    ("A. 3", "A"),
    ("B is correct because the lamp is left of the sofa.", "B"),
    ("The answer is C because there are two chairs.", "C"),
    ("I think it's D.", "D"),
    ("(a) Open", "A"),
    ("b.", "B"),
    ("The answer is a.", "A"),
    # traps: the English article "a", letters inside words, letters that are not options
    ("a", "A"),  # the whole output is the letter
    ("There is a cat on the left.", None),
    ("A cat is sitting on a sofa.", None),
    ("A dog. B is wrong.", "B"),
    ("Apple", None),
    ("It's a dog", None),
    ("E", None),
    ("The answer is E.", None),
    ("", None),
    ("I cannot determine this from the image.", None),
    ("Based on the image, a chair is visible; the answer is (B).", "B"),
]


@pytest.mark.parametrize("text, expected", CHOICE_TABLE)
def test_parse_choice(text, expected):
    assert parse_choice(text, "ABCD") == expected


def test_parse_choice_respects_the_question_letters():
    assert parse_choice("E", "ABCDEF") == "E"
    assert parse_choice("(C)", "AB") is None
    assert parse_choice("C. left, so B", "AB") == "B"


YES_NO_TABLE = [
    ("Yes", "yes"),
    ("yes.", "yes"),
    ("YES", "yes"),
    ("No", "no"),
    ("No, there is no dog in the image.", "no"),
    ("Yes, there is a dog.", "yes"),
    ("There is no dog.", "no"),
    ("The answer is yes", "yes"),
    # traps: words containing yes/no, negations that are not answers
    ("Not sure.", None),
    ("Nothing is there", None),
    ("I know the answer", None),
    ("Yesterday it rained", None),
    ("None of them", None),
    ("Eyes are visible", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", YES_NO_TABLE)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


ONE_OBJECT = ("left", "right", "top", "bottom")
TWO_OBJECTS = ("left", "right", "above", "below")
DIRECTION_TABLE = [
    ("Left", ONE_OBJECT, "left"),
    ("left.", ONE_OBJECT, "left"),
    ("The dog is on the left side of the photo.", ONE_OBJECT, "left"),
    ("Bottom", ONE_OBJECT, "bottom"),
    ("Below", TWO_OBJECTS, "below"),
    ("The cup is above the table.", TWO_OBJECTS, "above"),
    # hedges are wrong
    ("left or right", ONE_OBJECT, None),
    ("Left or right.", ONE_OBJECT, None),
    ("top/bottom", ONE_OBJECT, None),
    ("Left, right", ONE_OBJECT, None),
    ("It is either above or below the table.", TWO_OBJECTS, None),
    # words outside the subset's four do not count
    ("Above", ONE_OBJECT, None),
    ("upright", ONE_OBJECT, None),
    ("", ONE_OBJECT, None),
]


@pytest.mark.parametrize("text, directions, expected", DIRECTION_TABLE)
def test_parse_direction(text, directions, expected):
    assert parse_direction(text, directions) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("2", "2"), ("Two.", "2"), ("There are 3 red circles", "there"), ("Yes, there is", "yes"),
     ("red", "red"), ("Red circle", "red"), ("02", "2"), ("", None), ("...", None)],
)
def test_parse_short_answer(text, expected):
    assert parse_short_answer(text) == expected

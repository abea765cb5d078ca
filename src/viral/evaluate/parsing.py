"""Strict, documented answer parsers shared by the benchmarks.

Each parser takes a model's raw output and returns the answer it commits to, or `None` when
nothing parses. `None` is always scored as wrong. The rules are deliberately strict so that a
score never credits an answer the model did not give:

- `parse_choice`: the first *standalone* option letter. `A`, `(A)`, `A.`, `A)`, `A:`, `**A**`,
  "The answer is A" all parse to A. A letter inside a word ("Apple", "it's") never counts, a
  lowercase letter counts only in brackets ("(a)"), as the whole output ("a."), or last after an
  answer cue ("The answer is a."), and a bare
  capital followed by a lowercase word ("A cat sits on the left") is the English article, not an
  option - unless an answer cue precedes it ("The answer is A because ...") or the next word is
  "is"/"because"/"since" ("B is correct").
- `parse_yes_no`: the first standalone "yes" or "no", any case ("No, there is ..." -> no);
  "not", "nothing", "none", "know", "yesterday" are not answers.
- `parse_direction`: the first standalone direction word from the allowed set; a hedge - two
  different directions joined only by "or", "and", ",", "/" or nothing ("left or right",
  "top/bottom") anywhere in the output - parses to None (counted wrong).
- `parse_short_answer`: the first word or number, lowercased, with number words mapped to
  digits ("Two." -> "2", "Red circle" -> "red"); used by ShapesBench.
"""

from __future__ import annotations

import re

# A single letter standing alone: not preceded or followed by a letter, digit, apostrophe or
# hyphen; optionally wrapped in ( ) or [ ].
_LETTER_TOKEN = re.compile(r"(?<![A-Za-z0-9'\-])([(\[]?)([A-Za-z])([)\]]?)(?![A-Za-z0-9'\-])")
# Phrases after which a bare capital letter is an answer even if a lowercase word follows it.
_ANSWER_CUE = re.compile(
    r"(answer|option|choice|choose|select|pick|is|be|:)\W*$",
    re.IGNORECASE,
)
# Words after a bare capital letter that show it is an option, not the article ("A is correct").
_OPTION_FOLLOWERS = {"is", "because", "since"}
_NEXT_WORD = re.compile(r"\s+([A-Za-z]+)")


def parse_choice(text: str | None, letters: str = "ABCD") -> str | None:
    """The first standalone option letter of `letters` in `text`, upper-cased, or None."""
    if not text:
        return None
    allowed = set(letters.upper())
    whole = text.strip().strip("*\"'`").rstrip(".:)").lstrip("(").strip()
    if len(whole) == 1 and whole.upper() in allowed:
        return whole.upper()
    for match in _LETTER_TOKEN.finditer(text):
        opening, letter, closing = match.groups()
        if letter.upper() not in allowed:
            continue
        bracketed = bool(opening) and bool(closing)
        if bracketed:
            return letter.upper()
        if letter.islower():
            # "a"/"b" in running text are words; only "The answer is a." (cue, then the end) counts.
            at_end = not text[match.end():].strip(" .!*\"'`")
            if at_end and _ANSWER_CUE.search(text[: match.start()]):
                return letter.upper()
            continue
        follow = _NEXT_WORD.match(text, match.end())
        directly_followed_by_word = follow is not None and text[match.end()] in " \t" and not closing
        if directly_followed_by_word:
            next_word = follow.group(1)
            is_article = next_word[0].islower() and next_word.lower() not in _OPTION_FOLLOWERS
            if is_article and not _ANSWER_CUE.search(text[: match.start()]):
                continue
        return letter.upper()
    return None


_YES_NO = re.compile(r"(?<![A-Za-z0-9'\-])(yes|no)(?![A-Za-z0-9'\-])", re.IGNORECASE)


def parse_yes_no(text: str | None) -> str | None:
    """"yes" or "no": whichever standalone word comes first in `text`, or None."""
    if not text:
        return None
    match = _YES_NO.search(text)
    return match.group(1).lower() if match else None


_WORD_OR_JOINER = re.compile(r"[a-z]+|[,/]")
_HEDGE_JOINERS = {",", "/", "or", "and", "either"}


def parse_direction(text: str | None, directions: tuple[str, ...]) -> str | None:
    """The first standalone word of `directions` in `text` (lowercase), or None.

    A hedge - two different directions separated only by joiners ("or", "and", ",", "/") - makes
    the whole answer None, wherever it occurs.
    """
    if not text:
        return None
    allowed = {d.lower() for d in directions}
    tokens = _WORD_OR_JOINER.findall(text.lower())
    first = None
    for i, token in enumerate(tokens):
        if token not in allowed:
            continue
        if first is None:
            first = token
        j = i + 1
        while j < len(tokens) and tokens[j] in _HEDGE_JOINERS:
            j += 1
        if j < len(tokens) and tokens[j] in allowed and tokens[j] != token:
            return None  # "left or right": a hedge is wrong
    return first


NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11",
    "twelve": "12",
}
_FIRST_TOKEN = re.compile(r"[a-z]+|\d+")


def normalise_short_answer(text: str | None) -> str | None:
    """The first word or number of `text`, lowercased, number words as digits; None if empty."""
    if not text:
        return None
    match = _FIRST_TOKEN.search(text.lower())
    if match is None:
        return None
    token = match.group(0)
    if token.isdigit():
        return str(int(token))
    return NUMBER_WORDS.get(token, token)


def parse_short_answer(text: str | None) -> str | None:
    """ShapesBench: normalised first word/number of the output ("Two." -> "2", "Yes!" -> "yes")."""
    return normalise_short_answer(text)

"""Guards against the semantic cache's known false hits: a different number, a flipped negation.

Embeddings barely move when one number or a "not" changes ("How do I lose 5 kg?" vs
"How do I lose 50 kg?" sit at cosine ≈ 0.95), yet the right answer does. A candidate whose
numbers or negation differ from the query's is refused whatever its similarity.

Numbers are compared as canonical values, so "3", "three" and "3.0" agree, and "twenty one"
equals "21"; ordinals ("3rd", "third") are kept apart from cardinals since "the 3 best" and
"the third best" ask different things. The bare word "one" is not a number here: it is far
more often a pronoun ("how can one learn…", "which one is better") and treating it as 1 costs
hits without saving false ones (measured in ``margin bench semantic-cache``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_UNITS = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12,
}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000,
           "lakh": 100_000, "crore": 10_000_000, "k": 1_000}
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "twentieth": 20,
    "hundredth": 100, "thousandth": 1000,
}
# "one" counts only inside a compound ("twenty one", "one hundred"), never alone.
_COMPOUND_ONLY = {"one": 1}

NEGATIONS = frozenset({
    "not", "no", "never", "nothing", "nobody", "none", "nowhere", "neither", "nor",
    "without", "cannot", "cant", "unable", "non", "dont", "doesnt", "didnt", "isnt", "arent",
    "wasnt", "werent", "shouldnt", "wouldnt", "couldnt", "havent", "hasnt", "wont",
})

_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?(?:st|nd|rd|th|k|m)?|[^\W\d_]+(?:'t)?")
_DIGITS = re.compile(r"(\d[\d,]*(?:\.\d+)?)(st|nd|rd|th|k|m)?$")


@dataclass(frozen=True, slots=True)
class TextMarks:
    """What the guards compare: canonical numbers (with ordinals tagged) and negation."""

    numbers: tuple[str, ...]
    negated: bool


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("’", "'"))


def _is_negation(tok: str) -> bool:
    return tok in NEGATIONS or tok.endswith("'t")


def _canonical(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(round(value, 6))


def _digit_value(tok: str) -> str | None:
    m = _DIGITS.match(tok)
    if not m:
        return None
    raw, suffix = m.group(1).replace(",", ""), m.group(2)
    try:
        value = float(raw)
    except ValueError:
        return None
    if suffix == "k":
        value *= 1_000
    elif suffix == "m":
        value *= 1_000_000
    elif suffix in {"st", "nd", "rd", "th"}:
        return "#" + _canonical(value)
    return _canonical(value)


def _word_numbers(toks: list[str], i: int) -> tuple[str | None, int]:
    """Parse a run of number words starting at toks[i]; return (value, tokens consumed)."""
    total, current, j, seen_word = 0, 0, i, False
    while j < len(toks):
        t = toks[j]
        if t in _UNITS:
            current += _UNITS[t]
        elif t in _COMPOUND_ONLY and (seen_word or (j + 1 < len(toks) and toks[j + 1] in _SCALES
                                                    and toks[j + 1] != "k")):
            current += _COMPOUND_ONLY[t]
        elif t in _SCALES and t != "k":  # "a few hundred" is a number too
            current = max(current, 1) * _SCALES[t]
            if _SCALES[t] >= 1000:
                total, current = total + current, 0
        elif t == "and" and seen_word and j + 1 < len(toks) and toks[j + 1] in _UNITS:
            pass
        else:
            break
        seen_word = True
        j += 1
    if not seen_word:
        return None, 0
    return _canonical(total + current), j - i


@lru_cache(maxsize=65536)
def marks(text: str) -> TextMarks:
    toks = tokens(text)
    numbers: list[str] = []
    negated = False
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok[0].isdigit():
            value = _digit_value(tok)
            if value is not None:
                numbers.append(value)
            i += 1
            continue
        if tok in _ORDINALS:
            numbers.append("#" + str(_ORDINALS[tok]))
            i += 1
            continue
        value, used = _word_numbers(toks, i)
        if used:
            numbers.append(value)  # type: ignore[arg-type]
            i += used
            continue
        # "whether or not", "… or not?" ask both ways: not a negation of the question
        if _is_negation(tok) and not (tok == "not" and i > 0 and toks[i - 1] == "or"):
            negated = True
        i += 1
    return TextMarks(numbers=tuple(sorted(numbers)), negated=negated)


def number_mismatch(a: str, b: str) -> bool:
    return marks(a).numbers != marks(b).numbers


def negation_mismatch(a: str, b: str) -> bool:
    return marks(a).negated != marks(b).negated


def refusal(query: str, candidate: str) -> str | None:
    """Why ``candidate`` must not answer ``query`` ("number" / "negation"), or None."""
    q, c = marks(query), marks(candidate)
    if q.numbers != c.numbers:
        return "number"
    if q.negated != c.negated:
        return "negation"
    return None

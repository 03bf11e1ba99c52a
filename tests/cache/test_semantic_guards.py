"""Guards: a different number or negation refuses a candidate; paraphrases pass."""

from __future__ import annotations

import pytest

from margin.cache.guards import marks, refusal


@pytest.mark.parametrize(("query", "candidate", "reason"), [
    ("How do I lose 5 kg in a month?", "How do I lose 50 kg in a month?", "number"),
    ("What are the top 10 movies of 2016?", "What are the top 10 movies of 2017?", "number"),
    ("How can I earn 1,000 dollars a day?", "How can I earn 100 dollars a day?", "number"),
    ("What is the third law of motion?", "What is the first law of motion?", "number"),
    ("Why is the sky blue?", "Why isn't the sky blue?", "negation"),
    ("Can I take ibuprofen with alcohol?", "Can I take ibuprofen without alcohol?", "negation"),
    ("Why do people never reply on Quora?", "Why do people reply on Quora?", "negation"),
    ("How do I lose weight?", "How do I lose 5 kg?", "number"),
])
def test_refused(query: str, candidate: str, reason: str) -> None:
    assert refusal(query, candidate) == reason
    assert refusal(candidate, query) == reason


@pytest.mark.parametrize(("query", "candidate"), [
    ("What are two ways to learn Python?", "What are 2 ways to learn python?"),
    ("Is twenty one too old to start piano?", "Is 21 too old to start piano?"),
    ("Which one is better, Java or C++?", "Which is better, Java or C++?"),
    ("How can one become a data scientist?", "How do I become a data scientist?"),
    ("Why can't I sleep at night?", "Why am I not able to sleep at night?"),
    ("What is 3.0 divided by 2?", "What is three divided by two?"),
    ("How can I know if I am a genius?", "How can I know whether or not I am a genius?"),
])
def test_allowed(query: str, candidate: str) -> None:
    assert refusal(query, candidate) is None


def test_marks_normalise_number_words_and_magnitudes() -> None:
    assert marks("one hundred and five people").numbers == ("105",)
    assert marks("earn 10k a month").numbers == ("10000",)
    assert marks("the 3rd and the third").numbers == ("#3", "#3")
    assert marks("I don't know").negated and not marks("I do know").negated

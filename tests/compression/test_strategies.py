"""Compression strategies as pure functions: whitespace, duplicates, history, retrieval."""

from __future__ import annotations

import pytest

from margin.compression.apply import compress
from margin.compression.config import CompressionConfig, HistoryConfig, RetrievalConfig
from margin.compression.history import trim_history
from margin.compression.retrieval import (lexical_scores, prune, select, split_chunks,
                                          split_question)
from margin.compression.text import DUPLICATE_MARKER, dedupe_texts, normalise_whitespace
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens


# -- whitespace -------------------------------------------------------------------------------
def test_whitespace_collapses_prose_but_keeps_code_and_indentation():
    text = ("Hello   there,\t\tfriend.   \r\n\r\n\r\n\n\nNext\u200b paragraph.\n"
            "    indented   line\n```python\ndef f(x):\n    return  x   +  1\n\n\n```\n\n\n")
    out = normalise_whitespace(text)
    assert out == ("Hello there, friend.\n\nNext paragraph.\n    indented line\n"
                   "```python\ndef f(x):\n    return  x   +  1\n\n\n```")
    assert normalise_whitespace(out) == out, "idempotent"


# -- duplicates -------------------------------------------------------------------------------
DOC = "The warranty covers manufacturing defects for twenty-four months from the date of purchase."


def test_repeated_paragraphs_are_sent_once_at_their_last_place():
    texts = [f"{DOC}\n\nWhat does it cover?", "It covers defects.", f"{DOC}\n\nAnd for how long?"]
    out = dedupe_texts(texts, ["user", "assistant", "user"], min_chars=40)
    assert out.paragraphs_removed == 1
    assert out.texts == ["What does it cover?", "It covers defects.",
                         f"{DOC}\n\nAnd for how long?"]


def test_system_prompts_are_never_changed_and_pin_their_paragraphs():
    texts = [DOC, DOC, "short", "short"]
    out = dedupe_texts(texts, ["system", "user", "user", "user"], min_chars=40)
    assert out.texts == [DOC, DUPLICATE_MARKER, "short", "short"], \
        "short paragraphs are left alone; a message emptied gets a marker"
    assert dedupe_texts([DOC, None], ["user", "user"], 40).texts == [DOC, None]


# -- history ----------------------------------------------------------------------------------
def _conversation(turns: int) -> list[dict]:
    msgs = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"question {i} " + "word " * 40})
        msgs.append({"role": "assistant", "content": f"answer {i} " + "word " * 40})
    msgs.append({"role": "user", "content": "the latest question"})
    return msgs


def _count(m: dict) -> int:
    return estimate_tokens(m["content"]) + 4


def test_history_keeps_system_and_latest_turns_dropping_whole_old_turns():
    msgs = _conversation(6)
    total = sum(_count(m) for m in msgs)
    res = trim_history(msgs, max_tokens=total // 2, keep_last=2, count=_count)
    kept = res.messages
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "the latest question"
    assert kept[1]["role"] == "user", "the conversation still starts with a user turn"
    assert sum(_count(m) for m in kept) <= total // 2
    assert res.dropped_messages % 2 == 0 and res.dropped_messages > 0
    assert res.dropped_roles == {"user": res.dropped_messages // 2,
                                 "assistant": res.dropped_messages // 2}
    assert res.dropped_tokens == total - sum(_count(m) for m in kept)
    # The dropped ones are the oldest.
    assert kept[1]["content"].startswith(f"question {res.dropped_messages // 2} ")


def test_history_under_budget_is_untouched_and_protected_turns_stay_over_budget():
    msgs = _conversation(2)
    assert trim_history(msgs, 10_000, 2, _count).messages == msgs
    res = trim_history(msgs, 5, keep_last=3, count=_count)
    assert res.messages[0]["role"] == "system"
    # keep_last=3 reaches into turn 1 (its user message is protected with its reply).
    assert [m["content"][:10] for m in res.messages[1:]] == ["question 1", "answer 1 w",
                                                            "the latest"]


def test_tool_results_stay_with_their_call_and_a_marker_can_be_added():
    msgs = [{"role": "system", "content": "sys"},
            {"role": "user", "content": "old " * 50},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "tool", "tool_call_id": "1", "content": "result " * 50},
            {"role": "assistant", "content": "done"},
            {"role": "user", "content": "new question"}]
    count = lambda m: estimate_tokens(m.get("content") or "") + 4  # noqa: E731
    res = trim_history(msgs, 40, keep_last=1, count=count, insert_marker=True)
    roles = [m["role"] for m in res.messages]
    assert roles == ["system", "system", "user"]
    assert "4 earlier messages" in res.messages[1]["content"]


# -- retrieval ---------------------------------------------------------------------------------
TOPICS = {
    "volcano": "Volcanoes erupt when magma rises through the crust and pressure builds up.",
    "bread": "Bread rises because yeast ferments sugars and releases carbon dioxide gas.",
    "tides": "Tides are caused by the gravitational pull of the moon on the oceans.",
    "chess": "In chess the bishop moves diagonally any number of squares on its colour.",
}


def _document(repeat: int = 6) -> str:
    return "\n\n".join(" ".join([text] * repeat) for text in TOPICS.values())


def test_chunks_respect_the_size_and_cover_the_text():
    doc = _document()
    chunks = split_chunks(doc, 60, estimate_tokens)
    assert all(estimate_tokens(c) <= 60 for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(doc.split())


def test_lexical_scores_rank_the_relevant_chunk_first():
    chunks = list(TOPICS.values())
    scores = lexical_scores("why does bread rise with yeast?", chunks)
    assert max(range(4), key=scores.__getitem__) == 1
    assert scores[3] == 0.0


def test_select_keeps_best_chunks_within_budget_in_document_order():
    chunks = ["a " * 10, "b " * 10, "c " * 10, "d " * 10]
    kept = select(chunks, [0.1, 0.9, 0.2, 0.8], budget=25, count=estimate_tokens)
    assert kept == [1, 3]


def test_prune_keeps_the_chunks_about_the_question_and_marks_gaps():
    doc = _document()
    res = prune(doc, "How do tides relate to the moon?", budget=120, chunk_tokens=60,
                count=estimate_tokens, scorer=lexical_scores, gap_marker="[…]")
    assert "moon" in res.text and "bishop" not in res.text
    assert res.text.startswith("[…]") and res.tokens_after <= 120 + 10
    assert res.chunks_kept < res.chunks_total and res.tokens_after < res.tokens_before


def test_question_is_split_off_a_message_that_holds_context_and_question():
    context, question = split_question(_document() + "\n\nWhat moves diagonally?", 200,
                                       estimate_tokens)
    assert question == "What moves diagonally?" and context.endswith("colour.")


# -- all together -------------------------------------------------------------------------------
def test_compress_reports_each_strategy_and_never_changes_the_input():
    doc = _document()
    body = {"model": "m", "messages": [
        {"role": "system", "content": "Answer   from the document."},
        {"role": "user", "content": f"{doc}\n\n{doc}\n\nWhich piece moves diagonally?"}]}
    original = {"model": "m", "messages": [dict(m) for m in body["messages"]]}
    cfg = CompressionConfig(enabled=True, retrieval=RetrievalConfig(
        trigger_tokens=200, budget_tokens=100, chunk_tokens=50), history=HistoryConfig())
    report = compress(body, "chat", cfg)
    assert body == original
    assert set(report.saved) == {"whitespace", "dedupe", "retrieval", "history"}
    assert report.saved["whitespace"] >= 0 and report.saved["history"] == 0
    assert report.saved["dedupe"] > 100 and report.saved["retrieval"] > 50
    assert report.tokens_before == estimate_prompt_tokens(body)
    assert report.tokens_after == estimate_prompt_tokens(report.body)
    assert report.tokens_before - report.tokens_after == sum(report.saved.values())
    last = report.body["messages"][-1]["content"]
    assert "bishop" in last and last.endswith("Which piece moves diagonally?")
    assert report.dropped["dedupe"] == {"paragraphs": 4}
    assert report.dropped["retrieval"]["similarity"] == "lexical"


def test_compress_completions_prompt():
    cfg = CompressionConfig(enabled=True)
    report = compress({"prompt": "a   b\n\n\n\nc"}, "completions", cfg)
    assert report.body["prompt"] == "a b\n\nc"
    assert compress({"prompt": [1, 2, 3]}, "completions", cfg).body == {"prompt": [1, 2, 3]}


def test_config_rejects_a_budget_that_could_never_prune():
    with pytest.raises(ValueError, match="budget_tokens"):
        RetrievalConfig(trigger_tokens=100, budget_tokens=200)

"""Apply the configured strategies to one request body, measuring each one's saving.

Order: whitespace → duplicates → retrieval pruning → history trimming (pruning first, so
history trimming sees the pruned sizes and drops fewer turns). The body is never changed in
place: changed messages are new dicts, so a cache that captured the original keeps it.
Tokens are the gateway's estimate (``metering.tokens``), the same on both sides of a strategy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from margin.compression.config import CompressionConfig, RetrievalConfig
from margin.compression.history import trim_history
from margin.compression.retrieval import Scorer, lexical_scores, prune, split_question
from margin.compression.text import dedupe_texts, normalise_whitespace
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens


@dataclass(slots=True)
class CompressionReport:
    body: dict[str, Any]
    tokens_before: int
    tokens_after: int
    saved: dict[str, int] = field(default_factory=dict)       # strategy → tokens saved
    dropped: dict[str, Any] = field(default_factory=dict)     # strategy → what went


def prompt_tokens(body: Mapping[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return len(prompt)  # one prompt given as token ids
    return estimate_prompt_tokens(dict(body))


def _message_tokens(message: Any) -> int:
    if not isinstance(message, Mapping):
        return 0
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "\n".join(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
    else:
        text = ""
    return estimate_tokens(text) + 4  # the per-message framing estimate_prompt_tokens uses


def _with_content(message: Mapping[str, Any], content: Any) -> dict[str, Any]:
    return {**message, "content": content}


# -- chat ---------------------------------------------------------------------------------
def _whitespace_messages(messages: list[Any]) -> list[Any]:
    out = []
    for m in messages:
        if not isinstance(m, Mapping):
            out.append(m)
            continue
        content = m.get("content")
        if isinstance(content, str):
            new = normalise_whitespace(content)
            out.append(m if new == content else _with_content(m, new))
        elif isinstance(content, list):
            parts = [{**p, "text": normalise_whitespace(p["text"])}
                     if isinstance(p, Mapping) and isinstance(p.get("text"), str) else p
                     for p in content]
            out.append(_with_content(m, parts))
        else:
            out.append(m)
    return out


def _dedupe_messages(messages: list[Any], min_chars: int) -> tuple[list[Any], int]:
    texts = [m.get("content") if isinstance(m, Mapping) and isinstance(m.get("content"), str)
             else None for m in messages]
    roles = [str(m.get("role", "user")) if isinstance(m, Mapping) else "" for m in messages]
    result = dedupe_texts(texts, roles, min_chars)
    out = [m if new is None or new == old else _with_content(m, new)
           for m, old, new in zip(messages, texts, result.texts)]
    return out, result.paragraphs_removed


def _last_user(messages: list[Any]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, Mapping) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return i
    return None


def _prune_text(text: str, question: str | None, cfg: RetrievalConfig,
                scorer: Scorer) -> tuple[str, int, int]:
    """(new text, chunks dropped, chunks kept). ``question`` None: the text holds it last."""
    count = estimate_tokens
    if question is None:
        context, question = split_question(text, cfg.budget_tokens, count)
        tail = question
    else:
        context, tail = text, ""
    res = prune(context, question, cfg.budget_tokens, cfg.chunk_tokens, count, scorer,
                cfg.gap_marker)
    if res.chunks_kept == res.chunks_total:
        return text, 0, res.chunks_kept
    return (res.text + "\n\n" + tail if tail else res.text,
            res.chunks_total - res.chunks_kept, res.chunks_kept)


def _retrieval_messages(messages: list[Any], cfg: RetrievalConfig, scorer: Scorer
                        ) -> tuple[list[Any], dict[str, int]]:
    last = _last_user(messages)
    question: str | None = None
    if last is not None:
        q_text = messages[last]["content"]
        question = q_text if estimate_tokens(q_text) <= cfg.trigger_tokens else \
            split_question(q_text, cfg.budget_tokens, estimate_tokens)[1] or None
    out = list(messages)
    stats = {"messages": 0, "chunks_dropped": 0, "chunks_kept": 0}
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in cfg.roles:
            continue
        content = m.get("content")
        if not isinstance(content, str) or estimate_tokens(content) <= cfg.trigger_tokens:
            continue
        if i != last and not question:
            continue  # nothing to compare the chunks with
        new, dropped, kept = _prune_text(content, None if i == last else question, cfg, scorer)
        if dropped:
            out[i] = _with_content(m, new)
            stats["messages"] += 1
            stats["chunks_dropped"] += dropped
            stats["chunks_kept"] += kept
    return out, stats


# -- the whole body -------------------------------------------------------------------------
def compress(body: Mapping[str, Any], endpoint: str, cfg: CompressionConfig,
             scorer: Scorer | None = None, similarity: str = "lexical") -> CompressionReport:
    """The compressed body and, per enabled strategy, the tokens it saved."""
    scorer = scorer or lexical_scores
    before = prompt_tokens(body)
    report = CompressionReport(dict(body), before, before)
    if endpoint == "chat" and isinstance(body.get("messages"), list):
        _compress_chat(report, cfg, scorer, similarity)
    elif endpoint == "completions":
        _compress_prompt(report, cfg, scorer, similarity)
    report.tokens_after = prompt_tokens(report.body)
    return report


def _step(report: CompressionReport, name: str, key: str, value: Any) -> None:
    current = prompt_tokens(report.body)
    report.body = {**report.body, key: value}
    report.saved[name] = current - prompt_tokens(report.body)


def _compress_chat(report: CompressionReport, cfg: CompressionConfig, scorer: Scorer,
                   similarity: str) -> None:
    messages = list(report.body["messages"])
    if cfg.whitespace:
        messages = _whitespace_messages(messages)
        _step(report, "whitespace", "messages", messages)
    if cfg.dedupe:
        messages, removed = _dedupe_messages(messages, cfg.dedupe_min_chars)
        _step(report, "dedupe", "messages", messages)
        if removed:
            report.dropped["dedupe"] = {"paragraphs": removed}
    if cfg.retrieval is not None:
        messages, stats = _retrieval_messages(messages, cfg.retrieval, scorer)
        _step(report, "retrieval", "messages", messages)
        if stats["messages"]:
            report.dropped["retrieval"] = {**stats, "similarity": similarity}
    if cfg.history is not None:
        h = cfg.history
        result = trim_history(messages, h.max_tokens, h.keep_last_messages, _message_tokens,
                              h.insert_marker)
        messages = result.messages
        _step(report, "history", "messages", messages)
        if result.dropped_messages:
            report.dropped["history"] = {"messages": result.dropped_messages,
                                         "tokens": result.dropped_tokens,
                                         "roles": result.dropped_roles}


def _compress_prompt(report: CompressionReport, cfg: CompressionConfig, scorer: Scorer,
                     similarity: str) -> None:
    prompt = report.body.get("prompt")
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt) if isinstance(prompt, list) else []
    if not prompts or not all(isinstance(p, str) for p in prompts):
        return  # token-id prompts are left alone

    def put(values: list[str]) -> Any:
        return values[0] if single else values

    if cfg.whitespace:
        prompts = [normalise_whitespace(p) for p in prompts]
        _step(report, "whitespace", "prompt", put(prompts))
    if cfg.dedupe:
        removed = 0
        for k, p in enumerate(prompts):
            result = dedupe_texts([p], ["user"], cfg.dedupe_min_chars)
            prompts[k] = result.texts[0] or p
            removed += result.paragraphs_removed
        _step(report, "dedupe", "prompt", put(prompts))
        if removed:
            report.dropped["dedupe"] = {"paragraphs": removed}
    if cfg.retrieval is not None:
        stats = {"messages": 0, "chunks_dropped": 0, "chunks_kept": 0}
        for k, p in enumerate(prompts):
            if estimate_tokens(p) > cfg.retrieval.trigger_tokens:
                new, dropped, kept = _prune_text(p, None, cfg.retrieval, scorer)
                if dropped:
                    prompts[k] = new
                    stats["messages"] += 1
                    stats["chunks_dropped"] += dropped
                    stats["chunks_kept"] += kept
        _step(report, "retrieval", "prompt", put(prompts))
        if stats["messages"]:
            report.dropped["retrieval"] = {**stats, "similarity": similarity}

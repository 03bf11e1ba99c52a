"""Token counting where the upstream does not report usage (marked as estimated)."""

from __future__ import annotations

import re
from typing import Any

# BPE tokenizers average about four characters of English per token; words and
# punctuation give a floor that holds better for code and short strings.
_PIECES = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    return max(len(_PIECES.findall(text)), round(len(text) / 4))


def message_text(messages: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(parts)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a chat or completions body; 4 tokens of framing per chat message."""
    if "messages" in body:
        msgs = body.get("messages") or []
        return estimate_tokens(message_text(msgs)) + 4 * len(msgs) + 3
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, int) for p in prompt):  # one prompt as token ids
            return len(prompt)
        return sum(estimate_tokens(p) if isinstance(p, str) else len(p) for p in prompt)
    return estimate_tokens(prompt if isinstance(prompt, str) else str(prompt))

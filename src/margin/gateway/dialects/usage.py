"""Usage as the OpenAI chat API reports it, read into margin's ``Usage``."""

from __future__ import annotations

from typing import Any

from margin.types import Usage


def usage_from_chat(usage: dict[str, Any] | None) -> Usage:
    """margin's usage from an OpenAI usage object, its token details included."""
    u = usage or {}
    prompt = u.get("prompt_tokens_details") or {}
    completion = u.get("completion_tokens_details") or {}
    return Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0),
                 int(prompt.get("cached_tokens") or 0),
                 cache_write_tokens=int(prompt.get("cache_write_tokens") or 0),
                 reasoning_tokens=int(completion.get("reasoning_tokens") or 0))

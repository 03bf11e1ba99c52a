"""Named server-sent events (``event:`` + ``data:``), as Anthropic and OpenAI's Responses
API send them."""

from __future__ import annotations

from typing import Any

import orjson


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

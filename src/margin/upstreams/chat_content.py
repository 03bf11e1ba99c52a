"""Reading an OpenAI chat body the way every native provider's translation needs it: the
text of a message, a tool call's arguments as an object, content parts mapped to the
provider's blocks, and turns where consecutive messages of one role merge (Anthropic,
Bedrock and Gemini all require roles to alternate)."""

from __future__ import annotations

from typing import Any, Callable

import orjson

Block = dict[str, Any]


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def arguments_object(arguments: str | None) -> dict[str, Any]:
    """A tool call's ``arguments`` string as the object providers want; text that is not a
    JSON object is kept under ``value`` (or dropped when it is not JSON at all)."""
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {"value": value}


def split_data_url(url: str) -> tuple[str, str] | None:
    """``data:<mime>;base64,<data>`` as (mime, data); None for any other URL."""
    if url.startswith("data:") and ";base64," in url:
        mime, data = url[5:].split(";base64,", 1)
        return mime, data
    return None


def content_blocks(content: Any, text: Callable[[str], Block],
                   image: Callable[[str], Block]) -> list[Block]:
    """A message's content as provider blocks: ``text`` makes one from a text part,
    ``image`` one from an image part's URL. Other part kinds are not sent."""
    if content is None:
        return []
    if isinstance(content, str):
        return [text(content)] if content else []
    out: list[Block] = []
    for part in content:
        if part.get("type") == "text":
            out.append(text(part.get("text", "")))
        elif part.get("type") == "image_url":
            out.append(image(str((part.get("image_url") or {}).get("url", ""))))
    return out


def stop_list(stop: Any) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop)


class Turns:
    """Messages in order, a turn of the same role as the last one merged into it."""

    def __init__(self, blocks_key: str = "content") -> None:
        self.key = blocks_key
        self.items: list[dict[str, Any]] = []

    def add(self, role: str, blocks: list[Block]) -> None:
        if self.items and self.items[-1]["role"] == role:
            self.items[-1][self.key].extend(blocks)
        else:
            self.items.append({"role": role, self.key: blocks})

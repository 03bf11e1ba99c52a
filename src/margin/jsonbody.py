"""A request body as a JSON object, or a 400 that says what is wrong with it: the one
parser the proxied and the admin endpoints share."""

from __future__ import annotations

from typing import Any

import orjson

from margin.errors import BadRequest

# orjson reads up to 1,024 levels but writes only 254, and the gateway writes bodies
# again (cache keys, prompt hashes, the upstream call) inside a few levels of its own:
# deeper than this is refused up front. Real requests (JSON schemas in tools included)
# stay far below.
MAX_DEPTH = 128


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    # Counting brackets is C-speed; only a body with enough of them to be too deep is walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        check_depth(body)
    return body


def check_depth(body: Any, limit: int = MAX_DEPTH) -> None:
    """A 400 naming the first field nested deeper than ``limit`` levels."""
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > limit:
            field = path.lstrip(".").split(".")[0].split("[")[0] or "body"
            raise BadRequest(f"'{field}' is nested deeper than {limit} levels "
                             f"(at {path.lstrip('.')[:120]}…)", code="invalid_value")
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{path}.{k}") for k, v in node.items()
                         if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(node)
                         if isinstance(v, (dict, list)))

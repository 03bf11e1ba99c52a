"""A request body as a JSON object, or a 400 that says what is wrong with it: the one
parser the proxied and the admin endpoints share."""

from __future__ import annotations

from typing import Any

import orjson

from margin.errors import BadRequest


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body

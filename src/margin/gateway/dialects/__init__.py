"""Client-facing dialects: the APIs besides OpenAI chat that clients speak to margin.

A dialect is a translation at the edge, not a second pipeline: its request is checked
and turned into a chat body, the same stages run on it (auth, limits, caches, routing,
batching, the ledger), and the chat answer — JSON or a stream of chunks — is turned back
into the dialect's own shape. ``Dialect`` is what ``gateway/proxy.py`` asks of one.

    messages    Anthropic's Messages API   (POST /v1/messages, /v1/messages/count_tokens)
    responses   OpenAI's Responses API     (POST /v1/responses, GET /v1/responses/{id})
"""

from __future__ import annotations

from typing import Any, Protocol

from margin.errors import MarginError
from margin.types import RequestContext, Response


class StreamEncoder(Protocol):
    """Turns one request's stream of chat chunks into the dialect's SSE bytes."""

    def chunk(self, chunk: dict[str, Any]) -> bytes: ...

    def error(self, message: str, error_type: str, code: str | None) -> bytes: ...

    def end(self) -> bytes: ...


class Dialect(Protocol):
    name: str

    def to_chat(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """The chat body this request means (raises ``BadRequest`` for a bad one)."""
        ...

    def answer(self, response: Response, ctx: RequestContext) -> dict[str, Any]:
        """The dialect's answer for a chat completion (or the upstream's own, when it
        speaks the dialect natively: ``response.native``)."""
        ...

    def encoder(self, ctx: RequestContext) -> StreamEncoder: ...

    def error_body(self, exc: MarginError) -> dict[str, Any]: ...

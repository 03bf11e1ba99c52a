"""The two dialects as ``Dialect`` objects the proxy runs, and their extra endpoints
(``/v1/messages/count_tokens``, ``GET /v1/responses/{id}``)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from margin.auth.admin import presented_key
from margin.errors import BadRequest, MarginError, NotFound, error_body
from margin.gateway import validate
from margin.gateway.dialects import messages, responses
from margin.gateway.dialects.messages_stream import MessagesStream
from margin.gateway.dialects.responses_stream import ResponsesStream
from margin.gateway.dialects.store import ResponseStore
from margin.gateway.dialects.usage import usage_from_chat
from margin.gateway.http import read_body, request_headers, send_json
from margin.gateway.stages.auth import authorize
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens
from margin.types import RequestContext, Response


def accept_any(body: dict[str, Any]) -> None:
    """The dialect checks its own body in ``to_chat``."""


def chat_answer(response: Response) -> dict[str, Any]:
    """The chat completion of a non-streamed answer (a cache hit has only its bytes)."""
    if response.payload is not None:
        return response.payload
    return orjson.loads(response.raw or b"{}")


def owner(headers: dict[str, str]) -> str:
    """Who may read a stored response: whoever presented the same API key."""
    key = presented_key(headers) or ""
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


class MessagesDialect:
    name = messages.NAME

    def to_chat(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        ctx.dialect = self.name  # a refused request's row says which API it came in on
        chat = messages.to_chat(body)
        validate.validate_chat(chat)
        ctx.client_body, ctx.translated_body = body, chat
        if ctx.user is None:
            ctx.user = messages.attribution_user(body)
        return chat

    def answer(self, response: Response, ctx: RequestContext) -> dict[str, Any]:
        if response.native is not None:
            return response.native  # an anthropic upstream's answer, as it sent it
        return messages.answer(chat_answer(response), ctx)

    def encoder(self, ctx: RequestContext) -> MessagesStream:
        return MessagesStream(ctx)

    def error_body(self, exc: MarginError) -> dict[str, Any]:
        return messages.error_body(exc)

    def count_tokens(self, body: dict[str, Any]) -> dict[str, int]:
        """``/v1/messages/count_tokens``: margin's estimate of the prompt and the tool
        definitions (max_tokens is not needed here, as with Anthropic)."""
        chat = messages.to_chat({"max_tokens": 1, **body})
        tools = estimate_tokens(orjson.dumps(chat["tools"]).decode()) if chat.get("tools") else 0
        return {"input_tokens": estimate_prompt_tokens(chat) + tools}


class ResponsesDialect:
    name = responses.NAME

    def __init__(self, log_content: bool, store: ResponseStore | None = None) -> None:
        self.log_content = log_content
        self.store = store if store is not None else ResponseStore()

    def to_chat(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        ctx.dialect = self.name
        history = None
        previous = body.get("previous_response_id")
        for field in ("previous_response_id", "store"):
            if body.get(field) and not self.log_content:
                raise BadRequest(responses.NEEDS_LOG_CONTENT.format(field=field),
                                 code="content_storage_disabled")
        if previous is not None:
            if not isinstance(previous, str):
                raise BadRequest("previous_response_id: must be a string", code="invalid_value")
            found = self.store.get(owner(ctx.headers), previous)
            if found is None:
                raise NotFound(f"Previous response with id '{previous}' not found.",
                               code="previous_response_not_found")
            history = [m for m in found.conversation if m["role"] != "system"]
        chat = responses.to_chat(body, history)
        validate.validate_chat(chat)
        ctx.client_body, ctx.translated_body = body, chat
        return chat

    def _keep(self, ctx: RequestContext, body: dict[str, Any]) -> bool:
        return self.log_content and bool(body.get("store"))

    def _remember(self, ctx: RequestContext, response: dict[str, Any],
                  answer: dict[str, Any]) -> None:
        self.store.put(owner(ctx.headers), response, [*ctx.body["messages"], answer])

    def answer(self, response: Response, ctx: RequestContext) -> dict[str, Any]:
        payload = chat_answer(response)
        request = ctx.client_body or {}
        choice = (payload.get("choices") or [{}])[0]
        usage = usage_from_chat(payload["usage"]) if payload.get("usage") else ctx.usage
        out = responses.envelope(ctx, request, "completed", responses.output_of(payload, ctx),
                                 usage, choice.get("finish_reason"), model=payload.get("model"))
        if self._keep(ctx, request):
            msg = choice.get("message") or {}
            self._remember(ctx, out, {k: v for k, v in msg.items()
                                      if k in ("role", "content", "tool_calls")})
        return out

    def encoder(self, ctx: RequestContext) -> ResponsesStream:
        request = ctx.client_body or {}
        keep = self._keep(ctx, request)
        return ResponsesStream(ctx, request, (lambda final, answer: self._remember(
            ctx, final, answer)) if keep else None)

    def error_body(self, exc: MarginError) -> dict[str, Any]:
        return error_body(exc)

    def get(self, headers: dict[str, str], response_id: str) -> dict[str, Any]:
        if not self.log_content:
            raise BadRequest(responses.NEEDS_LOG_CONTENT.format(field="GET /v1/responses/{id}"),
                             code="content_storage_disabled")
        found = self.store.get(owner(headers), response_id)
        if found is None:
            raise NotFound(f"Response with id '{response_id}' not found.",
                           code="response_not_found")
        return found.response


class DialectRoutes:
    """The dialects' paths: the proxied ones (``endpoints``, run by the proxy like chat) and
    the two answered here (count_tokens, a stored response)."""

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        self.messages = MessagesDialect()
        self.responses = ResponsesDialect(gateway.settings.ledger.log_content)
        self.endpoints: dict[str, tuple[str, Any, Any]] = {
            "/v1/messages": ("chat", accept_any, self.messages),
            "/v1/responses": ("chat", accept_any, self.responses),
        }

    def serves(self, method: str, path: str) -> bool:
        return ((method == "POST" and path == "/v1/messages/count_tokens")
                or (method == "GET" and path.startswith("/v1/responses/")))

    async def serve(self, scope: Any, receive: Any, send: Any, path: str) -> None:
        headers = request_headers(scope)
        counting = path == "/v1/messages/count_tokens"
        try:
            if self.gw.keys is not None and self.gw.master_key:
                await authorize(headers, self.gw.master_key, self.gw.keys)
            if counting:
                raw = await read_body(scope, receive, self.gw.settings.server.max_body_bytes)
                body = validate.parse_json_object(raw)
                await send_json(send, 200, self.messages.count_tokens(body))
            else:
                await send_json(send, 200, self.responses.get(
                    headers, path[len("/v1/responses/"):]))
        except MarginError as exc:
            shape = self.messages.error_body if counting else error_body
            await send_json(send, exc.status_code, shape(exc),
                            [(k.encode(), v.encode()) for k, v in exc.headers().items()])

"""Anthropic's Messages API as an upstream (``provider: anthropic``).

The deployments, retries, cool-down, timeouts and pooling are the OpenAI-compatible
upstream's (this subclasses it); what differs is the wire: ``POST {api_base}/v1/messages``
with ``x-api-key`` and ``anthropic-version``, a Messages body made from the chat body
(``anthropic_wire``), and the answer or its events read back as chat. Usage carries the
prompt-cache reads and writes, priced at their own rates.

A request that came in through ``/v1/messages`` and that no stage rewrote is sent as the
client wrote it (``call.native``) — prompt-cache markers, thinking settings and all — and
its answer goes back to the client as Anthropic sent it (``Response.native``, or each
event's bytes as they came); the chat form rides along only for the pipeline (caches,
the ledger).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import orjson
from margin.errors import UpstreamError, UpstreamTimeout
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens
from margin.types import Call, Response
from margin.upstreams.anthropic_wire import EventsToChunks, chat_payload, chat_usage, messages_body
from margin.upstreams.config import AnthropicModelConfig, DeploymentConfig, HTTPModelConfig
from margin.upstreams.openai_http import HTTPDeployment, MalformedAnswer, OpenAIHTTPUpstream
from margin.upstreams.stream_book import StreamBook
from margin.upstreams.resilience import DeploymentHealth

NATIVE = "messages"  # the client dialect this provider speaks natively


class AnthropicDeployment(HTTPDeployment):
    def __init__(self, model: HTTPModelConfig, dep: DeploymentConfig,
                 health: DeploymentHealth | None = None) -> None:
        super().__init__(model, dep, health)
        key = self._headers.pop("authorization", "").removeprefix("Bearer ")
        self.base = self.base.removesuffix("/v1")
        if key:
            self._headers["x-api-key"] = key
        assert isinstance(model, AnthropicModelConfig)
        self._headers["anthropic-version"] = model.anthropic_version


def _native(call: Call) -> dict[str, Any] | None:
    return call.native[1] if call.native is not None and call.native[0] == NATIVE else None


class AnthropicUpstream(OpenAIHTTPUpstream):
    config_class = AnthropicModelConfig
    deployment_class = AnthropicDeployment
    batchable_embeddings = False
    batchable_completions = False
    model: AnthropicModelConfig


    def _check_payload(self, payload: Any) -> None:
        # a native answer: not chat-shaped until translated; an object is all it must be
        if not isinstance(payload, dict):
            raise MalformedAnswer(f"a malformed body: a JSON {type(payload).__name__}, "
                                  "not an object")
    def _body(self, call: Call, dep: HTTPDeployment) -> dict[str, Any]:
        native = _native(call)
        if native is not None:
            return {**native, "model": dep.upstream_model}
        if call.endpoint != "chat":
            raise UpstreamError(f"model {self.model.name!r} (anthropic) serves chat only")
        return messages_body(call.body, dep.upstream_model, self.model.default_max_tokens)

    async def _post(self, dep: HTTPDeployment, endpoint: str, body: dict[str, Any]
                    ) -> aiohttp.ClientResponse:
        try:
            return await dep.post(dep.base + "/v1/messages", orjson.dumps(body))
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"upstream {dep.label} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {dep.label} unreachable: {type(exc).__name__}") from None

    async def _complete_once(self, call: Call, dep: HTTPDeployment) -> Response:
        response = await super()._complete_once(call, dep)
        if response.stream is not None or response.payload is None:
            return response
        message = response.payload
        return Response(200, payload=chat_payload(message),
                        native=message if _native(call) is not None else None)

    def _record_usage(self, call: Call, usage: Any, payload: dict | None) -> None:
        # Read as OpenAI's usage: prompt tokens then count the cache reads and writes.
        super()._record_usage(call, chat_usage(usage) if isinstance(usage, dict) else None,
                              chat_payload(payload) if payload else None)

    async def _stream(self, call: Call, dep: HTTPDeployment,
                      resp: aiohttp.ClientResponse, t0: float) -> AsyncIterator[dict[str, Any]]:
        native = _native(call) is not None
        client_wants_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        reader = EventsToChunks()
        book = StreamBook(self.model.name, call, dep, resp, t0)
        ended = False
        block: list[bytes] = []
        try:
            with book.reading("event"):
                async for line in resp.content:
                    if line.strip():
                        block.append(line)
                        continue
                    if not block:
                        continue
                    raw, block = b"".join(block) + b"\n", []
                    data = b"".join(ln[5:].strip() for ln in raw.splitlines()
                                    if ln.startswith(b"data:"))
                    if not data:
                        continue
                    ev = orjson.loads(data)
                    if ev.get("type") == "error":
                        err = ev.get("error") or {}
                        raise book.refuse(f"upstream stream error: {err.get('message', err)}")
                    if call.result.ttft_ms is None:
                        call.result.ttft_ms = call.elapsed_ms()
                    chunk = reader.feed(ev)
                    if native:
                        # The client gets Anthropic's bytes; the chat chunk is the pipeline's.
                        chunk = {**(chunk or {"choices": []}), "_native": raw}
                    if ev.get("type") == "message_stop":
                        ended = True
                        if client_wants_usage and not native:
                            book.sent += 1
                            yield reader.usage_chunk()
                    if chunk is not None:
                        book.sent += 1
                        yield chunk
                    if ended:
                        break
        finally:
            elapsed_ms = book.close()
            u = chat_usage(reader.usage)
            if ended and "output_tokens" in reader.usage:
                details = u["prompt_tokens_details"]
                call.result.set_usage(u["prompt_tokens"], u["completion_tokens"],
                                      details["cached_tokens"],
                                      cache_write_tokens=details["cache_write_tokens"])
            elif book.billed:
                # Cut short (the client left, the stream broke): what was generated so far,
                # the prompt as Anthropic counted it at message_start when it got that far.
                call.result.set_usage(u["prompt_tokens"] or estimate_prompt_tokens(call.body),
                                      max(int(reader.usage.get("output_tokens") or 0),
                                          estimate_tokens("".join(reader.texts))),
                                      u["prompt_tokens_details"]["cached_tokens"],
                                      estimated=True,
                                      cache_write_tokens=u["prompt_tokens_details"][
                                          "cache_write_tokens"])
            book.attempt(elapsed_ms)


__all__ = ["AnthropicModelConfig", "AnthropicUpstream"]

"""Google's Gemini API as an upstream (``provider: gemini``): ``generateContent`` and
``streamGenerateContent?alt=sse`` with an API key (``x-goog-api-key``), usage from
``usageMetadata`` (prompt, candidates, cached content and thinking tokens). Deployments,
retries, cool-down and timeouts are the OpenAI-compatible upstream's."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import aiohttp
import orjson

from margin.errors import UpstreamError, UpstreamTimeout
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens
from margin.types import Call, Response
from margin.upstreams.config import DeploymentConfig, GeminiModelConfig, HTTPModelConfig
from margin.upstreams.gemini_wire import candidate_message, chat_payload, chat_usage, gemini_body
from margin.upstreams.openai_http import HTTPDeployment, MalformedAnswer, OpenAIHTTPUpstream
from margin.upstreams.stream_book import StreamBook
from margin.upstreams.resilience import DeploymentHealth

# _body -> _post: whether this body goes to the streaming method (popped before sending)
_STREAM = "__margin_stream"


class GeminiDeployment(HTTPDeployment):
    def __init__(self, model: HTTPModelConfig, dep: DeploymentConfig,
                 health: DeploymentHealth | None = None) -> None:
        super().__init__(model, dep, health)
        key = self._headers.pop("authorization", "").removeprefix("Bearer ")
        if key:
            self._headers["x-goog-api-key"] = key
        assert isinstance(model, GeminiModelConfig)
        self.base = self.base.rstrip("/") + "/" + model.api_version


class GeminiUpstream(OpenAIHTTPUpstream):
    config_class = GeminiModelConfig
    deployment_class = GeminiDeployment
    batchable_embeddings = False
    batchable_completions = False


    def _check_payload(self, payload: Any) -> None:
        # a native answer: not chat-shaped until translated; an object is all it must be
        if not isinstance(payload, dict):
            raise MalformedAnswer(f"a malformed body: a JSON {type(payload).__name__}, "
                                  "not an object")
    def _body(self, call: Call, dep: HTTPDeployment) -> dict[str, Any]:
        if call.endpoint != "chat":
            raise UpstreamError(f"model {self.model.name!r} (gemini) serves chat only")
        return {**gemini_body(call.body), _STREAM: call.stream}

    async def _post(self, dep: HTTPDeployment, endpoint: str, body: dict[str, Any]
                    ) -> aiohttp.ClientResponse:
        stream = body.pop(_STREAM, False)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = f"{dep.base}/models/{dep.upstream_model}:{method}"
        try:
            return await dep.post(url, orjson.dumps(body))
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"upstream {dep.label} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {dep.label} unreachable: {type(exc).__name__}") from None

    async def _complete_once(self, call: Call, dep: HTTPDeployment) -> Response:
        response = await super()._complete_once(call, dep)
        if response.stream is not None or response.payload is None:
            return response
        return Response(200, payload=chat_payload(response.payload, dep.upstream_model))

    def _record_usage(self, call: Call, usage: Any, payload: dict | None) -> None:
        meta = (payload or {}).get("usageMetadata")
        super()._record_usage(call, chat_usage(meta) if isinstance(meta, dict) else None,
                              chat_payload(payload, "") if payload else None)

    async def _stream(self, call: Call, dep: HTTPDeployment,
                      resp: aiohttp.ClientResponse, t0: float) -> AsyncIterator[dict[str, Any]]:
        client_wants_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        meta: dict[str, Any] | None = None
        texts: list[str] = []
        calls = 0
        finished = False
        book = StreamBook(self.model.name, call, dep, resp, t0)
        base = {"id": "", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": dep.upstream_model}
        try:
            with book.reading():
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if not data:
                        continue
                    chunk = orjson.loads(data)
                    if "error" in chunk:
                        raise book.refuse(f"upstream stream error: "
                                          f"{(chunk['error'] or {}).get('message')}")
                    if call.result.ttft_ms is None:
                        call.result.ttft_ms = call.elapsed_ms()
                    base["id"] = chunk.get("responseId", base["id"])
                    meta = chunk.get("usageMetadata") or meta
                    text, tool_calls, finish = candidate_message(chunk, calls)
                    delta: dict[str, Any] = {}
                    if not book.sent:
                        delta["role"] = "assistant"
                    if text:
                        texts.append(text)
                        delta["content"] = text
                    if tool_calls:
                        delta["tool_calls"] = [{**c, "index": calls + i}
                                               for i, c in enumerate(tool_calls)]
                        calls += len(tool_calls)
                    if delta:
                        book.sent += 1
                        yield {**base, "choices": [{"index": 0, "delta": delta,
                                                    "finish_reason": None}]}
                    if finish:
                        finished = True
                        book.sent += 1
                        yield {**base, "choices": [{"index": 0, "delta": {},
                                                    "finish_reason": "tool_calls" if calls
                                                    else finish}]}
                if finished and meta and client_wants_usage:
                    yield {**base, "choices": [], "usage": chat_usage(meta)}
        finally:
            elapsed_ms = book.close()
            if finished and meta:
                u = chat_usage(meta)
                call.result.set_usage(u["prompt_tokens"], u["completion_tokens"],
                                      u["prompt_tokens_details"]["cached_tokens"],
                                      reasoning_tokens=u["completion_tokens_details"][
                                          "reasoning_tokens"])
            elif book.billed:
                # Cut short: Gemini's usage so far is cumulative; else an estimate.
                u = chat_usage(meta or {})
                call.result.set_usage(u["prompt_tokens"] or estimate_prompt_tokens(call.body),
                                      max(u["completion_tokens"], estimate_tokens("".join(texts))),
                                      u["prompt_tokens_details"]["cached_tokens"],
                                      estimated=True)
            book.attempt(elapsed_ms)

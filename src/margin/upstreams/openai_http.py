"""Any OpenAI-compatible HTTP API (OpenAI, vLLM, Ollama, llama.cpp server, TGI …).

One aiohttp connection pool per deployment, reused by every request. Upstream errors come
back as ``UpstreamError`` subclasses carrying the upstream's own message.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator

import aiohttp
import orjson

from margin.config import DeploymentConfig, ModelConfig
from margin.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from margin.gateway.context import Attempt, RequestContext, Response
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens
from margin.upstreams.base import EmbedResult

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


class HTTPDeployment:
    """One base URL + key, with its own pooled session."""

    def __init__(self, model: ModelConfig, dep: DeploymentConfig) -> None:
        self.model = model
        self.dep = dep
        self.base = dep.api_base.rstrip("/")
        self.label = self.base
        self.upstream_model = dep.upstream_model or model.upstream_model or model.name
        key = os.environ.get(dep.api_key_env, "") if dep.api_key_env else ""
        self._headers = {"content-type": "application/json"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None
        self.in_flight = 0
        self.ewma_latency_ms = 0.0

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.model.max_connections,
                                             keepalive_timeout=60, ttl_dns_cache=300)
            timeout = aiohttp.ClientTimeout(total=None, connect=self.model.connect_timeout_s,
                                            sock_read=self.model.timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                                  headers=self._headers,
                                                  json_serialize=lambda o: orjson.dumps(o).decode(),
                                                  skip_auto_headers=("User-Agent",))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def observe(self, latency_ms: float) -> None:
        self.ewma_latency_ms = (latency_ms if self.ewma_latency_ms == 0
                                else 0.8 * self.ewma_latency_ms + 0.2 * latency_ms)


def _error_from(status: int, raw: bytes) -> UpstreamStatusError:
    message, etype, code = raw.decode("utf-8", "replace")[:500] or f"HTTP {status}", None, None
    try:
        err = orjson.loads(raw).get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            etype, code = err.get("type"), err.get("code")
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return UpstreamStatusError(f"upstream returned {status}: {message}", upstream_status=status,
                               error_type=etype, code=code if isinstance(code, str) else None)


class OpenAIHTTPUpstream:
    """Speaks to one or more deployments of one model; picks the least busy."""

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.deployments = [HTTPDeployment(model, d) for d in model.deployments]

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        await asyncio.gather(*(d.aclose() for d in self.deployments))

    def pick(self, exclude: set[int] | None = None) -> HTTPDeployment:
        choices = [d for i, d in enumerate(self.deployments) if not exclude or i not in exclude]
        choices = choices or self.deployments
        return min(choices, key=lambda d: (d.in_flight, d.ewma_latency_ms))

    def _body(self, ctx: RequestContext, dep: HTTPDeployment) -> dict[str, Any]:
        body = dict(ctx.body)
        body["model"] = dep.upstream_model
        if ctx.stream and ctx.endpoint in ("chat", "completions") and self.model.supports_stream_usage:
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True
            body["stream_options"] = opts
        return body

    async def _post(self, dep: HTTPDeployment, endpoint: str, body: dict[str, Any]
                    ) -> aiohttp.ClientResponse:
        try:
            return await dep.session().post(dep.base + _PATHS[endpoint], data=orjson.dumps(body))
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"upstream {dep.label} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {dep.label} unreachable: {type(exc).__name__}") from None

    async def complete(self, ctx: RequestContext, dep: HTTPDeployment | None = None) -> Response:
        dep = dep or self.pick()
        body = self._body(ctx, dep)
        t0 = time.perf_counter()
        dep.in_flight += 1
        try:
            resp = await self._post(dep, ctx.endpoint, body)
        except Exception:
            dep.in_flight -= 1
            raise
        if resp.status >= 400 or not ctx.stream:
            try:
                raw = await resp.read()
            except asyncio.TimeoutError:
                raise UpstreamTimeout(f"upstream {dep.label} timed out mid-answer") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"upstream {dep.label} failed mid-answer: "
                                    f"{type(exc).__name__}") from None
            finally:
                dep.in_flight -= 1
                resp.release()
            elapsed_ms = (time.perf_counter() - t0) * 1000
            dep.observe(elapsed_ms)
            ctx.upstream_ms += elapsed_ms
            if resp.status >= 400:
                ctx.attempts.append(Attempt(self.model.name, dep.label, resp.status, elapsed_ms,
                                            error=raw[:200].decode("utf-8", "replace")))
                raise _error_from(resp.status, raw)
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"upstream {dep.label} answered with invalid JSON") from None
            self._record_usage(ctx, payload.get("usage"), payload)
            ctx.attempts.append(Attempt(self.model.name, dep.label, resp.status, elapsed_ms,
                                        prompt_tokens=ctx.usage.prompt_tokens,
                                        completion_tokens=ctx.usage.completion_tokens))
            return Response(200, payload=payload, raw=raw)
        return Response(200, stream=self._stream(ctx, dep, resp, t0))

    def _record_usage(self, ctx: RequestContext, usage: Any, payload: dict | None) -> None:
        if isinstance(usage, dict) and "prompt_tokens" in usage:
            ctx.usage.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            ctx.usage.completion_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            ctx.usage.cached_tokens = int(details.get("cached_tokens") or 0)
            ctx.usage.estimated = False
            return
        ctx.usage.prompt_tokens = estimate_prompt_tokens(ctx.body)
        text = ""
        for choice in (payload or {}).get("choices") or []:
            msg = choice.get("message") or {}
            text += str(msg.get("content") or choice.get("text") or "")
        ctx.usage.completion_tokens = estimate_tokens(text)
        ctx.usage.estimated = True

    async def _stream(self, ctx: RequestContext, dep: HTTPDeployment,
                      resp: aiohttp.ClientResponse, t0: float) -> AsyncIterator[dict[str, Any]]:
        client_wants_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
        usage = None
        text_parts: list[str] = []
        status = resp.status
        try:
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                if not data:
                    continue
                chunk = orjson.loads(data)
                if ctx.ttft_ms is None:
                    ctx.ttft_ms = ctx.elapsed_ms()
                if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                    err = chunk["error"] or {}
                    raise UpstreamError(f"upstream stream error: {err.get('message', err)}")
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    if not chunk.get("choices") and not client_wants_usage:
                        continue
                    if not client_wants_usage:
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") if delta else choice.get("text")
                    if piece:
                        text_parts.append(piece)
                yield chunk
        except asyncio.TimeoutError:
            status = 504
            raise UpstreamTimeout(f"upstream {dep.label} stalled mid-stream") from None
        except aiohttp.ClientError as exc:
            status = 502
            raise UpstreamError(f"upstream {dep.label} stream broke: {type(exc).__name__}") from None
        except orjson.JSONDecodeError:
            status = 502
            raise UpstreamError(f"upstream {dep.label} sent an unreadable stream chunk") from None
        finally:
            dep.in_flight -= 1
            resp.release()
            elapsed_ms = (time.perf_counter() - t0) * 1000
            dep.observe(elapsed_ms)
            ctx.upstream_ms += elapsed_ms
            if usage:
                self._record_usage(ctx, usage, None)
            else:
                ctx.usage.prompt_tokens = estimate_prompt_tokens(ctx.body)
                ctx.usage.completion_tokens = estimate_tokens("".join(text_parts))
                ctx.usage.estimated = True
            ctx.attempts.append(Attempt(self.model.name, dep.label, status, elapsed_ms,
                                        prompt_tokens=ctx.usage.prompt_tokens,
                                        completion_tokens=ctx.usage.completion_tokens))
            ctx.notes["stream_text_chars"] = sum(len(p) for p in text_parts)

    async def embed(self, inputs: list[Any], ctx: RequestContext | None = None) -> EmbedResult:
        dep = self.pick()
        body: dict[str, Any] = {"model": dep.upstream_model, "input": inputs}
        if ctx is not None:
            for k in ("encoding_format", "dimensions", "user"):
                if k in ctx.body:
                    body[k] = ctx.body[k]
            body["encoding_format"] = "float"
        t0 = time.perf_counter()
        dep.in_flight += 1
        try:
            resp = await self._post(dep, "embeddings", body)
            try:
                raw = await resp.read()
            finally:
                resp.release()
        finally:
            dep.in_flight -= 1
        elapsed_ms = (time.perf_counter() - t0) * 1000
        dep.observe(elapsed_ms)
        if resp.status >= 400:
            raise _error_from(resp.status, raw)
        payload = orjson.loads(raw)
        data = sorted(payload.get("data") or [], key=lambda d: d.get("index", 0))
        if len(data) != len(inputs):
            raise UpstreamError(f"upstream returned {len(data)} embeddings for {len(inputs)} inputs")
        usage = payload.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or 0)
        per_input = [estimate_tokens(t) if isinstance(t, str) else len(t) for t in inputs]
        if not tokens:
            tokens = sum(per_input)
        return EmbedResult([d["embedding"] for d in data], tokens, per_input)

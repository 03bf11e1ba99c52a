"""Any OpenAI-compatible HTTP API (OpenAI, vLLM, Ollama, llama.cpp server, TGI …).

One aiohttp connection pool per deployment, reused by every request. Upstream errors come
back as ``UpstreamError`` subclasses carrying the upstream's own message.

Several deployments of one model (two API keys, two vLLM servers) share its traffic: each
call goes to the one with the fewest outstanding requests (per unit of ``weight``), the
lower smoothed latency breaking ties. A retryable failure (5xx, 429, timeout, refused
connection) is retried on another deployment after an exponential, jittered backoff, and the
failing deployment cools down until a probe brings it back (``margin.upstreams.resilience``).
A stream is retried only until its first chunk has arrived: after that the client has bytes.
Every call, failed or not, is an ``Attempt`` on the context.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import aiohttp
import orjson

from margin.upstreams.config import DeploymentConfig, HTTPModelConfig
from margin.errors import MarginError, UpstreamError, UpstreamStatusError, UpstreamTimeout
from margin.types import Attempt, Call, Response
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens
from margin.upstreams.base import EmbedResult, Upstream
from margin.upstreams.resilience import (DEFAULT_RESILIENCE, Clock, DeploymentHealth,
                                         ResilienceConfig, attempt_status, backoff_s,
                                         is_retryable, retry_after_s, started_stream)

T = TypeVar("T")

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


class HTTPDeployment:
    """One base URL + key, with its own pooled session."""

    def __init__(self, model: HTTPModelConfig, dep: DeploymentConfig,
                 health: DeploymentHealth | None = None) -> None:
        self.model = model
        self.dep = dep
        self.base = dep.api_base.rstrip("/")
        self.label = self.base
        self.weight = dep.weight if dep.weight > 0 else 1.0
        self.health = health or DeploymentHealth()
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

    def load_key(self) -> tuple[float, float]:
        """Least outstanding requests per unit of weight; smoothed latency breaks ties."""
        return (self.in_flight / self.weight, self.ewma_latency_ms)


def _error_from(status: int, raw: bytes, retry_after: str | None = None
                ) -> UpstreamStatusError:
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
    exc = UpstreamStatusError(f"upstream returned {status}: {message}", upstream_status=status,
                              error_type=etype, code=code if isinstance(code, str) else None)
    if retry_after:
        try:
            # Read by the deployment's health (a 429 cools it for as long as it asks).
            exc.retry_after_s = float(retry_after)  # type: ignore[attr-defined]
        except ValueError:
            pass  # an HTTP date: the default cool-down applies
    return exc


class MalformedAnswer(UpstreamError):
    """The upstream's body is JSON but not an answer (a list, string token counts …)."""


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _count(d: dict[str, Any], name: str) -> int:
    v = d.get(name)
    if v is None:
        return 0
    if not _is_count(v):
        raise MalformedAnswer(f"a malformed body: '{name}' is not a token count")
    return v


def _check_answer(payload: Any) -> None:
    """What the gateway reads of a chat or completions answer has the right shape."""
    if not isinstance(payload, dict):
        raise MalformedAnswer(f"a malformed body: a JSON {type(payload).__name__}, "
                              "not an object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise MalformedAnswer("a malformed body: 'choices' is not a list of objects")
    for c in choices:
        msg = c.get("message")
        if msg is not None and not isinstance(msg, dict):
            raise MalformedAnswer("a malformed body: 'choices[].message' is not an object")
    usage = payload.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise MalformedAnswer("a malformed body: 'usage' is not an object")


def _embeddings_of(payload: Any) -> tuple[list[dict[str, Any]], int]:
    """The embedding items in order, and the prompt tokens (0: not reported)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data") or [], list):
        raise MalformedAnswer("a malformed body: not an object with a 'data' list")
    data = payload.get("data") or []
    if not all(isinstance(d, dict) and isinstance(d.get("embedding"), (list, str))
               and _is_count(d.get("index", 0)) for d in data):
        raise MalformedAnswer("a malformed body: 'data' items are not embeddings")
    usage = payload.get("usage") or {}
    if not isinstance(usage, dict):
        raise MalformedAnswer("a malformed body: 'usage' is not an object")
    return sorted(data, key=lambda d: d.get("index", 0)), _count(usage, "prompt_tokens")


# SSE lines other than data: (RFC: event, id, retry; a colon starts a comment).
_SSE_OTHER_FIELDS = (b":", b"event:", b"id:", b"retry:", b"event", b"id", b"retry")


class NoDeploymentAvailable(UpstreamError):
    """Every deployment of the model is cooling down; the caller may try another model."""

    code = "no_deployment_available"


class OpenAIHTTPUpstream(Upstream):
    """Speaks to one or more deployments of one model; picks the least busy, retries on
    another when one fails, and keeps failing ones cooling (see the module docstring)."""

    config_class = HTTPModelConfig
    # An OpenAI-compatible API takes a list of inputs (embeddings) or prompts (completions)
    batchable_embeddings = True
    batchable_completions = True
    model: HTTPModelConfig
    # A native API's deployment (its own auth headers) subclasses HTTPDeployment.
    deployment_class: type[HTTPDeployment] = HTTPDeployment

    def __init__(self, model: HTTPModelConfig, resilience: ResilienceConfig | None = None,
                 clock: Clock = time.monotonic, rng: random.Random | None = None) -> None:
        super().__init__(model)
        self.clock = clock
        self.rng = rng or random.Random()
        self.resilience = resilience or DEFAULT_RESILIENCE
        self.deployments = [self.deployment_class(model, d,
                                                  DeploymentHealth(self.resilience.health, clock))
                            for d in model.deployments]
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def configure(self, resilience: ResilienceConfig) -> None:
        """Apply retry and health settings (before traffic; health state starts afresh)."""
        self.resilience = resilience
        for d in self.deployments:
            d.health = DeploymentHealth(resilience.health, self.clock)

    async def aclose(self) -> None:
        await asyncio.gather(*(d.aclose() for d in self.deployments))

    # -- choosing a deployment ---------------------------------------------------------
    def available(self) -> bool:
        """Is any deployment in rotation (healthy, or due for its probe)?"""
        now = self.clock()
        return any(d.health.available(now) for d in self.deployments)

    def pick(self, exclude: set[int] | None = None, *, force: bool = True
             ) -> HTTPDeployment | None:
        """The least loaded deployment in rotation, outside ``exclude``.

        With none in rotation, ``force`` returns the one whose cool-down ends first (a
        request is better sent to a suspect server than refused), else None.
        """
        now = self.clock()
        pool = [d for i, d in enumerate(self.deployments) if not exclude or i not in exclude]
        ready = [d for d in pool if d.health.available(now)]
        if ready:
            return min(ready, key=HTTPDeployment.load_key)
        if force and pool:
            return min(pool, key=lambda d: (d.health.cooling_until or 0.0, d.load_key()))
        return None

    def _next(self, tried: set[int], attempt: int, last_resort: bool) -> HTTPDeployment | None:
        if attempt == 0:
            return self.pick(force=last_resort)
        dep = self.pick(tried, force=False)
        if dep is None and last_resort and self.resilience.retry.retry_same_deployment_last:
            dep = self.pick(force=True)
        return dep

    async def _with_retries(self, call: Callable[[HTTPDeployment], Awaitable[T]],
                            last_resort: bool) -> T:
        retry = self.resilience.retry
        tried: set[int] = set()
        last_exc: BaseException | None = None
        for attempt in range(retry.max_attempts):
            dep = self._next(tried, attempt, last_resort)
            if dep is None:
                break
            if attempt:
                await self.sleep(backoff_s(attempt, retry, self.rng))
            tried.add(self.deployments.index(dep))
            probe = dep.health.begin()
            try:
                result = await call(dep)
            except MarginError as exc:
                if not is_retryable(exc):
                    dep.health.release_probe()
                    raise
                dep.health.failure(probe, retry_after_s(exc))
                last_exc = exc
                continue
            except BaseException:
                dep.health.release_probe()
                raise
            dep.health.success(probe)
            return result
        if last_exc is not None:
            raise last_exc
        raise NoDeploymentAvailable(f"every deployment of {self.model.name!r} is cooling down")

    def _body(self, call: Call, dep: HTTPDeployment) -> dict[str, Any]:
        body = dict(call.body)
        body["model"] = dep.upstream_model
        if (call.stream and call.endpoint in ("chat", "completions")
                and self.model.supports_stream_usage):
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

    # -- chat and completions ----------------------------------------------------------
    async def complete(self, call: Call, dep: HTTPDeployment | None = None) -> Response:
        """Answer through one deployment (``dep``) or the best one, retrying on others.

        Not the last resort (``call.last_resort`` False: another model comes after this one
        in the fallback chain): never send to a cooling deployment and never retry one
        already tried; the caller moves on instead.
        """
        if dep is not None:
            return await self._complete_once(call, dep)
        return await self._with_retries(lambda d: self._complete_once(call, d),
                                        call.last_resort)

    async def _complete_once(self, call: Call, dep: HTTPDeployment) -> Response:
        body = self._body(call, dep)
        t0 = time.perf_counter()
        dep.in_flight += 1
        try:
            resp = await self._post(dep, call.endpoint, body)
        except MarginError as exc:
            dep.in_flight -= 1
            self._failed(call, dep, t0, exc)
            raise
        except BaseException:
            dep.in_flight -= 1
            raise
        if resp.status >= 400 or not call.stream:
            try:
                raw = await resp.read()
            except asyncio.TimeoutError:
                exc: UpstreamError = UpstreamTimeout(f"upstream {dep.label} timed out mid-answer")
                self._failed(call, dep, t0, exc)
                raise exc from None
            except aiohttp.ClientError as err:
                exc = UpstreamError(f"upstream {dep.label} failed mid-answer: "
                                    f"{type(err).__name__}")
                self._failed(call, dep, t0, exc)
                raise exc from None
            finally:
                dep.in_flight -= 1
                resp.release()
            elapsed_ms = (time.perf_counter() - t0) * 1000
            call.result.upstream_ms += elapsed_ms
            if resp.status >= 400:
                call.result.attempts.append(Attempt(self.model.name, dep.label, resp.status, elapsed_ms,
                                            error=raw[:200].decode("utf-8", "replace")))
                raise _error_from(resp.status, raw, resp.headers.get("retry-after"))
            try:
                payload = orjson.loads(raw)
                self._check_payload(payload)
                dep.observe(elapsed_ms)
                self._record_usage(call, payload.get("usage"), payload)
            except (orjson.JSONDecodeError, MalformedAnswer) as err:
                why = (err.message if isinstance(err, MalformedAnswer)
                       else "invalid JSON")
                call.result.attempts.append(Attempt(self.model.name, dep.label, 502, elapsed_ms,
                                            error=why[:200]))
                raise UpstreamError(f"upstream {dep.label} answered with {why}") from None
            call.result.attempts.append(Attempt(self.model.name, dep.label, resp.status, elapsed_ms,
                                        prompt_tokens=call.result.usage.prompt_tokens,
                                        completion_tokens=call.result.usage.completion_tokens))
            return Response(200, payload=payload, raw=raw)
        # Wait for the first chunk here, so that a stream failing before its first byte is
        # retried like any other failed call.
        return await started_stream(self._stream(call, dep, resp, t0))

    def _check_payload(self, payload: Any) -> None:
        """What the gateway reads of the answer has the right shape (a native provider's
        subclass checks its own wire format)."""
        _check_answer(payload)

    def _failed(self, call: Call, dep: HTTPDeployment, t0: float,
                exc: MarginError) -> None:
        elapsed_ms = (time.perf_counter() - t0) * 1000
        call.result.upstream_ms += elapsed_ms
        call.result.attempts.append(Attempt(self.model.name, dep.label, attempt_status(exc), elapsed_ms,
                                    error=exc.message[:200]))

    def _record_usage(self, call: Call, usage: Any, payload: dict | None) -> None:
        if isinstance(usage, dict) and "prompt_tokens" in usage:
            details = usage.get("prompt_tokens_details") or {}
            thinking = usage.get("completion_tokens_details") or {}
            if not isinstance(details, dict) or not isinstance(thinking, dict):
                raise MalformedAnswer("a malformed body: 'usage.prompt_tokens_details' or "
                                      "'usage.completion_tokens_details' is not an object")
            call.result.set_usage(_count(usage, "prompt_tokens"),
                                  _count(usage, "completion_tokens"),
                                  _count(details, "cached_tokens"),
                                  cache_write_tokens=_count(details, "cache_write_tokens"),
                                  reasoning_tokens=_count(thinking, "reasoning_tokens"))
            return
        text = ""
        for choice in (payload or {}).get("choices") or []:
            msg = choice.get("message") or {}
            text += str(msg.get("content") or choice.get("text") or "")
        call.result.set_usage(estimate_prompt_tokens(call.body), estimate_tokens(text),
                              estimated=True)

    async def _stream(self, call: Call, dep: HTTPDeployment,
                      resp: aiohttp.ClientResponse, t0: float) -> AsyncIterator[dict[str, Any]]:
        client_wants_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        usage = None
        text_parts: list[str] = []
        status = resp.status
        error: str | None = None
        sent = 0  # chunks handed on: after the first, a failure is no longer retried
        try:
            kind = resp.headers.get("content-type", "")
            if not kind.startswith("text/event-stream"):
                status = 502
                raise UpstreamError(f"upstream {dep.label} answered a stream request with "
                                    f"{kind[:60] or 'no content type'}, not server-sent events")
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    if line.strip() and not line.startswith(_SSE_OTHER_FIELDS):
                        status = 502
                        raise UpstreamError(f"upstream {dep.label} sent a line that is not "
                                            "server-sent events")
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                if not data:
                    continue
                chunk = orjson.loads(data)
                if not isinstance(chunk, dict):
                    raise orjson.JSONDecodeError("not an object", "", 0)
                if "error" in chunk and "choices" not in chunk:
                    err = chunk["error"] or {}
                    status = 502
                    raise UpstreamError(f"upstream stream error: "
                                        f"{err.get('message', err) if isinstance(err, dict) else err}")
                choices = chunk.get("choices")
                if choices is not None and not (isinstance(choices, list) and all(
                        isinstance(c, dict) for c in choices)):
                    raise orjson.JSONDecodeError("choices not a list of objects", "", 0)
                if call.result.ttft_ms is None:
                    call.result.ttft_ms = call.elapsed_ms()
                if chunk.get("usage"):
                    got = chunk["usage"]
                    if not isinstance(got, dict) or not all(
                            _is_count(got.get(k, 0)) for k in ("prompt_tokens",
                                                                "completion_tokens")):
                        raise orjson.JSONDecodeError("malformed usage", "", 0)
                    usage = got
                    if not chunk.get("choices") and not client_wants_usage:
                        continue
                    if not client_wants_usage:
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") if isinstance(delta, dict) and delta \
                        else choice.get("text")
                    if isinstance(piece, str) and piece:
                        text_parts.append(piece)
                sent += 1
                yield chunk
            if not sent:
                status = 502
                raise UpstreamError(f"upstream {dep.label} ended the stream without a chunk")
        except UpstreamError as exc:
            error = exc.message
            raise
        except asyncio.TimeoutError:
            status, error = 504, "stalled mid-stream"
            raise UpstreamTimeout(f"upstream {dep.label} stalled mid-stream") from None
        except aiohttp.ClientError as exc:
            status, error = 502, f"stream broke: {type(exc).__name__}"
            raise UpstreamError(f"upstream {dep.label} stream broke: "
                                f"{type(exc).__name__}") from None
        except orjson.JSONDecodeError:
            status, error = 502, "unreadable stream chunk"
            raise UpstreamError(f"upstream {dep.label} sent an unreadable stream chunk") from None
        finally:
            dep.in_flight -= 1
            resp.release()
            elapsed_ms = (time.perf_counter() - t0) * 1000
            call.result.upstream_ms += elapsed_ms
            if error is None:
                dep.observe(elapsed_ms)
            elif sent:
                # Failed after bytes went out: the retry loop no longer sees it.
                dep.health.failure()
            recorded = False
            if usage:
                try:
                    self._record_usage(call, usage, None)
                    recorded = True
                except MalformedAnswer:  # odd cached-token details: estimate instead
                    pass
            if not recorded and (error is None or sent):
                call.result.set_usage(estimate_prompt_tokens(call.body),
                                      estimate_tokens("".join(text_parts)), estimated=True)
            billed = error is None or sent > 0
            call.result.attempts.append(Attempt(
                self.model.name, dep.label, status, elapsed_ms, error=error,
                prompt_tokens=call.result.usage.prompt_tokens if billed else 0,
                completion_tokens=call.result.usage.completion_tokens if billed else 0))
            call.result.notes["stream_text_chars"] = sum(len(p) for p in text_parts)

    # -- embeddings --------------------------------------------------------------------
    async def embed(self, inputs: list[Any], call: Call | None = None) -> EmbedResult:
        return await self._with_retries(lambda d: self._embed_once(inputs, call, d), True)

    async def _embed_once(self, inputs: list[Any], call: Call | None,
                          dep: HTTPDeployment) -> EmbedResult:
        body: dict[str, Any] = {"model": dep.upstream_model, "input": inputs}
        if call is not None:
            for k in ("encoding_format", "dimensions", "user"):
                if k in call.body:
                    body[k] = call.body[k]
            body["encoding_format"] = "float"
        t0 = time.perf_counter()
        dep.in_flight += 1
        try:
            resp = await self._post(dep, "embeddings", body)
            try:
                raw = await resp.read()
            except asyncio.TimeoutError:
                raise UpstreamTimeout(f"upstream {dep.label} timed out mid-answer") from None
            except aiohttp.ClientError as err:
                raise UpstreamError(f"upstream {dep.label} failed mid-answer: "
                                    f"{type(err).__name__}") from None
            finally:
                resp.release()
        except MarginError as exc:
            if call is not None:
                self._failed(call, dep, t0, exc)
            raise
        finally:
            dep.in_flight -= 1
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if resp.status >= 400:
            exc = _error_from(resp.status, raw, resp.headers.get("retry-after"))
            if call is not None:
                call.result.attempts.append(Attempt(self.model.name, dep.label, resp.status, elapsed_ms,
                                            error=exc.message[:200]))
            raise exc
        try:
            payload = orjson.loads(raw)
            data, tokens = _embeddings_of(payload)
        except (orjson.JSONDecodeError, MalformedAnswer) as err:
            why = err.message if isinstance(err, MalformedAnswer) else "invalid JSON"
            if call is not None:
                call.result.attempts.append(Attempt(self.model.name, dep.label, 502,
                                                    elapsed_ms, error=why[:200]))
            raise UpstreamError(f"upstream {dep.label} answered with {why}") from None
        dep.observe(elapsed_ms)
        if len(data) != len(inputs):
            raise UpstreamError(f"upstream returned {len(data)} embeddings for "
                                f"{len(inputs)} inputs")
        per_input = [estimate_tokens(t) if isinstance(t, str) else len(t) for t in inputs]
        if not tokens:
            tokens = sum(per_input)
        return EmbedResult([d["embedding"] for d in data], tokens, per_input)
